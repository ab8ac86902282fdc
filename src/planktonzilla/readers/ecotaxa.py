"""EcoTaxa and EcoPart exports: object tables (TSV) with or without their images.

Inputs (any mix, each a path):

- an EcoTaxa TSV (`*.tsv`, `*.tsv.gz`, or `ecotaxa*.txt`), with or without the `[t]`/`[f]`
  type row under the header;
- a folder: every such TSV under it (images named by `img_file_name`, relative to the TSV),
  and every zip bundle under it;
- a zip bundle: TSVs and images inside it, read in place (never extracted), including zips
  nested in the zip (the UVP6 layout);
- EcoPart exports: `*_ZOO_raw_*.tsv` object tables (no images) with the
  `*_Export_metadata_summary.tsv` beside them giving each profile's position and date.
  `*_PAR_raw_*.tsv` particle size spectra hold no objects: each is accounted for as one
  `Rejection` with reason `not_objects`. The summary itself is a side table, read, not yielded.

Every object row becomes one `Record` or one `Rejection`; a file that is not an object table
(empty, unreadable, a summary export) becomes one `Rejection` for the whole file.

Metadata mapping (EcoTaxa): `object_id` -> `source_object_id`; `object_annotation_category`
-> `raw_label`; `object_annotation_hierarchy` -> `extra["hierarchy"]`; the status
(validated / predicted / dubious) -> `extra["annotation_status"]`; `object_lat`/`object_lon`;
`object_date` (YYYYMMDD or YYYY-MM-DD) + `object_time` (HHMMSS, HHMM, HH:MM:SS, with
optional fraction) -> `time_utc` (a missing time gives midnight and
`extra["time_precision"] = "day"`); `object_depth_min/max`; `sample_id` (else `acq_id`) ->
`sample_id`; `acq_instrument` -> `instrument`; the pixel size from
`process_particle_pixel_size_mm` (mm), `process_pixel` (µm, ZooProcess), `acq_pixel` (mm,
UVP), `acq_resolution_pixels_per_micron` or `process_img_resolution` (dpi). Every other
non-empty column goes to `extra` under its own (lower-case) name: numbers as numbers for
`[f]` columns (or, without a type row, for columns whose values all parse as numbers).

Row-level rejections: `bad_row` (more values than columns, no `object_id`, unparseable or
out-of-range lat/lon/depth/date/time), `duplicate_object_id` (same object id and image rank
twice in a file), `missing_file` (image not found; or, with `missing_images="metadata"`, a
metadata-only record instead), `unsafe_path` (absolute or `..` image paths or zip members).
Irregularities that do not make a row unusable (status without category, unknown type
marker, text in a `[f]` column…) are kept in `extra["issues"]`.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import posixpath
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from planktonzilla.readers.folder import walk_files
from planktonzilla.records import FileBytes, Record, Rejection

__all__ = ["ZipMember", "read_ecopart", "read_ecotaxa", "write_ecotaxa_tsv"]

MissingImages = Literal["reject", "metadata"]

#: Rows looked at to decide which columns are numeric when a table has no type row (a text
#: value met later in such a column is kept as text).
_INFER_ROWS = 200
#: Largest table read into memory (bytes, after decompression).
MAX_TABLE_BYTES = 2 * 1024**3

_STATUS = {
    "v": "validated",
    "validated": "validated",
    "p": "predicted",
    "predicted": "predicted",
    "d": "dubious",
    "dubious": "dubious",
}
_TYPE_MARK = re.compile(r"\[[A-Za-z]\]")
_EMPTY = frozenset({"", "nan", "NaN", "NAN", "None", "NA"})
# Columns mapped onto Record fields (kept out of `extra` as such).
_CORE = frozenset(
    {
        "object_id",
        "img_file_name",
        "object_annotation_category",
        "object_lat",
        "object_lon",
        "object_date",
        "object_time",
        "object_depth_min",
        "object_depth_max",
        "sample_id",
        "acq_instrument",
        "object_annotation_hierarchy",
        "object_annotation_status",
    }
)
# Columns that are text whatever their values look like (ids, dates, times, names).
_TEXT_ALWAYS = frozenset(
    {
        "object_id",
        "img_file_name",
        "img_rank",
        "object_date",
        "object_time",
        "object_link",
        "object_annotation_category",
        "object_annotation_category_id",
        "object_annotation_hierarchy",
        "object_annotation_status",
        "object_annotation_person_name",
        "object_annotation_person_email",
        "object_annotation_date",
        "object_annotation_time",
        "sample_id",
        "acq_id",
        "process_id",
        "orig_id",
        "name",
        "taxo_hierarchy",
        "classif_qual",
    }
)
_RENAMED = {
    "object_annotation_hierarchy": "hierarchy",
    "object_annotation_status": "annotation_status",
}


# --------------------------------------------------------------------------- image access


@dataclass(frozen=True, slots=True)
class ZipMember:
    """A picklable, lazy reference to a member of a zip file, possibly inside nested zips:
    `members` is the chain of member names, the last one the file wanted."""

    path: Path
    members: tuple[str, ...]

    def __call__(self) -> bytes:
        return _open_zip(str(self.path), self.members[:-1]).read(self.members[-1])


@lru_cache(maxsize=16)
def _open_zip(path: str, chain: tuple[str, ...]) -> zipfile.ZipFile:
    """An open ZipFile for `path` or for a zip nested in it (read into memory once)."""
    zf = zipfile.ZipFile(path)
    for name in chain:
        zf = zipfile.ZipFile(io.BytesIO(zf.read(name)))
    return zf


def _unsafe(name: str) -> bool:
    """True for absolute paths, drive letters, backslashes or `..` components."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"[A-Za-z]:", name):
        return True
    return ".." in name.split("/")


