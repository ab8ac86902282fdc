"""Sampled volume per sample, read from each instrument's own metadata, kept beside the shards
as `samples/<source>.parquet` (schema.SAMPLES) and joined at read time: no shard is rewritten.

    rows, problems = read_samples(["bins/", "run_folder/", "ecopart_export/"])
    write_samples(ObjectStore("store"), "mvco", rows)

Where each volume comes from (`volume_method`):

- `ifcb_header` — IFCB volume analysed = flow rate x (runTime - inhibitTime): the method of the
  IFCB community's analysis code (ifcb-analysis `IFCB_volume_analyzed.m`, and pyifcb's
  `compute_ml_analyzed_s2`, which reproduces it). runTime and inhibitTime are seconds, in the
  bin's own `.hdr` (lines `runTime: 1231.024861` / `inhibitTime: 11.622980` in the new-format
  headers of ../shared/data/ifcb_bins); the syringe pump runs at 0.25 ml/min (those headers
  carry no flow rate: `syringeSamplingSpeed` is in pump steps, not ml/min).
- `ifcb_adc` — a new-format header with zero look time falls back on the ADC file's last rows
  (columns `RunTime` and `InhibitTime` of the header's `ADCFileFormat`); the earliest
  instruments (IFCB1-6, `IFCB5_2012_028_081515` naming) record neither in the header, so the
  look time is rebuilt from the ADC trigger timings as ifcb-analysis
  `IFCB_volume_analyzed_fromADC.m` does: run time = last frame-grab time, minus each trigger's
  processing time (trigger open - previous frame grab, at least 0.073 s), minus 0.073 s once;
  flow 5 ml / 48,000 steps at 40 steps/s = 0.25 ml/min. Such a bin with no triggers has no
  volume (None, said in `extra`); a new-format bin with no triggers has its header volume and
  counts 0.
- `flowcam_summary` — the run summary's `Fluid Volume Imaged` (VisualSpreadsheet
  `<run>_run_summary.txt`, section `Run:`; `Sample Volume Imaged ml` of `<run>_summary.csv`
  otherwise), with `Efficiency` and the volume processed in `extra`.
- `ecopart_par` — UVP5/UVP6: images per depth bin (column `imgcount` of the EcoPart particle
  file `*_PAR_raw_*.tsv`, repeated on every size-class row of a depth) x the volume of one
  image (`acq_volimage`, litres, of the profile's row in the export's metadata summary). The
  PAR `depth` and the objects' `depth_including_offset` are taken on one scale, as EcoPart
  exports both (an assumption: no offset is re-applied).
- `ecotaxa_acq_sub_part` — ZooScan / net samples of an EcoTaxa export: each acquisition
  (fraction) saw `sample_tot_vol` (m3 filtered by the net) / `acq_sub_part` (the Motoda split
  denominator), so a count x acq_sub_part / sample_tot_vol is individuals per m3 — the
  ZooProcess / EcoTaxa convention. ZooProcess writes 9999 for an unknown value.
- `user` — a volume the user gives (`pz samples --volume-ml`) for every other sample.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from planktonzilla.exceptions import InputError
from planktonzilla.fileio import atomic_path
from planktonzilla.readers.flowcam import _read_summary
from planktonzilla.readers.ifcb import _parse_header, parse_bin_name

__all__ = [
    "IFCB_FLOW_ML_PER_MIN",
    "SampleRow",
    "ecopart_volumes",
    "ecotaxa_volumes",
    "flowcam_volume",
    "ifcb_volume",
    "read_samples",
    "user_volumes",
    "write_samples",
]

#: The IFCB syringe pump's flow rate (ifcb-analysis `IFCB_volume_analyzed.m`: flowrate = 0.25).
IFCB_FLOW_ML_PER_MIN = 0.25
_MIN_PROC_TIME_S = 0.073  # ifcb-analysis, old instruments: the shortest trigger processing time
# Old (IFCB1-6) ADC columns, 0-based: trigger#, ADC_time, …, trigger open time (7), frame grab
# time (8) — the IFCB revision-1 layout as pyifcb documents it (SCHEMA_VERSION_1).
_OLD_TRIGGER, _OLD_TRIGGER_OPEN, _OLD_FRAME_GRAB = 0, 7, 8
_DAY_S = 24 * 3600.0
_ZOOPROCESS_UNKNOWN = (9999.0, 99999.0, 999999.0)
_PAR_NAME = re.compile(r"^\d{14}_(.+?)_PAR_raw_.*\.tsv$", re.IGNORECASE)


@dataclass
class SampleRow:
    """One row of schema.SAMPLES (without `source`, which the store gives)."""

    sample_id: str
    volume_ml: float | None
    volume_method: str
    origin: str
    subsample_id: str | None = None
    subsample_by: str | None = None  # None | "acq_id" | "depth"
    time_utc: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    depth_min: float | None = None
    depth_max: float | None = None
    fraction: float | None = None
    instrument: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _float(value: Any) -> float | None:
    try:
        x = float(str(value).strip().strip('"').rstrip("%").split()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------------------- IFCB


def ifcb_volume(hdr: str | os.PathLike) -> SampleRow:
    """The volume analysed of the IFCB bin whose header is `hdr` (its `.adc` beside it)."""
    hdr = Path(hdr)
    stem = hdr.with_suffix("")
    name = parse_bin_name(stem.name)
    if name is None:
        raise InputError(f"{hdr}: not an IFCB bin name")
    text = hdr.read_text(encoding="latin-1")
    if not text.strip():
        raise InputError(f"{hdr}: empty header")
    header = _parse_header(text)
    adc_path = stem.with_name(stem.name + ".adc")
    rows = _adc_rows(adc_path)
    extra: dict[str, Any] = {"triggers": len(rows), "flow_ml_per_min": IFCB_FLOW_ML_PER_MIN}
    base = dict(
        sample_id=name.bin_id,
        origin=str(hdr),
        time_utc=name.time_utc,
        instrument="IFCB",
    )
    if name.schema == "old":
        look, run = _old_look_time(rows)
        if look is None:
            extra["issue"] = "no triggers: an IFCB1-6 bin's run time is only in its ADC rows"
            return SampleRow(volume_ml=None, volume_method="ifcb_adc", extra=extra, **base)
        extra.update(run_time_s=run, look_time_s=look)
        return SampleRow(
            volume_ml=IFCB_FLOW_ML_PER_MIN * look / 60,
            volume_method="ifcb_adc",
            extra=extra,
            **base,
        )
    run, inhibit = _float(header.get("runTime")), _float(header.get("inhibitTime"))
    method = "ifcb_header"
    if run is None or inhibit is None or run - inhibit <= 0:
        run, inhibit = _adc_run_inhibit(header, rows)
        method = "ifcb_adc"
    if run is None or inhibit is None:
        extra["issue"] = "neither the header nor the ADC rows give a run and inhibit time"
        return SampleRow(volume_ml=None, volume_method=method, extra=extra, **base)
    extra.update(run_time_s=run, inhibit_time_s=inhibit, look_time_s=run - inhibit)
    return SampleRow(
        volume_ml=IFCB_FLOW_ML_PER_MIN * (run - inhibit) / 60,
        volume_method=method,
        extra=extra,
        **base,
    )


def _adc_rows(path: Path) -> list[list[float]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        cells = [c for c in line.strip().split(",")]
        if cells and cells[-1] == "":  # old ADC rows end with a comma
            cells.pop()
        if cells and cells != [""]:
            rows.append([_float(c) if c.strip() else None for c in cells])
    return rows


def _old_look_time(rows: list[list[float]]) -> tuple[float | None, float | None]:
    seen: set[float] = set()
    grabs, opens = [], []
    for row in rows:  # one row per ROI: a trigger with several ROIs repeats its timings
        if len(row) <= _OLD_FRAME_GRAB or row[_OLD_TRIGGER] in seen:
            continue
        seen.add(row[_OLD_TRIGGER])
        # a bin that spans midnight has negative times: add a day
        opens.append(row[_OLD_TRIGGER_OPEN] + (_DAY_S if row[_OLD_TRIGGER_OPEN] < 0 else 0))
        grabs.append(row[_OLD_FRAME_GRAB] + (_DAY_S if row[_OLD_FRAME_GRAB] < 0 else 0))
    if not grabs:
        return None, None
    run = grabs[-1]
    processing = sum(
        max(o - g, _MIN_PROC_TIME_S) for o, g in zip(opens[1:], grabs[:-1], strict=True)
    )
    return run - processing - _MIN_PROC_TIME_S, run


def _adc_run_inhibit(header: dict, rows: list[list[float]]) -> tuple[float | None, float | None]:
    names = [re.sub(r"[^a-z]", "", c.lower()) for c in header.get("ADCFileFormat", "").split(",")]
    if "runtime" not in names or "inhibittime" not in names:
        return None, None
    r, i = names.index("runtime"), names.index("inhibittime")
    for row in reversed(rows):  # the last row whose cumulative times give a positive look time
        known = len(row) > max(r, i) and row[r] is not None and row[i] is not None
        if known and row[r] - row[i] > 0:
            return row[r], row[i]
    return None, None


# ------------------------------------------------------------------------------------ FlowCam


def flowcam_volume(summary: str | os.PathLike) -> SampleRow:
    """The fluid volume imaged of a FlowCam run, from `<run>_run_summary.txt` (or, given a
    `<run>_summary.csv`, its `Sample Volume Imaged ml`)."""
    path = Path(summary)
    if path.name.endswith("_run_summary.txt"):
        run = path.name[: -len("_run_summary.txt")]
        values = _read_summary(path)
        imaged = _float(values.get("Run/Fluid Volume Imaged"))
        extra = {
            "volume_processed_ml": _float(values.get("Run/Sample Volume Processed")),
            "volume_aspirated_ml": _float(values.get("Run/Sample Volume Aspirated")),
            "efficiency_pct": _float(values.get("Run/Efficiency")),
            "particle_count": _float(values.get("Run/Particle Count")),
            "run_start_local": values.get("Date/Time/Start"),
        }
    elif path.name.endswith("_summary.csv"):
        run = path.name[: -len("_summary.csv")]
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            values = {r[0].strip(): r[1:] for r in csv.reader(fh) if r}
        imaged = _float((values.get("Sample Volume Imaged ml") or [None])[0])
        extra = {
            "volume_processed_ml": _float((values.get("Sample Volume Processed ml") or [None])[0]),
            "efficiency_pct": _float((values.get("Efficiency") or [None])[0]),
        }
    else:
        raise InputError(f"{path}: not a FlowCam run summary (<run>_run_summary.txt)")
    extra = {k: v for k, v in extra.items() if v is not None}
    if imaged is None:
        extra["issue"] = "the summary gives no fluid volume imaged"
    return SampleRow(
        sample_id=run,
        volume_ml=imaged,
        volume_method="flowcam_summary",
        origin=str(path),
        instrument="FlowCam",
        extra=extra,
    )


# ------------------------------------------------------------------------------------ EcoPart


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _ecopart_profiles(folder: Path) -> dict[str, dict[str, str]]:
    """Profile id -> its row of the export's metadata summary (`*metadata_summary*.tsv`)."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(folder.glob("*etadata_summary*.tsv")):
        for row in _tsv(path):
            if row.get("profileid"):
                out[row["profileid"].strip('"')] = row
    return out


