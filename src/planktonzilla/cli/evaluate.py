"""`pz evaluate`: evaluation protocols on a store split; `pz calibrate`: prediction thresholds."""

from pathlib import Path

import typer

from planktonzilla.cli._common import DEVICE_OPTION, EXISTING_STORE_OPTION, console, fail

PROTOCOL_HELP = (
    "supervised, zero-shot, few-shot, linear-probe, cross-source (comma-separated or repeated); "
    "'compare' = supervised,zero-shot,few-shot,linear-probe over every MODEL in one table; "
    "'all' = every protocol."
)


def _split_list(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def evaluate(
    models: list[str] = typer.Argument(
        ...,
        help="Model directories (pz train) and/or open_clip specs: hf-hub:imageomics/bioclip, "
        "ViT-B-32:openai, ARCH:checkpoint.pt, a hub-style directory (offline: local files "
        "and the Hugging Face cache only).",
    ),
    store: Path = EXISTING_STORE_OPTION,
    split: str = typer.Option(..., "--split", help="Split name (pz split), e.g. stratified."),
    protocol: list[str] = typer.Option(["supervised"], "--protocol", "-p", help=PROTOCOL_HELP),
    rank: str = typer.Option(
        None, "--rank", help="Label rank (default: the model's own; 'deepest' for others)."
    ),
    shots: str = typer.Option("1,5,10", "--shots", help="Few-shot k values."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Few-shot seeds."),
    caption_style: str = typer.Option(
        None, "--caption-style", help="Zero-shot captions: lineage | bioclip (default: model's)."
    ),
    templates: str = typer.Option(
        "none", "--templates", help="Zero-shot template ensemble: none | photo | plankton."
    ),
    zero_shot_classes: str = typer.Option(
        "all", "--zero-shot-classes", help="Candidates: all (label space) | test (present)."
    ),
    cross_rank: str = typer.Option("phylum", "--cross-rank", help="Rank of cross-source."),
    cross_unit: str = typer.Option("source", "--cross-unit", help="source | instrument."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Output directory (default STORE/evaluations/<time>-…)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    workers: int = typer.Option(0, "--workers", "-j", min=0, help="Image decoding processes."),
    device: str = DEVICE_OPTION,
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse cached features."),
) -> None:
    """Evaluate models on a split: metrics per protocol and per taxonomic rank, results.json
    and a Markdown + HTML report with plots (report.md, report.html)."""
    from planktonzilla.evaluate import PROTOCOLS, compare
    from planktonzilla.evaluate import evaluate as run

    names = _split_list(protocol)
    if "all" in names:
        names = list(PROTOCOLS)
    comparing = "compare" in names or len(models) > 1
    if "compare" in names:
        names = [n for n in names if n != "compare"]
        names = list(dict.fromkeys(["supervised", "zero-shot", "few-shot", "linear-probe", *names]))
    options = {
        "protocols": names,
        "shots": [int(k) for k in _split_list([shots])],
        "seeds": [int(s) for s in _split_list([seeds])],
        "caption_style": caption_style,
        "templates": templates,
        "zero_shot_classes": zero_shot_classes,
        "cross_rank": cross_rank,
        "cross_unit": cross_unit,
        "batch_size": batch_size,
        "workers": workers,
        "device": device,
        "use_cache": cache,
        "progress": True,
    }
    if rank:
        options["rank"] = rank
    try:
        if comparing:
            runs = compare(models, store, split, out=out, **options)
        else:
            runs = [run(models[0], store, split, out=out, **options)]
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise fail(str(exc)) from None
    for r in runs:
        _print_run(r)
    where = Path(runs[0]["store"]["path"])
    if out is None:
        from planktonzilla.store import StoreLayout

        found = StoreLayout(where).evaluations.iterdir()
        latest = max(found, key=lambda p: p.stat().st_mtime)
        out = latest
    console.print(f"\nresults and report: {out}/report.html (results.json beside it)")


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _print_run(run: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{run['model']['name']} — {run['split']['scheme']}, rank {run['rank']}")
    for col in ("protocol", "images", "top-1", "top-5", "macro F1", "ECE"):
        table.add_column(col)
    for name, block in run["protocols"].items():
        if name == "few-shot":
            for method, per_k in block["methods"].items():
                for k, stats in per_k.items():
                    mean, std = stats["top1_mean"], stats["top1_std"]
                    top1 = "—" if mean is None else f"{mean:.1%} ± {std:.1%}"
                    table.add_row(f"few-shot {method} k={k}", str(block["test_images"]), top1)
        elif name == "cross-source":
            for fold in block["folds"]:
                table.add_row(
                    f"cross-source → {fold['held_out']} ({block['rank']})",
                    str(fold.get("n_test")),
                    _pct(fold["top1"]),
                    "",
                    _pct(fold["macro_f1"]),
                )
        else:
            table.add_row(
                name,
                str(block["n"]),
                _pct(block.get("top1")),
                _pct(block.get("top5")),
                _pct(block.get("macro_f1")),
                "—" if block.get("ece") is None else f"{block['ece']:.3f}",
            )
    console.print(table)
    for name, why in run.get("skipped", {}).items():
        console.print(f"[yellow]skipped {name}:[/] {why}")


def calibrate(
    model: Path = typer.Argument(..., help="Model directory (pz train)."),
    store: Path = EXISTING_STORE_OPTION,
    split: str = typer.Option(..., "--split"),
    side: str = typer.Option("val", "--side", help="Side to calibrate on (val)."),
    target_precision: float = typer.Option(
        0.9, "--target-precision", help="Precision of confident calls at each rank."
    ),
    ood_fpr: float = typer.Option(
        0.05, "--ood-fpr", help="Share of in-distribution images flagged out-of-distribution."
    ),
    device: str = DEVICE_OPTION,
) -> None:
    """Calibrate a model's abstention thresholds (per rank) and OOD threshold on a split's
    validation side; writes MODEL/calibration.json, which pz predict and pz serve use."""
    from planktonzilla.predict import calibrate as run
    from planktonzilla.store import ObjectStore

    try:
        t = run(
            model,
            ObjectStore(store),
            split,
            side=side,
            target_precision=target_precision,
            ood_fpr=ood_fpr,
            device=device,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    ranks = ", ".join(f"{r} {p:.2f}" for r, p in t["rank"].items())
    console.print(f"thresholds on {t['calibrated_on']['images']} {side} images: {ranks}")
    console.print(f"OOD (energy) threshold {t['ood']:.3f}; written to {model}/calibration.json")


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
    app.command()(calibrate)
