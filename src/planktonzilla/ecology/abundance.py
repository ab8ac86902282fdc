"""Counts and concentrations per sample x taxon, from the store's labels or from a model's
predictions, with classifier-error corrections.

    table = abundance(ObjectStore("store"), rank="genus", unit="L")
    table = abundance(store, predictions="day.parquet", correction="acc", confusion="results.json")

A **sampling unit** is a row of the store's `samples` view (a bin, a run, an acquisition of a
net sample, a depth bin of a profile); objects join it on (source, sample_id) and, where the
unit is an acquisition or a depth bin, on `extra.acq_id` or on the object's depth. Units
without a volume still get counts (concentration null); objects whose sample has no row in
`samples` are counted under their own sample_id, with no volume.

**Lineage-aware**: at rank R an object counts under its lineage's taxon at R — so a count at
genus also counts for its family — and an object identified only to a coarser rank is counted
there (a row with that rank: "Calanidae" at family when the requested rank is genus). A
prediction is counted at its *confident* rank (`confident_rank` of `pz predict`) when that is
coarser than R. Every unit lists every taxon of its source, with count 0 where absent, and a
row `ALL_OBJECTS` (rank "total") counting all its objects.

**Corrections** (per unit, at the model's class level, then summed up the lineage):
- `acc` — adjusted classify-and-count: the predicted counts q satisfy E[q] = Mᵀn, with
  M[i, j] = P(predicted j | true i) from the model's validation confusion matrix; n is the
  non-negative least-squares solution.
- `pacc` — the probabilistic variant: q = the sum of the objects' class probabilities and M the
  mean probability vector of each true class's validation objects (needs a validation table).
Each has a percentile bootstrap interval that resamples both the validation set (the estimate
of M) and the unit's objects (the observed q).
Counts without correction carry the exact Poisson 95 % interval (Garwood) of the count.
`score` is the mean classifier probability of the predictions counted in a row (the confident
rank's probability where `pz predict` gives one); null for labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planktonzilla.constants import RANKS
from planktonzilla.exceptions import InputError

__all__ = [
    "COLUMNS",
    "UNITS",
    "abundance",
    "acc_draws",
    "acc_estimate",
    "bootstrap_interval",
    "load_confusion",
    "misclassification",
    "pacc_draws",
    "pacc_interval",
    "poisson_interval",
    "predict_store",
    "read_table",
    "write_table",
]

#: Concentration units: name -> millilitres per unit volume.
UNITS = {"ml": 1.0, "L": 1000.0, "m3": 1e6}
COLUMNS = (
    "source", "sample_id", "subsample_id", "time_utc", "lat", "lon", "depth_min", "depth_max",
    "volume_ml", "volume_method", "taxon", "rank", "aphia_id", "count", "concentration",
    "lower", "upper", "unit", "method", "score",
)  # fmt: skip
_LEVEL = 0.95
#: The taxon of each unit's row counting all its objects (rank "total"): an empty IFCB bin
#: still shows its volume and a count of 0.
ALL_OBJECTS = "all objects"


# ----------------------------------------------------------------------------- the statistics


def poisson_interval(counts, level: float = _LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood) interval of Poisson counts."""
    from scipy.stats import chi2

    k, inverse = np.unique(np.asarray(counts, dtype=float), return_inverse=True)
    a = 1 - level
    lower = np.where(k > 0, chi2.ppf(a / 2, 2 * k) / 2, 0.0)
    upper = chi2.ppf(1 - a / 2, 2 * (k + 1)) / 2
    return lower[inverse].reshape(-1), upper[inverse].reshape(-1)


def misclassification(confusion) -> np.ndarray:
    """Row-normalised confusion (rows true, columns predicted): M[i, j] = P(pred j | true i).
    A class without validation objects gets the identity row (assumed correct)."""
    c = np.asarray(confusion, dtype=float)
    totals = c.sum(axis=1, keepdims=True)
    eye = np.eye(len(c))
    return np.where(totals > 0, c / np.where(totals > 0, totals, 1), eye)


