"""Train / val / test splits, stored as tables beside the object shards and joined at read time.

    splits/<name>.parquet     object_id, split (train | val | test); one table per scheme name

A split never rewrites an object shard. Each table is written by atomic rename, is sorted by
`object_id`, and carries its parameters (scheme, seed, fractions, held-out source or
instrument, the store's manifest hash) as Parquet metadata (`split_info`). Every scheme is
deterministic given the seed and the store's content: an object's place depends on hashes of
(seed, scheme, object_id), never on the order rows were read in.

Schemes (`make_split(store, scheme)`):

- ``stratified``: per source, stratified by the harmonized **taxon** (the label space models
  train on); objects whose label is not resolved are stratified by their raw label, and
  unlabelled ones form one stratum per source. A stratum with fewer than `min_per_class`
  images goes entirely to train. Per stratum, `n * val` and `n * test` are rounded up or down
  at random (seeded), so that the expected fractions are exact even for small classes; a
  stratum always keeps at least one train image.
- ``grouped``: no `sample_id` (IFCB bin, UVP profile, net sample…) on two sides. Sample groups
  are visited in a seeded random order and each goes to the side that most lacks images —
  weighing both the per-(source, taxon) fractions and the overall fraction by image count —
  so the split is loosely stratified. Objects without a `sample_id` cannot leak and are then
  split stratified (as above) to fill what each stratum still lacks.
- ``upstream``: the collection's own split (`extra.upstream_split`: train / val / test and
  their spellings). Objects without one are **left out** of the table (and so of any dataset
  view of it); a source that ships only train and test has no val side.
- ``loso``: one table per source, ``loso-<source>``: that source is test; the others are split
  into train and val, val drawn stratified (fraction `val`) from each of them.
- ``loio``: the same per instrument, ``loio-<instrument>`` (names sanitised for file names).
  Objects with no instrument are left out: they could be the held-out instrument.

Every scheme covers the objects that have an image (metadata-only rows are never trained on),
labelled or not: label filters belong to the dataset view (`planktonzilla.data.dataset`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from planktonzilla._version import __version__
from planktonzilla.constants import SIDES, SPLIT_NAMES
from planktonzilla.exceptions import SplitError
from planktonzilla.fileio import commit_file
from planktonzilla.store.layout import StoreLayout

SCHEMES = ("stratified", "grouped", "upstream", "loso", "loio")
METADATA_KEY = b"planktonzilla.split"
SPLIT_SCHEMA = pa.schema(
    [pa.field("object_id", pa.string(), nullable=False), pa.field("split", pa.string())]
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")

# Objects a split covers, with the stratum they are stratified by.
_ELIGIBLE = """
SELECT object_id, source, instrument, sample_id,
       CASE WHEN taxon IS NOT NULL THEN 't:' || taxon
            WHEN raw_label IS NOT NULL THEN 'r:' || raw_label
            ELSE '' END AS stratum