class _Container:
    """Where TSVs and their images live: a folder or a zip (possibly nested)."""

    def tables(self) -> Iterator[tuple[str, Callable[[], bytes], _Container, str] | Rejection]:
        """(path of the table in its container, loader, container, origin) per table."""
        raise NotImplementedError

    def image(self, rel: str) -> Callable[[], bytes] | None:
        raise NotImplementedError

    def sibling_tables(self, rel_dir: str) -> list[tuple[str, Callable[[], bytes]]]:
        raise NotImplementedError


def _is_table_name(name: str) -> bool:
    low = name.lower()
    base = low.rsplit("/", 1)[-1]
    if base.startswith((".", "~")):
        return False
    return low.endswith((".tsv", ".tsv.gz")) or (
        base.startswith("ecotaxa") and low.endswith(".txt")
    )


class _Folder(_Container):
    def __init__(self, root: Path, only: Path | None = None):
        self.root = root
        self.only = only  # a single table given as argument

    def tables(self):
        if self.only is not None:
            yield self.only.name, FileBytes(self.only), self, self.only.name
            return
        for path in walk_files(self.root):
            rel = path.relative_to(self.root).as_posix()
            if _is_table_name(rel):
                yield rel, FileBytes(path), self, rel
            elif rel.lower().endswith(".zip"):
                yield from _guarded_zip_tables(_Zip(path, (), rel))

    def image(self, rel: str):
        path = self.root / rel
        return FileBytes(path) if path.is_file() else None

    def sibling_tables(self, rel_dir: str):
        folder = self.root / rel_dir if rel_dir else self.root
        return [
            ((f"{rel_dir}/{p.name}" if rel_dir else p.name), FileBytes(p))
            for p in sorted(folder.glob("*.tsv"))
        ]


class _Zip(_Container):
    def __init__(self, path: Path, chain: tuple[str, ...], label: str):
        self.path = path
        self.chain = chain
        self.label = label
        self._names: set[str] | None = None

    def _zip(self) -> zipfile.ZipFile:
        return _open_zip(str(self.path), self.chain)

    def names(self) -> set[str]:
        if self._names is None:
            self._names = {i.filename for i in self._zip().infolist() if not i.is_dir()}
        return self._names

    def _member(self, name: str) -> ZipMember:
        return ZipMember(self.path, (*self.chain, name))

    def tables(self):
        # A broken zip is not fatal: it is reported where it is iterated (see _read_path).
        for name in sorted(self.names()):
            parts = name.split("/")
            if "__MACOSX" in parts or parts[-1].startswith("._"):
                continue
            if _unsafe(name):
                yield Rejection(
                    f"{self.label}!{name}",
                    "unsafe_path",
                    f"zip member {name!r} has an absolute or '..' path; it is never read",
                )
            elif _is_table_name(name):
                yield name, self._member(name), self, f"{self.label}!{name}"
            elif name.lower().endswith(".zip"):
                inner = _Zip(self.path, (*self.chain, name), f"{self.label}!{name}")
                yield from _guarded_zip_tables(inner)

    def image(self, rel: str):
        return self._member(rel) if rel in self.names() else None

    def sibling_tables(self, rel_dir: str):
        prefix = f"{rel_dir}/" if rel_dir else ""
        return [
            (n, self._member(n))
            for n in sorted(self.names())
            if n.startswith(prefix) and "/" not in n[len(prefix) :] and n.endswith(".tsv")
        ]


