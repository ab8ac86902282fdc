"""The shipped mapping: one row per `(source, raw_label)` of the public collections, with the
lineage, flags, provenance and confidence; how to build it, read it, and check it.

Files: `taxonomy/data/mapping.csv` (columns `COLUMNS`) and `mapping.json` beside it (taxonomy
version, backbone digest, SHA-256 of the CSV, counts).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from planktonzilla.fileio import atomic_write
from planktonzilla.taxonomy.backbone import DATA_DIR, Backbone
from planktonzilla.taxonomy.lineage import RANKS, Lineage
from planktonzilla.taxonomy.resolve import (
    COLUMNS,
    Resolution,
    Resolver,
    default_resolver,
    rows_table,
    validate_row,
)

if TYPE_CHECKING:
    import pyarrow as pa

MAPPING_CSV = DATA_DIR / "mapping.csv"
MAPPING_META = DATA_DIR / "mapping.json"
#: `source_labels.csv` of the shared data beside a source checkout, when there is one
DEFAULT_LABELS = Path(__file__).resolve().parents[4] / "shared" / "data" / "source_labels.csv"


def read_source_labels(path: str | Path) -> list[tuple[str, str]]:
    """`(source, raw_label)` pairs from a `source,raw_label` CSV."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [(r["source"], r["raw_label"]) for r in csv.DictReader(fh)]


def build_mapping(
    pairs: Iterable[tuple[str, str]], backbone: Backbone | None = None
) -> list[Resolution]:
    """Resolve every pair (offline), in a stable order."""
    resolver = Resolver(backbone) if backbone is not None else default_resolver()
    out = [resolver.resolve(label, source) for source, label in pairs]
    return sorted(out, key=lambda r: (r.source, r.raw_label))


def write_mapping(
    resolutions: Iterable[Resolution],
    path: str | Path = MAPPING_CSV,
    *,
    backbone_digest: str = "",
) -> dict:
    """Write the mapping CSV and its JSON sidecar; return the sidecar's content."""
    from planktonzilla.taxonomy import TAXONOMY_VERSION

    path = Path(path)
    rows = [r.row() for r in resolutions]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row(row))
    data = buf.getvalue().encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    meta = {
        "taxonomy_version": TAXONOMY_VERSION,
        "backbone_digest": backbone_digest,
        "sha256": hashlib.sha256(data).hexdigest(),
        "rows": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "provenance": dict(Counter(r["provenance"] for r in rows)),
        "deepest_rank": dict(Counter(deepest_rank(r) for r in rows)),
    }
    atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def deepest_rank(row: dict) -> str:
    """Deepest of the seven ranks filled, else the root class, else "unresolved"."""
    if row.get("status") == "unresolved":
        return "unresolved"
    for rank in reversed(RANKS):
        if row.get(rank):
            return rank
    return f"none ({row.get('root_class') or '?'})"


def _csv_row(row: dict) -> dict:
    out = dict(row)
    out["plankton"] = "" if row["plankton"] is None else str(int(bool(row["plankton"])))
    out["aphia_id"] = "" if row["aphia_id"] is None else str(row["aphia_id"])
    return out


def _typed(row: dict) -> dict:
    row = {c: row.get(c, "") or "" for c in COLUMNS}
    row["aphia_id"] = int(row["aphia_id"]) if row["aphia_id"] else None
    row["plankton"] = None if row["plankton"] == "" else row["plankton"] in ("1", "True", "true")
    row["confidence"] = float(row["confidence"] or 0)
    return row


