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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from planktonzilla.exceptions import ReaderError
from planktonzilla.fileio import RefusedInput, gunzip_at_most, member_problem, read_member
from planktonzilla.readers.ecotaxa_tsv import TEXT_COLUMNS
from planktonzilla.readers.folder import walk_files
from planktonzilla.records import FileBytes, Record, Rejection

__all__ = ["ZipMember", "read_ecopart", "read_ecotaxa"]

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
_EMPTY_MARKERS = _EMPTY - {""}
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
_TEXT_ALWAYS = TEXT_COLUMNS
# --------------------------------------------------------------------------- image access


@dataclass(frozen=True, slots=True)
class ZipMember:
    """A picklable, lazy reference to a member of a zip file, possibly inside nested zips:
    `members` is the chain of member names, the last one the file wanted."""

    path: Path
    members: tuple[str, ...]

    def __call__(self) -> bytes:
        return self.read_at_most(MAX_TABLE_BYTES)

    def read_at_most(self, limit: int) -> bytes:
        """The member's bytes; `RefusedInput` when it declares or holds more than `limit`
        bytes or expands past `MAX_RATIO` (checked before reading)."""
        return read_member(_open_zip(str(self.path), self.members[:-1]), self.members[-1], limit)


@lru_cache(maxsize=16)
def _open_zip(path: str, chain: tuple[str, ...]) -> zipfile.ZipFile:
    """An open ZipFile for `path` or for a zip nested in it (read into memory once, within
    the table size limit)."""
    zf = zipfile.ZipFile(path)
    for name in chain:
        zf = zipfile.ZipFile(io.BytesIO(read_member(zf, name, MAX_TABLE_BYTES)))
    return zf


class _Container:
    """Where TSVs and their images live: a folder or a zip (possibly nested)."""

    def tables(self) -> Iterator[tuple[str, Callable[[], bytes], _Container, str] | Rejection]:
        """(path of the table in its container, loader, container, origin) per table."""
        raise NotImplementedError

    def image(self, rel: str) -> Callable[[], bytes] | None:
        raise NotImplementedError

    def sibling_tables(self, rel_dir: str) -> list[tuple[str, Callable[[], bytes]]]:
        raise NotImplementedError


def is_table_name(name: str) -> bool:
    """Whether a file name looks like an EcoTaxa table (TSV, or ecotaxa*.txt)."""
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
            if is_table_name(rel):
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
            if member_problem(name):
                yield Rejection(
                    f"{self.label}!{name}",
                    "unsafe_path",
                    f"zip member {name!r} has an absolute or '..' path; it is never read",
                )
            elif is_table_name(name):
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
    found = False
    try:
        for entry in container.tables():
            found = True
            yield entry
        if not found:  # an input that yields nothing must still be accounted for
            yield Rejection(
                container.label,
                "unsupported_format",
                f"{container.label}: a zip without an EcoTaxa table (its images are named by "
                "no table; unzip nested archives of images first)",
            )
    except RefusedInput as exc:
        yield Rejection(container.label, exc.reason, exc.message)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        yield Rejection(container.label, "corrupt", f"unreadable zip archive: {exc}")


# --------------------------------------------------------------------------- parsing helpers


