"""`pz abundance` over a store of 1 M objects against a bare DuckDB group-by in the same run.

    python bench/abundance.py [--objects 1000000] [--samples 2000] [--rank genus]

Builds (once, in the cache: $PZ_CACHE/bench/abundance-<n>) a synthetic store with pyarrow
directly: metadata-only objects of the `global_uvp5` collection, their raw labels drawn from
the shipped mapping (so the read-time taxonomy join is the real one), spread over `--samples`
samples, each with a sampled volume in samples/global_uvp5.parquet. Then, in one run:

- baseline: `SELECT sample_id, <rank>, count(*) FROM objects GROUP BY ALL` on the store's own
  DuckDB views (the same taxonomy join, no volumes, no zeros, no intervals);
- abundance: `abundance(store, rank=...)` — the sample join, lineage-aware taxa, every
  sample x taxon with zeros, Poisson intervals, AphiaIDs — materialised as a pyarrow table.

Best of `--repeat` runs each. Prints JSON with both times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

SOURCE = "global_uvp5"


def build(root: Path, n_objects: int, n_samples: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from planktonzilla.ecology.volumes import SampleRow, write_samples
    from planktonzilla.store import ObjectStore
    from planktonzilla.store.schema import OBJECTS
    from planktonzilla.taxonomy import mapping_table

    mapping = mapping_table()
    labels = [
        lab for s, lab in zip(mapping["source"].to_pylist(), mapping["raw_label"].to_pylist(),
                              strict=True) if s == SOURCE
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    store = ObjectStore(root)
    shard_dir = store.layout.shard_dir("objects", SOURCE)
    shard_dir.mkdir(parents=True, exist_ok=True)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    per_shard = 250_000
    for part, first in enumerate(range(0, n_objects, per_shard)):
        n = min(per_shard, n_objects - first)
        ids = [f"{i:064x}" for i in range(first, first + n)]
        sample = rng.integers(0, n_samples, n)
        columns = {
            "object_id": ids,
            "source": [SOURCE] * n,
            "source_object_id": [str(i) for i in range(first, first + n)],
            "raw_label": [labels[i] for i in rng.integers(0, len(labels), n)],
            "instrument": ["UVP5"] * n,
            "depth_min": rng.uniform(0, 500, n),
            "sample_id": [f"s{k:05d}" for k in sample],
            "origin": [f"synthetic#{i}" for i in range(first, first + n)],
            "ingested_at": [now] * n,
            "tool_version": ["bench"] * n,
        }
        arrays = [
            pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
            for f in OBJECTS
        ]
        pq.write_table(
            pa.Table.from_arrays(arrays, schema=OBJECTS), shard_dir / f"part-{part:05d}.parquet"
        )
    store._write_manifest()  # the store's own manifest writer, over the shards just written
    write_samples(
        store,
        SOURCE,
        [
            SampleRow(
                sample_id=f"s{k:05d}",
                volume_ml=float(rng.uniform(1e5, 1e6)),
                volume_method="user",
                origin="bench",
                time_utc=start + timedelta(days=k),
                lat=30.0,
                lon=-60.0,
            )  # fmt: skip
            for k in range(n_samples)
        ],
    )


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rank", default="genus")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from planktonzilla.constants import cache_dir
    from planktonzilla.ecology.abundance import abundance
    from planktonzilla.store import ObjectStore

    root = cache_dir() / "bench" / f"abundance-{args.objects}-{args.samples}"
    built = 0.0
    if not (root / "manifest.json").exists():
        t = time.perf_counter()
        build(root, args.objects, args.samples)
        built = time.perf_counter() - t
    store = ObjectStore(root)

    def bare():
        con = store.connect()
        try:
            return con.sql(
                f'SELECT sample_id, "{args.rank}", count(*) FROM objects GROUP BY ALL'
            ).to_arrow_table()
        finally:
            con.close()

    baseline, groups = best(bare, args.repeat)
    elapsed, table = best(lambda: abundance(store, rank=args.rank, unit="m3"), args.repeat)
    print(
        json.dumps(
            {
                "objects": store.manifest()["objects"],
                "samples": args.samples,
                "rank": args.rank,
                "build_s": round(built, 2),
                "bare_group_by_s": round(baseline, 3),
                "bare_group_by_rows": groups.num_rows,
                "abundance_s": round(elapsed, 3),
                "abundance_rows": table.num_rows,
                "ratio_abundance_over_group_by": round(elapsed / baseline, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
