"""IFCB (Imaging FlowCytobot) raw bins → one record per ROI image.

A bin is three files sharing a name: `.hdr` (acquisition settings, text), `.adc` (one CSV row
per trigger: signals, ROI position and size, byte offset into the `.roi`) and `.roi` (the ROI
pixels, 8-bit grey, row-major, concatenated). Two naming schemes exist:

- old (IFCB1–6): `IFCB<serial>_<yyyy>_<ddd>_<hhmmss>` (day of year), ADC layout with ROI width,
  height and start byte in (0-based) columns 11, 12, 13;
- new: `D<yyyymmdd>T<hhmmss>_IFCB<serial>`, 24-column ADC layout with RoiWidth, RoiHeight,
  StartByte in columns 15, 16, 17. New headers also spell the layout out (`ADCFileFormat:`);
  when they do, the named columns are used.

The ROI number of a row is its 1-based line number in the `.adc` (several rows can share a
trigger); a ROI is identified everywhere by the standard IFCB pid `<bin_id>_<roi:05d>`.
Rows with zero width or height are triggers without an image and are not inputs.

Labels come from ifcb-analysis manual-annotation `.mat` files (`classlist` = roi number,
manual class, auto class; class indices are 1-based into `class2use_manual` or a
`class2use.mat`), or from class folders of ROI images named by pid (`<class>/<pid>.png`).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from planktonzilla.exceptions import ReaderError
from planktonzilla.fileio import RefusedInput, read_regular_file
from planktonzilla.records import Record, Rejection

__all__ = ["BinName", "parse_bin_name", "parse_pid", "read_ifcb", "read_ifcb_labels"]

INSTRUMENT = "IFCB"
BIN_SUFFIXES = (".hdr", ".adc", ".roi")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: Manual class names that mean "looked at, not assigned" rather than a label.
UNLABELLED_NAMES = frozenset({"unclassified"})

_NEW_NAME = re.compile(r"D(\d{8})T(\d{6})_(IFCB\d+)")
_OLD_NAME = re.compile(r"(IFCB\d+)_(\d{4})_(\d{3})_(\d{6})")
_PID = re.compile(r"(D\d{8}T\d{6}_IFCB\d+|IFCB\d+_\d{4}_\d{3}_\d{6})_(\d+)")

# ADC layouts: normalised column name → 0-based index.
_NEW_COLUMNS = [
    "trigger", "adctime", "pmta", "pmtb", "pmtc", "pmtd", "peaka", "peakb", "peakc", "peakd",
    "timeofflight", "grabtimestart", "grabtimeend", "roix", "roiy", "roiwidth", "roiheight",
    "startbyte", "comparatorout", "startpoint", "signallength", "status", "runtime", "inhibittime",
]  # fmt: skip
NEW_LAYOUT = {name: i for i, name in enumerate(_NEW_COLUMNS)}
OLD_LAYOUT = {
    "trigger": 0,
    "adctime": 1,
    "roix": 9,
    "roiy": 10,
    "roiwidth": 11,
    "roiheight": 12,
    "startbyte": 13,
}
# ADC columns copied into `extra` (normalised name → key).
_EXTRA_COLUMNS = {
    "trigger": "trigger",
    "adctime": "adc_time",
    "roix": "roi_x",
    "roiy": "roi_y",
    "pmta": "pmt_a",
    "pmtb": "pmt_b",
    "peaka": "peak_a",
    "peakb": "peak_b",
}
_INT_EXTRA = frozenset({"trigger", "roix", "roiy"})


@dataclass(frozen=True, slots=True)
class BinName:
    """What a bin's name says: its id, the instrument serial (`IFCB134`), the UTC time the
    sample was taken, and which naming (and ADC layout) generation it belongs to."""

    bin_id: str
    serial: str
    time_utc: datetime
    schema: str  # "old" (IFCB1-6, 2006-) or "new"


def parse_bin_name(name: str) -> BinName | None:
    """Parse a bin id (`D20220522T003051_IFCB134`, `IFCB5_2012_028_081515`); `None` if `name`
    is not one (or names an impossible date)."""
    try:
        if m := _NEW_NAME.fullmatch(name):
            t = datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            return BinName(name, m[3], t, "new")
        if m := _OLD_NAME.fullmatch(name):
            t = datetime.strptime(f"{m[2]} {m[3]} {m[4]}", "%Y %j %H%M%S").replace(tzinfo=UTC)
            return BinName(name, m[1], t, "old")
    except ValueError:
        return None
    return None


def parse_pid(name: str) -> tuple[str, int] | None:
    """`D20220522T003051_IFCB134_00003` → (`D20220522T003051_IFCB134`, 3); `None` otherwise."""
    m = _PID.fullmatch(name)
    return (m[1], int(m[2])) if m else None


def _pid(bin_id: str, roi: int) -> str:
    return f"{bin_id}_{roi:05d}"


# --------------------------------------------------------------------------------------------
# Finding bins


@dataclass(slots=True)
class _BinFiles:
    name: BinName
    stem: Path  # path without suffix
    files: dict[str, Path]  # ".hdr" / ".adc" / ".roi" → path

    @property
    def complete(self) -> bool:
        return all(s in self.files for s in BIN_SUFFIXES)


def _bin_files(stem: Path) -> dict[str, Path]:
    out = {}
    for suffix in BIN_SUFFIXES:
        p = stem.with_name(stem.name + suffix)
        if p.is_file():
            out[suffix] = p
    return out


def _find_bins(paths: Iterable[Path]) -> tuple[list[_BinFiles], list[Rejection]]:
    stems: dict[Path, None] = {}  # ordered set
    rejections: list[Rejection] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for fname in sorted(filenames):
                    base, suffix = os.path.splitext(fname)
                    if suffix.lower() in BIN_SUFFIXES and parse_bin_name(base):
                        stems.setdefault(Path(dirpath) / base, None)
            continue
        stem = path.with_suffix("") if path.suffix.lower() in BIN_SUFFIXES else path
        if not _bin_files(stem):
            rejections.append(
                Rejection(str(path), "missing_file", f"{path}: no such IFCB bin or directory")
            )
        elif parse_bin_name(stem.name) is None:
            rejections.append(
                Rejection(
                    str(path),
                    "invalid_bin",
                    f"{path}: not an IFCB bin name (expected D<yyyymmdd>T<hhmmss>_IFCB<n> or "
                    "IFCB<n>_<yyyy>_<ddd>_<hhmmss>)",
                )
            )
        else:
            stems.setdefault(stem, None)
    bins = []
    for stem in stems:
        name = parse_bin_name(stem.name)
        assert name is not None
        bins.append(_BinFiles(name, stem, _bin_files(stem)))
    return bins, rejections


# --------------------------------------------------------------------------------------------
# Header and ADC parsing


def _parse_header(text: str) -> dict[str, str]:
    """Key → value from a `.hdr`. New headers are `key: value` lines; old (IFCB1-6) headers
    are quoted lines, with a line of space-separated names followed by a line of values."""
    out: dict[str, str] = {}
    raw = text.splitlines()
    lines = [ln.strip().strip('"').strip() for ln in raw]
    for i, line in enumerate(lines):
        if ": " in line or line.endswith(":"):
            key, _, value = line.partition(":")
            out.setdefault(key.strip(), value.strip())
        elif "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), value.strip())
        elif i + 1 < len(raw) and '","' in raw[i + 1]:
            names = line.split()
            values = [v.strip().strip('"').strip() for v in raw[i + 1].split(",")]
            if len(names) == len(values):
                for k, v in zip(names, values, strict=True):
                    out.setdefault(k, v)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _layout(name: BinName, header: dict[str, str], ncols: int) -> tuple[dict[str, int], str]:
    """The ADC column layout: the header's own `ADCFileFormat` when it names the ROI columns
    and matches the rows, else the fixed layout of the bin's naming generation."""
    fmt = header.get("ADCFileFormat")
    if fmt:
        cols = {_norm(c): i for i, c in enumerate(fmt.split(","))}
        if {"roiwidth", "roiheight", "startbyte"} <= cols.keys() and len(cols) <= ncols:
            return cols, "ADCFileFormat"
    return (OLD_LAYOUT, "old") if name.schema == "old" else (NEW_LAYOUT, "new")