def _decode(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gunzip_at_most(data, MAX_TABLE_BYTES, "table")
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


class _TableError(ReaderError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Table:
    """A TSV's header and type row; its object rows are read on demand (`_read_body`)."""

    header: list[str]
    types: list[str] | None  # per column: "f", "t" or the unknown marker; None without a row
    first_line: int  # 1-based line number of the first object row
    type_issue: str | None
    text: str
    body_start: int  # offset in `text` of the first object row
    header_cells: int  # cells in the header line, trailing empty ones included

    def rows(self) -> list[list[str]]:
        """The object rows, split row by row (blank lines left out)."""
        body = self.text[self.body_start :]
        rows = _split_lines(body)
        if rows is None:
            rows = _quoted_rows(body)
        return [r for r in rows if not _blank(r)]


class _Unparsed(list):
    """A line whose quotes do not balance, split on tabs only: rejected as a `bad_row`."""

    message = 'its quotes (") do not balance (a quoted value must close where it ends)'


def _sound_quotes(text: str) -> list[list[str]] | None:
    """The rows of a quoted TSV when every quote closes where a value ends (csv's strict
    mode) and no quoted value holds both a tab and a line break (the mark of a stray quote
    that swallowed whole rows); else None."""
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", strict=True))
    except csv.Error:
        return None
    if any("\t" in c and ("\n" in c or "\r" in c) for row in rows for c in row):
        return None
    return rows


def _quoted_rows(text: str) -> list[list[str]]:
    """Rows of a TSV with quotes. When the quotes are not sound, each physical line is one
    row and a line whose own quotes do not balance becomes an `_Unparsed` row: a stray quote
    (`"approx. 2 mm`) costs its own row, never the rows after it."""
    rows = _sound_quotes(text)
    if rows is not None:
        return rows
    rows = []
    for line in text.replace("\r\n", "\n").split("\n"):
        try:
            rows.extend(csv.reader([line], delimiter="\t", strict=True))
        except csv.Error:
            rows.append(_Unparsed(line.split("\t")))
    return rows


def _blank(row: list[str]) -> bool:
    return len(row) <= 1 and not (row and row[0].strip())


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
    """The header and the type row (the first non-blank row under the header, when all its
    cells are `[x]` markers or blank); the object rows after them are not parsed yet."""
    source = io.StringIO(text, newline="")
    reader = csv.reader(source, delimiter="\t")
    try:
        cells = next(reader, [])
        if not any(c.strip() for c in cells):
            raise _TableError("empty", "empty file (no header)")
        start = source.tell()
        for row in reader:
            if not _blank(row):
                break
            start = source.tell()
        else:
            row = []
    except csv.Error as exc:
        raise _TableError("bad_header", f"unparseable TSV: {exc}") from None
    header = [h.strip().lower() for h in cells]
    while header and not header[-1]:
        header.pop()
    types = None
    type_issue = None
    first_line = 2
    if row and all(not c.strip() or _TYPE_MARK.fullmatch(c.strip()) for c in row):
        marks = [c.strip()[1:2].lower() for c in row]
        start = source.tell()
        first_line = 3
        if len(marks) != len(header) and any(marks[len(header) :]) or len(marks) < len(header):
            type_issue = f"the type row has {len(marks)} cells for {len(header)} columns"
        types = (marks + [""] * len(header))[: len(header)]
    return _Table(header, types, first_line, type_issue, text, start, len(cells))


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


# --------------------------------------------------------------------------- object rows


@dataclass
class _Body:
    """The object rows of a table as columns, one per header column: a numeric column holds
    finite floats, None for empty cells, and the text of a cell that is not a number; any
    other column the cells' text."""

    header: list[str]
    columns: list[Sequence[Any]]
    numeric: list[bool]
    n: int  # rows
    too_long: dict[int, list[str]]  # row index -> row, for values beyond the header
    gaps: set[int]  # numeric columns holding None or text

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.header)}

    def text(self, name: str) -> list[str]:
        """A column's text, stripped, '' for empty markers (and everywhere when absent)."""
        i = self.index.get(name)
        return [""] * self.n if i is None else self.text_at(i)

    def text_at(self, i: int) -> list[str]:
        """Column `i`'s text, as `text` gives it."""
        values = list(map(str.strip, self.columns[i]))
        if _EMPTY_MARKERS.isdisjoint(values):
            return values
        return ["" if v in _EMPTY else v for v in values]


def _read_body(table: _Table, text_only: frozenset[str]) -> _Body:
    """The object rows: columns typed `[f]` (or, without a type row, whose values in the first
    `_INFER_ROWS` rows are all numbers) are numeric unless named in `text_only`. Parsed in
    bulk by pyarrow; row by row for what it refuses (ragged rows, text in a numeric column…)."""
    return _bulk_body(table, text_only) or _row_body(table, text_only)


