"""`pz predict` end to end (read → decode + preprocess → model → write) against the bare model
on pre-made tensors of the same images, in the same run.

    python bench/predict.py [--data ../shared/data/isiis_ndsb] [--images 4000] [--image-size 64]
    python bench/predict.py --device cuda --backbone vit_base --image-size 224 --batch 256 \\
        --dtype bf16                    # the GPU case (H200 bare ceiling ≈ 9,000 img/s)

Input: `--images` real isiis_ndsb vignettes (every n-th file, so every class appears) copied
into a temporary `<class>/<file>.jpg` folder, the layout a user points `pz predict` at. Model:
a random-weight `--kind` model (`--backbone`, `--image-size`) over the 121 isiis_ndsb classes
with their resolved lineages (the cost does not depend on what the weights learnt), saved and
loaded as `pz predict` loads it.

- baseline ("bare"): `model.predict_logits` over the same images, preprocessed beforehand into
  uint8 ``[B, 3, S, S]`` tensors already on the device, same batch size, same dtype and torch
  threads: no file reading, decoding, post-processing or writing;
- measured: `predict_to_file` from the folder into a CSV and into a Parquet file (fresh each
  pass), i.e. walk the folder, read and decode every file, preprocess, model, lineage-aware
  abstention, rows, write. Then once, `pz predict` as a subprocess (Python start and model
  load included: a figure for the command line, not paired).

Each bare pass runs right before the measured pass it is paired with (the machine is shared
and noisy); every figure is the best of `--repeats` passes, after one untimed warm-up batch.
`ratio_*` = best end-to-end rate / best bare rate (target 0.8); `pair_ratios` gives each
measured pass over its own bare pass. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


def _sample(data: Path, n: int, dest: Path) -> list[Path]:
    """Every k-th vignette of `data` (sorted, so every class appears), copied under `dest`."""
    files = sorted(data.rglob("*.jpg"))
    files = files[:: max(1, len(files) // n)][:n]
    out = []
    for f in files:
        target = dest / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(target)
    return out


def _lineages(classes: list[str]) -> list[dict]:
    """Each class's lineage as the taxonomy resolves its raw label (a real, uneven tree)."""
    from planktonzilla.taxonomy import resolve_label

    out = []
    for name in classes:
        lin = resolve_label(name).lineage
        d = lin.to_dict() if lin is not None else {}
        out.append(
            {
                **{r: d.get(r) or None for r in RANKS},
                "name": name,
                "rank": d.get("rank"),
                "aphia_id": d.get("aphia_id"),
                "root_class": d.get("root_class") or "living",
            }
        )
    return out


def _model_config(args, classes: list[str]) -> dict:
    config = {
        "kind": args.kind,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "classes": classes,
        "class_lineages": _lineages(classes),
    }
    if args.kind == "clip":  # a small text tower: captions are encoded once, at load
        config.update(embed_dim=64, text={"width": 64, "heads": 2, "layers": 1})
    return config


def _premade(files: list[Path], size: int, device: str):
    """uint8 [N, 3, S, S] on `device`: the model's input, made outside the timing."""
    import numpy as np
    import torch

    from planktonzilla.data.loader import preprocess

    arrays = np.stack([preprocess(f.read_bytes(), size) for f in files])
    return torch.from_numpy(np.ascontiguousarray(arrays.transpose(0, 3, 1, 2))).to(device)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bare(model, tensors, batch: int, autocast, device: str) -> float:
    """Images/s of `predict_logits` over the pre-made tensors."""
    _sync(device)
    t0 = time.perf_counter()
    with autocast():
        for i in range(0, len(tensors), batch):
            model.predict_logits(tensors[i : i + batch])
    _sync(device)
    return len(tensors) / (time.perf_counter() - t0)


def _end_to_end(classifier, folder: Path, out: Path, batch: int, device: str) -> float:
    from planktonzilla.predict.batch import predict_to_file

    shutil.rmtree(out.with_name(out.name + ".partial"), ignore_errors=True)
    out.unlink(missing_ok=True)
    _sync(device)
    t0 = time.perf_counter()
    report = predict_to_file(classifier, [folder], out, batch_size=batch, resume=False)
    _sync(device)
    dt = time.perf_counter() - t0
    if not report.ok or report.rejected:
        raise SystemExit(f"unexpected run: {report.summary()}")
    return report.predicted / dt


def _cli(model_dir: Path, folder: Path, out: Path, args) -> dict:
    """One `pz predict` run as a subprocess: wall time including start-up and model load."""
    pz = Path(sys.executable).with_name("pz")
    cmd = [str(pz), "predict", str(model_dir), str(folder), "--out", str(out)]
    cmd += ["--batch-size", str(args.batch), "--device", args.device, "--no-resume"]
    cmd += ["--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    dt = time.perf_counter() - t0
    return {"cli_s": round(dt, 3), "cli_images_per_s": round(args.images / dt, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "isiis_ndsb"))
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--kind", choices=["supervised", "clip"], default="supervised")
    parser.add_argument("--backbone", default="vit_tiny")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--repeats", type=int, default=2, help="paired passes (best kept)")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the pz run")
    args = parser.parse_args()

    import torch

    from planktonzilla.models import build_model, save_model
    from planktonzilla.predict import Classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "vignettes"
        files = _sample(Path(args.data), args.images, folder)
        args.images = len(files)
        classes = sorted(p.name for p in Path(args.data).iterdir() if p.is_dir())
        torch.manual_seed(0)
        model_dir = save_model(build_model(_model_config(args, classes)), tmp / "model")
        classifier = Classifier.load(model_dir, device=args.device, dtype=dtype)
        model = classifier.model
        tensors = _premade(files, args.image_size, args.device)

        _bare(model, tensors[: args.batch], args.batch, autocast, args.device)  # warm-up
        classifier.predict(files[: args.batch], batch_size=args.batch)
        bare: list[float] = []
        measured: dict[str, list[float]] = {"csv": [], "parquet": []}
        for _ in range(args.repeats):
            for fmt in measured:
                bare.append(_bare(model, tensors, args.batch, autocast, args.device))
                rate = _end_to_end(classifier, folder, tmp / f"out.{fmt}", args.batch, args.device)
                measured[fmt].append(rate)
        cli = _cli(model_dir, folder, tmp / "cli.csv", args) if args.cli else {}

    best_bare = max(bare)
    result = {
        "images": args.images,
        "kind": args.kind,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch": args.batch,
        "device": args.device,
        "dtype": args.dtype,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "bare_images_per_s": round(best_bare, 1),
        **{f"end_to_end_images_per_s_{f}": round(max(r), 1) for f, r in measured.items()},
        **{f"ratio_{f}": round(max(r) / best_bare, 3) for f, r in measured.items()},
        "target_ratio": 0.8,
        "passes": {
            "bare": [round(r, 1) for r in bare],
            **{f: [round(x, 1) for x in r] for f, r in measured.items()},
        },
        # each measured pass over the bare pass just before it (less exposed to load swings)
        "pair_ratios": {
            f: [round(x / bare[i * len(measured) + k], 3) for i, x in enumerate(r)]
            for k, (f, r) in enumerate(measured.items())
        },
        **cli,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