FROM objects WHERE image_format IS NOT NULL
"""


# ------------------------------------------------------------------------------ public API
def make_split(
    store,
    scheme: str,
    *,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.1,
    min_per_class: int = 5,
) -> list[str]:
    """Make the split tables of `scheme` (one of `SCHEMES`) over `store` (an `ObjectStore`)
    and return the names written: one name, or one per source (`loso`) / instrument (`loio`).

    `val` and `test` are fractions of images; `loso` / `loio` ignore `test` (the held-out
    source or instrument is the test side). Strata with fewer than `min_per_class` images go
    to train (`stratified`, and the val draw of `loso` / `loio`).

    >>> make_split(ObjectStore("store"), "grouped", seed=1)
    ['grouped']
    """
    if scheme not in SCHEMES:
        raise SplitError(f"unknown split scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    for name, value in (("val", val), ("test", test)):
        if not 0 <= value < 1:
            raise SplitError(f"{name} must be a fraction in [0, 1), got {value}")
    if scheme in ("stratified", "grouped") and val + test >= 1:
        raise SplitError(f"val + test must leave images for train, got {val} + {test}")
    if min_per_class < 0:
        raise SplitError(f"min_per_class must be >= 0, got {min_per_class}")
    params = {"seed": int(seed), "val": float(val), "test": float(test)}
    params["min_per_class"] = int(min_per_class)
    con = store.connect()
    try:
        con.execute(f"CREATE TEMP TABLE eligible AS {_ELIGIBLE}")
        jobs = _JOBS[scheme](con, **params)
        written = []
        for name, sql, info in jobs:
            info = {"scheme": name, "family": scheme, **params, **info}
            info["manifest_hash"] = store.manifest_hash()
            _write(con, store.path, name, sql, info)
            written.append(name)
        return written
    finally:
        con.close()


def list_splits(store) -> list[str]:
    """Names of the split tables in `store`, sorted."""
    return sorted(p.name[: -len(".parquet")] for p in _dir(store).glob("*.parquet"))


def read_split(store, name: str) -> pa.Table:
    """The split table `name` (`object_id`, `split`); its parameters are in `split_info`."""
    path = split_path(store, name)
    if not path.is_file():
        known = ", ".join(list_splits(store)) or "none; make one with `pz split`"
        raise SplitError(f"no split {name!r} in {store.path} (known: {known})")
    return pq.read_table(path)


def split_info(store, name: str) -> dict:
    """The parameters a split table was made with (scheme, seed, fractions, held-out…)."""
    path = split_path(store, name)
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(METADATA_KEY, b"{}"))


def split_path(store, name: str) -> Path:
    """Where the split table `name` lives (whether or not it exists)."""
    return _file(_dir(store), name)


def _file(directory: Path, name: str) -> Path:
    if not _NAME.match(name):
        raise SplitError(f"invalid split name {name!r}")
    return directory / f"{name}.parquet"


def split_counts(store, names: list[str] | None = None) -> list[dict]:
    """Per split table and side: images, harmonized classes (distinct taxa) and samples."""
    names = list_splits(store) if names is None else names
    if not names:
        return []
    con = store.connect()
    try:
        return (
            con.sql(
                "SELECT s.scheme, s.split, count(*) AS images,"
                " count(DISTINCT o.taxon) AS classes, count(DISTINCT o.sample_id) AS samples"
                " FROM splits s JOIN objects o USING (object_id)"
                " WHERE list_contains($names, s.scheme)"
                " GROUP BY 1, 2 ORDER BY 1,"
                " CASE split WHEN 'train' THEN 0 WHEN 'val' THEN 1 ELSE 2 END",
                params={"names": names},
            )
            .to_arrow_table()
            .to_pylist()
        )
    finally:
        con.close()


def sanitize(name: str) -> str:
    """A file-name-safe version of a source or instrument name (`synthetic ISIIS` ->
    `synthetic-ISIIS`)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return safe or "unnamed"


# ------------------------------------------------------------------------------ schemes
def _stratified(con, *, seed, val, test, min_per_class):
    sql = _ranked(con, "eligible", {"test": test, "val": val}, seed, "stratified", min_per_class)
    return [("stratified", sql, {})]