def _bulk_body(table: _Table, text_only: frozenset[str]) -> _Body | None:
    """The body read by pyarrow, or None when it would not be read as `_row_body` reads it."""
    header, types = table.header, table.types
    if table.header_cells != len(header):
        return None  # trailing columns without a name
    names = [str(i) for i in range(len(header))]
    wanted = [
        bool(h) and h not in text_only and (types is None or t == "f")
        for h, t in zip(header, types or header, strict=True)
    ]
    as_numbers = {n: pa.float64() if w else pa.string() for n, w in zip(names, wanted, strict=True)}
    attempts = [as_numbers]
    if types is None:  # read as numbers if all are (as EcoPart features), else inferred
        attempts.append({n: t for n, t in as_numbers.items() if t == pa.string()})
    body = table.text[table.body_start :]
    if '"' in body and _sound_quotes(body) is None:
        return None  # rows with stray quotes are rejected one by one (`_row_body`)
    data = None
    for given in attempts:
        try:
            data = pa_csv.read_csv(
                pa.py_buffer(body.encode()),
                read_options=pa_csv.ReadOptions(column_names=names),
                parse_options=pa_csv.ParseOptions(delimiter="\t", newlines_in_values='"' in body),
                convert_options=pa_csv.ConvertOptions(
                    column_types=given, null_values=sorted(_EMPTY), strings_can_be_null=False
                ),
            )
            break
        except pa.ArrowInvalid:
            continue
    if data is None:
        return None
    n = data.num_rows
    columns: list[Sequence[Any]] = []
    numeric = [False] * len(header)
    gaps: set[int] = set()
    for i, column in enumerate(data.columns):
        kind = column.type
        if column.null_count == n:  # every cell empty
            values = [""] * n
        elif pa.types.is_string(kind):
            values = column.to_pylist()
            if wanted[i] and types is None and _all_numbers(values[:_INFER_ROWS]):
                return None  # numbers in the first rows, text further down
        elif pa.types.is_floating(kind) or pa.types.is_integer(kind):
            if types is None and column.slice(0, _INFER_ROWS).null_count == min(n, _INFER_ROWS):
                return None  # no number in the first rows: a text column
            values, complete = _floats(column)
            numeric[i] = True
            if not complete:
                gaps.add(i)
        else:
            return None  # inferred as dates, booleans…: their text is wanted
        columns.append(values)
    return _Body(header, columns, numeric, n, {}, gaps)


def _floats(column: pa.ChunkedArray) -> tuple[list[float | None], bool]:
    """The values as Python floats, None for nulls and infinities; and whether none is None."""
    if column.type != pa.float64():
        column = column.cast(pa.float64())
    if column.null_count:
        values = column.to_pylist()
        total = pc.sum(column).as_py() or 0.0
    else:
        values = column.to_numpy().tolist()
        total = sum(values)
    if math.isfinite(total):
        return values, not column.null_count
    return [v if v is None or math.isfinite(v) else None for v in values], False


def _row_body(table: _Table, text_only: frozenset[str]) -> _Body:
    """The body split row by row: any table, however ragged, with text among its numbers."""
    header = table.header
    width = len(header)
    rows = table.rows()
    types = table.types
    if types is None:
        sample = [r for r in rows[:_INFER_ROWS] if len(r) == width]
        first = list(zip(*sample, strict=True))
        types = ["f" if first and _all_numbers(first[i]) else "t" for i in range(width)]
    too_long: dict[int, list[str]] = {}
    for n, row in enumerate(rows):
        if isinstance(row, _Unparsed):
            too_long[n] = row  # rejected whole, whatever its width
            rows[n] = (row + [""] * width)[:width]
        elif len(row) > width:
            if any(c.strip() for c in row[width:]):
                too_long[n] = row
            rows[n] = row[:width]
        elif len(row) < width:
            rows[n] = row + [""] * (width - len(row))
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    numeric = [
        bool(h) and h not in text_only and t == "f" for h, t in zip(header, types, strict=True)
    ]
    gaps: set[int] = set()
    for i in compress(range(width), numeric):
        columns[i] = values = [_number(v) for v in columns[i]]
        if not all(type(v) is float for v in values):
            gaps.add(i)
    return _Body(header, columns, numeric, len(rows), too_long, gaps)


