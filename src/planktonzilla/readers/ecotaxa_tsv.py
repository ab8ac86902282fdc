"""The EcoTaxa TSV format, written in one place: a header row, the `[t]`/`[f]` type row
EcoTaxa's importer expects, and one tab-separated row per object (EcoTaxa's "import" format;
the reader of the same files is `planktonzilla.readers.ecotaxa`).

Typing rule: a column is `[f]` when every non-empty value is a number, unless it is one of the
`TEXT_COLUMNS` (ids, dates, times, names), ends in `_id`, or is a `object_topN_label`. Text
met in an `[f]` column is written empty (EcoTaxa would refuse the whole file otherwise); tabs
and line breaks inside a value become spaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from planktonzilla.fileio import atomic_writer

__all__ = ["TEXT_COLUMNS", "column_types", "tsv_cell", "tsv_lines", "write_ecotaxa_tsv"]

#: Columns that are text whatever their values look like (ids, dates, times, names).
TEXT_COLUMNS = frozenset(
    {
        "object_id",
        "img_file_name",
        "img_rank",
        "object_origin",
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
        "object_confident_rank",
        "object_confident_name",
        "sample_id",
        "acq_id",
        "acq_instrument",
        "process_id",
        "orig_id",
        "name",
        "taxo_hierarchy",
        "classif_qual",
    }
)
_TOP_LABEL = re.compile(r"object_top\d+_label")
_BREAK = re.compile(r"[\t\r\n]")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def column_types(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[str]:
    """The type row: `[f]` or `[t]` per column (see the module doc)."""
    types = []
    for c in columns:
        values = [r.get(c) for r in rows if r.get(c) not in (None, "")]
        numeric = (
            c not in TEXT_COLUMNS
            and not c.endswith("_id")
            and not _TOP_LABEL.fullmatch(c)
            and bool(values)
            and all(_is_number(v) for v in values)
        )
        types.append("[f]" if numeric else "[t]")
    return types


def tsv_cell(value: Any, numeric: bool = False) -> str:
    """One cell; dates and datetimes are written as EcoTaxa's YYYYMMDD."""
    if value is None:
        return ""
    if type(value) is str and not numeric and not _BREAK.search(value):
        return value
    if numeric and not _is_number(value):
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, datetime):
        return value.strftime("%Y%m%d")
    return _BREAK.sub(" ", str(value))


def tsv_lines(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], *, header: bool = True
) -> tuple[list[str], list[bool]]:
    """(lines without their newline, numeric flag per column): the header and type rows
    (when `header`) and one line per row."""
    types = column_types(columns, rows)
    numeric = [t == "[f]" for t in types]
    lines = ["\t".join(columns), "\t".join(types)] if header else []
    for row in rows:
        lines.append(
            "\t".join(tsv_cell(row.get(c), n) for c, n in zip(columns, numeric, strict=True))
        )
    return lines, numeric


def write_ecotaxa_tsv(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write `rows` (dicts of EcoTaxa column -> value) as an EcoTaxa-importable TSV, atomically;
    returns the number of rows written. Columns are the union of the rows' keys in first-seen
    order, `object_id` and `img_file_name` first when present."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for first in ("object_id", "img_file_name"):
        if first in columns:
            columns.remove(first)
            columns.insert(0, first)
    lines, _ = tsv_lines(columns, rows)
    with atomic_writer(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
    return len(rows)