def _grouped(con, *, seed, val, test, min_per_class):
    fractions = {"train": 1 - val - test, "val": val, "test": test}
    rows = con.execute(
        "SELECT sample_id, source, stratum, count(*) AS n FROM eligible"
        " WHERE sample_id IS NOT NULL GROUP BY ALL"
    ).fetchall()
    groups: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for sample_id, source, stratum, n in rows:
        groups[sample_id][(source, stratum)] = n
    totals = {
        (source, stratum): n
        for source, stratum, n in con.execute(
            "SELECT source, stratum, count(*) FROM eligible GROUP BY ALL"
        ).fetchall()
    }
    grouped_totals: dict[tuple[str, str], int] = defaultdict(int)
    for counts in groups.values():
        for key, n in counts.items():
            grouped_totals[key] += n
    n_grouped = sum(grouped_totals.values())
    sides = [s for s in SIDES if fractions[s] > 0]
    assigned = {s: defaultdict(int) for s in SIDES}
    assigned_images = dict.fromkeys(SIDES, 0)
    side_of: dict[str, str] = {}
    for sample_id in sorted(groups, key=lambda g: _digest(seed, "grouped", g)):
        counts = groups[sample_id]
        size = sum(counts.values())

        def need(side, counts=counts, size=size):
            f = fractions[side]
            by_class = sum(
                n * (f * grouped_totals[k] - assigned[side][k]) / grouped_totals[k]
                for k, n in counts.items()
            )
            return by_class / size + (f * n_grouped - assigned_images[side]) / n_grouped

        side = max(sides, key=need)  # ties: train, then val, then test
        side_of[sample_id] = side
        assigned_images[side] += size
        for key, n in counts.items():
            assigned[side][key] += n
    con.register(
        "_group_sides",
        pa.table(
            {
                "sample_id": pa.array(list(side_of), pa.string()),
                "split": pa.array(list(side_of.values()), pa.string()),
            }
        ),
    )
    # objects without a sample id fill what each stratum still lacks
    quotas = []
    singles = {
        (source, stratum): n
        for source, stratum, n in con.execute(
            "SELECT source, stratum, count(*) FROM eligible WHERE sample_id IS NULL GROUP BY ALL"
        ).fetchall()
    }
    for (source, stratum), total in totals.items():
        free = singles.get((source, stratum), 0)
        if not free:
            continue
        quota = {"source": source, "stratum": stratum}
        for side in ("test", "val"):
            if total < min_per_class:
                quota[side] = 0
                continue
            want = fractions[side] * total - assigned[side][(source, stratum)]
            u = _unit(seed, "grouped", side, source, stratum)
            quota[side] = max(0, min(math.floor(want + u), free))
            free -= quota[side]
        quotas.append(quota)
    no_sample = "(SELECT * FROM eligible WHERE sample_id IS NULL)"
    singles_sql = _ranked_by_quota(con, no_sample, quotas, seed, "grouped")
    sql = (
        "SELECT e.object_id, g.split FROM eligible e JOIN _group_sides g USING (sample_id)"
        f" UNION ALL {singles_sql}"
    )
    return [("grouped", sql, {})]


def _upstream(con, *, seed, val, test, min_per_class):

    cases = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in SPLIT_NAMES.items())
    con.execute(
        "CREATE TEMP TABLE _upstream AS SELECT object_id, CASE"
        " lower(trim(json_extract_string(extra, '$.upstream_split')))"
        f" {cases} END AS split FROM objects"
        " WHERE image_format IS NOT NULL AND extra IS NOT NULL"
    )
    [(n,)] = con.execute("SELECT count(*) FROM _upstream WHERE split IS NOT NULL").fetchall()
    if not n:
        raise SplitError("no object in this store carries an upstream split")
    return [("upstream", "SELECT object_id, split FROM _upstream WHERE split IS NOT NULL", {})]