class _BadBin(ReaderError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _parse_adc(data: bytes, path: Path) -> list[list[str]]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as e:
        raise _BadBin("invalid_bin", f"{path.name}: not a text ADC file ({e})") from None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            fields = line.split(",")
            if fields[-1] == "":  # old ADC rows end with a comma
                fields.pop()
            rows.append(fields)
    return rows


def _number(value: str) -> float:
    x = float(value)
    if not math.isfinite(x):  # `inf` / `1e400` would raise OverflowError in int()
        raise ValueError(f"{value.strip()!r} is not a finite number")
    return x


def _float_or_none(value: str | None) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def _encode_png(buf, width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombuffer("L", (width, height), buf, "raw", "L", 0, 1).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Reading


def read_ifcb(
    paths: Path | str | Iterable[Path | str],
    *,
    labels: Path | str | Iterable[Path | str] | dict[str, str] | None = None,
) -> Iterator[Record | Rejection]:
    """Yield one `Record` per ROI image of the IFCB bins under `paths`, and one `Rejection` per
    bin that cannot be read (`empty_bin`, `partial_bin`, `invalid_bin`, `duplicate_bin`) or
    per ROI whose bytes run past the end of the `.roi` (`truncated`).

    `paths`: bin files (any of `.hdr`/`.adc`/`.roi`), bin paths without suffix, or directories
    searched recursively (files whose names are not bin ids are ignored there).
    `labels`: manual-annotation `.mat` files, `class2use.mat`, directories holding them and/or
    class folders of ROI images named `<pid>.png`, or a ready `{pid: label}` mapping — see
    `read_ifcb_labels`. Label files are read before the first record is yielded, so a bad
    label file fails at call time.

    Each record: `origin` = `source_object_id` = pid, `sample_id` = bin id, `time_utc` from
    the bin name, `instrument` "IFCB", `image` = the ROI as a lossless greyscale PNG, GPS
    position from the header when present, and `extra` with the ROI number, the IFCB serial and
    ADC fields (trigger, adc_time, roi_x/y, PMT and peak signals).

    >>> from collections import Counter
    >>> Counter(type(r).__name__ for r in read_ifcb("ifcb_bins/smhi/bins"))  # doctest: +SKIP
    Counter({'Record': 17})
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if labels is None:
        label_map: dict[str, str | tuple[str | None, dict]] = {}
    elif isinstance(labels, dict):
        label_map = dict(labels)
    else:
        label_map = dict(read_ifcb_labels(labels))
    return _read(paths, label_map)


def _read(paths: list[Path], label_map: dict) -> Iterator[Record | Rejection]:
    bins, rejections = _find_bins(paths)
    yield from rejections
    # One bin id found in several places: keep the most complete copy (then the first path).
    by_id: dict[str, list[_BinFiles]] = defaultdict(list)
    for b in bins:
        by_id[b.name.bin_id].append(b)
    for bin_id in sorted(by_id):
        copies = sorted(by_id[bin_id], key=lambda b: (not b.complete, -len(b.files), str(b.stem)))
        kept = copies[0]
        yield from _read_bin(kept, label_map)
        for k, dup in enumerate(copies[1:], start=1):
            yield Rejection(
                f"{bin_id}#duplicate{k}",
                "duplicate_bin",
                f"bin {bin_id} at {dup.stem.parent} ({_have(dup)}) is another copy of the bin "
                f"read from {kept.stem.parent}; only that one is used",
            )


def _have(b: _BinFiles) -> str:
    return "has " + ", ".join(sorted(b.files)) if b.files else "no files"


def _read_bin(b: _BinFiles, label_map: dict) -> Iterator[Record | Rejection]:
    bin_id = b.name.bin_id
    try:
        header, rows, layout, layout_name = _load_bin_tables(b)
    except _BadBin as e:
        yield Rejection(bin_id, e.reason, f"bin {bin_id} ({b.stem.parent}): {e.message}")
        return

    iw, ih, isb = layout["roiwidth"], layout["roiheight"], layout["startbyte"]
    need = max(iw, ih, isb) + 1
    rois: list[tuple[int, list[str], int, int, int]] = []
    wrong: list[Rejection] = []  # yielded once the whole ADC file is known to be readable
    for n, fields in enumerate(rows, start=1):
        try:
            if len(fields) < need:
                raise ValueError(f"{len(fields)} columns, the {layout_name} layout needs {need}")
            w, h, start = (int(_number(fields[i])) for i in (iw, ih, isb))
        except ValueError as e:
            if n == len(rows) > 1:  # a last line cut short while the bin was being written
                yield Rejection(
                    _pid(bin_id, n),
                    "truncated",
                    f"ROI {n} of bin {bin_id}: the last line of {b.files['.adc'].name} is cut "
                    f"short ({e})",
                    source_object_id=_pid(bin_id, n),
                )
                break
            yield Rejection(
                bin_id,
                "invalid_bin",
                f"bin {bin_id} ({b.stem.parent}): line {n} of {b.files['.adc'].name} is not a "
                f"valid ADC row ({e})",
            )
            return
        if w < 0 or h < 0:  # not a trigger without an image (0): a row that is wrong
            wrong.append(
                Rejection(
                    _pid(bin_id, n),
                    "bad_row",
                    f"ROI {n} of bin {bin_id}: negative ROI size {w}x{h} in {b.files['.adc'].name}",
                    source_object_id=_pid(bin_id, n),
                )
            )
        elif w > 0 and h > 0:
            rois.append((n, fields, w, h, start))
    yield from wrong

    if not rois:
        yield Rejection(
            bin_id,
            "empty_bin",
            f"bin {bin_id} ({b.stem.parent}): {len(rows)} triggers and no ROI images "
            "(no ADC row has a non-zero ROI size)",
        )
        return
    roi_path = b.files.get(".roi")
    if roi_path is None:
        yield Rejection(
            bin_id,
            "partial_bin",
            f"bin {bin_id} ({b.stem.parent}): the .roi file is missing, so its {len(rois)} ROI "
            f"images cannot be extracted ({_have(b)})",
        )
        return

    serial = b.name.serial
    lat = _float_or_none(header.get("gpsLatitude"))
    lon = _float_or_none(header.get("gpsLongitude"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    bin_extra: dict = {"ifcb_serial": serial, "adc_layout": layout_name}
    for key, out_key in (("sampleType", "sample_type"), ("sampleNumber", "sample_number")):
        if header.get(key):
            bin_extra[out_key] = header[key]
    extra_cols = sorted(
        (i, _EXTRA_COLUMNS[k], k in _INT_EXTRA) for k, i in layout.items() if k in _EXTRA_COLUMNS
    )

    try:
        data = _read_file(roi_path)
    except _BadBin as e:
        yield Rejection(bin_id, e.reason, f"bin {bin_id} ({b.stem.parent}): {e.message}")
        return
    view = memoryview(data)
    size = len(data)
    for n, fields, w, h, start in rois:
        pid = _pid(bin_id, n)
        label, label_extra = _label_for(label_map, pid)
        if start < 0 or start + w * h > size:
            yield Rejection(
                pid,
                "truncated",
                f"ROI {n} of bin {bin_id}: {w}x{h} bytes at offset {start} run past the end of "
                f"{roi_path.name} ({size} bytes)",
                source_object_id=pid,
                raw_label=label,
            )
            continue
        extra = {"roi_number": n, **bin_extra}
        for i, key, is_int in extra_cols:
            if i < len(fields):
                x = _float_or_none(fields[i])
                if x is not None:
                    extra[key] = int(x) if is_int else x
        if label_extra:
            extra.update(label_extra)
        yield Record(
            origin=pid,
            image=_encode_png(view[start : start + w * h], w, h),
            source_object_id=pid,
            raw_label=label,
            instrument=INSTRUMENT,
            lat=lat,
            lon=lon,
            time_utc=b.name.time_utc,
            sample_id=bin_id,
            extra=extra,
        )


#: Largest bin file read (bytes): a day-long IFCB bin's .roi stays under 1 GB.
_MAX_FILE = 8 << 30


def _read_file(path: Path) -> bytes:
    """A bin file's bytes; `_BadBin` when it is not a regular file (a FIFO would block) or
    cannot be read."""
    try:
        return read_regular_file(path, _MAX_FILE)
    except RefusedInput as e:
        raise _BadBin(e.reason, e.message) from None
    except OSError as e:
        raise _BadBin("unreadable", f"cannot read {path.name}: {e}") from None


def _load_bin_tables(b: _BinFiles) -> tuple[dict[str, str], list[list[str]], dict, str]:
    adc_path = b.files.get(".adc")
    hdr_path = b.files.get(".hdr")
    if adc_path is None:
        raise _BadBin("partial_bin", f"the .adc file is missing ({_have(b)})")
    header: dict[str, str] = {}
    if hdr_path is not None:
        raw = _read_file(hdr_path)
        if not raw.strip(b"\x00 \t\r\n"):
            raise _BadBin("invalid_bin", f"{hdr_path.name} is empty ({len(raw)} bytes)")
        header = _parse_header(raw.decode("latin-1"))
        if not header:
            raise _BadBin("invalid_bin", f"{hdr_path.name} is not an IFCB header")
    adc = _read_file(adc_path)
    rows = _parse_adc(adc, adc_path)
    if not rows:
        roi = b.files.get(".roi")
        roi_note = f", {roi.name} {roi.stat().st_size} bytes" if roi else ""
        raise _BadBin(
            "empty_bin",
            f"header only: {adc_path.name} has no triggers ({len(adc)} bytes{roi_note})",
        )
    ncols = max(len(r) for r in rows)
    layout, layout_name = _layout(b.name, header, ncols)
    return header, rows, layout, layout_name


def _label_for(label_map: dict, pid: str) -> tuple[str | None, dict | None]:
    got = label_map.get(pid)
    if got is None:
        return None, None
    if isinstance(got, str):
        return got, None
    return got


# --------------------------------------------------------------------------------------------
# Labels


def read_ifcb_labels(
    paths: Path | str | Iterable[Path | str],
) -> dict[str, tuple[str | None, dict]]:
    """pid → (raw label, extra) from ifcb-analysis manual `.mat` files and class folders.

    `paths`: `.mat` files, directories (searched recursively for `.mat` files and for images
    named `<pid>.<ext>`, whose parent folder is the label), or image files. A manual file
    (`<bin_id>.mat` holding `classlist`) names classes by 1-based index into its own
    `class2use_manual`, or into a `class2use.mat` given among `paths` (e.g.
    `config/class2use.mat`). Rows whose manual class is NaN, or is `unclassified`, get no
    label (their auto class, if any, is kept in `extra["auto_class"]`). `.mat` files that are
    neither (e.g. classifier outputs) are ignored. Manual annotations win over image folders.

    Needs scipy (`scipy.io.loadmat`) when `.mat` files are given.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    mats: list[Path] = []
    images: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for fname in sorted(filenames):
                    p = Path(dirpath) / fname
                    if p.suffix.lower() == ".mat":
                        mats.append(p)
                    elif p.suffix.lower() in IMAGE_SUFFIXES and parse_pid(p.stem):
                        images.append(p)
        elif path.is_file():
            if path.suffix.lower() == ".mat":
                mats.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES and parse_pid(path.stem):
                images.append(path)
            else:
                raise ValueError(f"{path}: not a .mat label file or an image named by IFCB pid")
        else:
            raise FileNotFoundError(f"label path not found: {path}")

    out: dict[str, tuple[str | None, dict]] = {}
    for img in images:
        pid = _pid(*parse_pid(img.stem))  # type: ignore[misc]
        out.setdefault(pid, (img.parent.name, {"label_source": "image_folder"}))
    if mats:
        out.update(_read_manual_mats(mats))
    return out


def _mat_strings(value) -> list[str]:
    import numpy as np

    arr = np.asarray(value, dtype=object).ravel()
    out = []
    for v in arr:
        v = np.asarray(v).ravel()
        out.append(str(v[0]) if v.size else "")
    return out


def _read_manual_mats(mats: list[Path]) -> dict[str, tuple[str | None, dict]]:
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading IFCB .mat label files needs scipy (pip install scipy)") from e

    class2use: list[str] | None = None
    manual: list[tuple[Path, dict]] = []
    for path in mats:
        try:
            m = loadmat(str(path))
        except Exception as e:  # scipy raises several types on non-MATLAB files
            raise ValueError(f"{path}: not a readable MATLAB file ({e})") from e
        if "classlist" in m:
            manual.append((path, m))
        elif "class2use" in m and class2use is None:
            class2use = _mat_strings(m["class2use"])

    out: dict[str, tuple[str | None, dict]] = {}
    for path, m in manual:
        name = parse_bin_name(path.stem)
        if name is None:
            raise ValueError(f"{path}: a manual-annotation file must be named <bin_id>.mat")
        names = _mat_strings(m["class2use_manual"]) if m.get("class2use_manual") is not None else []
        names = names or class2use or []
        if not names:
            raise ValueError(
                f"{path}: has no class2use_manual; also pass the class2use.mat it indexes into"
            )
        auto = m.get("class2use_auto")
        auto_names = (_mat_strings(auto) if auto is not None and auto.size else []) or names
        classlist = m["classlist"]
        for row in classlist:
            roi = int(row[0])
            extra: dict = {"label_source": "manual_mat"}
            label = None
            if len(row) > 1 and not math.isnan(row[1]):
                idx = int(row[1])
                if not 1 <= idx <= len(names):
                    raise ValueError(
                        f"{path}: ROI {roi} has manual class {idx}, outside 1..{len(names)}"
                    )
                extra["manual_class_index"] = idx
                if names[idx - 1].lower() not in UNLABELLED_NAMES:
                    label = names[idx - 1]
                else:
                    extra["manual_class"] = names[idx - 1]
            if len(row) > 2 and not math.isnan(row[2]) and 1 <= int(row[2]) <= len(auto_names):
                extra["auto_class"] = auto_names[int(row[2]) - 1]
            out[_pid(name.bin_id, roi)] = (label, extra)
    return out
