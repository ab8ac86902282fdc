"""Ingest speed and memory on the real isiis_ndsb folder, against a bare baseline.

    python bench/ingest.py [--data ../shared/data/isiis_ndsb] [--small 5000]

Baseline: a loop doing only the unavoidable work (read each file, sha256 it, fully decode it
with Pillow). Each measurement runs in its own process so its peak RSS is its own. Prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path, limit: int | None) -> list[Path]:
    from planktonzilla.readers.folder import walk_files

    return list(walk_files(root))[:limit]


def _subset_tree(root: Path, files: list[Path], dest: Path) -> Path:
    """A tree of symlinks to `files`, so both sizes ingest the same kind of data."""
    for f in files:
        link = dest / f.relative_to(root)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f)
    return dest


def measure(mode: str, root: Path, workers: int) -> dict:
    """Run one measurement in this process (called in a child)."""
    from PIL import Image

    from planktonzilla.readers.folder import read_folder
    from planktonzilla.store import ObjectStore

    files = _files(root, None)
    start = time.perf_counter()  # library imports above are not per-image work
    if mode == "baseline":
        for path in files:
            data = path.read_bytes()
            hashlib.sha256(data).digest()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        n = len(files)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report = ObjectStore(tmp).ingest(read_folder(root), source="bench", workers=workers)
            n = report.read
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "images": n,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1),
        "peak_rss_mb": round(max(rss_kb, children_kb) / 1024, 1),
    }


def _child(mode: str, root: Path, workers: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--data", str(root), "--workers", str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/isiis_ndsb")
    parser.add_argument("--small", type=int, default=5000, help="images in the small run")
    parser.add_argument("--child")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.data, args.workers)))
        return

    for path in _files(args.data, None):  # warm the page cache for every run alike
        path.read_bytes()
    baseline = _child("baseline", args.data)
    one = _child("ingest", args.data, 1)
    two = _child("ingest", args.data, 2)
    with tempfile.TemporaryDirectory() as tmp:
        small_root = _subset_tree(args.data, _files(args.data, args.small), Path(tmp) / "small")
        small = _child("ingest", small_root, 1)
        shutil.rmtree(small_root)
    result = {
        "data": str(args.data),
        "cores": os.cpu_count(),
        "baseline_read_hash_decode": baseline,
        "ingest_1_worker": one,
        "ingest_2_workers": two,
        "ratio_1_worker_vs_baseline": round(one["images_per_s"] / baseline["images_per_s"], 3),
        "speedup_2_vs_1_workers": round(two["images_per_s"] / one["images_per_s"], 3),
        "peak_rss_mb_by_images": {
            str(small["images"]): small["peak_rss_mb"],
            str(one["images"]): one["peak_rss_mb"],
        },
        "targets": {"ratio_1_worker_vs_baseline": ">= 0.7", "speedup_2_vs_1_workers": "~2"},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
