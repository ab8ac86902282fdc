"""FlowCam (VisualSpreadsheet) runs and libraries → one record per particle.

A run folder holds:

- `<run>.lst`: a format-version line (`017`), `num-fields|N`, then N `name|type` lines, then
  one `|`-separated row per particle (`id`, `image_x/y/w/h` = the particle's box in its
  collage, `src_x/y` = its position in the camera frame, `cal_const` µm/px, ESD…,
  `timestamp`, `collage_file`, `image_id`);
- the collages `<run>_NNNNNN.tif` (`_bin.tif` are their binary masks, `cal_image_*` the
  background), from which each particle is cropped;
- `<run>.cla`, the classification: `v3`, a count, the classification's name, the number of
  classes, then per class its name, `OR`/`AND`, the number of filter files followed by their
  paths, the particle count and the particle ids;
- `<run>.ctx` (INI: `RunStartTime` in UTC, `CalibrationConstant`, `LocationLatitude`…) and
  `<run>_run_summary.txt` (local start time, calibration factor, magnification).

A library (`<name>.flb` + `<name>_lib_images_NNNNNN.tif`) has the same list format and holds
particles a user filed under one class: their label is the library's name.
Exported vignette folders are plain image folders (`planktonzilla.readers.folder`).
"""

from __future__ import annotations

import configparser
import io
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from planktonzilla.exceptions import ReaderError
from planktonzilla.fileio import member_problem, read_regular_file
from planktonzilla.records import Record, Rejection

__all__ = ["FlowCamList", "read_cla", "read_flowcam", "read_lst"]

INSTRUMENT = "FlowCam"
LIST_SUFFIXES = (".lst", ".flb")
_REQUIRED = ("id", "image_x", "image_y", "image_w", "image_h", "collage_file")
#: `.lst` fields copied into `extra` (list name → extra key).
_EXTRA_FIELDS = {
    "src_x": "capture_x",
    "src_y": "capture_y",
    "src_image": "src_image",
    "image_x": "image_x",
    "image_y": "image_y",
    "esd_diameter": "esd_diameter",
    "abd_diameter": "abd_diameter",
    "abd_area": "abd_area",
    "fd_diameter": "fd_diameter",
    "length": "length",
    "width": "width",
    "perimeter": "perimeter",
    "intensity": "intensity",
    "sigma_intensity": "sigma_intensity",
    "elongation": "elongation",
    "compactness": "compactness",
    "circularity_hu": "circularity_hu",
    "avg_red": "avg_red",
    "avg_green": "avg_green",
    "avg_blue": "avg_blue",
    "ch1_peak": "ch1_peak",
    "ch2_peak": "ch2_peak",
    "elapsed_time": "elapsed_time",
}
_INT_EXTRA = frozenset({"capture_x", "capture_y", "src_image", "image_x", "image_y"})


class FlowCamFormatError(ReaderError):
    """A list or class file that is not in the VisualSpreadsheet format."""


@dataclass(slots=True)
class FlowCamList:
    """A parsed `.lst` / `.flb`: field names and types, and the particle rows (strings)."""

    path: Path
    fields: list[str]
    types: list[str]
    rows: list[list[str]] = field(default_factory=list)
    #: (line number, message) for rows that do not have one value per field.
    bad_rows: list[tuple[int, str]] = field(default_factory=list)


#: Largest list, class or metadata file read (bytes): a run of a million particles is ~200 MB.
_MAX_TEXT = 1 << 30


def _text(path: Path) -> str:
    """A text file of the run, refused (`RefusedInput`, an OSError) when it is not a regular
    file (a FIFO would block) or is over `_MAX_TEXT`."""
    return read_regular_file(path, _MAX_TEXT).decode("utf-8", errors="replace")


#: Most fields a list file may declare (VisualSpreadsheet writes about 60).
_MAX_FIELDS = 10_000