def _all_numbers(values: Iterable[str]) -> bool:
    """True when the non-empty values are all numbers, and there is one."""
    values = [v for v in values if v and v not in _EMPTY]
    try:
        list(map(float, values))
    except ValueError:
        return False
    return bool(values)


def _number(text: str) -> float | str | None:
    """A finite float; None for empty, NaN or infinite; the stripped text if not a number."""
    try:
        value = float(text)
    except ValueError:
        text = text.strip()
        return None if text in _EMPTY else text
    return value if math.isfinite(value) else None


def _extras(
    body: _Body, mapped: frozenset[str], note_text: bool
) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Per row, `extra` for the named columns not in `mapped` (numbers, then text; empty cells
    left out) and the issues: text kept in a numeric column, when `note_text`."""
    header = body.header
    cols = [i for i, h in enumerate(header) if h and h not in mapped]
    num = [i for i in cols if body.numeric[i]]
    txt = [i for i in cols if not body.numeric[i]]
    keys = [header[i] for i in num]
    gaps = list(dict.fromkeys(header[i] for i in num if i in body.gaps))
    text_keys = [header[i] for i in txt]
    numbers = _row_tuples([body.columns[i] for i in num], body.n)
    texts = _row_tuples([body.text_at(i) for i in txt], body.n)
    template = dict.fromkeys(keys)  # filling a copy is faster than growing a dict
    for values, words in zip(numbers, texts, strict=True):
        extra = template.copy()
        extra.update(zip(keys, values, strict=True))
        issues = []
        for k in gaps:
            v = extra[k]
            if v is None:
                del extra[k]
            elif note_text and type(v) is str:
                issues.append(f"{k} is typed [f] but holds {v!r}: kept as text")
        for k, v in zip(text_keys, words, strict=True):
            if v:
                extra[k] = v
        yield extra, issues


def _row_tuples(columns: list[Sequence[Any]], n: int) -> Iterator[tuple[Any, ...]]:
    return zip(*columns, strict=True) if columns else repeat((), n)


_DMS = re.compile(
    r"\s*([+-]?\d+(?:\.\d+)?)\s*°\s*(?:(\d+(?:\.\d+)?)\s*['′]?\s*"
    r"(?:(\d+(?:\.\d+)?)\s*[\"″]?)?)?\s*([NSEWnsew])?\s*"
)


def _num(v: str, name: str, problems: list[str]) -> float | None:
    """A position or depth from a cell's text ('' for none); a problem noted if unreadable."""
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


# --------------------------------------------------------------------------- EcoTaxa rows

# Columns read as text whatever their type: mapped onto Record fields, or ids / dates / names.
_ECOTAXA_TEXT = _CORE | _TEXT_ALWAYS
# Pixel size columns, in order of preference: (name, scale) where a positive scale multiplies
# the value into µm and a negative one is divided by it (resolutions).
_PIXEL = (
    ("process_particle_pixel_size_mm", 1000.0),
    ("process_pixel", 1.0),
    ("acq_pixel", 1000.0),
    ("acq_resolution_pixels_per_micron", -1.0),
    ("process_img_resolution", -25400.0),
)


def _pixel_size(extra: dict[str, Any]) -> float | None:
    for name, scale in _PIXEL:
        v = extra.get(name)
        if isinstance(v, str):
            try:
                v = _float(v)
            except ValueError:
                continue
        if v is None or v <= 0:
            continue
        return v * scale if scale > 0 else -scale / v
    return None


