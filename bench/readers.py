"""Reader throughput against the unavoidable work, on the real files in ../shared/data.

    .venv/bin/python bench/readers.py [--repeat N]

Prints JSON: for each reader, objects/s of the reader and of a baseline measured in the same
run that does only what any reader of the format must do (IFCB: read the .adc and .roi bytes,
cut each ROI out, PNG-encode it with Pillow; FlowCam: read the .lst, decode each collage TIFF,
crop each particle, PNG-encode it), and `ratio` = reader / baseline (target >= 0.6). Times
are the best of `--repeat` interleaved runs. The EcoTaxa reader's figures (bench_ecotaxa in
bench/readers_ecotaxa.py) are merged in when that file exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TARGET = 0.6

# Complete IFCB bins: (stem, 0-based ADC columns of width, height, start byte)
IFCB_BINS = [
    ("ifcb_bins/pyifcb/data/2012/IFCB5_2012_028/IFCB5_2012_028_081515", (11, 12, 13)),
    ("ifcb_bins/pyifcb/white/D2013/D201305/D20130526/D20130526T095207_IFCB013", (15, 16, 17)),
    ("ifcb_bins/irfcb/data/D20220522T003051_IFCB134", (15, 16, 17)),
    ("ifcb_bins/smhi/bins/D20220519T124533_IFCB134", (15, 16, 17)),
]
FLOWCAM_RUN = "flowcam_station40/416_Station40_09012015_10x"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _best(fn: Callable[[], int], repeat: int) -> tuple[int, float]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return n, best


def _compare(name: str, reader: Callable[[], int], baseline: Callable[[], int], repeat: int):
    reader(), baseline()  # warm caches and imports
    times: dict[str, list[float]] = {"reader": [], "baseline": []}
    counts = {}
    for _ in range(repeat):  # interleave so both see the same machine load
        for key, fn in (("reader", reader), ("baseline", baseline)):
            n, t = _best(fn, 1)
            counts[key] = n
            times[key].append(t)
    if counts["reader"] != counts["baseline"]:
        raise SystemExit(f"{name}: reader made {counts['reader']}, baseline {counts['baseline']}")
    n = counts["reader"]
    r, b = min(times["reader"]), min(times["baseline"])
    return {
        "objects": n,
        "reader_s": round(r, 4),
        "baseline_s": round(b, 4),
        "reader_objects_per_s": round(n / r, 1),
        "baseline_objects_per_s": round(n / b, 1),
        "ratio": round(b / r, 3),
        "target": TARGET,
        "meets_target": b / r >= TARGET,
    }


def bench_ifcb(repeat: int = 5, passes: int = 20) -> dict:
    """IFCB reader over the 4 complete real bins (`passes` times per run: they hold 44 ROIs)."""
    from planktonzilla.readers.ifcb import read_ifcb
    from planktonzilla.records import Record

    stems = [DATA / s for s, _ in IFCB_BINS]

    def reader() -> int:
        n = 0
        for _ in range(passes):
            n += sum(1 for r in read_ifcb(stems) if isinstance(r, Record) and r.image)
        return n

    def baseline() -> int:
        n = 0
        for _ in range(passes):
            for stem, (iw, ih, isb) in IFCB_BINS:
                p = DATA / stem
                adc = p.with_name(p.name + ".adc").read_bytes().decode().splitlines()
                roi = p.with_name(p.name + ".roi").read_bytes()
                for line in adc:
                    f = line.split(",")
                    w, h, s = int(float(f[iw])), int(float(f[ih])), int(float(f[isb]))
                    if w * h:
                        n += bool(_png(Image.frombytes("L", (w, h), roi[s : s + w * h])))
        return n

    out = _compare("ifcb", reader, baseline, repeat)
    out["input"] = f"{len(IFCB_BINS)} real bins x {passes} passes"
    return out


def bench_flowcam(repeat: int = 3) -> dict:
    """FlowCam collage cropper on the station40 run (3,122 particles, 26 collages)."""
    from planktonzilla.readers.flowcam import read_flowcam
    from planktonzilla.records import Record

    run = DATA / FLOWCAM_RUN

    def reader() -> int:
        return sum(1 for r in read_flowcam(run) if isinstance(r, Record) and r.image)

    def baseline() -> int:
        lines = (run / f"{run.name}.lst").read_text().splitlines()
        nf = int(lines[1].split("|")[1])
        names = [ln.split("|")[0] for ln in lines[2 : 2 + nf]]
        ix, iy, iw, ih, ic = (
            names.index(k) for k in ("image_x", "image_y", "image_w", "image_h", "collage_file")
        )
        by_collage: dict[str, list[tuple[int, int, int, int]]] = {}
        for ln in lines[2 + nf :]:
            f = ln.split("|")
            by_collage.setdefault(f[ic], []).append(
                (int(f[ix]), int(f[iy]), int(f[iw]), int(f[ih]))
            )
        n = 0
        for collage, boxes in by_collage.items():
            with Image.open(run / collage) as im:
                im.load()
                for x, y, w, h in boxes:
                    n += bool(_png(im.crop((x, y, x + w, y + h))))
        return n

    out = _compare("flowcam", reader, baseline, repeat)
    out["input"] = f"{FLOWCAM_RUN} (26 LZW collage TIFFs)"
    return out


def _ecotaxa() -> dict | None:
    path = Path(__file__).with_name("readers_ecotaxa.py")
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("readers_ecotaxa", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["readers_ecotaxa"] = module
    spec.loader.exec_module(module)
    return module.bench_ecotaxa()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per side")
    args = parser.parse_args()
    results = {
        "ifcb": bench_ifcb(repeat=args.repeat),
        "flowcam": bench_flowcam(repeat=max(1, args.repeat // 2 + 1)),
    }
    ecotaxa = _ecotaxa()
    if ecotaxa is not None:
        results["ecotaxa"] = ecotaxa
    results["python"] = sys.version.split()[0]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