def _leave_one_out(column: str, prefix: str):
    def scheme(con, *, seed, val, test, min_per_class):
        values = [
            v
            for (v,) in con.execute(
                f"SELECT DISTINCT {column} FROM eligible WHERE {column} IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        if len(values) < 2:
            raise SplitError(
                f"{prefix} needs at least two {column}s with images, found {len(values)}"
            )
        names: dict[str, str] = {}
        for value in values:
            name = f"{prefix}-{sanitize(value)}"
            if name in names:
                raise SplitError(f"{column}s {names[name]!r} and {value!r} share the name {name}")
            names[name] = value
        jobs = []
        for name, value in names.items():
            held = f"{column} = {_literal(value)}"
            rest = f"(SELECT * FROM eligible WHERE {column} IS NOT NULL AND NOT ({held}))"
            train_val = _ranked(con, rest, {"test": 0.0, "val": val}, seed, name, min_per_class)
            sql = f"SELECT object_id, 'test' AS split FROM eligible WHERE {held}"
            sql += f" UNION ALL {train_val}"
            jobs.append((name, sql, {"held_out": {column: value}}))
        return jobs

    return scheme


def _leave_one_source_out(con, **params):
    return _leave_one_out("source", "loso")(con, **params)


def _leave_one_instrument_out(con, **params):
    return _leave_one_out("instrument", "loio")(con, **params)


_JOBS = {
    "stratified": _stratified,
    "grouped": _grouped,
    "upstream": _upstream,
    "loso": _leave_one_source_out,
    "loio": _leave_one_instrument_out,
}


# ------------------------------------------------------------------------------ helpers
def _digest(seed: int, salt: str, *parts: str) -> str:
    return hashlib.sha256("\0".join([str(seed), salt, *parts]).encode()).hexdigest()


def _unit(seed: int, salt: str, *parts: str) -> float:
    """A seeded number in [0, 1) from the parts: randomised rounding, stable per stratum."""
    return int(_digest(seed, salt, *parts)[:13], 16) / 16**13


def _ranked(con, relation: str, fractions: dict, seed: int, salt: str, min_per_class: int):
    """SQL assigning each object of `relation` a side, stratified per (source, stratum):
    `round(n * fraction)` (rounded up or down at random) to test and val, the rest to train;
    strata under `min_per_class` images, and at least one image per stratum, stay in train."""
    quotas = []
    for source, stratum, n in con.execute(
        f"SELECT source, stratum, count(*) FROM {relation} GROUP BY ALL"
    ).fetchall():
        quota = {"source": source, "stratum": stratum, "test": 0, "val": 0}
        if n >= max(min_per_class, 1):
            free = n - 1
            for side in ("test", "val"):
                u = _unit(seed, salt, side, source, stratum)
                quota[side] = min(math.floor(n * fractions[side] + u), free)
                free -= quota[side]
        quotas.append(quota)
    return _ranked_by_quota(con, relation, quotas, seed, salt)


_quota_tables = itertools.count()


def _ranked_by_quota(con, relation: str, quotas: list[dict], seed: int, salt: str) -> str:
    """SQL: within each (source, stratum) of `relation`, objects in a seeded hash order; the
    first `test` go to test, the next `val` to val, the rest to train."""
    name = f"_quotas_{next(_quota_tables)}"
    table = pa.table(
        {
            "source": pa.array([q["source"] for q in quotas], pa.string()),
            "stratum": pa.array([q["stratum"] for q in quotas], pa.string()),
            "n_test": pa.array([q["test"] for q in quotas], pa.int64()),
            "n_val": pa.array([q["val"] for q in quotas], pa.int64()),
        }
    )
    con.register(name, table)
    salt_sql = _literal(f"{seed}:{salt}")
    return (
        "SELECT r.object_id, CASE WHEN r.k < q.n_test THEN 'test'"
        " WHEN r.k < q.n_test + q.n_val THEN 'val' ELSE 'train' END AS split"
        " FROM (SELECT object_id, source, stratum, row_number() OVER (PARTITION BY source,"
        f" stratum ORDER BY sha256({salt_sql} || object_id)) - 1 AS k FROM {relation}) r"
        f" JOIN {name} q USING (source, stratum)"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _dir(store) -> Path:
    return store.layout.splits


def _write(con, root: Path, name: str, sql: str, info: dict) -> None:
    """Stream the split to `splits/<name>.parquet.tmp`, then rename it into place."""
    path = _file(StoreLayout(root).splits, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    info = {**info, "tool_version": __version__}
    schema = SPLIT_SCHEMA.with_metadata({METADATA_KEY: json.dumps(info, sort_keys=True)})
    reader = con.sql(f"SELECT object_id, split FROM ({sql}) ORDER BY object_id").to_arrow_reader(
        1 << 16
    )
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in reader:
            writer.write_batch(pa.RecordBatch.from_arrays(batch.columns, schema=schema))
    commit_file(tmp, path)