def _ecotaxa_rows(
    table: _Table,
    body: _Body,
    origin: str,
    container: _Container,
    rel_dir: str,
    missing_images: MissingImages,
) -> Iterator[Record | Rejection]:
    header = table.header
    width = len(header)
    file_issues = []
    if table.types is not None:
        bad = sorted({header[i] for i, t in enumerate(table.types) if t not in ("f", "t", "")})
        if bad:
            file_issues.append(f"unknown type marker for {', '.join(bad)}: read as text")
    text = body.text
    rows = zip(
        text("object_id"),
        text("img_file_name"),
        text("img_rank"),
        text("object_annotation_category"),
        text("object_annotation_hierarchy"),
        text("object_annotation_status"),
        text("object_annotation_category_id"),
        text("object_lat"),
        text("object_lon"),
        text("object_depth_min"),
        text("object_depth_max"),
        text("object_date"),
        text("object_time"),
        text("sample_id"),
        text("acq_id"),
        text("acq_instrument"),
        _extras(body, _CORE, note_text=True),
        strict=True,
    )
    seen: dict[tuple[str, str], int] = {}
    seen_ids: set[str] = set()
    for n, (
        oid,
        img,
        rank,
        label,
        hierarchy,
        status_raw,
        category_id,
        lat_text,
        lon_text,
        dmin_text,
        dmax_text,
        date,
        time,
        sample,
        acq,
        instrument,
        (extra, notes),
    ) in enumerate(rows):
        line = table.first_line + n
        if n in body.too_long:
            row = body.too_long[n]
            yield Rejection(
                f"{origin}:{line}",
                "bad_row",
                f"line {line}: {row.message}"
                if isinstance(row, _Unparsed)
                else f"line {line} has {len(row)} values for {width} columns "
                f"(extra values {row[width:][:3]!r} without a header)",
                oid or None,
            )
            continue
        rank = "" if rank in ("0", "0.0") else rank
        label = label or None
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
        lat = _num(lat_text, "object_lat", problems)
        lon = _num(lon_text, "object_lon", problems)
        if lat is not None and not -90 <= lat <= 90:
            problems.append(f"object_lat {lat} is outside [-90, 90]")
        if lon is not None and not -180 <= lon <= 360:
            problems.append(f"object_lon {lon} is outside [-180, 180]")
        elif lon is not None and lon > 180:
            lon -= 360
        dmin = _num(dmin_text, "object_depth_min", problems)
        dmax = _num(dmax_text, "object_depth_max", problems)
        try:
            when, date_only = _timestamp(date, time)
        except ValueError as exc:
            problems.append(str(exc))
            when, date_only = None, False
        if problems:
            yield Rejection(
                row_origin, "bad_row", f"line {line}: " + "; ".join(problems), oid, label
            )
            continue
        pixel_size = _pixel_size(extra)
        issues = [*file_issues, *notes]
        if hierarchy:
            extra["hierarchy"] = hierarchy
        if status_raw:
            status = _STATUS.get(status_raw.lower())
            if status is None:
                issues.append(f"unknown annotation status {status_raw!r}")
                status = status_raw
            extra["annotation_status"] = status
            if label is None:
                issues.append(f"annotation status {status_raw!r} without a category")
        elif label is None and category_id:
            issues.append("category id without category name or status: stored unlabelled")
        if date_only:
            extra["time_precision"] = "day"
        image: Callable[[], bytes] | None = None
        if img:
            rel = posixpath.normpath(posixpath.join(rel_dir, img)) if rel_dir else img
            if member_problem(img) or member_problem(rel):
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
            instrument=instrument or None,
            pixel_size_um=pixel_size,
            lat=lat,
            lon=lon,
            depth_min=dmin,
            depth_max=dmax,
            time_utc=when,
            sample_id=sample or acq or None,
            extra=extra,
        )


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
    for row in table.rows():
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


_NO_PROFILE = _Profile("", None, None, None, None, None, {})
_ZOO_PROFILE = re.compile(r"^\d{14}_(.+?)_ZOO_raw_")


# Columns mapped onto Record fields; with the always-text ones (and the object id), text.
_ECOPART_CORE = frozenset(
    {"orig_id", "name", "taxo_hierarchy", "classif_qual", "depth_including_offset", "psampleid"}
)
_ECOPART_TEXT = _ECOPART_CORE | _TEXT_ALWAYS | {"objid"}