def _guarded_zip_tables(container: _Zip):
    try:
        yield from container.tables()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        yield Rejection(container.label, "corrupt", f"unreadable zip archive: {exc}")


# --------------------------------------------------------------------------- parsing helpers


def _decode(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def _float(text: str) -> float | None:
    """A finite float, None for empty / NaN; raises ValueError for text."""
    if text in _EMPTY:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _parse_date(text: str) -> tuple[int, int, int]:
    digits = text.split(".")[0].replace("-", "").replace("/", "")
    if len(digits) != 8 or not digits.isdigit():
        raise ValueError(f"date {text!r} is not YYYYMMDD")
    return int(digits[:4]), int(digits[4:6]), int(digits[6:])


def _parse_time(text: str) -> tuple[int, int, int, int]:
    main, _, frac = text.partition(".")
    if ":" in main:
        parts = main.split(":")
        if len(parts) == 2:
            parts.append("0")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"time {text!r} is not HH:MM:SS")
        h, m, s = (int(p) for p in parts)
    else:
        if not main.isdigit() or len(main) > 6:
            raise ValueError(f"time {text!r} is not HHMMSS")
        # EcoTaxa reads up to 4 digits as HHMM ('420' is 04:20) and 5-6 as HHMMSS.
        main = main.zfill(4) + "00" if len(main) <= 4 else main.zfill(6)
        h, m, s = int(main[:2]), int(main[2:4]), int(main[4:])
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    if frac and not frac.isdigit():
        raise ValueError(f"time {text!r} has a bad fraction")
    return h, m, s, micro


def _timestamp(date: str, time: str) -> tuple[datetime | None, bool]:
    """(UTC datetime, date_only) from EcoTaxa date and time text; raises ValueError."""
    if not date:
        return None, False
    y, mo, d = _parse_date(date)
    if not time:
        return datetime(y, mo, d, tzinfo=UTC), True
    h, mi, s, us = _parse_time(time)
    try:
        return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC), False
    except ValueError as exc:
        raise ValueError(f"date/time {date!r} {time!r}: {exc}") from None


# --------------------------------------------------------------------------- tables


class _TableError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Table:
    header: list[str]
    types: list[str] | None  # per column: "f", "t" or the unknown marker; None without a row
    rows: list[list[str]]
    first_line: int  # 1-based line number of rows[0]
    type_issue: str | None = None


def _split_lines(text: str) -> list[list[str]] | None:
    """Fast path for the common case, a TSV without quotes or lone carriage returns: plain
    splits give exactly what `csv` would. None when the csv module is needed."""
    if '"' in text:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            return None
    return [line.split("\t") for line in text.split("\n")]


def _parse_table(text: str) -> _Table:
    rows = _split_lines(text)
    if rows is None:
        try:
            rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
        except csv.Error as exc:
            raise _TableError("bad_header", f"unparseable TSV: {exc}") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise _TableError("empty", "empty file (no header)")
    header = [h.strip().lower() for h in rows[0]]
    while header and not header[-1]:
        header.pop()
    rows = [r for r in rows[1:] if len(r) > 1 or r[0].strip()]
    types = None
    type_issue = None
    first_line = 2
    if rows and all(not c.strip() or _TYPE_MARK.fullmatch(c.strip()) for c in rows[0]):
        marks = [c.strip()[1:2].lower() for c in rows.pop(0)]
        first_line = 3
        if len(marks) != len(header) and any(marks[len(header) :]) or len(marks) < len(header):
            type_issue = f"the type row has {len(marks)} cells for {len(header)} columns"
        types = (marks + [""] * len(header))[: len(header)]
    return _Table(header, types, rows, first_line, type_issue)


def _kind(table: _Table) -> str:
    cols = set(table.header)
    if {"orig_id", "taxo_hierarchy"} <= cols or "depth_including_offset" in cols:
        return "ecopart_zoo"
    if {"psampleid", "profileid"} <= cols and "latitude" in cols:
        return "ecopart_summary"
    if table.header[:2] == ["depth", "imgcount"]:
        return "ecopart_par"
    if "object_id" in cols or "img_file_name" in cols:
        return "ecotaxa"
    return "other"


