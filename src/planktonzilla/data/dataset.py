"""The dataset view: a split joined with the harmonized lineage, filtered, and labelled at one
taxonomic rank — what a training loader, a model config and an evaluation agree on.

    view = dataset_view(ObjectStore("store"), "grouped")            # deepest rank, plankton
    train = view.side("train")                                       # object_id, label_index…
    view.classes[train["label_index"][0].as_py()]                    # its label

Rules:

- **label** = the harmonized lineage at `rank`: ``deepest`` is `taxon` (the accepted name of
  the deepest resolved rank); ``kingdom`` … ``species`` is that column, and objects whose
  lineage does not reach the rank are dropped. Unresolved labels are always excluded.
- ``plankton_only`` (default, as in the paper) keeps `plankton = true` and
  `root_class = 'living'`; ``living_only`` keeps `root_class = 'living'` (non-plankton
  organisms too). With both off, detritus / artefact / inert classes are labels like any other.
- ``licenses`` keeps the listed licence strings (``None`` in the list keeps objects with no
  stated licence). ``commercial_only`` keeps licences that allow commercial use: it drops any
  licence with a non-commercial term (``NC``, "noncommercial") and every object whose licence
  is unstated (null, empty, ``other``, ``unknown``, ``none``, ``proprietary``, "all rights
  reserved"): with no stated licence, commercial use is not granted.
- ``sources`` keeps the listed sources.
- ``min_per_class`` counts images per label on the **train** side and drops the classes below
  it from every side; ``min_per_class=0`` keeps classes never seen in train (zero-shot).
- Only objects with an image are kept.

The table keeps each object's full lineage (7 rank columns) for per-rank evaluation;
`class_lineages` holds each class's lineage truncated at the class's rank (for captions), its
`root_class` (living / detritus / artefact / inert) and AphiaID.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from planktonzilla.constants import RANKS, SIDES
from planktonzilla.data.splits import split_info, split_path
from planktonzilla.exceptions import SplitError

COLUMNS = (
    "object_id",
    "split",
    "label",
    "label_index",
    "source",
    "instrument",
    "sample_id",
    *RANKS,
    "qualifier",
)
#: Licence strings that state no licence: commercial use is not granted.
UNSTATED_LICENSES = (
    "",
    "other",
    "unknown",
    "none",
    "unspecified",
    "not stated",
    "proprietary",
    "all rights reserved",
)
_NONCOMMERCIAL = r"(^|[^a-z])nc([^a-z]|$)|non-?commercial"


@dataclass(frozen=True)
class DatasetView:
    """A labelled, filtered split. `table` has one row per object (`COLUMNS`); `classes` is
    the sorted label list that `label_index` indexes; `class_lineages[i]` is the lineage of
    `classes[i]` (the 7 ranks, `name`, `rank`, `aphia_id`)."""

    table: pa.Table
    classes: list[str]
    class_lineages: list[dict[str, Any]]
    scheme: str
    filters: dict[str, Any]
    manifest_hash: str
    split_info: dict[str, Any] = field(default_factory=dict)

    def side(self, name: str) -> pa.Table:
        """The rows of one side: "train", "val" or "test"."""
        if name not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, got {name!r}")
        return self.table.filter(pc.equal(self.table["split"], name))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        """Images per side."""
        values = {
            row["values"]: row["counts"] for row in pc.value_counts(self.table["split"]).to_pylist()
        }
        return {side: values.get(side, 0) for side in SIDES}


def dataset_view(
    store,
    split_name: str,
    *,
    rank: str = "deepest",
    plankton_only: bool = True,
    living_only: bool = False,
    licenses: list[str | None] | None = None,
    commercial_only: bool = False,
    sources: list[str] | None = None,
    min_per_class: int = 1,
) -> DatasetView:
    """The split `split_name` of `store` (an `ObjectStore`) labelled at `rank` and filtered
    (see the module docstring for the rules).

    >>> view = dataset_view(ObjectStore("store"), "stratified", rank="genus")
    >>> view.classes[:3], view.side("train").num_rows
    """
    if rank != "deepest" and rank not in RANKS:
        raise ValueError(f"rank must be 'deepest' or one of {', '.join(RANKS)}, got {rank!r}")
    if min_per_class < 0:
        raise ValueError(f"min_per_class must be >= 0, got {min_per_class}")
    path = split_path(store, split_name)
    if not path.is_file():
        from planktonzilla.data.splits import list_splits

        known = ", ".join(list_splits(store)) or "none; make one with `pz split`"
        raise SplitError(f"no split {split_name!r} in {store.path} (known: {known})")
    filters = {
        "rank": rank,
        "plankton_only": plankton_only,
        "living_only": living_only,
        "licenses": None if licenses is None else sorted(licenses, key=lambda x: (x is None, x)),
        "commercial_only": commercial_only,
        "sources": None if sources is None else sorted(sources),
        "min_per_class": min_per_class,
    }
    label = "o.taxon" if rank == "deepest" else f'o."{rank}"'
    where = [
        "o.image_format IS NOT NULL",
        "o.taxonomy_status = 'resolved'",
        f"{label} IS NOT NULL",
    ]
    params: dict[str, Any] = {}
    if plankton_only:
        where.append("o.plankton AND o.root_class = 'living'")
    if living_only:
        where.append("o.root_class = 'living'")
    if licenses is not None:
        named = [x for x in licenses if x is not None]
        params["licenses"] = named
        cond = "list_contains($licenses::VARCHAR[], o.license)"
        if None in licenses:
            cond = f"({cond} OR o.license IS NULL)"
        where.append(cond)
    if commercial_only:
        params["unstated"] = list(UNSTATED_LICENSES)
        where.append(
            "o.license IS NOT NULL"
            " AND NOT list_contains($unstated::VARCHAR[], lower(trim(o.license)))"
            f" AND NOT regexp_matches(lower(o.license), '{_NONCOMMERCIAL}')"
        )
    if sources is not None:
        params["sources"] = list(sources)
        where.append("list_contains($sources::VARCHAR[], o.source)")
    lineage = ", ".join(f'o."{r}"' for r in RANKS)
    split_file = "'" + str(path).replace("'", "''") + "'"
    sql = (
        f"SELECT o.object_id, s.split, {label} AS label, o.source, o.instrument, o.sample_id,"
        f" {lineage}, o.qualifier, o.taxon, o.taxon_rank, o.aphia_id, o.root_class"
        f" FROM read_parquet({split_file}) s JOIN objects o USING (object_id)"
        " WHERE " + " AND ".join(f"({w})" for w in where)
    )
    if min_per_class > 0:
        sql = (
            f"WITH v AS ({sql}), keep AS (SELECT label FROM v WHERE split = 'train'"
            f" GROUP BY label HAVING count(*) >= {int(min_per_class)})"
            " SELECT v.* FROM v SEMI JOIN keep USING (label)"
        )
    # Streamed and columnar: each batch's lineage groups are counted (O(classes)), its
    # repetitive text columns dictionary-encoded (4 bytes a row), so the view costs about
    # 100 bytes per object rather than a kilobyte of plain strings.
    names = [c for c in COLUMNS if c != "label_index"]
    groups, parts = [], []
    con = store.connect()
    try:
        relation = con.sql(sql + " ORDER BY split, object_id", params=params or None)
        reader = relation.to_arrow_reader(1 << 16)
        for part in (pa.Table.from_batches([b]) for b in reader):
            groups.append(part.group_by(_LINEAGE_KEYS, use_threads=False).aggregate(_COUNT))
            parts.append(_compact(part.select(names)))
        if not parts:  # no rows: the empty table, typed
            empty = reader.schema.empty_table()
            groups.append(empty.group_by(_LINEAGE_KEYS, use_threads=False).aggregate(_COUNT))
            parts.append(_compact(empty.select(names)))
    finally:
        con.close()
    rows = pa.concat_tables(parts).unify_dictionaries()
    counted = pa.concat_tables(groups).group_by(_LINEAGE_KEYS, use_threads=False)
    counted = counted.aggregate([("count_all", "sum")])  # column "count_all_sum"
    classes = sorted(set(counted["label"].to_pylist()))
    lineages = _class_lineages(counted, classes, rank)
    index = _label_index(rows["label"], classes)
    table = rows.append_column("label_index", index).select(list(COLUMNS))
    return DatasetView(
        table=table,
        classes=classes,
        class_lineages=lineages,
        scheme=split_name,
        filters=filters,
        manifest_hash=store.manifest_hash(),
        split_info=split_info(store, split_name),
    )


_LINEAGE_KEYS = ["label", *RANKS, "taxon", "taxon_rank", "aphia_id", "root_class"]
_COUNT = [([], "count_all")]
_PLAIN = ("object_id", "split")  # unique per row / compared by `side`: kept as plain strings


def _compact(part: pa.Table) -> pa.Table:
    """The text columns other than `_PLAIN` dictionary-encoded, every column in Arrow's own
    memory: a column exported by DuckDB keeps its whole batch (every column, dropped ones
    too) alive, ~3x the view's own size."""
    every_row = pa.array(np.arange(part.num_rows))
    for i, f in enumerate(part.schema):
        column = part.column(i)
        if f.name not in _PLAIN and pa.types.is_string(f.type):
            column = pc.dictionary_encode(column)
        else:
            column = column.take(every_row)  # a copy
        part = part.set_column(i, f.name, column)
    return part