def acc_estimate(observed, m: np.ndarray) -> np.ndarray:
    """True counts n >= 0 minimising |Mᵀn - q| (q: observed predicted, or soft, counts)."""
    from scipy.optimize import nnls

    return nnls(np.asarray(m, dtype=float).T, np.asarray(observed, dtype=float))[0]


def _percentiles(estimate, draws, level: float):
    a = (1 - level) / 2
    return estimate, np.quantile(draws, a, axis=0), np.quantile(draws, 1 - a, axis=0)


def bootstrap_interval(
    predicted: np.ndarray,
    confusion: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = _LEVEL,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ACC estimate of one unit and its percentile interval (`acc_draws`)."""
    return _percentiles(*acc_draws(predicted, confusion, n_boot=n_boot, rng=rng), level)


def acc_draws(
    predicted: np.ndarray, confusion: np.ndarray, *, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """ACC estimate of one unit and `n_boot` bootstrap replicates of it: each redraws every
    validation row of `confusion` (multinomial, same class totals) and the unit's predicted
    counts (multinomial, same total)."""
    predicted = np.asarray(predicted, dtype=float)
    confusion = np.asarray(confusion, dtype=float)
    estimate = acc_estimate(predicted, misclassification(confusion))
    total = int(predicted.sum())
    if total == 0:
        return estimate, np.zeros((1, len(estimate)))
    rows = confusion.sum(axis=1).astype(int)
    m = misclassification(confusion)
    p = predicted / total
    draws = np.empty((n_boot, len(predicted)))
    for b in range(n_boot):
        cb = np.stack([rng.multinomial(n, m[i]) if n else m[i] * 0 for i, n in enumerate(rows)])
        mb = misclassification(cb)
        mb[rows == 0] = m[rows == 0]
        draws[b] = acc_estimate(rng.multinomial(total, p), mb)
    return estimate, draws


def _soft_misclassification(val_probs: np.ndarray, val_true: np.ndarray) -> np.ndarray:
    """M[i] = the mean probability vector of the validation objects of true class i (identity
    row for a class without validation objects)."""
    k = val_probs.shape[1]
    m = np.eye(k)
    for i in range(k):
        mask = val_true == i
        if mask.any():
            m[i] = val_probs[mask].mean(axis=0)
    return m


def pacc_interval(
    probs: np.ndarray,
    val_probs: np.ndarray,
    val_true: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = _LEVEL,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PACC estimate of one unit and its percentile interval (`pacc_draws`)."""
    return _percentiles(*pacc_draws(probs, val_probs, val_true, n_boot=n_boot, rng=rng), level)


def pacc_draws(
    probs: np.ndarray,
    val_probs: np.ndarray,
    val_true: np.ndarray,
    *,
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """PACC estimate of one unit (`probs`: its objects' class probabilities) and `n_boot`
    bootstrap replicates. The bootstrap is parametric in the composition: each replicate
    rebuilds the unit from the estimate — round(n_i) objects of class i, each a validation
    object of class i drawn at random — and re-estimates M from a class-stratified resample
    of the validation set. (Resampling the unit's objects instead adds the variance of a
    random composition, which a fixed sample does not have: it covered 100 %, not 95 %.)"""
    k = val_probs.shape[1]
    estimate = acc_estimate(probs.sum(axis=0), _soft_misclassification(val_probs, val_true))
    if len(probs) == 0:
        return estimate, np.zeros((1, k))
    members = [np.flatnonzero(val_true == i) for i in range(k)]
    composition = np.rint(estimate).astype(int)
    draws = np.empty((n_boot, k))
    for b in range(n_boot):
        val_index = np.concatenate([rng.choice(m, len(m)) for m in members if len(m)])
        m_b = _soft_misclassification(val_probs[val_index], val_true[val_index])
        q_b = np.zeros(k)
        for i, n in enumerate(composition):
            if n and len(members[i]):
                q_b += val_probs[rng.choice(members[i], n)].sum(axis=0)
            elif n:  # a class without validation objects: taken as always right
                q_b[i] += n
        draws[b] = acc_estimate(q_b, m_b)
    return estimate, draws


def load_confusion(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Labels and matrix (rows true, columns predicted) from a JSON file: a `{"labels",
    "matrix"}` object, or an evaluation `results.json` holding one (the first found)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read a confusion matrix ({exc})") from exc

    def find(node):
        if isinstance(node, dict):
            if "labels" in node and "matrix" in node:
                return node
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        return None

    found = find(data)
    if found is None:
        raise InputError(f"{path}: no confusion matrix (an object with 'labels' and 'matrix')")
    labels, matrix = list(found["labels"]), np.asarray(found["matrix"], dtype=float)
    if matrix.shape != (len(labels), len(labels)):
        raise InputError(f"{path}: the confusion matrix is {matrix.shape} for {len(labels)} labels")
    return labels, matrix


# ------------------------------------------------------------------------------ the objects


def _rank_expr(rank: str, prefix: str = "") -> tuple[str, str]:
    """SQL for (taxon, rank) at `rank`: the lineage's taxon there, else the deepest coarser one."""
    upto = RANKS[: RANKS.index(rank) + 1]
    taxon = "coalesce(" + ", ".join(f'{prefix}"{r}"' for r in reversed(upto)) + ")"
    which = (
        "CASE "
        + " ".join(f"WHEN {prefix}\"{r}\" IS NOT NULL THEN '{r}'" for r in reversed(upto))
        + " END"
    )
    return taxon, which


_UNIT_JOIN = """
LEFT JOIN samples s ON s.source = o.source AND s.sample_id = o.sample_id AND (
    s.subsample_by IS NULL
    OR (s.subsample_by = 'acq_id' AND s.subsample_id = json_extract_string(o.extra, '$.acq_id'))
    OR (s.subsample_by = 'depth' AND o.depth_min >= s.depth_min AND o.depth_min < s.depth_max))
"""


def _labelled_sql(rank: str, where: str | None) -> str:
    taxon, which = _rank_expr(rank, "o.")
    return f"""
    SELECT o.source, o.sample_id, s.subsample_id, o.time_utc, o.lat, o.lon, o.depth_min,
           o.depth_max, {taxon} AS taxon, {which} AS rank, NULL::DOUBLE AS score
    FROM {_selected(where)} o {_UNIT_JOIN}"""


def _selected(where: str | None) -> str:
    """The objects view, filtered by the user's SQL condition (on its own columns)."""
    return f"(SELECT * FROM objects WHERE ({where}))" if where else "objects"


def _predicted_sql(rank: str, where: str | None) -> str:
    """Predictions joined to their store objects; below the confident rank a prediction
    counts at its confident taxon."""
    limit = RANKS.index(rank)
    cases = " ".join(
        f"WHEN p.confident_rank = '{r}' THEN {_rank_expr(r, 'p.')[0]}" for r in RANKS[:limit]
    )
    rcases = " ".join(
        f"WHEN p.confident_rank = '{r}' THEN {_rank_expr(r, 'p.')[1]}" for r in RANKS[:limit]
    )
    taxon, which = _rank_expr(rank, "p.")
    return f"""
    SELECT o.source, o.sample_id, s.subsample_id, o.time_utc, o.lat, o.lon, o.depth_min,
           o.depth_max,
           CASE WHEN p.confident_rank IS NULL AND p.has_confidence THEN NULL
                {cases} ELSE {taxon} END AS taxon,
           CASE WHEN p.confident_rank IS NULL AND p.has_confidence THEN NULL
                {rcases} ELSE {which} END AS rank,
           p.label AS class_label, p.row_index, p.score
    FROM predictions p JOIN {_selected(where)} o ON o.object_id = p.object_id {_UNIT_JOIN}"""


def _register_predictions(con, path: str | os.PathLike) -> int:
    """Load a `pz predict` CSV / Parquet as the view `predictions` (+ row_index)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such predictions file")
    reader = "read_parquet" if path.suffix.lower() == ".parquet" else "read_csv_auto"
    quoted = "'" + str(path).replace("'", "''") + "'"  # DDL takes no parameters
    con.execute(
        f"CREATE TEMP TABLE _pred AS SELECT *, row_number() OVER () - 1 AS row_index"
        f" FROM {reader}({quoted})"
    )
    columns = {r[0] for r in con.execute("DESCRIBE _pred").fetchall()}
    missing = {"object_id", "label"} - columns
    if missing:
        raise InputError(f"{path}: not a pz predict output (no {', '.join(sorted(missing))})")
    ranks = ", ".join(
        f'CAST("{r}" AS VARCHAR) AS "{r}"' if r in columns else f'NULL::VARCHAR AS "{r}"'
        for r in RANKS
    )
    conf = (
        "NULLIF(CAST(confident_rank AS VARCHAR), '') AS confident_rank, true AS has_confidence"
        if "confident_rank" in columns
        else "NULL::VARCHAR AS confident_rank, false AS has_confidence"
    )
    where = "WHERE error IS NULL OR CAST(error AS VARCHAR) = ''" if "error" in columns else ""
    # the classifier's score of what is counted: the confident rank's probability, else top-1
    score = next(
        (
            f"TRY_CAST({c} AS DOUBLE)"
            for c in ("confident_probability", "probability")
            if c in columns
        ),
        "NULL::DOUBLE",
    )
    con.execute(
        f"CREATE TEMP VIEW predictions AS SELECT object_id, label, {ranks}, {conf},"
        f" {score} AS score, row_index FROM _pred {where}"
    )
    return con.execute("SELECT count(*) FROM predictions").fetchone()[0]


# ------------------------------------------------------------------------------- the table


def predict_store(
    store,
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    where: str | None = None,
    top_k: int = 5,
    device: str = "auto",
    batch_size: int = 256,
) -> int:
    """Run the model in `model_dir` over the store's images (those matching `where`, a SQL
    condition on the objects view) into a Parquet predictions table at `out` (the columns of
    `pz predict` plus object_id), streaming. Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from planktonzilla.fileio import atomic_path
    from planktonzilla.inference import Classifier

    classifier = Classifier.load(model_dir, device=device)
    condition = "image IS NOT NULL" + (f" AND ({where})" if where else "")
    objects = store.objects(columns=["object_id"], images=True, where=condition)
    written = 0
    with atomic_path(out) as tmp:
        writer = None
        try:
            batch: list[dict] = []

            def flush():
                nonlocal writer, written
                images = [o.pop("image") for o in batch]
                rows = [
                    {"object_id": o["object_id"], **p.to_row(top_k)}
                    for o, p in zip(batch, classifier.predict(images, top_k=top_k), strict=True)
                ]
                table = pa.Table.from_pylist(rows)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table.cast(writer.schema))
                written += len(rows)
                batch.clear()

            for obj in objects:
                batch.append(obj)
                if len(batch) == batch_size:
                    flush()
            if batch or writer is None:
                if batch:
                    flush()
                else:
                    raise InputError("no stored image to classify (metadata-only objects?)")
        finally:
            if writer is not None:
                writer.close()
    return written


def abundance(
    store,
    *,
    rank: str = "genus",
    unit: str = "L",
    predictions: str | os.PathLike | None = None,
    correction: str | None = None,
    confusion: str | os.PathLike | None = None,
    validation: str | os.PathLike | None = None,
    where: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
):
    """The tidy abundance table (`COLUMNS`) of `store` (an ObjectStore) as a pyarrow Table.

    Labels are the store's own (validated) lineages, or with `predictions` a `pz predict`
    output for store objects. `correction` ("acc" with `confusion`, "pacc" with `validation`:
    a predictions table of validation objects with a `true_label` column and top-k
    probabilities) corrects predicted counts for the classifier's errors. `where` is a SQL
    condition on the objects view (e.g. ``"source = 'mvco'"``); every sample of the sources
    it keeps is listed, with objects or not."""
    import pyarrow as pa

    if rank not in RANKS:
        raise InputError(f"unknown rank {rank!r}: one of {', '.join(RANKS)}")
    if unit not in UNITS:
        raise InputError(f"unknown unit {unit!r}: one of {', '.join(UNITS)}")
    if correction not in (None, "acc", "pacc"):
        raise InputError(f"unknown correction {correction!r}: acc or pacc")
    if correction and predictions is None:
        raise InputError("a correction needs --predictions (the classifier's output)")
    if correction == "acc" and confusion is None:
        raise InputError("acc needs --confusion (the model's validation confusion matrix)")
    if correction == "pacc" and validation is None:
        raise InputError("pacc needs --validation (validation predictions with true_label)")

    con = store.connect()
    try:
        if predictions is None:
            objects_sql = _labelled_sql(rank, where)
            method = "labels"
        else:
            n_predictions = _register_predictions(con, predictions)
            objects_sql = _predicted_sql(rank, where)
            method = "predicted"
        con.execute(f"CREATE TEMP VIEW unit_objects AS {objects_sql}")
        if (
            predictions is not None
            and n_predictions
            and not con.execute(
                "SELECT count(*) FROM predictions p JOIN objects o USING (object_id)"
            ).fetchone()[0]
        ):
            raise InputError(
                f"{predictions}: none of its {n_predictions:,} object_ids is in the store "
                "(predict the store itself: pz predict MODEL STORE --out FILE)"
            )
        # one pass over the objects: what the tidy table and the units need, per group
        con.execute(f"CREATE TEMP TABLE counts AS {_COUNTS_SQL}")
        con.execute(f"CREATE TEMP TABLE units AS {_UNITS_SQL}")
        table = _tidy(con, unit, method)
        if correction:
            corrected = _corrected(
                con, store, rank, unit, _units(con), correction, confusion, validation,
                predictions, n_boot, seed,
            )  # fmt: skip
            table = pa.concat_tables([table, corrected.cast(table.schema)])
    finally:
        con.close()
    return _with_aphia(table, store)


#: Each unit's metadata: the sample table's, filled from its objects (time, position, depth
#: range) where the sample table has none; every sample of the sources counted, with objects
#: or not.
_COUNTS_SQL = """
SELECT source, sample_id, subsample_id, taxon, rank, count(*) AS n, avg(score) AS score,
       min(time_utc) AS time_utc,
       sum(lat) AS lat_sum, count(lat) AS lat_n, sum(lon) AS lon_sum, count(lon) AS lon_n,
       min(depth_min) AS depth_min, max(depth_max) AS depth_max
FROM unit_objects GROUP BY ALL
"""
_UNITS_SQL = """
WITH seen AS (
    SELECT source, sample_id, subsample_id, min(time_utc) AS time_utc,
           sum(lat_sum) / nullif(sum(lat_n), 0) AS lat, sum(lon_sum) / nullif(sum(lon_n), 0) AS lon,
           min(depth_min) AS depth_min, max(depth_max) AS depth_max
    FROM counts WHERE sample_id IS NOT NULL GROUP BY ALL)
SELECT coalesce(s.source, seen.source) AS source,
       coalesce(s.sample_id, seen.sample_id) AS sample_id,
       coalesce(s.subsample_id, seen.subsample_id) AS subsample_id,
       coalesce(s.time_utc, seen.time_utc) AS time_utc,
       coalesce(s.lat, seen.lat) AS lat, coalesce(s.lon, seen.lon) AS lon,
       coalesce(s.depth_min, seen.depth_min) AS depth_min,
       coalesce(s.depth_max, seen.depth_max) AS depth_max,
       s.volume_ml, coalesce(s.volume_method, 'none: counts only') AS volume_method
FROM samples s FULL JOIN seen ON s.source = seen.source AND s.sample_id = seen.sample_id
     AND s.subsample_id IS NOT DISTINCT FROM seen.subsample_id
WHERE coalesce(s.source, seen.source) IN (SELECT DISTINCT source FROM unit_objects)
"""
_UNIT_COLUMNS = ("source", "sample_id", "subsample_id", "time_utc", "lat", "lon", "depth_min",
                 "depth_max", "volume_ml", "volume_method")  # fmt: skip


def _units(con) -> dict[tuple, dict[str, Any]]:
    """(source, sample_id, subsample_id) -> the unit's metadata (the `units` table)."""
    rows = con.execute(f"SELECT {', '.join(_UNIT_COLUMNS)} FROM units").fetchall()
    return {(r[0], r[1], r[2]): dict(zip(_UNIT_COLUMNS, r, strict=True)) for r in rows}


def _table(rows: list[dict]):
    import pyarrow as pa

    schema = pa.schema(
        [
            ("source", pa.string()), ("sample_id", pa.string()), ("subsample_id", pa.string()),
            ("time_utc", pa.timestamp("us", tz="UTC")), ("lat", pa.float64()),
            ("lon", pa.float64()), ("depth_min", pa.float64()), ("depth_max", pa.float64()),
            ("volume_ml", pa.float64()), ("volume_method", pa.string()), ("taxon", pa.string()),
            ("rank", pa.string()), ("aphia_id", pa.int64()), ("count", pa.float64()),
            ("concentration", pa.float64()), ("lower", pa.float64()), ("upper", pa.float64()),
            ("unit", pa.string()), ("method", pa.string()), ("score", pa.float64()),
        ]
    )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


_TIDY_SQL = f"""
WITH per_taxon AS (
    SELECT source, sample_id, subsample_id, taxon, rank, n, score
    FROM counts WHERE taxon IS NOT NULL
    UNION ALL
    SELECT source, sample_id, subsample_id, '{ALL_OBJECTS}', 'total', sum(n),
           sum(score * n) / nullif(sum(CASE WHEN score IS NOT NULL THEN n END), 0)
    FROM counts GROUP BY ALL),
taxa AS (SELECT DISTINCT source, taxon, rank FROM per_taxon)
SELECT {", ".join("u." + c for c in _UNIT_COLUMNS)}, t.taxon, t.rank,
       coalesce(c.n, 0)::DOUBLE AS count, c.score
FROM units u JOIN taxa t ON t.source = u.source
LEFT JOIN per_taxon c ON c.source = u.source AND c.sample_id = u.sample_id
     AND coalesce(c.subsample_id, '') = coalesce(u.subsample_id, '')
     AND c.taxon = t.taxon AND c.rank = t.rank
ORDER BY u.source, u.sample_id, u.subsample_id NULLS FIRST, t.rank, t.taxon
"""


def _tidy(con, unit: str, method: str):
    """Every unit x every taxon of its source (zeros included), with the Poisson interval of
    each count, scaled to a concentration by the unit's volume (null without one)."""
    import pyarrow as pa

    base = con.sql(_TIDY_SQL).to_arrow_table()
    count = base["count"].to_numpy()
    volume = base["volume_ml"].to_numpy(zero_copy_only=False).astype(float)  # null -> nan
    lower, upper = poisson_interval(count)
    scale = UNITS[unit] / np.where(volume > 0, volume, np.nan)
    missing = ~np.isfinite(scale)

    def scaled(values):
        return pa.array(np.where(missing, 0.0, values * scale), pa.float64(), mask=missing)

    schema = _table([]).schema
    n = base.num_rows
    columns = {
        **{c: base[c] for c in base.column_names},
        "aphia_id": pa.nulls(n, pa.int64()),
        "concentration": scaled(count),
        "lower": scaled(lower),
        "upper": scaled(upper),
        "unit": pa.array([unit] * n, pa.string()),
        "method": pa.array([method] * n, pa.string()),
    }
    return pa.table([columns[f.name] for f in schema], schema=schema)


def _class_lineages(con, labels: Sequence[str]) -> dict[str, dict]:
    """Each model class's lineage: as its predictions carry it, else resolved from its name."""
    from planktonzilla.taxonomy import resolve_label

    ranks = ", ".join(f'any_value("{r}") AS "{r}"' for r in RANKS)
    out = {
        row[0]: dict(zip(RANKS, row[1:], strict=True))
        for row in con.execute(f"SELECT label, {ranks} FROM predictions GROUP BY label").fetchall()
    }
    for label in labels:
        if label not in out:
            lineage = resolve_label(label).lineage
            out[label] = {r: getattr(lineage, r, None) for r in RANKS} if lineage else {}
    return out


def _probabilities(con, table: str, labels: list[str]) -> np.ndarray:
    """Class probability vectors from the top-k columns of a predictions table (the mass
    beyond the top k is spread evenly: pz predict keeps only the top k)."""
    columns = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    ks = sorted(int(c[3:-6]) for c in columns if c.startswith("top") and c.endswith("_label"))
    if not ks:
        raise InputError("pacc needs the top-k columns (top1_label, top1_probability, …)")
    index = {label: i for i, label in enumerate(labels)}
    select = ", ".join(f"top{k}_label, top{k}_probability" for k in ks)
    rows = con.execute(f"SELECT {select} FROM {table} ORDER BY row_index").fetchall()
    probs = np.zeros((len(rows), len(labels)))
    for n, row in enumerate(rows):
        for label, p in zip(row[::2], row[1::2], strict=True):
            if label in index and p is not None:
                probs[n, index[label]] += float(p)
        rest = 1 - probs[n].sum()
        if rest > 0:
            probs[n] += rest / len(labels)
    return probs


def _corrected(
    con, store, rank, unit, units, correction, confusion, validation, predictions, n_boot, seed
):
    rng = np.random.default_rng(seed)
    if correction == "acc":
        labels, matrix = load_confusion(confusion)
    else:
        vpath = Path(validation)
        reader = "read_parquet" if vpath.suffix.lower() == ".parquet" else "read_csv_auto"
        quoted = "'" + str(vpath).replace("'", "''") + "'"
        con.execute(
            f"CREATE TEMP TABLE validation AS SELECT *, row_number() OVER () - 1 AS row_index"
            f" FROM {reader}({quoted})"
        )
        labels = sorted(
            {r[0] for r in con.execute("SELECT DISTINCT true_label FROM validation").fetchall()}
            | {r[0] for r in con.execute("SELECT DISTINCT label FROM predictions").fetchall()}
        )
        val_true = np.array(
            [labels.index(r[0]) for r in con.execute(
                "SELECT true_label FROM validation ORDER BY row_index").fetchall()]
        )  # fmt: skip
        val_probs = _probabilities(con, "validation", labels)
        con.execute(
            "CREATE TEMP VIEW pred_k AS SELECT t.* FROM _pred t"
            " WHERE t.row_index IN (SELECT row_index FROM unit_objects)"
        )
        all_probs = _probabilities(con, "pred_k", labels)
    index = {label: i for i, label in enumerate(labels)}
    lineages = _class_lineages(con, labels)
    roll_up: dict[tuple, list[int]] = {}  # (taxon, rank) at the rank -> its classes
    upto = RANKS[: RANKS.index(rank) + 1]
    for i, label in enumerate(labels):
        lineage = lineages.get(label) or {}
        taxon_rank = next((r for r in reversed(upto) if lineage.get(r)), None)
        if taxon_rank is not None:
            roll_up.setdefault((lineage[taxon_rank], taxon_rank), []).append(i)
    objects = con.execute(
        "SELECT source, sample_id, subsample_id, class_label, row_index FROM unit_objects"
        " ORDER BY row_index"
    ).fetchall()
    grouped: dict[tuple, list] = {}
    for n, (src, sid, sub, label, _) in enumerate(objects):
        grouped.setdefault((src, sid, sub), []).append((n, label))
    unknown = {label for rows in grouped.values() for _, label in rows} - set(index)
    if unknown:
        raise InputError(
            f"predicted labels not in the confusion matrix: {', '.join(sorted(unknown)[:5])}"
        )
    rows = []
    per_ml = UNITS[unit]
    for key, members in sorted(grouped.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if correction == "acc":
            q = np.bincount([index[label] for _, label in members], minlength=len(labels))
            est, draws = acc_draws(q, matrix, n_boot=n_boot, rng=rng)
        else:
            probs = all_probs[[n for n, _ in members]]
            est, draws = pacc_draws(probs, val_probs, val_true, n_boot=n_boot, rng=rng)
        # classes -> taxa at the rank: the replicates are summed before taking percentiles
        per_taxon: dict[tuple, tuple] = {}
        for (taxon, taxon_rank), classes in roll_up.items():
            per_taxon[taxon, taxon_rank] = _percentiles(
                est[classes].sum(), draws[:, classes].sum(axis=1), _LEVEL
            )
        meta = units.get(key) or {}
        volume = meta.get("volume_ml")
        scale = per_ml / volume if volume else None
        for (taxon, taxon_rank), (e, lo_, up_) in sorted(per_taxon.items()):
            rows.append(
                {
                    **meta,
                    "taxon": taxon,
                    "rank": taxon_rank,
                    "count": float(e),
                    "concentration": e * scale if scale else None,
                    "lower": lo_ * scale if scale else None,
                    "upper": up_ * scale if scale else None,
                    "unit": unit,
                    "method": correction,
                }
            )
    return _table(rows)


def _with_aphia(table, store):
    """Fill `aphia_id` of each taxon from the store's taxonomy, else the backbone."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from planktonzilla.taxonomy import Backbone

    known: dict[str, int] = {}
    tax = store.taxonomy()
    for name, aphia in zip(tax["name"].to_pylist(), tax["aphia_id"].to_pylist(), strict=True):
        if name and aphia is not None:
            known.setdefault(name, int(aphia))
    taxa = pc.unique(table["taxon"])
    backbone = None
    ids = []
    for taxon in taxa.to_pylist():
        if taxon not in known and taxon != ALL_OBJECTS:
            backbone = backbone or Backbone.load()
            hit = backbone.get(taxon)
            known[taxon] = hit.aphia_id if hit else None
        ids.append(known.get(taxon))
    aphia = pc.take(pa.array(ids, pa.int64()), pc.index_in(table["taxon"], value_set=taxa))
    return table.set_column(table.schema.get_field_index("aphia_id"), "aphia_id", aphia)


def read_table(path: str | os.PathLike):
    """An abundance table written by `write_table` (Parquet or CSV), in the schema of COLUMNS."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such abundance table")
    schema = _table([]).schema
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).select(list(COLUMNS)).cast(schema)
    options = pacsv.ConvertOptions(column_types=schema, include_columns=list(COLUMNS))
    return pacsv.read_csv(path, convert_options=options)


def write_table(table, path: str | os.PathLike) -> Path:
    """Write the abundance table as Parquet or CSV (by suffix), atomically."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from planktonzilla.fileio import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InputError(f"{path}: write .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp)
    return path