# --------------------------------------------------------------------------- EcoTaxa rows


class _EcoTaxaTable:
    """Precomputed column layout of one EcoTaxa table, and the per-row conversion."""

    def __init__(self, table: _Table):
        header = table.header
        self.width = len(header)
        idx = {name: i for i, name in enumerate(header)}
        self.idx = idx
        self.issues_file: list[str] = []
        types = table.types
        if types is None:
            types = self._infer_types(table)
        else:
            bad = sorted({header[i] for i, t in enumerate(types) if t not in ("f", "t", "")})
            if bad:
                self.issues_file.append(f"unknown type marker for {', '.join(bad)}: read as text")
        num, text = [], []
        for i, name in enumerate(header):
            if not name or name in _CORE:
                continue
            key = _RENAMED.get(name, name)
            if types[i] == "f" and name not in _TEXT_ALWAYS:
                num.append((key, i))
            else:
                text.append((key, i))
        self.num_keys = [k for k, _ in num]
        self.num_get = _getter([i for _, i in num])
        self.text_cols = text
        g = idx.get
        self.i_id = g("object_id")
        self.i_img = g("img_file_name")
        self.i_rank = g("img_rank")
        self.i_cat = g("object_annotation_category")
        self.i_hier = g("object_annotation_hierarchy")
        self.i_status = g("object_annotation_status")
        self.i_cat_id = g("object_annotation_category_id")
        self.i_lat, self.i_lon = g("object_lat"), g("object_lon")
        self.i_dmin, self.i_dmax = g("object_depth_min"), g("object_depth_max")
        self.i_date, self.i_time = g("object_date"), g("object_time")
        self.i_sample, self.i_acq = g("sample_id"), g("acq_id")
        self.i_instr = g("acq_instrument")
        self.pixel = [
            (g(name), scale)
            for name, scale in (
                ("process_particle_pixel_size_mm", 1000.0),
                ("process_pixel", 1.0),
                ("acq_pixel", 1000.0),
                ("acq_resolution_pixels_per_micron", -1.0),
                ("process_img_resolution", -25400.0),
            )
            if g(name) is not None
        ]

    @staticmethod
    def _infer_types(table: _Table) -> list[str]:
        """Without a type row: a column is numeric when every non-empty value of the first
        `_INFER_ROWS` rows is a number."""
        sample = [r for r in table.rows[:_INFER_ROWS] if len(r) == len(table.header)]
        columns = list(zip(*sample, strict=True)) if sample else []
        types = []
        for i, name in enumerate(table.header):
            kind = "t"
            if name not in _TEXT_ALWAYS and columns:
                values = [v for v in columns[i] if v and v not in _EMPTY]
                try:
                    list(map(float, values))
                    kind = "f" if values else "t"
                except ValueError:
                    kind = "t"
            types.append(kind)
        return types

    def pixel_size(self, row: list[str]) -> float | None:
        for i, scale in self.pixel:
            try:
                v = _float(row[i].strip())
            except ValueError:
                continue
            if v is None or v <= 0:
                continue
            return v * scale if scale > 0 else -scale / v
        return None

    def extra(self, row: list[str], issues: list[str]) -> dict[str, Any]:
        extra = _numbers(self.num_keys, self.num_get(row), issues) if self.num_get else {}
        for k, i in self.text_cols:
            v = row[i]
            if v and v not in _EMPTY:
                extra[k] = v.strip()
        return extra


