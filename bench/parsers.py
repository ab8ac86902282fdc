"""Time of the untrusted-text parsers against input size: the EcoTaxa TSV reader (clean,
with sound quotes, and with stray quotes that force the line-by-line path) and the IFCB ADC
reader, at n and factor*n rows. Linear time shows as a flat time per row (ratio ~1).

    python bench/parsers.py [--rows 20000] [--factor 4]

Baseline in the same run: splitting the same text into lines and cells with str.split.
Prints JSON: per case and size, seconds, µs/row, and the large/small µs-per-row ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from planktonzilla.readers.ecotaxa import read_ecotaxa
from planktonzilla.readers.ifcb import read_ifcb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_BIN = "D20220519T124533_IFCB134"  # a real SMHI bin: its header and ROI file are reused


def _tsv(n: int, comment) -> str:
    head = (
        "object_id\tobject_annotation_category\tobject_comment\tobject_length\n[t]\t[t]\t[t]\t[f]\n"
    )
    return head + "".join(f"o{i}\tCopepoda\t{comment(i)}\t{i * 0.5}\n" for i in range(n))


_TSV_CASES = {
    "ecotaxa_clean": lambda i: "fine",
    "ecotaxa_quoted": lambda i: '"a ""quoted"" value"',
    "ecotaxa_stray_quotes": lambda i: '"approx. 2 mm' if i % 10 == 0 else "ok",
}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _split(text: str) -> None:
    [line.split("\t") for line in text.split("\n")]


def _measure(tmp: Path, n: int) -> dict:
    tmp.mkdir(exist_ok=True)
    out = {}
    for case, comment in _TSV_CASES.items():
        folder = tmp / f"{case}-{n}"
        folder.mkdir()
        text = _tsv(n, comment)
        (folder / "ecotaxa_bench.tsv").write_text(text)
        seconds = _timed(
            lambda folder=folder: sum(1 for _ in read_ecotaxa(folder, missing_images="metadata"))
        )
        out[case] = {
            "s": round(seconds, 4),
            "us_per_row": round(seconds / n * 1e6, 3),
            "split_baseline_s": round(_timed(lambda text=text: _split(text)), 4),
        }
    folder = tmp / f"ifcb-{n}"
    folder.mkdir()
    src = SHARED / "ifcb_bins" / "smhi" / "bins"
    for suffix in (".hdr", ".roi"):
        shutil.copy(src / f"{_BIN}{suffix}", folder / f"{_BIN}{suffix}")
    rows = [",".join([str(k), *["0"] * 14, "0", "0", "0", "0", "0"]) for k in range(1, n + 1)]
    rows[0] = ",".join(["1", *["0"] * 14, "10", "10", "0", "0", "0"])  # one real ROI
    (folder / f"{_BIN}.adc").write_text("\n".join(rows) + "\n")
    seconds = _timed(lambda: sum(1 for _ in read_ifcb(folder)))
    out["ifcb_adc"] = {"s": round(seconds, 4), "us_per_row": round(seconds / n * 1e6, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--factor", type=int, default=4)
    args = ap.parse_args()
    sizes = [args.rows, args.rows * args.factor]
    with tempfile.TemporaryDirectory() as tmp:
        _measure(Path(tmp) / "warm-up", args.rows)  # imports, caches: not part of the figures
        small, large = (_measure(Path(tmp), n) for n in sizes)
    print(
        json.dumps(
            {
                "rows": sizes,
                "small": small,
                "large": large,
                "us_per_row_large_over_small": {
                    k: round(large[k]["us_per_row"] / small[k]["us_per_row"], 2) for k in small
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
