"""Output files of `pz predict`: CSV, Parquet, an EcoTaxa TSV, or an EcoTaxa import zip (the TSV
plus the images), written batch by batch and resumable after a kill.

A row is a flat dict: the input's metadata (`METADATA_COLUMNS`, then the input's own extra
fields under their own names) and the prediction (`Prediction.to_row`: label, probability,
top-k, lineage, confident rank, living, OOD, `error`). An input that could not be classified
is a row with `error` set ("reason: message"): in CSV and Parquet every input is accounted
for; EcoTaxa outputs list such inputs in a sibling `FILE.rejected.csv` instead.

Streamed files fix their columns with the first rows written: in a CSV, fields that only
later rows carry (another input's metadata) go as JSON to its last column, `extra`; an
EcoTaxa TSV leaves them out; Parquet keeps every column (parts are unified at assembly).

Resuming: `Writer.done` holds the origins already written. CSV / TSV files are appended to and
a torn last line is dropped on reopening; Parquet and zip outputs are built in a sibling
`FILE.partial/` directory (complete parts only) and assembled into FILE at `close()`, by
atomic rename. A finished output reopened with `resume=True` is continued, never duplicated.

EcoTaxa columns: `img_file_name`, `object_id`, `object_annotation_category` (the top-1 label,
or with ``category="confident"`` the confident taxon name, so that an unsure image is filed
as "Copepoda" rather than as a wrong species; left empty, unclassified, when no rank is
confident), `object_annotation_hierarchy` (`>`-joined lineage), `object_annotation_status`
= ``predicted``, `object_score` (the category's probability: EcoTaxa's exports call the
automatic score `classif_auto_score`, but its import ignores columns without an `object_`,
`sample_`, `acq_`, `process_` or `img_` prefix, so the score travels as an object field),
`object_lat` / `object_lon` / `object_date` / `object_time` / `object_depth_min` /
`object_depth_max`, `sample_id`, `acq_instrument`, `object_origin` (the resume key), the
other predicted fields as `object_top2_label`, `object_confident_name`, `object_ood_score`…,
and the input's extra fields (unprefixed names get `object_`).

>>> with open_writer("day.csv", top_k=3) as writer:                   # doctest: +SKIP
...     writer.write(prediction_rows(records, clf.predict(images, top_k=3), top_k=3))
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from planktonzilla.constants import RANKS
from planktonzilla.fileio import commit_file, member_problem, safe_member_path, zip_member_problem
from planktonzilla.readers.ecotaxa_tsv import column_types, tsv_cell, tsv_lines
from planktonzilla.records import Record, Rejection

__all__ = [
    "CATEGORIES",
    "FORMATS",
    "METADATA_COLUMNS",
    "Writer",
    "csv_bytes",
    "ecotaxa_row",
    "ecotaxa_tsv_bytes",
    "metadata_row",
    "open_writer",
    "output_format",
    "prediction_columns",
    "prediction_rows",
    "rejection_row",
]

#: Output formats and the file suffix each is chosen by.
FORMATS = {"csv": ".csv", "parquet": ".parquet", "ecotaxa": ".tsv", "ecotaxa-zip": ".zip"}
#: What `object_annotation_category` holds in EcoTaxa outputs.
CATEGORIES = ("label", "confident")
METADATA_COLUMNS = (
    "object_id", "origin", "img_file_name", "raw_label", "lat", "lon", "depth_min", "depth_max",
    "time_utc", "sample_id", "instrument", "pixel_size_um",
)  # fmt: skip
#: CSV column holding, as JSON, the fields of rows that the header (fixed by the first rows
#: written) does not have.
EXTRA_COLUMN = "extra"

_PREDICTION_FIXED = frozenset(
    {"label", "probability", *RANKS, "confident_rank", "confident_name", "confident_probability",
     "living", "living_probability", "ood_score", "ood", "error"}
)  # fmt: skip
_TOP = re.compile(r"top(\d+)_(label|probability)")
_RESERVED = frozenset({*METADATA_COLUMNS, *_PREDICTION_FIXED, EXTRA_COLUMN})
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
_MAGIC_SUFFIX = (
    (b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"),
    (b"BM", ".bmp"), (b"GIF8", ".gif"),
)  # fmt: skip


# --------------------------------------------------------------------------- rows


def prediction_columns(top_k: int) -> list[str]:
    """The prediction part of a row, in order (`Prediction.to_row`)."""
    from planktonzilla.inference.classifier import Prediction

    return list(Prediction(error="").to_row(top_k))


def _is_prediction_key(key: str) -> bool:
    return key in _PREDICTION_FIXED or _TOP.fullmatch(key) is not None


_PLAIN = frozenset({str, bool, int, type(None)})


def _plain(value: Any) -> Any:
    """A JSON-able scalar: times as ISO 8601, containers as JSON text, NaN as None."""
    kind = type(value)
    if kind in _PLAIN:  # the common cases first: this runs for every field of every row
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, bytes | bytearray):  # numpy scalars
        return _plain(value.item())
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, bytes | bytearray):
        return None
    return str(value)


def derived_id(origin: str) -> str:
    """A readable object id from an origin: its image suffix dropped, other characters than
    letters, digits, `.`, `-` and `_` turned into `_`."""
    stem = origin[: -len(s)] if (s := _image_suffix(origin)) else origin
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "object"


def _image_suffix(name: str) -> str:
    low = name.lower()
    return next((s for s in _IMAGE_SUFFIXES if low.endswith(s)), "")


def _image_name(record: Record) -> str:
    last = record.origin.replace("::", "/").rsplit("/", 1)[-1]
    if _image_suffix(last):
        return last
    suffix = ".png"
    if isinstance(record.image, bytes | bytearray):
        suffix = next((s for m, s in _MAGIC_SUFFIX if record.image.startswith(m)), suffix)
    return derived_id(record.origin) + suffix


def metadata_row(record: Record) -> dict[str, Any]:
    """The input part of a row: `METADATA_COLUMNS`, then the record's extra fields (a name
    that clashes with a row column gets an `input_` prefix)."""
    extra = dict(record.extra)
    img = extra.pop("img_file_name", None) or _image_name(record)
    row: dict[str, Any] = {
        "object_id": record.source_object_id or derived_id(record.origin),
        "origin": record.origin,
        "img_file_name": img,
        "raw_label": record.raw_label,
        "lat": _plain(record.lat),
        "lon": _plain(record.lon),
        "depth_min": _plain(record.depth_min),
        "depth_max": _plain(record.depth_max),
        "time_utc": _plain(record.time_utc),
        "sample_id": record.sample_id,
        "instrument": record.instrument,
        "pixel_size_um": _plain(record.pixel_size_um),
    }
    for key, value in extra.items():
        key = str(key)
        name = f"input_{key}" if key in _RESERVED or _TOP.fullmatch(key) else key
        row[name] = _plain(value)
    return row


def prediction_rows(
    records: Sequence[Record], predictions: Sequence[Any], top_k: int
) -> list[dict[str, Any]]:
    """One row per (record, `Prediction`) pair: metadata then prediction fields."""
    return [
        {**metadata_row(r), **{k: _plain(v) for k, v in p.to_row(top_k).items()}}
        for r, p in zip(records, predictions, strict=True)
    ]


def rejection_row(rejection: Rejection, top_k: int) -> dict[str, Any]:
    """The row of an input that could not be classified: its ids and `error`."""
    row: dict[str, Any] = dict.fromkeys(METADATA_COLUMNS)
    row.update(
        object_id=rejection.source_object_id or derived_id(rejection.origin),
        origin=rejection.origin,
        raw_label=rejection.raw_label,
    )
    row.update(dict.fromkeys(prediction_columns(top_k)))
    row["error"] = f"{rejection.reason}: {rejection.message}"
    return row


# --------------------------------------------------------------------------- EcoTaxa rows

_ECOTAXA_PREFIXES = ("object_", "sample_", "acq_", "process_", "img_")
# What the EcoTaxa reader keeps about the input's own annotation: not carried over.
_ECOTAXA_SKIP = frozenset(
    {"hierarchy", "annotation_status", "issues", "time_precision", "missing_image"}
)
_INPUT_ANNOTATION = ("object_annotation_", "classif_")
_PIXEL_COLUMNS = ("process_particle_pixel_size_mm", "process_pixel", "acq_pixel")


def _ecotaxa_name(key: str) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_")
    return name if name.startswith(_ECOTAXA_PREFIXES) else f"object_{name}"


def _hierarchy(row: dict[str, Any], name: str | None, down_to: str | None) -> str | None:
    """`>`-joined lineage from the kingdom (down to rank `down_to`), ending with `name`."""
    if not name:
        return None
    names = []
    for rank in RANKS:
        if row.get(rank):
            names.append(str(row[rank]))
        if rank == down_to:
            break
    if not names or names[-1] != name:
        names.append(name)
    return ">".join(names)


def ecotaxa_row(row: dict[str, Any], category: str = "label") -> dict[str, Any] | None:
    """A row in EcoTaxa's column names; None for a row with an `error` (see the module
    docstring for the columns; `category` is "label" or "confident")."""
    if row.get("error"):
        return None
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
    if category == "label":
        name, score = row.get("label"), row.get("probability")
        hierarchy = _hierarchy(row, name, None)
    else:
        name, score = row.get("confident_name"), row.get("confident_probability")
        rank = row.get("confident_rank")
        hierarchy = _hierarchy(row, name, rank) if rank else name
    when = _datetime(row.get("time_utc"))
    day_only = row.get("time_precision") == "day"
    out: dict[str, Any] = {
        "img_file_name": row.get("img_file_name"),
        "object_id": row.get("object_id"),
        "object_lat": row.get("lat"),
        "object_lon": row.get("lon"),
        "object_date": when.strftime("%Y%m%d") if when else None,
        "object_time": when.strftime("%H%M%S") if when and not day_only else None,
        "object_depth_min": row.get("depth_min"),
        "object_depth_max": row.get("depth_max"),
        "object_annotation_status": "predicted" if name else None,
        "object_annotation_category": name,
        "object_annotation_hierarchy": hierarchy,
        "object_score": score,
        "sample_id": row.get("sample_id"),
        "acq_instrument": row.get("instrument"),
        "object_origin": row.get("origin"),
    }
    for key, value in row.items():
        if m := _TOP.fullmatch(key):
            out[f"object_top{m[1]}_{m[2]}"] = value
    for key in ("confident_rank", "confident_name", "confident_probability", "living",
                "living_probability", "ood_score", "ood"):  # fmt: skip
        value = row.get(key)
        out[f"object_{key}"] = int(value) if isinstance(value, bool) else value
    pixel = row.get("pixel_size_um")
    if pixel and not any(c in row for c in _PIXEL_COLUMNS):
        out["process_particle_pixel_size_mm"] = pixel / 1000
    for key, value in row.items():
        if key in _RESERVED or _TOP.fullmatch(key) or key in _ECOTAXA_SKIP or value is None:
            continue
        if key.lower().startswith(_INPUT_ANNOTATION):
            continue  # the input's own classification: the prediction replaces it
        name = _ecotaxa_name(key)
        if name not in out:
            out[name] = int(value) if isinstance(value, bool) else value
    return out


def _datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _csv_cell(value: Any) -> str:
    kind = type(value)
    if kind is str and "\n" not in value and "\r" not in value:
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    # one row per line, so that a torn last line is all a kill can leave behind
    return re.sub(r"[\r\n]+", " ", str(value))


def _union_columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r))


# --------------------------------------------------------------------------- in memory


def csv_bytes(rows: Sequence[dict[str, Any]]) -> bytes:
    """The rows as a UTF-8 CSV (columns: every key, first-seen order)."""
    columns = _union_columns(rows)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(columns)
    for row in rows:
        out.writerow([_download_cell(row.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def _download_cell(value: Any) -> str:
    """A CSV cell a spreadsheet opens as text: a string starting with = + - @ or a tab / CR
    (an input file name such as `=HYPERLINK(...)`) gets a leading `'` (OWASP's advice against
    formula injection); numbers are left as they are."""
    cell = _csv_cell(value)
    if isinstance(value, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + cell
    return cell


def ecotaxa_tsv_bytes(rows: Sequence[dict[str, Any]], *, category: str = "label") -> bytes:
    """The rows as an EcoTaxa-importable TSV with its `[t]`/`[f]` type row; rows with an
    `error` are left out."""
    erows = [e for r in rows if (e := ecotaxa_row(r, category)) is not None]
    columns = _union_columns(erows) or list(ecotaxa_row({"label": None}, category) or {})
    lines, _ = tsv_lines(columns, erows)
    return ("\n".join(lines) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- writers


def output_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """`fmt` when given, else the format the file suffix names (`FORMATS`)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, s in FORMATS.items():
        if suffix == s:
            return name
    known = ", ".join(f"{s} ({n})" for n, s in FORMATS.items())
    raise ValueError(f"cannot tell the format of {path} from its suffix: use {known} or --format")