def _ecotaxa_rows(
    table: _Table,
    origin: str,
    container: _Container,
    rel_dir: str,
    missing_images: MissingImages,
) -> Iterator[Record | Rejection]:
    t = _EcoTaxaTable(table)
    width = t.width
    seen: dict[tuple[str, str], int] = {}
    seen_ids: set[str] = set()
    for n, row in enumerate(table.rows):
        line = table.first_line + n
        if len(row) > width:
            if any(c.strip() for c in row[width:]):
                yield Rejection(
                    f"{origin}:{line}",
                    "bad_row",
                    f"line {line} has {len(row)} values for {width} columns "
                    f"(extra values {row[width:][:3]!r} without a header)",
                    _get(row, t.i_id) or None,
                )
                continue
            del row[width:]
        elif len(row) < width:
            row.extend([""] * (width - len(row)))
        oid = _get(row, t.i_id)
        rank = _get(row, t.i_rank)
        rank = "" if rank in ("0", "0.0") else rank
        label = _get(row, t.i_cat) or None
        # The object id names the row; further images of the same object add their rank.
        row_origin = f"{origin}#{oid}" + (f"@{rank or 0}" if oid in seen_ids else "")
        if not oid:
            yield Rejection(
                f"{origin}:{line}", "bad_row", f"line {line} has no object_id", None, label
            )
            continue
        key = (oid, rank)
        if key in seen:
            yield Rejection(
                f"{origin}:{line}",
                "duplicate_object_id",
                f"object_id {oid!r} appears again on line {line} (first on line {seen[key]})",
                oid,
                label,
            )
            continue
        seen[key] = line
        seen_ids.add(oid)
        problems: list[str] = []
        issues: list[str] = list(t.issues_file)
        lat = _num(row, t.i_lat, "object_lat", problems)
        lon = _num(row, t.i_lon, "object_lon", problems)
        if lat is not None and not -90 <= lat <= 90:
            problems.append(f"object_lat {lat} is outside [-90, 90]")
        if lon is not None and not -180 <= lon <= 360:
            problems.append(f"object_lon {lon} is outside [-180, 180]")
        elif lon is not None and lon > 180:
            lon -= 360
        dmin = _num(row, t.i_dmin, "object_depth_min", problems)
        dmax = _num(row, t.i_dmax, "object_depth_max", problems)
        try:
            when, date_only = _timestamp(_get(row, t.i_date), _get(row, t.i_time))
        except ValueError as exc:
            problems.append(str(exc))
            when, date_only = None, False
        if problems:
            yield Rejection(
                row_origin, "bad_row", f"line {line}: " + "; ".join(problems), oid, label
            )
            continue
        extra = t.extra(row, issues)
        hierarchy = _get(row, t.i_hier)
        if hierarchy:
            extra["hierarchy"] = hierarchy
        status_raw = _get(row, t.i_status)
        if status_raw:
            status = _STATUS.get(status_raw.lower())
            if status is None:
                issues.append(f"unknown annotation status {status_raw!r}")
                status = status_raw
            extra["annotation_status"] = status
            if label is None:
                issues.append(f"annotation status {status_raw!r} without a category")
        elif label is None and _get(row, t.i_cat_id):
            issues.append("category id without category name or status: stored unlabelled")
        if date_only:
            extra["time_precision"] = "day"
        sample = _get(row, t.i_sample) or _get(row, t.i_acq) or None
        image: Callable[[], bytes] | None = None
        img = _get(row, t.i_img)
        if img:
            rel = posixpath.normpath(posixpath.join(rel_dir, img)) if rel_dir else img
            if _unsafe(img) or _unsafe(rel):
                yield Rejection(
                    row_origin,
                    "unsafe_path",
                    f"line {line}: img_file_name {img!r} points outside the export",
                    oid,
                    label,
                )
                continue
            image = container.image(rel)
            if image is None:
                if missing_images == "reject":
                    yield Rejection(
                        row_origin,
                        "missing_file",
                        f"line {line}: image {img!r} not found beside the TSV",
                        oid,
                        label,
                    )
                    continue
                extra["missing_image"] = img
        if issues:
            extra["issues"] = issues
        yield Record(
            origin=row_origin,
            image=image,
            source_object_id=oid,
            raw_label=label,
            instrument=_get(row, t.i_instr) or None,
            pixel_size_um=t.pixel_size(row),
            lat=lat,
            lon=lon,
            depth_min=dmin,
            depth_max=dmax,
            time_utc=when,
            sample_id=sample,
            extra=extra,
        )


def _getter(indices: list[int]) -> Callable[[list[str]], tuple[str, ...]] | None:
    """itemgetter that always returns a tuple (None for no indices)."""
    if not indices:
        return None
    if len(indices) == 1:
        i = indices[0]
        return lambda row: (row[i],)
    return itemgetter(*indices)