def _label_index(labels: pa.ChunkedArray, classes: list[str]) -> pa.ChunkedArray:
    """int32 position of each label in `classes`, through the (shared) dictionary."""
    value_set = pa.array(classes, pa.string())
    chunks = []
    for chunk in labels.chunks:
        if pa.types.is_dictionary(chunk.type):
            lookup = pc.index_in(chunk.dictionary, value_set=value_set).cast(pa.int32())
            chunks.append(pc.take(lookup, chunk.indices))
        else:
            chunks.append(pc.index_in(chunk, value_set=value_set).cast(pa.int32()))
    return pa.chunked_array(chunks, pa.int32())


def _class_lineages(counted: pa.Table, classes: list[str], rank: str) -> list[dict[str, Any]]:
    """Per class: its lineage truncated at the class's rank (the most common one when the
    mapping gives a name two lineages), its name, rank and AphiaID (when known at that rank).
    `counted`: objects per distinct (`_LINEAGE_KEYS`), in `count_all_sum`."""
    seen: dict[str, Counter] = {c: Counter() for c in classes}
    for row in counted.to_pylist():
        if rank == "deepest":
            lineage = tuple(row[r] for r in RANKS)
            name, at_rank, aphia = row["taxon"], row["taxon_rank"], row["aphia_id"]
        else:
            depth = RANKS.index(rank) + 1
            lineage = tuple(row[r] for r in RANKS[:depth]) + (None,) * (len(RANKS) - depth)
            name, at_rank = row["label"], rank
            exact = row["taxon_rank"] == rank and row["taxon"] == row["label"]
            aphia = row["aphia_id"] if exact else None
        key = (lineage, name, at_rank, aphia, row["root_class"])
        seen[row["label"]][key] += row["count_all_sum"]
    out = []
    for label in classes:
        # prefer a known AphiaID, then the most common lineage, then a stable order
        (lineage, name, at_rank, aphia, root_class), _ = max(
            seen[label].items(),
            key=lambda kv: (kv[0][3] is not None, kv[1], repr(kv[0])),
        )
        out.append(
            {
                **dict(zip(RANKS, lineage, strict=True)),
                "name": name,
                "rank": at_rank,
                "aphia_id": aphia,
                "root_class": root_class,
            }
        )
    return out
