"""Cost of the evaluation suite against one bare forward pass over the same images.

    python bench/evaluate.py [--data ../shared/data/isiis_ndsb] [--images 3000] [--model DIR]

Builds a store from real isiis_ndsb images (every n-th image, so all classes appear), a
stratified split and, unless `--model` is given, a tiny CLIP-style model (vit_tiny, random
weights: the cost does not depend on what the weights learnt). Then, in one run:

- baseline: one forward pass (decode + preprocess + model) over every image of the split's
  view, nothing cached, no metric;
- suite (cold): `evaluate` with supervised, zero-shot, few-shot (k 1/5/10 x 3 seeds, SimpleShot
  and logistic) and linear-probe, starting from an empty feature cache;
- suite (warm): the same again, features from the cache.

Target: suite (cold) <= 1.5x the baseline. The report (plots) is timed apart. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTOCOLS = ["supervised", "zero-shot", "few-shot", "linear-probe"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "isiis_ndsb"))
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--model", default=None, help="a model directory (default: tiny CLIP)")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.splits import make_split
    from planktonzilla.evaluate import evaluate
    from planktonzilla.evaluate.features import FeatureCache, extract, load_encoder
    from planktonzilla.evaluate.report import write_report
    from planktonzilla.models import build_model, save_model
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.store import ObjectStore

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = ObjectStore(tmp / "store")
        total = sum(1 for _ in Path(args.data).rglob("*.jpg"))
        step = max(1, total // args.images)
        records = islice(read_folder(Path(args.data)), 0, None, step)
        store.ingest(islice(records, args.images), source="isiis_ndsb", workers=2)
        make_split(store, "stratified", seed=0)
        view = dataset_view(store, "stratified")
        model = args.model
        if model is None:
            model = tmp / "model"
            save_model(
                build_model(
                    {
                        "kind": "clip",
                        "backbone": "vit_tiny",
                        "image_size": args.image_size,
                        "classes": view.classes,
                        "class_lineages": view.class_lineages,
                        "embed_dim": 64,
                        "text": {"width": 64, "heads": 2, "layers": 1, "context_length": 24},
                    }
                ),
                model,
            )
        encoder = load_encoder(model)
        images = view.table.num_rows

        t0 = time.perf_counter()
        extract(encoder, store, view.table, batch_size=args.batch)
        forward = time.perf_counter() - t0

        cache_dir = FeatureCache(store, encoder).dir
        shutil.rmtree(cache_dir, ignore_errors=True)
        t0 = time.perf_counter()
        run = evaluate(
            model,
            store,
            "stratified",
            protocols=PROTOCOLS,
            batch_size=args.batch,
            out=tmp / "cold",
            encoder=encoder,
            report=False,
        )
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_report(run, tmp / "cold")
        report = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_run = evaluate(
            model,
            store,
            "stratified",
            protocols=PROTOCOLS,
            batch_size=args.batch,
            out=tmp / "warm",
            encoder=encoder,
            report=False,
        )
        warm = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "images": images,
                "classes": len(view.classes),
                "image_size": encoder.image_size,
                "protocols": PROTOCOLS,
                "forward_pass_s": round(forward, 3),
                "forward_images_per_s": round(images / forward, 1),
                "suite_cold_s": round(cold, 3),
                "suite_cold_images_per_s": round(images / cold, 1),
                "suite_cold_vs_forward": round(cold / forward, 3),
                "suite_warm_s": round(warm, 3),
                "suite_warm_vs_forward": round(warm / forward, 3),
                "warm_images_encoded": warm_run["timing"]["images_encoded"],
                "target_cold_vs_forward": 1.5,
                "report_s": round(report, 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