def _numbers(keys: list[str], values: tuple[str, ...], issues: list[str] | None) -> dict:
    """{key: float} for the non-empty values; text that is not a number is kept as text (and
    noted in `issues`), NaN and infinities are dropped."""
    try:
        # C-level fast path: keys and values of the non-empty cells, all parsed at once.
        out = dict(zip(compress(keys, values), map(float, filter(None, values)), strict=True))
        total = sum(out.values())
        if total - total == 0:  # no NaN or infinity among the values
            return out
    except ValueError:
        pass
    out = {}
    for k, v in zip(keys, values, strict=True):
        v = v.strip()
        try:
            x = _float(v)
        except ValueError:
            out[k] = v
            if issues is not None:
                issues.append(f"{k} is typed [f] but holds {v!r}: kept as text")
            continue
        if x is not None:
            out[k] = x
    return out


def _get(row: list[str], i: int | None) -> str:
    if i is None:
        return ""
    v = row[i].strip()
    return "" if v in _EMPTY else v


_DMS = re.compile(
    r"\s*([+-]?\d+(?:\.\d+)?)\s*°\s*(?:(\d+(?:\.\d+)?)\s*['′]?\s*"
    r"(?:(\d+(?:\.\d+)?)\s*[\"″]?)?)?\s*([NSEWnsew])?\s*"
)


def _num(row: list[str], i: int | None, name: str, problems: list[str]) -> float | None:
    v = _get(row, i)
    if not v:
        return None
    try:
        return _float(v.replace(",", ".") if v.count(",") == 1 and "." not in v else v)
    except ValueError:
        pass
    m = _DMS.fullmatch(v) if "°" in v else None
    if m:  # degrees, minutes, seconds as some instruments write them ('43°0 0', 43°12.5'N)
        deg, minutes, seconds, hemi = m.groups()
        value = abs(float(deg)) + float(minutes or 0) / 60 + float(seconds or 0) / 3600
        negative = deg.startswith("-") or (hemi or "").upper() in ("S", "W")
        return -value if negative else value
    problems.append(f"{name} {v!r} is not a number")
    return None


# --------------------------------------------------------------------------- EcoPart


@dataclass
class _Profile:
    profile_id: str
    lat: float | None
    lon: float | None
    time: datetime | None
    instrument: str | None
    pixel_size_um: float | None
    extra: dict[str, Any]


def _summary_profiles(text: str) -> dict[str, _Profile]:
    table = _parse_table(text)
    idx = {n: i for i, n in enumerate(table.header)}
    out: dict[str, _Profile] = {}
    for row in table.rows:
        row = row + [""] * (len(table.header) - len(row))

        def get(name: str, row=row) -> str:
            i = idx.get(name)
            return "" if i is None else row[i].strip()

        def num(name: str, get=get) -> float | None:
            try:
                return _float(get(name))
            except ValueError:
                return None

        when = None
        date = get("sampledate")
        if date:
            try:
                when = datetime.fromisoformat(date).replace(tzinfo=UTC)
            except ValueError:
                when = None
        kind = get("instrumtype")
        pixel_mm = num("acq_pixel")
        extra = {
            k: v
            for k in ("cruise", "ship", "stationid", "ptitle", "instrumsn", "filename")
            if (v := get(k))
        }
        out[get("psampleid")] = _Profile(
            profile_id=get("profileid"),
            lat=num("latitude"),
            lon=num("longitude"),
            time=when,
            instrument=kind.upper() if kind else None,
            pixel_size_um=pixel_mm * 1000 if pixel_mm else None,
            extra=extra,
        )
    return out


_ZOO_PROFILE = re.compile(r"^\d{14}_(.+?)_ZOO_raw_")