def read_lst(path: Path | str) -> FlowCamList:
    """Parse a VisualSpreadsheet list file (`.lst`, or a library's `.flb`)."""
    path = Path(path)
    lines = _text(path).splitlines()
    start = next((i for i, ln in enumerate(lines[:3]) if ln.startswith("num-fields|")), None)
    if start is None:
        raise FlowCamFormatError(f"{path}: no 'num-fields|N' header line")
    try:
        n = int(lines[start].split("|", 1)[1])
    except ValueError:
        raise FlowCamFormatError(f"{path}: bad header line {lines[start]!r}") from None
    if not 0 < n <= _MAX_FIELDS:  # a negative count would swallow every particle as header
        raise FlowCamFormatError(f"{path}: num-fields {n} is not between 1 and {_MAX_FIELDS}")
    header = lines[start + 1 : start + 1 + n]
    if len(header) < n or any("|" not in h for h in header):
        raise FlowCamFormatError(f"{path}: the header should list {n} 'name|type' fields")
    names = [h.split("|", 1)[0].strip() for h in header]
    types = [h.split("|", 1)[1].strip() for h in header]
    out = FlowCamList(path, names, types)
    for lineno, line in enumerate(lines[start + 1 + n :], start=start + 2 + n):
        if not line.strip():
            continue
        row = line.split("|")
        if len(row) != n:
            out.bad_rows.append((lineno, f"{len(row)} values for {n} fields"))
        else:
            out.rows.append(row)
    return out