def depth_bin(depth: float, size: float) -> float:
    """The top of the `size`-metre depth bin holding `depth` (bins start at 0 m)."""
    return math.floor(depth / size) * size


def ecopart_volumes(par: str | os.PathLike, bin_m: float = 5.0) -> list[SampleRow]:
    """Volume imaged per depth bin of `bin_m` metres of one UVP profile, from its EcoPart
    particle file and the metadata summary beside it. A PAR row's `depth` (whole metres) falls
    in the bin [k*bin_m, (k+1)*bin_m) by the same rule as an object's depth, so objects and the
    images they came from share the grid."""
    path = Path(par)
    m = _PAR_NAME.match(path.name)
    if not m:
        raise InputError(f"{path}: not an EcoPart particle file (<14 digits>_<profile>_PAR_raw_…)")
    profile = m.group(1)
    meta = _ecopart_profiles(path.parent).get(profile)
    if meta is None:
        raise InputError(f"{path}: no row for profile {profile!r} in a metadata summary beside it")
    volimage_l = _float(meta.get("acq_volimage"))
    if not volimage_l:
        raise InputError(f"{path}: the metadata summary gives no acq_volimage for {profile!r}")
    images: dict[float, int] = {}  # depth (m) -> images taken there (once per depth)
    for row in _tsv(path):
        depth, count = _float(row.get("depth")), _float(row.get("imgcount"))
        if depth is not None and count is not None:
            images.setdefault(depth, int(count))
    per_bin: dict[float, int] = {}
    for depth, count in images.items():
        top = depth_bin(depth, bin_m)
        per_bin[top] = per_bin.get(top, 0) + count
    when = None
    if meta.get("sampledate"):
        try:
            when = datetime.fromisoformat(meta["sampledate"].strip('"')).replace(tzinfo=UTC)
        except ValueError:
            when = None
    kind = meta.get("instrumtype", "").strip('"').upper() or "UVP"
    return [
        SampleRow(
            sample_id=profile,
            subsample_id=f"{top:g}-{top + bin_m:g}",
            subsample_by="depth",
            volume_ml=count * volimage_l * 1000.0,
            volume_method="ecopart_par",
            origin=str(path),
            time_utc=when,
            lat=_float(meta.get("latitude")),
            lon=_float(meta.get("longitude")),
            depth_min=top,
            depth_max=top + bin_m,
            instrument=kind,
            extra={"images": count, "image_volume_l": volimage_l},
        )
        for top, count in sorted(per_bin.items())
    ]