class Writer:
    """An output being written. `done`: the origins it held when opened (an earlier run's,
    for resuming; not grown while writing, so memory stays flat). `wants_images`: `write`
    needs each row's image bytes. Use as a context manager: a clean exit finishes the file
    (`close`), an exception keeps what is complete for the next run (`abort`)."""

    path: Path
    format: str
    done: set[str]
    wants_images = False

    def write(self, rows: Sequence[dict[str, Any]], images: Sequence[bytes | None] | None = None):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()

    def is_done(self, origin: str) -> bool:
        """Whether `origin` was written by an earlier run (as the file spells it)."""
        return origin in self.done

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_writer(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    top_k: int = 5,
    resume: bool = True,
    category: str = "label",
) -> Writer:
    """A writer for `path` in `fmt` (default: from the suffix). With `resume`, an existing
    output (finished or not) is continued; without, it is replaced. Raises ValueError for an
    unknown format or an existing file that is not a `pz predict` output."""
    path = Path(path)
    fmt = output_format(path, fmt)
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, not {category!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        return _CsvWriter(path, top_k, resume)
    if fmt == "parquet":
        return _ParquetWriter(path, top_k, resume)
    return _EcotaxaWriter(path, fmt, category, resume)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class _LineTable:
    """A CSV or EcoTaxa TSV file appended to batch by batch, one row per line. Its header
    (and TSV type row) is fixed by the first rows written; reopening drops a torn last line
    and reads the origins (and image names) already in it."""

    def __init__(self, path: Path, kind: str, origin_column: str, resume: bool):
        self.path, self.kind, self.origin_column = path, kind, origin_column
        self.columns: list[str] | None = None
        self.numeric: list[bool] | None = None
        self.done: set[str] = set()
        self.image_names: set[str] = set()
        self.rows = 0
        if not resume:
            path.unlink(missing_ok=True)
        elif path.exists():
            self._recover()
        self._fh = None

    def _cells(self, line: str) -> list[str]:
        if self.kind == "csv":
            return next(csv.reader([line]), [])
        return line.split("\t")

    def _recover(self) -> None:
        header_lines = 1 if self.kind == "csv" else 2
        keep = lines = 0
        with open(self.path, "rb+") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn by a kill: that row is written again
                cells = self._cells(raw.decode("utf-8").rstrip("\r\n"))
                if lines == 0:
                    if self.origin_column not in cells:
                        raise ValueError(
                            f"{self.path} exists and is not a pz predict output (no "
                            f"{self.origin_column!r} column): overwrite it with --no-resume "
                            "or write elsewhere"
                        )
                    self.columns = cells
                    at = cells.index(self.origin_column)
                    img = cells.index("img_file_name") if "img_file_name" in cells else None
                elif lines == 1 and self.kind == "tsv":
                    self.numeric = [t.strip() == "[f]" for t in cells]
                elif at < len(cells):
                    self.done.add(cells[at])
                    if img is not None and img < len(cells):
                        self.image_names.add(cells[img])
                    self.rows += 1
                keep += len(raw)
                lines += 1
            complete = lines >= header_lines
            fh.truncate(keep if complete else 0)
        if not complete:  # not even a whole header: start the file again
            self.columns = self.numeric = None
            self.done.clear()
            self.image_names.clear()
            self.rows = 0

    def ensure_header(self, columns: Sequence[str], types: Sequence[str] = ()) -> None:
        """Give a file that no row reached its header all the same."""
        if self.columns is not None:
            return
        self.columns = list(columns)
        if self.kind == "csv":
            if EXTRA_COLUMN not in self.columns:
                self.columns.append(EXTRA_COLUMN)
            text = self._csv_line(self.columns) + "\n"
        else:
            self.numeric = [t == "[f]" for t in types]
            text = "\t".join(self.columns) + "\n" + "\t".join(types) + "\n"
        with open(self.path, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        lines = []
        if self.columns is None:
            self.columns = _union_columns(rows)
            if self.kind == "csv":
                if EXTRA_COLUMN not in self.columns:
                    self.columns.append(EXTRA_COLUMN)
                lines.append(self._csv_line(self.columns))
            else:
                types = column_types(self.columns, rows)
                self.numeric = [t == "[f]" for t in types]
                lines += ["\t".join(self.columns), "\t".join(types)]
        known = set(self.columns)
        columns = self.columns
        if self.kind == "csv":
            # one csv writer for the whole batch (not one per row)
            buf = io.StringIO()
            out = csv.writer(buf, lineterminator="\n")
            for line in lines:
                buf.write(line + "\n")
            at = columns.index(EXTRA_COLUMN) if EXTRA_COLUMN in known else None
            for row in rows:
                cells = [_csv_cell(row.get(c)) for c in columns]
                if at is not None and not known.issuperset(row):
                    rest = {k: v for k, v in row.items() if k not in known and v is not None}
                    if rest:
                        cells[at] = json.dumps(rest, default=str, ensure_ascii=False)
                out.writerow(cells)
            text = buf.getvalue()
        else:
            numeric = self.numeric or [False] * len(columns)
            pairs = list(zip(columns, numeric, strict=False))
            for row in rows:
                lines.append("\t".join([tsv_cell(row.get(c), n) for c, n in pairs]))
            text = "\n".join(lines) + "\n"
        if self._fh is None:
            # kept open across batches; closed by close() (a kill leaves at most a torn line)
            self._fh = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        self._fh.write(text)
        self._fh.flush()
        self.rows += len(rows)

    @staticmethod
    def _csv_line(cells: Sequence[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(cells)
        return buf.getvalue()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


class _CsvWriter(Writer):
    def __init__(self, path: Path, top_k: int, resume: bool):
        self.path, self.format, self.top_k = path, "csv", top_k
        self.table = _LineTable(path, "csv", "origin", resume)
        self.done = self.table.done

    def is_done(self, origin: str) -> bool:
        # a line break in a name is written as a space (one row per line): match that form
        return origin in self.done or _csv_cell(origin) in self.done

    def write(self, rows, images=None):
        self.table.append(rows)

    def abort(self):
        self.table.close()

    def close(self):
        self.table.close()
        self.table.ensure_header([*METADATA_COLUMNS, *prediction_columns(self.top_k)])


class _EcotaxaWriter(Writer):
    """EcoTaxa TSV or zip; rows with an error go to `FILE.rejected.csv`."""

    def __init__(self, path: Path, fmt: str, category: str, resume: bool):
        self.path, self.format, self.category = path, fmt, category
        self.zip = fmt == "ecotaxa-zip"
        self.wants_images = self.zip
        rejected_path = path.with_name(path.name + ".rejected.csv")
        if self.zip:
            self.partial = _partial_dir(path)
            if not resume:
                _remove(self.partial)
                path.unlink(missing_ok=True)
            elif path.exists() and not self.partial.exists():
                _unzip(path, self.partial)  # a finished zip, continued
            elif path.exists():
                path.unlink()  # assembled from the partial directory, which has it all
            self.partial.mkdir(exist_ok=True)
            name = f"ecotaxa_{re.sub(r'[^A-Za-z0-9._-]+', '_', path.stem)}.tsv"
            self.table = _LineTable(self.partial / name, "tsv", "object_origin", True)
        else:
            self.table = _LineTable(path, "tsv", "object_origin", resume)
        self.rejected = _LineTable(rejected_path, "csv", "origin", resume)
        self.done = self.table.done | self.rejected.done
        self._names = self.table.image_names

    def is_done(self, origin: str) -> bool:
        # tabs and line breaks are written as spaces (TSV rows, CSV rejections): match those
        return any(form in self.done for form in (origin, tsv_cell(origin), _csv_cell(origin)))

    def write(self, rows, images=None):
        good, bad = [], []
        for i, row in enumerate(rows):
            erow = ecotaxa_row(row, self.category)
            if erow is None:
                bad.append(row)
                continue
            if self.zip:
                data = images[i] if images is not None else None
                erow["img_file_name"] = self._store_image(erow.get("img_file_name"), data)
            good.append(erow)
        self.table.append(good)
        self.rejected.append(bad)

    def _store_image(self, name: str | None, data: bytes | None) -> str | None:
        """Write an image into the partial directory under a unique, safe name."""
        if data is None:
            return name
        rel = PurePosixPath(name or "image.png")
        if member_problem(str(rel)) or not rel.parts:  # file names become zip members
            rel = PurePosixPath(PurePosixPath(str(rel).replace("\\", "/")).name or "image.png")
        candidate, n = str(rel), 1
        while candidate in self._names:
            n += 1
            candidate = str(rel.with_name(f"{rel.stem}_{n}{rel.suffix}"))
        self._names.add(candidate)
        target = self.partial / candidate
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return candidate

    def abort(self):
        self.table.close()
        self.rejected.close()

    def close(self):
        self.abort()
        columns = list(ecotaxa_row({"label": None}, self.category) or {})
        self.table.ensure_header(columns, column_types(columns, []))
        self.rejected.ensure_header([*METADATA_COLUMNS, "error"])
        if self.zip:
            _zip_partial(self.partial, self.table.path, self.path)


def _unzip(path: Path, target: Path) -> None:
    target.mkdir(parents=True)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir() or zip_member_problem(info):
                continue  # our own partial zip: nothing else belongs in it
            out = target / safe_member_path(info.filename)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _zip_partial(partial: Path, tsv: Path, path: Path) -> None:
    """The import zip: the TSV, then every image its rows name (images stored as they are:
    they are compressed already)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        if tsv.exists():
            zf.write(tsv, tsv.name, compress_type=zipfile.ZIP_DEFLATED)
            with open(tsv, encoding="utf-8") as fh:
                columns = fh.readline().rstrip("\n").split("\t")
                at = columns.index("img_file_name") if "img_file_name" in columns else None
                fh.readline()  # the type row
                written: set[str] = set()
                for line in fh:
                    cells = line.rstrip("\n").split("\t")
                    name = cells[at] if at is not None and at < len(cells) else ""
                    if name and name not in written and (partial / name).is_file():
                        zf.write(partial / name, name, compress_type=zipfile.ZIP_STORED)
                        written.add(name)
    commit_file(tmp, path)
    shutil.rmtree(partial)


# --------------------------------------------------------------------------- Parquet


def _base_schema(top_k: int):
    import pyarrow as pa

    text, number, flag = pa.string(), pa.float64(), pa.bool_()
    fields = {c: text for c in METADATA_COLUMNS}
    fields.update(lat=number, lon=number, depth_min=number, depth_max=number)
    fields.update(pixel_size_um=number, time_utc=pa.timestamp("us", tz="UTC"))
    for c in prediction_columns(top_k):
        if c.endswith(("probability", "_score")):
            fields[c] = number
        elif c in ("living", "ood"):
            fields[c] = flag
        else:
            fields[c] = text
    return pa.schema(list(fields.items()))


class _ParquetWriter(Writer):
    """Parts of up to `part_rows` rows in `FILE.partial/`, each written whole by atomic rename;
    `close` assembles them into FILE with one schema (a column whose parts disagree on its
    type becomes float64 when all are numbers, else text)."""

    part_rows = 1024

    def __init__(self, path: Path, top_k: int, resume: bool):
        import pyarrow.parquet as pq

        self.path, self.format = path, "parquet"
        self.schema = _base_schema(top_k)
        self.partial = _partial_dir(path)
        if not resume:
            _remove(self.partial)
            path.unlink(missing_ok=True)
        elif path.exists() and not self.partial.exists():
            self.partial.mkdir()
            os.replace(path, self.partial / "part-00000.parquet")  # a finished file, continued
        elif path.exists():
            path.unlink()  # assembled from the partial directory, which has it all
        self.partial.mkdir(exist_ok=True)
        for tmp in self.partial.glob("*.tmp"):
            tmp.unlink()
        self.done: set[str] = set()
        parts = self._parts()
        for part in parts:
            names = pq.read_schema(part).names
            if "origin" not in names:
                raise ValueError(f"{part} is not a pz predict output (no 'origin' column)")
            origins = pq.read_table(part, columns=["origin"]).column("origin").to_pylist()
            self.done.update(origins)
        self.next_part = 1 + max((int(p.stem.split("-")[1]) for p in parts), default=0)
        self.buffer: list[dict[str, Any]] = []

    def _parts(self) -> list[Path]:
        return sorted(self.partial.glob("part-*.parquet"))

    def write(self, rows, images=None):
        self.buffer.extend(rows)
        if len(self.buffer) >= self.part_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        table = _arrow_table(self.buffer, self.schema)
        part = self.partial / f"part-{self.next_part:05d}.parquet"
        tmp = part.with_name(part.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        commit_file(tmp, part)
        self.next_part += 1
        self.buffer.clear()

    def abort(self):
        self._flush()

    def close(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._flush()
        parts = self._parts()
        schema = _unified_schema([pq.read_schema(p) for p in parts], self.schema)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, schema, compression="zstd") as out:
            for part in parts:
                table = pq.read_table(part)
                columns = [
                    _cast(table.column(f.name), f.type)
                    if f.name in table.column_names
                    else pa.nulls(table.num_rows, f.type)
                    for f in schema
                ]
                out.write_table(pa.Table.from_arrays(columns, schema=schema))
        commit_file(tmp, self.path)
        shutil.rmtree(self.partial)


def _arrow_table(rows: Sequence[dict[str, Any]], base):
    import pyarrow as pa

    arrays, names = [], []
    for name in _union_columns(rows):
        values = [r.get(name) for r in rows]
        if name == "time_utc":
            values = [_datetime(v) for v in values]
        wanted = base.field(name).type if name in base.names else None
        try:
            array = pa.array(values, type=wanted)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            strings = [None if v is None else _csv_cell(v) for v in values]
            array = pa.array(strings, type=pa.string())
        arrays.append(array)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def _unified_schema(schemas, base):
    import pyarrow as pa

    types: dict[str, list] = {f.name: [f.type] for f in base}
    for schema in schemas:
        for f in schema:
            types.setdefault(f.name, []).append(f.type)
    fields = []
    for name, seen in types.items():
        kinds = {t for t in seen if not pa.types.is_null(t)}
        if name in base.names and kinds == {base.field(name).type}:
            chosen = base.field(name).type
        elif len(kinds) == 1:
            chosen = kinds.pop()
        elif kinds and all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
            chosen = pa.float64()
        else:
            chosen = pa.string()
        fields.append(pa.field(name, chosen))
    return pa.schema(fields)


def _cast(column, type_):
    import pyarrow as pa

    if column.type == type_:
        return column
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), type_)
    return column.cast(type_)
