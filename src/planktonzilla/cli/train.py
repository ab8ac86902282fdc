"""`pz train supervised|clip`: train a model on a store's split into a model directory.

Settings come from `TrainConfig` defaults, then a TOML file (``--config``, keys named like the
`TrainConfig` fields, e.g. ``epochs = 20`` or ``[text]\\nwidth = 512``), then the flags. Several
processes: ``torchrun --nproc_per_node N -m planktonzilla.train supervised --store …``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from planktonzilla.cli._common import console


class Kind(StrEnum):
    supervised = "supervised"
    clip = "clip"


def train(
    kind: Kind = typer.Argument(..., help="supervised or clip"),
    store: Path = typer.Option(
        None, "--store", "-s", exists=True, file_okay=False, help="Store directory."
    ),
    split: str = typer.Option(None, "--split", help="Split table name (see `pz split`)."),
    data: str = typer.Option(
        None,
        "--data",
        help="Train from `pz export webdataset` shards instead: their folder or fsspec URL"
        " (label space and split from its index.json).",
    ),
    data_lanes: int = typer.Option(
        None, "--data-lanes", min=1, help="--data: shard streams (default: the world size)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Model directory to write."),
    config: Path = typer.Option(
        None, "--config", exists=True, dir_okay=False, help="TOML file of training settings."
    ),
    backbone: str = typer.Option(None, help="vit_tiny|vit_small|vit_base or any timm model."),
    pretrained: str = typer.Option(None, help="Initial backbone weights: a file, or 'timm'."),
    image_size: int = typer.Option(None, "--image-size", min=8),
    fill: str = typer.Option(
        None, "--fill", help="Padding: auto (one level from the data; default) | border | 0-255."
    ),
    epochs: int = typer.Option(None, min=1),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Global batch size."),
    lr: float = typer.Option(None, "--lr"),
    loss: str = typer.Option(
        None, help="ce | focal | ldam | balanced_softmax | logit_adjust (supervised)."
    ),
    rank: str = typer.Option(None, "--rank", help="Label rank: deepest | kingdom … species."),
    head_rank: list[str] = typer.Option(
        None, "--head-rank", help="Extra per-rank head (supervised; repeatable)."
    ),
    caption_style: str = typer.Option(None, "--caption-style", help="clip: lineage | bioclip."),
    balanced: bool = typer.Option(
        None, "--balanced/--no-balanced", help="Class-balanced sampling."
    ),
    workers: int = typer.Option(None, "--workers", "-j", min=0),
    device: str = typer.Option(
        None, "--device", help="auto (cuda when available; default) | cpu | cuda"
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    seed: int = typer.Option(None),
    compile_: bool = typer.Option(None, "--compile/--no-compile", help="torch.compile"),
    accum: int = typer.Option(None, min=1, help="Loader batches per optimizer step."),
    checkpoint_every: int = typer.Option(None, "--checkpoint-every", min=0, help="Steps."),
    halt_after_step: int = typer.Option(None, "--halt-after-step", hidden=True),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train a supervised classifier or a CLIP-style model; writes OUT/model.safetensors,
    OUT/config.json, OUT/train_log.jsonl (and OUT/checkpoint.pt for --resume)."""
    import json
    import os
    import tomllib

    from planktonzilla.train.loop import TrainConfig

    settings: dict = {}
    if config is not None:
        with open(config, "rb") as fh:
            settings.update(tomllib.load(fh))
    flags = {
        "backbone": backbone,
        "pretrained": pretrained,
        "image_size": image_size,
        "fill": int(fill) if fill and fill.isdigit() else fill,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "loss": loss,
        "rank": rank,
        "head_ranks": head_rank or None,
        "caption_style": caption_style,
        "balanced": balanced,
        "workers": workers,
        "device": device,
        "seed": seed,
        "compile": compile_,
        "accum": accum,
        "checkpoint_every": checkpoint_every,
        "halt_after_step": halt_after_step,
        "data_lanes": data_lanes,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if (store is None or split is None) and (data is None or store is not None):
        console.print("[red]training needs --store and --split, or --data (+ both to calibrate)[/]")
        raise typer.Exit(2)
    settings.update(kind=kind.value, out=str(out), resume=resume)
    settings.update(store=str(store or ""), data=data or "")
    if split is not None:
        settings["split"] = split
    main = int(os.environ.get("RANK", "0")) == 0
    settings["progress"] = progress and main
    try:
        summary = train_and_calibrate(TrainConfig.from_dict(settings))
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]training failed:[/] {exc}")
        raise typer.Exit(2) from None
    if main:
        print(json.dumps(summary, indent=1))


def train_and_calibrate(cfg) -> dict:
    """The training workflow: train (every torchrun process), then, on the main process of a
    finished run with a val side and a store, calibrate the abstention / OOD thresholds
    `pz predict` uses (`planktonzilla.inference.calibrate`; a --data run without --store is
    not calibrated)."""
    import os

    from planktonzilla.inference import calibrate
    from planktonzilla.store import ObjectStore
    from planktonzilla.train.loop import train

    summary = train(cfg)
    main = int(os.environ.get("RANK", "0")) == 0
    if main and not summary["halted"] and summary.get("val_loss") is not None and cfg.store:
        calibrate(cfg.out, ObjectStore(cfg.store), cfg.split, device=cfg.device)
    return summary


def register(app: typer.Typer) -> None:
    app.command()(train)
