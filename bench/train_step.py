"""Training throughput of the full loop (store → loader → model step) against the same model
fed pre-made tensors of the same shape, in the same run. Prints JSON.

    python bench/train_step.py                                   # CPU, vit_tiny, 64 px
    python bench/train_step.py --device cuda --backbone vit_base_patch16_224 --image-size 224 \
        --batch-size 256 --bf16 --workers 16

The store defaults to a synthetic one built in a temporary directory; `--store DIR --split
NAME` uses a real one (e.g. isiis_ndsb). Target: loop ≥ 90 % of the bare model.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _synthetic_store(root: Path, per_class: int):
    from planktonzilla.data.splits import make_split
    from planktonzilla.store import ObjectStore
    from planktonzilla.synthetic import synthetic_records

    store = ObjectStore(root / "store")
    store.ingest(synthetic_records("ISIIS", per_class=per_class), source="synthetic-isiis")
    make_split(store, "stratified", seed=0)
    return store, "stratified"


def _run(trainer, batches, steps: int, device) -> tuple[int, float]:
    """(images, seconds) of `steps` training steps on batches from an iterator."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(batches)
        trainer.train_step(x, y)
        images += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path)
    parser.add_argument("--split", default="stratified")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--kind", default="supervised", choices=["supervised", "clip"])
    parser.add_argument("--per-class", type=int, default=60, help="synthetic store size")
    args = parser.parse_args()

    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.loader import make_loader
    from planktonzilla.models import build_model
    from planktonzilla.store import ObjectStore
    from planktonzilla.train.loop import Distributed, TrainConfig, Trainer

    tmp = tempfile.TemporaryDirectory()
    if args.store:
        store, split = ObjectStore(args.store), args.split
    else:
        store, split = _synthetic_store(Path(tmp.name), args.per_class)
    view = dataset_view(store, split)
    table = view.side("train")
    counts = np.bincount(table["label_index"].to_numpy(), minlength=view.num_classes)
    cfg = TrainConfig(
        kind=args.kind,
        backbone=args.backbone,
        image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device,
        precision="bf16" if args.bf16 else "fp32",
        compile=args.compile,
    )
    dist = Distributed.from_env(args.device)
    n_steps = args.warmup + args.steps

    def trainer():
        torch.manual_seed(0)
        config = {
            "kind": args.kind,
            "backbone": args.backbone,
            "image_size": args.image_size,
            "classes": view.classes,
            "class_lineages": view.class_lineages,
        }
        return Trainer(
            build_model(config), cfg, class_counts=counts, total_steps=n_steps, dist=dist
        )

    loader = make_loader(
        store,
        table,
        batch_size=args.batch_size,
        image_size=args.image_size,
        train=True,
        workers=args.workers,
    )

    def from_loader():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    batches = from_loader()
    images, labels = next(batches)
    premade = iter(lambda: (images, labels), None)  # the same tensors, forever
    bare_trainer, loop_trainer = trainer(), trainer()
    # bare model, full loop, bare model again (each after its own warm-up steps): the
    # baseline is the bare model over both runs, so a drift in the machine's speed cancels
    _run(bare_trainer, premade, args.warmup, dist.device)
    half = max(1, args.steps // 2)
    n1, t1 = _run(bare_trainer, premade, half, dist.device)
    _run(loop_trainer, batches, args.warmup, dist.device)
    n, t = _run(loop_trainer, batches, args.steps, dist.device)
    n2, t2 = _run(bare_trainer, premade, args.steps - half, dist.device)
    bare, loop = (n1 + n2) / (t1 + t2), n / t
    results = {
        "bench": "train_step",
        "device": torch.cuda.get_device_name() if dist.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "kind": args.kind,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": cfg.precision,
        "compile": args.compile,
        "workers": args.workers,
        "train_images": table.num_rows,
        "store": str(args.store) if args.store else "synthetic",
        "bare_model_images_per_s": round(bare, 1),
        "steps_each": args.steps,
        "bare_model_runs_images_per_s": [round(n1 / t1, 1), round(n2 / t2, 1)],
        "full_loop_images_per_s": round(loop, 1),
        "loop_vs_bare": round(loop / bare, 3),
        "target": 0.9,
    }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