def load_mapping(path: str | Path | None = None) -> dict[tuple[str, str], dict]:
    """The shipped mapping as `{(source, raw_label): row}` (typed values)."""
    path = Path(path) if path is not None else MAPPING_CSV
    if not path.is_file():
        raise FileNotFoundError(f"taxonomy mapping not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [_typed(r) for r in csv.DictReader(fh)]
    return {(r["source"], r["raw_label"]): r for r in rows}


def mapping_version(path: str | Path | None = None) -> str:
    """`taxonomy_version+sha` of a mapping (from its sidecar)."""
    path = Path(path) if path is not None else MAPPING_CSV
    meta = json.loads(path.with_suffix(".json").read_text())
    return f"{meta['taxonomy_version']}+{meta['sha256'][:12]}"


def mapping_table(path: str | Path | None = None) -> pa.Table:
    """The shipped mapping as a pyarrow table, one row per `(source, raw_label)`: the table
    the store joins objects with at read time."""
    return rows_table(list(load_mapping(path).values()))


_SHIPPED: tuple[float, dict] | None = None


def _shipped() -> dict:
    """The shipped mapping, read once (again if the file changed)."""
    global _SHIPPED
    if not MAPPING_CSV.is_file():
        return {}
    mtime = MAPPING_CSV.stat().st_mtime
    if _SHIPPED is None or _SHIPPED[0] != mtime:
        _SHIPPED = (mtime, load_mapping(MAPPING_CSV))
    return _SHIPPED[1]


def resolve_labels(
    source: str, labels: Iterable[str], *, backbone: Backbone | None = None
) -> pa.Table:
    """Resolve a source's labels (e.g. a user's own, at ingest): the shipped row when the pair
    is in the mapping; else the shipped resolution of the same raw label in the public
    collections, when they all agree on it (users often keep EcoTaxa / UVP names such as
    `solitaryblack`); else parser + backbone + broad name index, the source's labels
    together (`Resolver.resolve_many`). One row per distinct label, columns `COLUMNS`."""
    shipped = _shipped() if backbone is None else {}
    elsewhere = _agreed_by_label(shipped)
    resolver = Resolver(backbone) if backbone is not None else default_resolver()
    rows = {}
    todo = []
    for label in dict.fromkeys(labels):
        if label is None:
            continue
        row = shipped.get((source, label)) or elsewhere.get(label)
        rows[label] = dict(row, source=source) if row else None
        if row is None:
            todo.append(label)
    # together, so that a homonym is decided by the source's other labels
    for label, res in zip(todo, resolver.resolve_many(todo, source), strict=True):
        rows[label] = res.row()
    return rows_table(list(rows.values()))


def _agreed_by_label(shipped: dict) -> dict[str, dict]:
    """raw label -> its shipped row, for labels every collection using them resolves alike."""
    outcome = ("name", "qualifier", "root_class", "plankton")
    by_label: dict[str, list[dict]] = {}
    for (_, label), row in shipped.items():
        if row["status"] == "resolved":
            by_label.setdefault(label, []).append(row)
    return {
        label: rows[0]
        for label, rows in by_label.items()
        if len({tuple(r[k] for k in outcome) for r in rows}) == 1
    }


def check_mapping(
    rows: Iterable[dict],
    backbone: Backbone | None = None,
    pairs: Iterable[tuple[str, str]] | None = None,
) -> tuple[list[str], list[str]]:
    """Consistency of a mapping: returns (errors, warnings).

    Errors: invalid rows (status, reason, root class, qualifier vocabulary, contiguous ranks),
    duplicate pairs, a taxon with two lineages, a name that is a synonym or whose lineage
    differs from the backbone's, a missing pair.
    """
    rows = list(rows)
    errors: list[str] = []
    warnings: list[str] = []
    seen: set[tuple[str, str]] = set()
    by_name: dict[str, set] = defaultdict(set)
    by_value: dict[tuple[int, str], set] = defaultdict(set)
    aphia: dict[int, set] = defaultdict(set)
    categories: dict[str, set] = defaultdict(set)
    for row in rows:
        pair = (row["source"], row["raw_label"])
        where = f"{pair[0]}/{pair[1]}"
        if pair in seen:
            errors.append(f"{where}: listed twice")
        seen.add(pair)
        errors += [f"{where}: {e}" for e in validate_row(row)]
        if row["status"] == "resolved" and row["root_class"] != "living":
            categories[row["name"]].add(row["root_class"])
        if row["status"] != "resolved" or not row.get("rank"):
            continue
        lin = Lineage.from_dict(row)
        by_name[lin.name].add((lin.rank, lin.ranks(), lin.aphia_id))
        for i, value in enumerate(lin.ranks()):
            if value:
                by_value[(i, value)].add(lin.ranks()[:i])
        if lin.aphia_id is not None:
            aphia[lin.aphia_id].add(lin.name)
        if backbone is not None and row["provenance"] != "worms":
            listed = backbone.get(lin.name)
            if listed is None:
                errors.append(f"{where}: {lin.name!r} is not in the backbone")
            elif listed.is_synonym:
                errors.append(f"{where}: {lin.name!r} is a synonym of {listed.accepted!r}")
            else:
                expected = backbone.lineage(listed)
                if expected.ranks() != lin.ranks() or expected.aphia_id != lin.aphia_id:
                    errors.append(f"{where}: lineage of {lin.name!r} differs from the backbone")
        if any(v.endswith("incertae sedis") for v in lin.ranks()):
            warnings.append(f"{where}: rank filled as incertae sedis in {lin.name!r}")
    for name, variants in by_name.items():
        if len(variants) > 1:
            errors.append(f"{name!r} has {len(variants)} lineages")
    for (i, value), prefixes in by_value.items():
        if len(prefixes) > 1:
            errors.append(f"{RANKS[i]} {value!r} appears under {len(prefixes)} parents")
    for name, roots in categories.items():
        if len(roots) > 1:
            errors.append(f"non-living {name!r} has root classes {sorted(roots)}")
    for aid, names in aphia.items():
        if len(names) > 1:
            errors.append(f"AphiaID {aid} used by {sorted(names)}")
    if pairs is not None:
        missing = set(pairs) - seen
        for source, label in sorted(missing)[:20]:
            errors.append(f"{source}/{label}: missing from the mapping")
        if len(missing) > 20:
            errors.append(f"… and {len(missing) - 20} more missing pairs")
    if backbone is not None:
        warnings += [f"backbone: {p}" for p in backbone.problems]
    return errors, warnings


def check_files(
    path: str | Path | None = None,
    backbone: Backbone | None = None,
    labels: str | Path | None = None,
) -> tuple[list[str], list[str]]:
    """`check_mapping` on a mapping file, plus its sidecar's checksum."""
    path = Path(path) if path is not None else MAPPING_CSV
    rows = list(load_mapping(path).values())
    pairs = read_source_labels(labels) if labels else None
    errors, warnings = check_mapping(rows, backbone, pairs)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        errors.append(f"{meta_path.name}: missing")
    else:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
            errors.append(f"{meta_path.name}: checksum does not match {path.name}")
        if backbone is not None and meta.get("backbone_digest") not in ("", backbone.digest):
            warnings.append("mapping was built from another backbone version: rebuild it")
    return errors, warnings
