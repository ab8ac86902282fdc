"""EcoTaxa / EcoPart TSV reader speed: objects/s of `read_ecotaxa` against a baseline measured
in the same run that only parses the same TSVs with the `csv` module (the unavoidable work).

Corpus: the 25 UVP5 `*_ZOO_raw_*` exports (25,054 objects, ~90 columns each, every feature
converted to a number by the reader) plus their metadata summary, and the Tara ZooScan export
(metadata-only rows). Target: ratio >= 0.6.

    python bench/readers_ecotaxa.py
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ecotaxa_exports"


def _corpus() -> tuple[list[Path], list[Path]]:
    uvp5 = DATA / "uvp5_ecopart"
    tables = sorted(uvp5.glob("*_ZOO_raw_*.tsv")) + sorted(uvp5.glob("*_summary.tsv"))
    tables.append(DATA / "tara_zooscan" / "export.tsv")
    return [uvp5, DATA / "tara_zooscan" / "export.tsv"], tables


def _baseline(tables: list[Path]) -> int:
    rows = 0
    for path in tables:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for _ in csv.reader(fh, delimiter="\t"):
                rows += 1
    return rows


def _reader(inputs: list[Path]) -> int:
    from planktonzilla.readers.ecotaxa import read_ecotaxa
    from planktonzilla.records import Record

    return sum(
        1 for item in read_ecotaxa(inputs, missing_images="metadata") if isinstance(item, Record)
    )


def bench_ecotaxa(repeat: int = 3) -> dict:
    inputs, tables = _corpus()
    objects = _reader(inputs)  # warm-up (imports, page cache)
    best_reader = best_base = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        base_rows = _baseline(tables)
        best_base = min(best_base, time.perf_counter() - t)
        t = time.perf_counter()
        n = _reader(inputs)
        best_reader = min(best_reader, time.perf_counter() - t)
        assert n == objects
    reader_ops = objects / best_reader
    # The baseline sees the same object rows (plus header / type / summary lines, counted
    # as objects too, which only flatters it slightly).
    base_ops = base_rows / best_base
    return {
        "bench": "readers_ecotaxa",
        "objects": objects,
        "reader_objects_per_s": round(reader_ops, 1),
        "baseline_csv_rows_per_s": round(base_ops, 1),
        "ratio": round(reader_ops / base_ops, 3),
        "target_ratio": 0.6,
        "reader_s": round(best_reader, 3),
        "baseline_s": round(best_base, 3),
    }


if __name__ == "__main__":
    print(json.dumps(bench_ecotaxa(), indent=1))