def _ecopart_rows(
    table: _Table, origin: str, name: str, profiles: dict[str, _Profile] | None
) -> Iterator[Record | Rejection]:
    header = table.header
    idx = {n: i for i, n in enumerate(header)}
    width = len(header)
    core = {"orig_id", "name", "taxo_hierarchy", "classif_qual", "depth_including_offset"}
    num_cols = [(n, i) for i, n in enumerate(header) if n and n not in core and n != "psampleid"]
    # Every ZOO feature column is numeric; anything else is kept as text.
    types = _EcoTaxaTable._infer_types(table)
    num = [(n, i) for n, i in num_cols if types[i] == "f" and n != "objid"]
    txt = [(n, i) for n, i in num_cols if types[i] != "f" or n == "objid"]
    num_keys = [n for n, _ in num]
    num_get = _getter([i for _, i in num])
    i_id, i_name, i_hier = idx.get("orig_id"), idx.get("name"), idx.get("taxo_hierarchy")
    i_qual, i_depth, i_ps = (
        idx.get("classif_qual"),
        idx.get("depth_including_offset"),
        idx.get("psampleid"),
    )
    m = _ZOO_PROFILE.match(name)
    file_profile = m.group(1) if m else None
    seen: dict[str, int] = {}
    for n, row in enumerate(table.rows):
        line = table.first_line + n
        if len(row) > width and any(c.strip() for c in row[width:]):
            yield Rejection(
                f"{origin}:{line}",
                "bad_row",
                f"line {line} has {len(row)} values for {width} columns",
            )
            continue
        if len(row) < width:
            row = row + [""] * (width - len(row))
        oid = _get(row, i_id)
        label = _get(row, i_name) or None
        if not oid:
            yield Rejection(
                f"{origin}:{line}", "bad_row", f"line {line} has no orig_id", None, label
            )
            continue
        if oid in seen:
            yield Rejection(
                f"{origin}:{line}",
                "duplicate_object_id",
                f"orig_id {oid!r} appears again on line {line} (first on line {seen[oid]})",
                oid,
                label,
            )
            continue
        seen[oid] = line
        problems: list[str] = []
        depth = _num(row, i_depth, "depth_including_offset", problems)
        if problems:
            yield Rejection(f"{origin}#{oid}", "bad_row", f"line {line}: {problems[0]}", oid, label)
            continue
        extra = _numbers(num_keys, num_get(row), None) if num_get is not None else {}
        for k, i in txt:
            if v := _get(row, i):
                extra[k] = v
        hier = _get(row, i_hier)
        if hier:
            extra["hierarchy"] = hier
        qual = _get(row, i_qual)
        if qual:
            extra["annotation_status"] = _STATUS.get(qual.lower(), qual)
        psample = _get(row, i_ps)
        if psample:
            extra["psampleid"] = psample
        profile = profiles.get(psample) if profiles else None
        if profile is not None:
            extra.update(profile.extra)
        else:
            extra["issues"] = ["no metadata summary row for this profile: no position or time"]
        yield Record(
            origin=f"{origin}#{oid}",
            image=None,
            source_object_id=oid,
            raw_label=label,
            instrument=profile.instrument if profile else None,
            pixel_size_um=profile.pixel_size_um if profile else None,
            lat=profile.lat if profile else None,
            lon=profile.lon if profile else None,
            depth_min=depth,
            depth_max=depth,
            time_utc=profile.time if profile else None,
            sample_id=(profile.profile_id if profile else None) or file_profile or psample or None,
            extra=extra,
        )


# --------------------------------------------------------------------------- driver