def read_cla(path: Path | str) -> tuple[str, dict[int, str]]:
    """Parse a `.cla` classification file → (classification name, {particle id: class})."""
    path = Path(path)
    lines = [ln.strip() for ln in _text(path).splitlines()]
    it = iter(lines)

    def take(what: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise FlowCamFormatError(f"{path}: ends early, expected {what}") from None

    def take_int(what: str) -> int:
        value = take(what)
        try:
            return int(value)
        except ValueError:
            raise FlowCamFormatError(f"{path}: expected {what}, got {value!r}") from None

    version = take("version")
    if not version.lower().startswith("v"):
        raise FlowCamFormatError(f"{path}: not a class file (first line {version!r})")
    take("classification count")
    name = take("classification name")
    labels: dict[int, str] = {}
    for _ in range(take_int("number of classes")):
        cls = take("class name")
        take("class operator")
        for _ in range(take_int("number of filters")):
            take("filter path")
        for _ in range(take_int("particle count")):
            labels.setdefault(take_int("particle id"), cls)
    return name, labels


def _read_ini(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keep key case
    try:
        parser.read_string(_text(path))
    except configparser.Error:
        return {}
    return {k: v.strip() for s in parser.sections() for k, v in parser[s].items()}


def _read_summary(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    section = ""
    for line in _text(path).splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.strip().rstrip(":")
            continue
        key, sep, value = line.strip().partition(":")
        if sep:
            out.setdefault(f"{section}/{key.strip()}" if section else key.strip(), value.strip())
    return out


def _float(value: str | None) -> float | None:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


@dataclass(slots=True)
class _Run:
    """Run-level metadata shared by every particle of a list."""

    name: str
    folder: Path
    is_library: bool
    labels: dict[int, str]
    classification: str | None
    time_utc: datetime | None
    pixel_size_um: float | None
    lat: float | None
    lon: float | None
    extra: dict


def _run_metadata(lst: Path) -> _Run:
    name, folder = lst.stem, lst.parent
    is_library = lst.suffix.lower() == ".flb"
    ctx = _read_ini(folder / f"{name}.ctx") if (folder / f"{name}.ctx").is_file() else {}
    summary_path = folder / f"{name}_run_summary.txt"
    summary = _read_summary(summary_path) if summary_path.is_file() else {}

    labels: dict[int, str] = {}
    classification = None
    cla = folder / f"{name}.cla"
    if not cla.is_file():
        candidates = sorted(folder.glob("*.cla"))
        cla = candidates[0] if len(candidates) == 1 and not is_library else cla
    if cla.is_file():
        classification, labels = read_cla(cla)

    time_utc = None
    if ctx.get("RunStartTime"):
        try:  # VisualSpreadsheet writes RunStartTime in UTC (the summary has local time)
            time_utc = datetime.fromisoformat(ctx["RunStartTime"]).replace(tzinfo=UTC)
        except ValueError:
            time_utc = None
    lat, lon = _float(ctx.get("LocationLatitude")), _float(ctx.get("LocationLongitude"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    pixel = _float(ctx.get("CalibrationConstant")) or _float(
        summary.get("Environment/Calibration Factor")
    )
    extra: dict = {"run": name} if not is_library else {"library": name}
    for key, src in (
        ("software", ctx.get("SoftwareVersion") or summary.get("Environment/Software")),
        ("serial_no", ctx.get("SerialNo") or summary.get("Environment/SerialNo")),
        (
            "magnification",
            ctx.get("CameraMagnification") or summary.get("Environment/Magnification"),
        ),
        ("run_start_local", summary.get("Date/Time/Start")),
        ("location", ctx.get("LocationName")),
        ("flow_cell", ctx.get("FlowCellType")),
    ):
        if src:
            extra[key] = src
    if classification:
        extra["classification"] = classification
    return _Run(name, folder, is_library, labels, classification, time_utc, pixel, lat, lon, extra)


def _find_lists(paths: Iterable[Path]) -> tuple[list[Path], list[Rejection]]:
    found: dict[Path, None] = {}
    rejections = []
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for fname in sorted(filenames):
                    if fname.lower().endswith(LIST_SUFFIXES):
                        found.setdefault(Path(dirpath) / fname, None)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            found.setdefault(path, None)
        elif path.is_file():
            rejections.append(
                Rejection(
                    str(path),
                    "unsupported_format",
                    f"{path}: give a FlowCam run folder, a .lst or a .flb file",
                )
            )
        else:
            rejections.append(Rejection(str(path), "missing_file", f"{path}: not found"))
    return list(found), rejections


def read_flowcam(paths: Path | str | Iterable[Path | str]) -> Iterator[Record | Rejection]:
    """Yield one `Record` per particle of the FlowCam runs (and libraries) under `paths`, its
    image cropped from its collage at `image_x/y/w/h` and PNG-encoded (RGB or greyscale as the
    collage is); or a `Rejection` when its collage is missing or unreadable (`missing_file`,
    `corrupt`), its box leaves the collage (`out_of_bounds`), or its row is malformed
    (`bad_row`). A list file that cannot be parsed is one `invalid_list` rejection.

    `paths`: run folders or folders of runs (searched recursively for `.lst` / `.flb`),
    or list files. Labels come from the run's `.cla` (`<run>.cla`, or the folder's only
    `.cla`); a library's particles are labelled with the library's name. `origin` =
    `source_object_id` = `<run>/<particle id>`; `sample_id` = the run name; `time_utc` = the
    run start (`.ctx` `RunStartTime`, UTC); `pixel_size_um` = the particle's `cal_const` (else
    the run's calibration constant); the raw `.lst` timestamp and measurements go to `extra`.

    >>> sum(1 for _ in read_flowcam("flowcam_station40"))  # doctest: +SKIP
    3122
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    lists, rejections = _find_lists([Path(p) for p in paths])
    yield from rejections
    for lst in lists:
        yield from _read_list(lst)


def _inside(folder: Path, name: str) -> bool:
    """Whether the file a list names stays in its run folder (no '..', absolute path, or link
    out of it): a list is input, and its names must not open arbitrary files."""
    if member_problem(name):
        return False
    try:
        return (folder / name).resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _read_list(lst: Path) -> Iterator[Record | Rejection]:
    try:
        table = read_lst(lst)
        missing = [f for f in _REQUIRED if f not in table.fields]
        if missing:
            raise FlowCamFormatError(f"{lst}: the list has no {', '.join(missing)} field(s)")
        run = _run_metadata(lst)
    except (FlowCamFormatError, OSError, UnicodeError) as e:
        yield Rejection(lst.stem, "invalid_list", str(e))
        return

    col = {name: i for i, name in enumerate(table.fields)}
    for lineno, message in table.bad_rows:
        yield Rejection(
            f"{run.name}/line{lineno}", "bad_row", f"{lst.name} line {lineno}: {message}"
        )

    # Group particles by collage (in order of first appearance) so each TIFF is decoded once.
    by_collage: dict[str, list[list[str]]] = {}
    for row in table.rows:
        by_collage.setdefault(row[col["collage_file"]].strip(), []).append(row)

    i_id, i_x, i_y, i_w, i_h = (col[k] for k in ("id", "image_x", "image_y", "image_w", "image_h"))
    i_cal, i_ts, i_guid = col.get("cal_const"), col.get("timestamp"), col.get("image_id")
    extra_cols = [(col[k], v) for k, v in _EXTRA_FIELDS.items() if k in col]
    library_label = run.name if run.is_library else None

    for collage_name, rows in by_collage.items():
        collage_path = run.folder / collage_name
        image, problem = None, None
        if not _inside(run.folder, collage_name):
            problem = ("unsafe_path", f"collage {collage_name!r} is not a file of the run folder")
        elif not collage_name or not collage_path.is_file():
            problem = ("missing_file", f"collage {collage_name or '(none named)'} is missing")
        else:
            try:
                image = Image.open(collage_path)
                image.load()
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                problem = ("corrupt", f"collage {collage_name} cannot be read ({e})")
        try:
            for row in rows:
                pid = row[i_id].strip()
                origin = f"{run.name}/{pid}"
                try:
                    num = int(pid)
                    x, y, w, h = (int(row[i]) for i in (i_x, i_y, i_w, i_h))
                except ValueError:
                    yield Rejection(
                        origin, "bad_row", f"{lst.name}: particle {pid!r} has a bad box"
                    )
                    continue
                label = library_label or run.labels.get(num)
                if problem:
                    yield Rejection(
                        origin,
                        problem[0],
                        f"particle {pid} of {run.name}: {problem[1]}",
                        source_object_id=origin,
                        raw_label=label,
                    )
                    continue
                assert image is not None
                if (
                    w <= 0
                    or h <= 0
                    or x < 0
                    or y < 0
                    or x + w > image.width
                    or y + h > image.height
                ):
                    yield Rejection(
                        origin,
                        "out_of_bounds",
                        f"particle {pid} of {run.name}: box {w}x{h} at ({x},{y}) leaves collage "
                        f"{collage_name} ({image.width}x{image.height})",
                        source_object_id=origin,
                        raw_label=label,
                    )
                    continue
                buf = io.BytesIO()
                image.crop((x, y, x + w, y + h)).save(buf, format="PNG")
                extra = {"particle_id": num, **run.extra, "collage_file": collage_name}
                for i, key in extra_cols:
                    v = _float(row[i])
                    if v is not None:
                        extra[key] = int(v) if key in _INT_EXTRA else v
                if i_ts is not None and row[i_ts].strip():
                    extra["particle_timestamp"] = row[i_ts].strip()
                if i_guid is not None and row[i_guid].strip():
                    extra["image_id"] = row[i_guid].strip()
                pixel = _float(row[i_cal]) if i_cal is not None else None
                yield Record(
                    origin=origin,
                    image=buf.getvalue(),
                    source_object_id=origin,
                    raw_label=label,
                    instrument=INSTRUMENT,
                    pixel_size_um=pixel if pixel and pixel > 0 else run.pixel_size_um,
                    lat=run.lat,
                    lon=run.lon,
                    time_utc=run.time_utc,
                    sample_id=None if run.is_library else run.name,
                    extra=extra,
                )
        finally:
            if image is not None:
                image.close()
