"""`pz verify` on a clean store at two sizes: time per GB and per object must stay flat
(linear time), and against a baseline measured in the same run: sha256 of the same bytes.

    python bench/verify.py [--objects 2000] [--factor 4]

Images are random-noise PNGs (incompressible, like real ones, so shards hold their bytes).
Prints JSON: per size, seconds, s/GB and ms/object for `verify` and `verify --deep`, the
sha256 baseline, and the ratio of the large size's per-GB time to the small one's (~1: linear).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from planktonzilla.records import Record
from planktonzilla.store import ObjectStore
from planktonzilla.store.verify import verify_store


def _store(root: Path, n: int) -> ObjectStore:
    rng = np.random.default_rng(0)

    def records():
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)).save(buf, "PNG")
            yield Record(f"img{i}.png", buf.getvalue(), raw_label="Copepoda")

    store = ObjectStore(root)
    store.ingest(records(), source="bench")
    return store


def _timed(fn) -> float:
    best = float("inf")
    for _ in range(3):  # best of three: the first may pay for a cold page cache
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _measure(store: ObjectStore, n: int) -> dict:
    files = store.shard_files("objects") + store.shard_files("rejected")
    size = sum(Path(f).stat().st_size for f in files)

    def baseline():
        for f in files:
            hashlib.sha256(Path(f).read_bytes()).hexdigest()

    out = {"objects": n, "bytes": size}
    for name, fn in (
        ("sha256_baseline", baseline),
        ("verify", lambda: verify_store(store.path)),
        ("verify_deep", lambda: verify_store(store.path, deep=True)),
    ):
        s = _timed(fn)
        out[name] = {
            "s": round(s, 4),
            "s_per_gb": round(s / size * 1e9, 3),
            "ms_per_object": round(s / n * 1e3, 4),
        }
    out["verify_over_baseline"] = round(out["verify"]["s"] / out["sha256_baseline"]["s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument("--factor", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [args.objects, args.objects * args.factor]
        runs = [_measure(_store(Path(tmp) / str(n), n), n) for n in sizes]
    small, large = runs
    print(
        json.dumps(
            {
                "runs": runs,
                "linearity_s_per_gb_large_over_small": {
                    k: round(large[k]["s_per_gb"] / small[k]["s_per_gb"], 2)
                    for k in ("verify", "verify_deep")
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