def read_ecotaxa(
    paths: str | Path | Iterable[str | Path],
    *,
    missing_images: MissingImages = "reject",
) -> Iterator[Record | Rejection]:
    """Yield one `Record` or `Rejection` per object row of the EcoTaxa / EcoPart exports under
    `paths` (TSV files, folders, zip bundles), and one `Rejection` per file that is not an
    object table. `missing_images="metadata"` turns rows whose image is absent (e.g. an export
    downloaded without images) into metadata-only records instead of `missing_file`.

    Origins: `<table>#<object_id>` (plus `@<img_rank>` for an object's further images) where
    `<table>` is the TSV's path relative to the folder given, its name when a file is given,
    and `<zip>!<member>` inside zips; row-level problems use `<table>:<line>`.

    >>> for item in read_ecotaxa("export_dir"):  # doctest: +SKIP
    ...     print(item.origin, getattr(item, "raw_label", None))
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    for path in paths:
        yield from _read_path(Path(path), missing_images)


def read_ecopart(paths: str | Path | Iterable[str | Path]) -> Iterator[Record | Rejection]:
    """EcoPart exports (`*_ZOO_raw_*.tsv` + the metadata summary; `*_PAR_raw_*` files are
    `not_objects` rejections). The same reader as `read_ecotaxa`, which also detects them."""
    return read_ecotaxa(paths)


def _read_path(path: Path, missing_images: MissingImages) -> Iterator[Record | Rejection]:
    if path.is_dir():
        tables = _Folder(path).tables()
    elif path.suffix.lower() == ".zip" and path.is_file():
        tables = _guarded_zip_tables(_Zip(path, (), path.name))
    elif path.is_file():
        tables = _Folder(path.parent, only=path).tables()
    else:
        yield Rejection(str(path), "missing_file", f"{path} does not exist")
        return
    summaries: dict[tuple[int, str], dict[str, _Profile] | None] = {}
    for entry in tables:
        if isinstance(entry, Rejection):
            yield entry
            continue
        rel, loader, container, origin = entry
        yield from _read_table(rel, loader, origin, container, missing_images, summaries)


def _read_table(
    rel: str,
    loader: Callable[[], bytes],
    origin: str,
    container: _Container,
    missing_images: MissingImages,
    summaries: dict,
) -> Iterator[Record | Rejection]:
    base = rel.rsplit("/", 1)[-1]
    if "_PAR_raw_" in base:
        yield Rejection(
            origin,
            "not_objects",
            f"{base} is an EcoPart particle (PAR) export: size spectra per depth bin, "
            "no individual objects",
        )
        return
    try:
        data = loader()
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        yield Rejection(origin, "corrupt", f"cannot read {rel}: {exc}")
        return
    try:
        if len(data) > MAX_TABLE_BYTES:
            raise _TableError("too_large", f"{len(data):,} bytes is over the table size limit")
        text = _decode(data)
        table = _parse_table(text)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield Rejection(origin, "corrupt", f"cannot decompress {rel}: {exc}")
        return
    except _TableError as exc:
        yield Rejection(origin, exc.reason, f"{rel}: {exc.message}")
        return
    kind = _kind(table)
    rel_dir = rel.rsplit("/", 1)[0] if "/" in rel else ""
    if kind == "ecopart_summary":
        return  # a side table, read with the ZOO files
    if kind == "ecopart_par":
        yield Rejection(
            origin,
            "not_objects",
            f"{base} is an EcoPart particle (PAR) export: size spectra per depth bin, "
            "no individual objects",
        )
        return
    if kind == "ecopart_zoo":
        key = (id(container), rel_dir)
        if key not in summaries:
            summaries[key] = _find_summary(container, rel_dir)
        yield from _ecopart_rows(table, origin, base, summaries[key])
        return
    if kind == "other":
        cols = ", ".join(table.header[:5])
        yield Rejection(
            origin,
            "not_objects",
            f"{rel} has no object_id or img_file_name column (columns {cols}…): "
            "not an object table (a summary export?)",
        )
        return
    if not table.rows:
        note = f"; {table.type_issue}" if table.type_issue else ""
        yield Rejection(origin, "empty", f"{rel}: header but no object rows{note}")
        return
    if table.type_issue:
        yield Rejection(origin, "bad_header", f"{rel}: {table.type_issue}")
        return
    if len(set(table.header) - {""}) != len([h for h in table.header if h]):
        dup = sorted({h for h in table.header if h and table.header.count(h) > 1})
        yield Rejection(origin, "bad_header", f"{rel}: duplicate columns {', '.join(dup)}")
        return
    yield from _ecotaxa_rows(table, origin, container, rel_dir, missing_images)


def _find_summary(container: _Container, rel_dir: str) -> dict[str, _Profile] | None:
    for name, loader in container.sibling_tables(rel_dir):
        if name.endswith("Export_metadata_summary.tsv"):
            try:
                return _summary_profiles(_decode(loader()))
            except (OSError, _TableError, ValueError):
                return None
    return None


# --------------------------------------------------------------------------- writer


def write_ecotaxa_tsv(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write `rows` (dicts of EcoTaxa column -> value) as an EcoTaxa-importable TSV with the
    `[t]`/`[f]` type row; returns the number of rows written. Columns are the union of the
    rows' keys in first-seen order (`img_file_name` and `object_id` first when present); a
    column is `[f]` when every non-empty value is an int or float, else `[t]`. Dates and
    datetimes are written as EcoTaxa's YYYYMMDD / HHMMSS."""
    rows = list(rows)
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    for first in ("object_id", "img_file_name"):
        if first in seen:
            columns.remove(first)
            columns.insert(0, first)
    numeric = {
        c: all(
            isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
            for r in rows
            if r.get(c) is not None and r.get(c) != ""
        )
        and any(r.get(c) not in (None, "") for r in rows)
        and c not in _TEXT_ALWAYS
        for c in columns
    }

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return "" if not math.isfinite(value) else repr(value)
        if isinstance(value, datetime):
            return value.strftime("%Y%m%d")
        return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")

    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(columns) + "\n")
        fh.write("\t".join("[f]" if numeric[c] else "[t]" for c in columns) + "\n")
        for row in rows:
            fh.write("\t".join(cell(row.get(c)) for c in columns) + "\n")
    return len(rows)