# ------------------------------------------------------------------------------------- EcoTaxa


def _known(value: Any) -> float | None:
    x = _float(value)
    return None if x is None or x in _ZOOPROCESS_UNKNOWN else x


def ecotaxa_volumes(tsv: str | os.PathLike) -> list[SampleRow]:
    """One row per acquisition (`acq_id`) of an EcoTaxa export TSV: the volume its objects were
    counted in, sample_tot_vol (m3) / acq_sub_part."""
    path = Path(tsv)
    if not _has_column(path, "acq_sub_part"):
        raise InputError(f"{path}: no acq_sub_part column (not a ZooScan / net sample export)")
    out: dict[tuple[str, str], SampleRow] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = _first_rows(csv.DictReader(fh, delimiter="\t"))
    for row in rows:
        sample, acq = row.get("sample_id", ""), row.get("acq_id", "")
        if not sample or (sample, acq) in out:
            continue
        sub_part, volume_m3 = _known(row.get("acq_sub_part")), _known(row.get("sample_tot_vol"))
        extra: dict[str, Any] = {"acq_sub_part": sub_part, "sample_tot_vol_m3": volume_m3}
        for key in ("sample_net_type", "sample_net_mesh", "acq_sub_method", "acq_min_mesh"):
            if row.get(key):
                extra[key] = row[key]
        volume = None
        if sub_part and volume_m3:
            volume = volume_m3 * 1e6 / sub_part
        else:
            extra["issue"] = "acq_sub_part or sample_tot_vol unknown: counts only"
        when = None
        if row.get("object_date"):
            try:
                when = datetime.strptime(
                    row["object_date"] + (row.get("object_time") or "000000").zfill(6),
                    "%Y%m%d%H%M%S",
                ).replace(tzinfo=UTC)
            except ValueError:
                when = None
        out[sample, acq] = SampleRow(
            sample_id=sample,
            subsample_id=acq or None,
            subsample_by="acq_id" if acq else None,
            volume_ml=volume,
            volume_method="ecotaxa_acq_sub_part",
            origin=str(path),
            time_utc=when,
            lat=_float(row.get("object_lat")),
            lon=_float(row.get("object_lon")),
            depth_min=_float(row.get("object_depth_min")),
            depth_max=_float(row.get("object_depth_max")),
            fraction=1 / sub_part if sub_part else None,
            instrument=row.get("acq_instrument") or None,
            extra=extra,
        )
    return list(out.values())