def _ecopart_rows(
    table: _Table,
    body: _Body,
    origin: str,
    name: str,
    profiles: dict[str, _Profile] | None,
) -> Iterator[Record | Rejection]:
    width = len(table.header)
    m = _ZOO_PROFILE.match(name)
    file_profile = m.group(1) if m else None
    text = body.text
    rows = zip(
        text("orig_id"),
        text("name"),
        text("taxo_hierarchy"),
        text("classif_qual"),
        text("depth_including_offset"),
        text("psampleid"),
        _extras(body, _ECOPART_CORE, note_text=False),
        strict=True,
    )
    seen: dict[str, int] = {}
    for n, (oid, label, hierarchy, qual, depth_text, psample, (extra, _)) in enumerate(rows):
        line = table.first_line + n
        if n in body.too_long:
            yield Rejection(
                f"{origin}:{line}",
                "bad_row",
                f"line {line} has {len(body.too_long[n])} values for {width} columns",
            )
            continue
        label = label or None
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
        depth = _num(depth_text, "depth_including_offset", problems)
        if problems:
            yield Rejection(f"{origin}#{oid}", "bad_row", f"line {line}: {problems[0]}", oid, label)
            continue
        if hierarchy:
            extra["hierarchy"] = hierarchy
        if qual:
            extra["annotation_status"] = _STATUS.get(qual.lower(), qual)
        if psample:
            extra["psampleid"] = psample
        profile = profiles.get(psample) if profiles else None
        if profile is None:
            profile = _NO_PROFILE
            extra["issues"] = ["no metadata summary row for this profile: no position or time"]
        else:
            extra.update(profile.extra)
        yield Record(
            origin=f"{origin}#{oid}",
            image=None,
            source_object_id=oid,
            raw_label=label,
            instrument=profile.instrument,
            pixel_size_um=profile.pixel_size_um,
            lat=profile.lat,
            lon=profile.lon,
            depth_min=depth,
            depth_max=depth,
            time_utc=profile.time,
            sample_id=profile.profile_id or file_profile or psample or None,
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
        read_at_most = getattr(loader, "read_at_most", None)
        data = read_at_most(MAX_TABLE_BYTES) if read_at_most else loader()
    except RefusedInput as exc:
        yield Rejection(origin, exc.reason, f"{rel}: {exc.message}")
        return
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        yield Rejection(origin, "corrupt", f"cannot read {rel}: {exc}")
        return
    try:
        if len(data) > MAX_TABLE_BYTES:
            raise _TableError("too_large", f"{len(data):,} bytes is over the table size limit")
        text = _decode(data)
        table = _parse_table(text)
    except RefusedInput as exc:
        yield Rejection(origin, exc.reason, f"{rel}: {exc.message}")
        return
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
    if kind == "other":
        cols = ", ".join(table.header[:5])
        yield Rejection(
            origin,
            "not_objects",
            f"{rel} has no object_id or img_file_name column (columns {cols}…): "
            "not an object table (a summary export?)",
        )
        return
    try:
        body = _read_body(table, _ECOPART_TEXT if kind == "ecopart_zoo" else _ECOTAXA_TEXT)
    except _TableError as exc:
        yield Rejection(origin, exc.reason, f"{rel}: {exc.message}")
        return
    if kind == "ecopart_zoo":
        key = (id(container), rel_dir)
        if key not in summaries:
            summaries[key] = _find_summary(container, rel_dir)
        yield from _ecopart_rows(table, body, origin, base, summaries[key])
        return
    if not body.n:
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
    yield from _ecotaxa_rows(table, body, origin, container, rel_dir, missing_images)


def _find_summary(container: _Container, rel_dir: str) -> dict[str, _Profile] | None:
    for name, loader in container.sibling_tables(rel_dir):
        if name.endswith("Export_metadata_summary.tsv"):
            try:
                return _summary_profiles(_decode(loader()))
            except (OSError, _TableError, ValueError):
                return None
    return None


# --------------------------------------------------------------------------- writer
