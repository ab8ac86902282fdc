"""Every store step at two sizes (200 k and 2 M objects), timed, with its peak memory, and
extrapolated to the full Planktonzilla-17M corpus (17.4 M objects).

    python bench/scale.py [--cache /work/scale-cache] [--sizes 200000,2000000] [--steps …]

The synthetic stores are built once (real `ObjectStore.ingest`, 2 workers) and reused between
runs from `--cache` (outside the repository): tiny distinct images (4x4 24-bit BMP, 102 bytes,
each decodable; its pixels spell the object's index), the raw labels of four public
collections whose shipped mapping resolves them (Zipf-spread: a few labels hold most images),
500-object samples, positions, depths, times, licences, and a collection split on 30 %.

Each step runs in a fresh child process (`--child STEP`), which reports its wall time and its
peak RSS above the interpreter + imports baseline (`ru_maxrss`). Per step the JSON gives both
sizes, the ratio 2 M / 200 k (10 = linear), a linear extrapolation to 17.4 M, and a bound on
the 17.4 M peak: the step rerun at 2 M with DuckDB held at 256 MB, its peak less that cap
scaled by 17.4 M / 2 M, plus DuckDB's default 1 GB cap (`ObjectStore.connect`). The target
is memory flat or O(labels) — nothing above 8 GB at 17.4 M. Steps not in this branch: null.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL = 17_400_000
SOURCES = ("planktoscope", "global_uvp5", "zooscan", "whoi")
SAMPLE = 500  # objects per sample_id
CAPPED, CAPPED_MB, DEFAULT_MB = "256MB", 244.0, 954.0  # DuckDB budgets (MB = 10^6 B, in MiB)
STEPS = (
    "ingest_10k",
    "stats",
    "query",
    "split_stratified",
    "split_grouped",
    "split_upstream",
    "split_loso",
    "split_loio",
    "dataset_view",
    "loader",
    "predict_store",
    "verify",
    "web_store",
)


# ------------------------------------------------------------------------ the corpus
def _bmp(i: int) -> bytes:
    """A 4x4 24-bit BMP whose 48 pixel bytes spell i (distinct per i, always decodable)."""
    import struct

    pixels = (i.to_bytes(8, "little") * 6)[:48]
    header = struct.pack("<2sIHHI", b"BM", 54 + 48, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 4, 4, 1, 24, 0, 48, 2835, 2835, 0, 0)
    return header + info + pixels


def _labels(source: str) -> list[str]:
    import csv

    path = REPO / "src" / "planktonzilla" / "taxonomy" / "data" / "mapping.csv"
    with open(path, newline="") as fh:
        return sorted(
            r["raw_label"]
            for r in csv.DictReader(fh)
            if r["source"] == source and r["status"] == "resolved"
        )


def records(source: str, start: int, n: int, offset: int):
    """n records of `source`, objects offset+start … (indices make the images distinct)."""
    import numpy as np

    from planktonzilla.records import Record

    labels = _labels(source)
    rng = np.random.default_rng([offset, start])
    weights = 1.0 / np.arange(1, len(labels) + 1)  # Zipf
    picks = rng.choice(len(labels), size=n, p=weights / weights.sum())
    t0 = datetime(2010, 1, 1, tzinfo=UTC)
    for j in range(n):
        i = offset + start + j
        sample = i // SAMPLE
        extra = {"upstream_split": ("train", "val", "test")[sample % 3]} if i % 10 < 3 else {}
        yield Record(
            origin=f"{source}/{i:09d}.bmp",
            image=_bmp(i),
            source_object_id=str(i),
            raw_label=labels[picks[j]],
            instrument=("UVP5", "ZooScan", "IFCB", "PlanktoScope")[sample % 4],
            lat=-60 + (sample * 7.3) % 120,
            lon=-180 + (sample * 13.1) % 360,
            depth_min=float(sample % 200),
            depth_max=float(sample % 200 + 5),
            time_utc=t0 + timedelta(hours=sample),
            sample_id=f"{source}-s{sample}",
            license="CC-BY-4.0" if sample % 5 else "CC-BY-NC-4.0",
            extra=extra,
        )


def build(path: Path, size: int) -> dict:
    """The store of `size` objects at `path` (built once: `built.json` marks it complete)."""
    from planktonzilla.store import ObjectStore

    marker = path / "built.json"
    if marker.exists():
        return json.loads(marker.read_text())
    store = ObjectStore(path / "store")
    t0 = time.perf_counter()
    per = size // len(SOURCES)
    for k, source in enumerate(SOURCES):
        store.ingest(records(source, 0, per, k * per), source=source, workers=2)
    info = {"objects": per * len(SOURCES), "build_s": round(time.perf_counter() - t0, 1)}
    marker.write_text(json.dumps(info))
    return info


# ---------------------------------------------------------------------- the steps
def _model(tmp: Path) -> Path:
    """A vit_tiny at 32 px with random weights: throughput and memory, not accuracy."""
    from planktonzilla.models import build_model, save_model

    classes = ["a", "b"]
    config = {
        "kind": "supervised",
        "backbone": "vit_tiny",
        "preprocess": {"size": 32, "fill": "border"},
        "classes": classes,
        "class_lineages": [{"name": c, "rank": "genus"} for c in classes],
        "head_ranks": [],
    }
    out = tmp / "model"
    save_model(build_model(config), out)
    return out


def run_step(step: str, root: Path) -> dict:
    """Do `step` on the store under `root`; returns step-specific figures."""
    from planktonzilla.store import ObjectStore

    store = ObjectStore(root / "store")
    if step == "ingest_10k":  # into a copy whose shards are hard links: the cache stays intact
        copy = root / "ingest-copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(store.path, copy, copy_function=os.link)
        manifest = copy / "manifest.json"
        data = manifest.read_bytes()
        manifest.unlink()
        manifest.write_bytes(data)
        objects = json.loads((root / "built.json").read_text())["objects"]
        t0 = time.perf_counter()
        report = ObjectStore(copy).ingest(
            records(SOURCES[0], 0, 10_000, 10**9 + objects), source=SOURCES[0], workers=2
        )
        seconds = time.perf_counter() - t0
        shutil.rmtree(copy)
        return {"stored": report.stored, "seconds": seconds}
    if step == "stats":
        return {"taxa": len(store.stats()["taxa"])}
    if step == "query":
        rows = 0
        for sql in (
            "SELECT source, count(*) FROM objects GROUP BY 1",
            "SELECT phylum, count(*) FROM objects WHERE depth_max < 50 GROUP BY 1",
            "SELECT object_id, raw_label FROM objects WHERE sample_id = 'planktoscope-s33'",
            "SELECT instrument, avg(lat) FROM objects GROUP BY 1",
        ):
            rows += store.query(sql).num_rows
        return {"rows": rows}
    if step.startswith("split_"):
        from planktonzilla.data.splits import make_split

        return {"tables": len(make_split(store, step[len("split_") :], seed=0))}
    if step == "dataset_view":
        from planktonzilla.data.dataset import dataset_view

        view = dataset_view(store, "stratified")
        return {"rows": view.table.num_rows, "classes": view.num_classes}
    if step == "loader":
        from planktonzilla.data.dataset import dataset_view
        from planktonzilla.data.loader import make_loader

        table = dataset_view(store, "stratified").side("train")
        t0 = time.perf_counter()
        loader = make_loader(store, table, batch_size=256, train=True, image_size=32)
        it = iter(loader)
        for _ in range(5):
            next(it)
        return {"startup_and_5_batches_s": time.perf_counter() - t0, "in_memory": None}
    if step == "predict_store":
        import tempfile

        from planktonzilla.predict import Classifier
        from planktonzilla.predict.batch import predict_to_file

        with tempfile.TemporaryDirectory() as tmp:
            classifier = Classifier.load(_model(Path(tmp)), device="cpu")
            where = "sample_id = 'planktoscope-s20'"  # the same 500 objects at any size
            report = predict_to_file(
                classifier, [str(store.path)], Path(tmp) / "p.csv", where=where, resume=False
            )
        return {"predicted": getattr(report, "predicted", None)}
    if step == "verify":
        from planktonzilla.store.verify import verify_store

        report = verify_store(store.path)
        return {"problems": len(report.problems)}
    if step == "web_store":
        from planktonzilla.serve.browse import StoreBrowser

        browser = StoreBrowser(store.path)
        stats = browser.stats()
        ids = [i for row in stats["samples"][:8] for i in row["object_ids"][:1]]
        images = [browser.image(i, size=96) for i in ids]
        return {"classes_shown": len(stats["samples"]), "thumbnails": len(images)}
    raise ValueError(f"unknown step {step!r}")


def _child(step: str, root: Path) -> None:
    import duckdb  # noqa: F401 - imports in the baseline, not the step
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import planktonzilla.store  # noqa: F401

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = run_step(step, root)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.update(seconds=out.get("seconds", seconds), baseline_mb=base / 1024)
    out["peak_mb"] = (peak - base) / 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps(out))


def measure(step: str, root: Path, duckdb_memory: str | None = None) -> dict | None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    if duckdb_memory:
        env["PZ_DUCKDB_MEMORY"] = duckdb_memory
    proc = subprocess.run(
        [sys.executable, __file__, "--child", step, "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return None if "skipped" in result else result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", default="/work/scale-cache")
    parser.add_argument("--sizes", default="200000,2000000")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--child", default=None)
    parser.add_argument("--root", default=None)
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()
    if args.child:
        _child(args.child, Path(args.root))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    roots, built = {}, {}
    for size in sizes:
        roots[size] = Path(args.cache) / f"store-{size}"
        roots[size].mkdir(parents=True, exist_ok=True)
        built[size] = build(roots[size], size)
    if args.build_only:
        print(json.dumps(built))
        return
    results: dict = {"objects": {s: built[s]["objects"] for s in sizes}, "build": built}
    steps: dict = {}
    for step in args.steps.split(","):
        row = {str(s): measure(step, roots[s]) for s in sizes}
        if len(sizes) == 2 and all(row.values()) and not any("error" in v for v in row.values()):
            small, big = (row[str(s)] for s in sizes)
            n_small, n_big = (built[s]["objects"] for s in sizes)
            grow = (FULL - n_big) / (n_big - n_small)
            row["ratio_seconds"] = big["seconds"] / max(small["seconds"], 1e-9)
            row["ratio_peak"] = big["peak_mb"] / max(small["peak_mb"], 1e-9)
            # linear in objects from the two sizes: an upper bound where DuckDB still grew
            # towards its cap between them
            row["at_17.4M_linear"] = {
                "seconds": big["seconds"] + grow * (big["seconds"] - small["seconds"]),
                "peak_mb": big["peak_mb"] + grow * max(0.0, big["peak_mb"] - small["peak_mb"]),
            }
            # DuckDB held at CAPPED at the big size: what is left grows with the objects (an
            # upper bound: fixed costs scaled too), plus DuckDB's default cap
            capped = measure(step, roots[sizes[-1]], CAPPED)
            if capped and "error" not in capped:
                rest = max(0.0, capped["peak_mb"] - CAPPED_MB)
                row[f"{sizes[-1]}_duckdb_{CAPPED}"] = capped
                row["at_17.4M_peak_mb_bound"] = DEFAULT_MB + rest * FULL / n_big
        elif row.get(str(sizes[0])) is None:
            row["note"] = "not available in this branch"
        steps[step] = row
        print(step, json.dumps(row), file=sys.stderr, flush=True)
    results["steps"] = steps
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