def _first_rows(reader) -> list[dict[str, str]]:
    """The first row of each (sample, acquisition), streaming: exports run to millions of rows
    and every row of an acquisition repeats its sample and acq_ fields."""
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for row in reader:
        if row.get("object_id", "").startswith("["):  # the type row of an import TSV
            continue
        seen.setdefault((row.get("sample_id", ""), row.get("acq_id", "")), row)
    return list(seen.values())


# --------------------------------------------------------------------------------------- user


def user_volumes(sample_ids: Iterable[str], volume_ml: float) -> list[SampleRow]:
    """The same user-given volume for every sample in `sample_ids`."""
    if not volume_ml > 0:
        raise InputError(f"--volume-ml must be positive, got {volume_ml}")
    return [
        SampleRow(sample_id=s, volume_ml=float(volume_ml), volume_method="user", origin="user")
        for s in sample_ids
    ]


# ------------------------------------------------------------------------------------ finding


def read_samples(
    paths: str | os.PathLike | Iterable[str | os.PathLike], *, depth_bin_m: float = 5.0
) -> tuple[list[SampleRow], list[str]]:
    """Every sampled volume found under `paths` (files or folders): IFCB headers, FlowCam run
    summaries, EcoPart PAR files, EcoTaxa export TSVs with acq_sub_part. Returns the rows and
    one line per file that looked like one of these but could not be read."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    rows: list[SampleRow] = []
    problems: list[str] = []
    runs_with_txt = {
        f.name[: -len("_run_summary.txt")] for f in files if f.name.endswith("_run_summary.txt")
    }
    for f in files:
        name = f.name
        try:
            if f.suffix.lower() == ".hdr" and parse_bin_name(f.stem):
                rows.append(ifcb_volume(f))
            elif name.endswith("_run_summary.txt") or (
                name.endswith("_summary.csv") and name[: -len("_summary.csv")] not in runs_with_txt
            ):
                rows.append(flowcam_volume(f))
            elif _PAR_NAME.match(name):
                rows.extend(ecopart_volumes(f, depth_bin_m))
            elif f.suffix.lower() == ".tsv" and _has_column(f, "acq_sub_part"):
                rows.extend(ecotaxa_volumes(f))
        except (InputError, OSError, UnicodeError) as exc:
            problems.append(str(exc) if str(f) in str(exc) else f"{f}: {exc}")
    return rows, problems


def _has_column(path: Path, column: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return column in fh.readline().strip().replace('"', "").split("\t")


# ------------------------------------------------------------------------------------ writing


def write_samples(store, source: str, rows: Iterable[SampleRow]) -> int:
    """Merge `rows` into `samples/<source>.parquet` of `store` (an ObjectStore): a row replaces
    the one with the same (sample_id, subsample_id). Atomic: a kill leaves the previous file.
    Returns the number of rows in the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from planktonzilla.store.schema import SAMPLES

    path = store.layout.source_samples(source)
    merged: dict[tuple, dict] = {}
    if path.exists():
        for old in pq.read_table(path).to_pylist():
            merged[old["sample_id"], old["subsample_id"]] = old
    for row in rows:
        record = asdict(row)
        record["source"] = source
        record["extra"] = json.dumps(record["extra"], sort_keys=True, default=str)
        merged[row.sample_id, row.subsample_id] = record
    table = pa.Table.from_pylist(
        sorted(merged.values(), key=lambda r: (r["sample_id"], r["subsample_id"] or "")),
        schema=SAMPLES,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table.num_rows
