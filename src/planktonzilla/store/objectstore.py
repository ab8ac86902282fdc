"""The object store: a directory of immutable Parquet shards that pyarrow, DuckDB, pandas or
Hugging Face `datasets` can open directly.

    objects/<source>/part-NNNNN.parquet    one row per stored image (schema.OBJECTS)
    rejected/<source>/part-NNNNN.parquet   one row per input not stored (schema.REJECTED)
    manifest.json                          written last, atomically: what readers see

Crash safety: a shard appears only by atomic rename, and every shard on disk is complete.
Before a shard is renamed into place its path is added to the ingest journal; a rerun of an
interrupted ingest skips the inputs (by `origin`) already in a listed or journalled shard,
adopts the journalled shards the crashed run wrote, and then rewrites the manifest. Readers
only see the shards the manifest lists, so a crashed ingest leaves the previous view intact.

Trust: only shards the manifest or the journal lists are ever read or adopted (a stray
`part-*.parquet` is ignored, and `pz verify` names it). Listed shards are immutable: their
checksum is computed once, when they are first listed; shard numbers are never reused, and an
ingest refuses a store whose listed shards are missing or changed size (`pz verify`). The one
replacement: `retry_rejected` swaps a rejected shard for a new copy without the inputs read
again (journalled as `-old` + the copy, so the swap is atomic with the manifest).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from planktonzilla._version import __version__
from planktonzilla.constants import MAX_LABEL_CHARS
from planktonzilla.exceptions import StoreError, StoreLockedError
from planktonzilla.fileio import atomic_path, atomic_write, sha256_bytes, sha256_file
from planktonzilla.images import MAX_BYTES, MAX_PIXELS, ImageInfo, examine, examine_many
from planktonzilla.records import DEFAULTABLE, Record, Rejection
from planktonzilla.store import schema
from planktonzilla.store.layout import StoreLayout, read_manifest

#: Characters of an over-long raw label kept in its `bad_label` rejection.
_LABEL_KEPT = 200
#: DuckDB working memory per connection (`PZ_DUCKDB_MEMORY` overrides): past it, sorts, joins
#: and window functions spill to a temporary directory, so a whole-store query (a split, the
#: dataset view) takes bounded memory at any store size rather than DuckDB's default 80 % of RAM.
DUCKDB_MEMORY = "1GB"

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = re.compile(r"^part-(\d{5,})\.parquet$")


@dataclass
class IngestReport:
    """What one ingest run did. `read` counts the inputs this run examined; inputs already
    accounted for by an earlier run are `skipped` (a finished ingest rerun skips them all)."""

    source: str
    read: int = 0
    stored: int = 0
    rejected: int = 0
    skipped: int = 0
    retried: int = 0  # rejected inputs read again (`retry_rejected`), counted in `read`
    reasons: Counter = field(default_factory=Counter)
    label_conflicts: int = 0  # duplicates whose kept copy carries another raw label

    @property
    def ok(self) -> bool:
        return self.read == self.stored + self.rejected

    def summary(self) -> str:
        lines = [
            f"{self.source}: read {self.read:,} = stored {self.stored:,} + rejected "
            f"{self.rejected:,}"
            + (f"  (already in store: {self.skipped:,})" if self.skipped else "")
            + (f"  (rejected before, read again: {self.retried:,})" if self.retried else "")
        ]
        for reason, n in self.reasons.most_common():
            lines.append(f"  rejected {n:,} x {reason}")
        if self.label_conflicts:
            lines.append(
                f"  {self.label_conflicts:,} duplicate(s) carry a different label than the kept "
                "copy: label conflicts (see `pz stats`)"
            )
        return "\n".join(lines)


def _outcome(item: Record | Rejection, examined):
    """Combine an input with what `examine` found: a Rejection, or (record, info, hash)."""
    if isinstance(item, Rejection):
        return item
    if item.image is None:
        if not item.source_object_id:
            return Rejection(
                item.origin,
                "bad_row",
                "metadata-only object without a source_object_id",
                raw_label=item.raw_label,
            )
        return item, None, None
    data, info, digest = examined
    if data is None:
        return Rejection(item.origin, info, digest, item.source_object_id, item.raw_label)
    item.image = data
    return item, info, digest


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    """Buffers rows of one source and writes them as numbered shard pairs (objects and
    rejected share the number), each by atomic rename."""

    def __init__(
        self, root: Path, source: str, shard_rows: int, shard_bytes: int, journal: list[str]
    ):
        layout = self.layout = StoreLayout(root)
        self.journal = journal  # paths (relative to the store) of shards not yet listed
        self.dirs = {kind: layout.shard_dir(kind, source) for kind in ("objects", "rejected")}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        numbers = [
            int(m.group(1))
            for d in self.dirs.values()
            for p in d.iterdir()
            if (m := _PART.match(p.name))
        ]
        self.next_part = max(numbers, default=-1) + 1
        self.shard_rows, self.shard_bytes = shard_rows, shard_bytes
        # rows as tuples in schema order: one append per row keeps this off the hot path
        self.objects: list[tuple] = []
        self.rejected: list[tuple] = []
        self.buffered_bytes = 0

    def add(self, row: tuple) -> None:
        self.objects.append(row)
        self.buffered_bytes += len(row[_IMAGE] or b"")
        if len(self.objects) >= self.shard_rows or self.buffered_bytes >= self.shard_bytes:
            self.flush()

    def reject(self, row: tuple) -> None:
        self.rejected.append(row)
        if len(self.rejected) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        name = f"part-{self.next_part:05d}.parquet"
        wrote = False
        # Objects before rejections: if we die between the two, the rerun re-derives the
        # rejections (duplicates then point at rows that are already stored).
        for kind, rows, table_schema in (
            ("objects", self.objects, schema.OBJECTS),
            ("rejected", self.rejected, schema.REJECTED),
        ):
            if rows:
                path = self.dirs[kind] / name
                # journalled before it exists: the rerun of a killed ingest adopts it
                self.journal.append(path.relative_to(self.layout.root).as_posix())
                atomic_write(self.layout.journal, json.dumps(self.journal))
                columns = [
                    pa.array(values, type=field.type)
                    for values, field in zip(zip(*rows, strict=True), table_schema, strict=True)
                ]
                _atomic_parquet(pa.Table.from_arrays(columns, schema=table_schema), path)
                rows.clear()
                wrote = True
        self.buffered_bytes = 0
        if wrote:
            self.next_part += 1


_IMAGE = schema.OBJECTS.names.index("image")


class _KnownObjects:
    """Ids of every stored object, with the (source, label) each was filed under, in about
    100 bytes per object: 16-byte id prefixes map to an index into a small pair vocabulary."""

    def __init__(self):
        self._ids: dict[bytes, int] = {}
        self._pairs: list[tuple[str, str | None]] = []
        self._index: dict[tuple[str, str | None], int] = {}

    def add(self, object_id: str, source: str, label: str | None) -> None:
        pair = (source, label)
        index = self._index.get(pair)
        if index is None:
            index = self._index[pair] = len(self._pairs)
            self._pairs.append(pair)
        self._ids[bytes.fromhex(object_id[:32])] = index

    def get(self, object_id: str) -> tuple[str, str | None] | None:
        index = self._ids.get(bytes.fromhex(object_id[:32]))
        return None if index is None else self._pairs[index]


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    # Image bytes are already compressed: spend no CPU recompressing them.
    compression = {name: "zstd" for name in table.column_names}
    if "image" in compression:
        compression["image"] = "none"
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression, row_group_size=1024)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # naive times are taken as UTC


class ObjectStore:
    """A plankton image store on disk.

    >>> store = ObjectStore("store")
    >>> report = store.ingest(read_folder("images/"), source="mydata", instrument="FlowCam")
    >>> store.query("select raw_label, count(*) from objects group by 1").to_pylist()
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.layout = StoreLayout(self.path)

    # ---------------------------------------------------------------- reading
    def manifest(self) -> dict:
        """The current manifest (an empty one for a new store). `StoreError` when it is
        damaged, or missing while shards exist that no interrupted ingest journalled."""
        manifest = read_manifest(self.path)
        if manifest is None:
            if not self.layout.journal.exists() and any(
                next(self.path.glob(f"{kind}/*/part-*.parquet"), None)
                for kind in ("objects", "rejected")
            ):
                raise StoreError(
                    f"{self.layout.manifest} is missing but {self.path} holds shards: the "
                    "store is damaged; restore manifest.json from a backup (`pz verify` "
                    "lists the shards)"
                )
            return {"schema_version": schema.SCHEMA_VERSION, "sources": {}}
        return manifest

    def manifest_hash(self) -> str:
        """sha256 of manifest.json: identifies exactly what data a model or result saw."""
        path = self.layout.manifest
        return sha256_file(path) if path.exists() else ""

    def shard_files(
        self, kind: str = "objects", sources: str | Iterable[str] | None = None
    ) -> list[str]:
        """Paths of the shards the manifest lists (`objects` or `rejected`), by source name;
        `sources` keeps only those (a name or several)."""
        if isinstance(sources, str):
            sources = {sources}
        elif sources is not None:
            sources = set(sources)
        key = "shards" if kind == "objects" else "rejected_shards"
        return [
            str(self.path / shard["path"])
            for name, entry in sorted(self.manifest()["sources"].items())
            if sources is None or name in sources
            for shard in entry[key]
        ]

    def objects(
        self,
        *,
        source: str | None = None,
        columns: list[str] | None = None,
        images: bool = False,
        where: str | None = None,
        batch_size: int = 1024,
    ) -> Iterator[dict[str, Any]]:
        """Iterate objects (with their lineage columns) as dicts, streaming. Image bytes are
        read only with `images=True`; `where` is a SQL condition on the `objects` view, e.g.
        `"phylum = 'Arthropoda' and depth_max < 100"`."""
        if columns is None:
            selected = "* EXCLUDE (image)" if not images else "*"
        else:
            names = [*columns, "image"] if images and "image" not in columns else columns
            selected = ", ".join(f'"{c}"' for c in names)
        conditions = [f"({where})"] if where else []
        if source is not None:
            conditions.append("source = $source")
        sql = f"SELECT {selected} FROM objects"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        con = self.connect()
        try:
            params = {"source": source} if source is not None else None
            reader = con.sql(sql, params=params).to_arrow_reader(batch_size)
            for batch in reader:
                yield from batch.to_pylist()
        finally:
            con.close()

    def connect(self):
        """A DuckDB connection with the views `objects` (image rows joined with their lineage:
        kingdom … species, taxon, taxon_rank, aphia_id, root_class, plankton, qualifier,
        taxonomy_status), `rejected`, `taxonomy` (the mapping in use) and `splits` (scheme,
        object_id, split: every `splits/<scheme>.parquet`; empty when none) and `samples` (every
        `samples/<source>.parquet`, schema.SAMPLES; empty when none)."""
        import tempfile

        import duckdb

        spill = os.path.join(tempfile.gettempdir(), "planktonzilla-duckdb")
        memory = os.environ.get("PZ_DUCKDB_MEMORY", DUCKDB_MEMORY)
        con = duckdb.connect(config={"memory_limit": memory, "temp_directory": spill})
        for kind, table_schema in (("objects", schema.OBJECTS), ("rejected", schema.REJECTED)):
            files = self.shard_files(kind)
            name = "objects_raw" if kind == "objects" else kind
            if files:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({_sql_list(files)})")
            else:
                con.register(f"_{kind}_empty", table_schema.empty_table())
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{kind}_empty")
        con.register("_taxonomy", self.taxonomy())
        con.execute("CREATE VIEW taxonomy AS SELECT * FROM _taxonomy")
        lineage = ", ".join(f'NULLIF(t."{c}", \'\') AS "{c}"' for c in _LINEAGE_TEXT)
        _metadata_view(con, self.layout)
        con.execute(
            "CREATE VIEW objects AS SELECT o.*, "
            + lineage
            + ", NULLIF(t.name, '') AS taxon, NULLIF(t.rank, '') AS taxon_rank, t.aphia_id,"
            " NULLIF(t.root_class, '') AS root_class, t.plankton,"
            " NULLIF(t.qualifier, '') AS qualifier, t.status AS taxonomy_status"
            " FROM objects_enriched o LEFT JOIN taxonomy t"
            " ON t.source = o.source AND t.raw_label = o.raw_label"
        )
        # splits/<scheme>.parquet (planktonzilla.data.splits), joined at read time
        split_files = sorted(str(p) for p in self.layout.splits.glob("*.parquet"))
        if split_files:
            con.execute(
                "CREATE VIEW splits AS SELECT regexp_extract(filename, '([^/]+)\\.parquet$', 1)"
                f" AS scheme, object_id, split FROM read_parquet({_sql_list(split_files)},"
                " filename = true)"
            )
        else:
            con.execute(
                "CREATE VIEW splits AS SELECT NULL::VARCHAR AS scheme,"
                " NULL::VARCHAR AS object_id, NULL::VARCHAR AS split WHERE false"
            )
        self._samples_view(con)
        return con

    def _samples_view(self, con) -> None:
        """The `samples` view: sampled volumes per sample (planktonzilla.ecology), joined at
        read time like the taxonomy; the empty table of schema.SAMPLES when there are none."""
        files = sorted(str(p) for p in self.layout.samples.glob("*.parquet"))
        if files:
            con.execute(
                f"CREATE VIEW samples AS SELECT * FROM read_parquet({_sql_list(files)},"
                " union_by_name = true)"
            )
        else:
            con.register("_samples_empty", schema.SAMPLES.empty_table())
            con.execute("CREATE VIEW samples AS SELECT * FROM _samples_empty")

    def taxonomy(self) -> pa.Table:
        """The mapping joined at read time: the shipped mapping of the public collections,
        plus the resolutions of this store's own sources (`taxonomy/<source>.parquet`)."""
        from planktonzilla.taxonomy import mapping_table

        shipped = mapping_table()
        tables = [shipped]
        covered = set(_pairs(shipped))
        for path in sorted(self.layout.taxonomy.glob("*.parquet")):
            local = pq.read_table(path).cast(shipped.schema)
            # a shipped row wins once a mapping update covers the label
            keep = [pair not in covered for pair in _pairs(local)]
            tables.append(local.filter(pa.array(keep, pa.bool_())))
        return pa.concat_tables(tables)

    def refresh_taxonomy(self) -> list[str]:
        """Resolve every source's labels again (after a backbone, mapping or name-index
        update) into `taxonomy/<source>.parquet`; shards are never rewritten, and every
        view (objects, captions, splits, training labels) reads the new lineages. Returns
        the sources refreshed."""
        sources = sorted(self.manifest()["sources"])
        with self._lock():
            for source in sources:
                self._resolve_labels(source)
        return sources

    def _resolve_labels(self, source: str) -> None:
        """Resolve the source's raw labels the shipped mapping does not cover, with the parser
        and backbone, into `taxonomy/<source>.parquet` (derived data: rewritten each ingest)."""
        from planktonzilla.taxonomy import load_mapping, resolve_labels

        shipped = load_mapping()
        labels = sorted(
            {label for label in self._column("objects", "raw_label", source) if label}
            - {label for s, label in shipped if s == source}
        )
        path = self.layout.source_taxonomy(source)
        if not labels:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(exist_ok=True)
        _atomic_parquet(resolve_labels(source, labels), path)

    def query(self, sql: str) -> pa.Table:
        """Run DuckDB SQL over the views of `connect()` (objects, rejected, taxonomy, splits)."""
        con = self.connect()
        try:
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    def stats(self) -> dict[str, Any]:
        """Counts per source / instrument / raw label / harmonized taxon, rejection reasons,
        label conflicts and the image size distribution."""
        con = self.connect()

        def rows(sql: str) -> list[dict]:
            return con.sql(sql).to_arrow_table().to_pylist()

        try:
            totals = rows(
                "SELECT (SELECT count(*) FROM objects) AS stored,"
                " (SELECT count(*) FROM rejected) AS rejected"
            )[0]
            return {
                "stored": totals["stored"],
                "rejected": totals["rejected"],
                "read": totals["stored"] + totals["rejected"],
                "sources": rows(
                    "SELECT source, sum(stored)::BIGINT AS stored,"
                    " sum(rejected)::BIGINT AS rejected,"
                    " sum(labels)::BIGINT AS raw_labels FROM ("
                    "  SELECT source, count(*) AS stored, 0 AS rejected,"
                    "   count(DISTINCT raw_label) AS labels FROM objects GROUP BY source"
                    "  UNION ALL SELECT source, 0, count(*), 0 FROM rejected GROUP BY source"
                    ") GROUP BY source ORDER BY source"
                ),
                "instruments": rows(
                    "SELECT coalesce(instrument, '(none)') AS instrument, count(*) AS stored"
                    " FROM objects GROUP BY 1 ORDER BY 2 DESC"
                ),
                "raw_labels": rows(
                    "SELECT source, coalesce(raw_label, '(unlabelled)') AS raw_label,"
                    " count(*) AS stored FROM objects GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
                ),
                "taxa": rows(
                    "SELECT coalesce(root_class, '(unresolved)') AS root_class,"
                    " coalesce(phylum, '') AS phylum, coalesce(taxon, '') AS taxon,"
                    " coalesce(taxon_rank, '') AS rank, count(*) AS stored,"
                    " count(DISTINCT source) AS sources FROM objects"
                    " GROUP BY ALL ORDER BY stored DESC"
                ),
                "rejected_reasons": rows(
                    "SELECT source, split_part(reason, ':', 1) AS reason, count(*) AS n"
                    " FROM rejected GROUP BY 1, 2 ORDER BY 1, 3 DESC"
                ),
                "label_conflicts": rows(LABEL_CONFLICTS_SQL),
                "image_size": rows(
                    "SELECT count(image_format) AS images,"
                    " min(width) AS min_width, quantile_disc(width, 0.5) AS median_width,"
                    " max(width) AS max_width, min(height) AS min_height,"
                    " quantile_disc(height, 0.5) AS median_height, max(height) AS max_height,"
                    " quantile_disc(width * height, [0.05, 0.5, 0.95]) AS pixels_p5_p50_p95"
                    " FROM objects WHERE image_format IS NOT NULL"
                )[0],
            }
        finally:
            con.close()

    # ---------------------------------------------------------------- writing
    @contextmanager
    def _lock(self):
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.layout.lock, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLockedError(
                    f"another process is writing to {self.path}: wait for it to finish"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _journal(self) -> list[str]:
        """Shards a killed ingest wrote before it could list them (relative paths), listed
        shards it replaced (`-path`) and the sources it was retrying (`retry:<source>`)."""
        path = self.layout.journal
        try:
            entries = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path} is damaged ({exc}): delete it to drop the unlisted shards of the "
                "interrupted ingest, then rerun it"
            ) from exc
        return [e for e in entries if isinstance(e, str)] if isinstance(entries, list) else []

    def _shards(self, kind: str, source: str | None = None) -> list[Path]:
        """The shards this store trusts: those the manifest lists (which must be intact:
        present, of the listed size) and those the journal lists that exist."""
        key = "shards" if kind == "objects" else "rejected_shards"
        listed = []
        for name, entry in self.manifest()["sources"].items():
            if source is None or name == source:
                for shard in entry[key]:
                    path = self.path / shard["path"]
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:
                        size = None
                    if size != shard["bytes"]:
                        problem = "is missing" if size is None else f"has {size:,} bytes"
                        raise StoreError(
                            f"{shard['path']} {problem} (the manifest lists "
                            f"{shard['bytes']:,} bytes): the store is damaged; run `pz verify` "
                            "and restore the shard from a backup"
                        )
                    listed.append(path)
        prefix = f"{kind}/" + (f"{source}/" if source else "")
        journal = self._journal()
        dropped = {self.path / e[1:] for e in journal if e.startswith("-")}
        for rel in journal:
            path = self.path / rel
            if rel.startswith(prefix) and _PART.match(path.name) and path.is_file():
                listed.append(path)
        return sorted(set(listed) - dropped)

    def _retire_rejections(self, source: str, candidates: set[str], writer: _ShardWriter):
        """Drop from the listed rejected shards of `source` the retried inputs (`candidates`)
        that this run (or the interrupted one it completes) read again: each such shard is
        replaced by a copy without them, so that read = stored + rejected still holds."""
        journal = writer.journal
        new = [self.path / e for e in journal if e.startswith(("objects/", "rejected/"))]
        superseded = set()
        for path in new:
            if path.parent.name == source and path.is_file():
                superseded.update(pq.read_table(path, columns=["origin"])["origin"].to_pylist())
        superseded &= candidates
        if not superseded:
            return []
        retired = []
        entry = self.manifest()["sources"].get(source, {})
        for shard in entry.get("rejected_shards", []):
            if "-" + shard["path"] in journal:
                continue  # replaced by the interrupted run already
            path = self.path / shard["path"]
            table = pq.read_table(path)
            keep = [o not in superseded for o in table["origin"].to_pylist()]
            if all(keep):
                continue
            if any(keep):
                copy = writer.dirs["rejected"] / f"part-{writer.next_part:05d}.parquet"
                writer.next_part += 1
                _atomic_parquet(table.filter(pa.array(keep)), copy)  # unlisted until journalled
                journal.append(copy.relative_to(self.path).as_posix())
            journal.append("-" + shard["path"])
            atomic_write(self.layout.journal, json.dumps(journal))
            retired.append(path)
        return retired

    def _column(self, kind: str, name: str, source: str | None = None) -> Iterator[Any]:
        for path in self._shards(kind, source):
            yield from pq.read_table(path, columns=[name]).column(name).to_pylist()

    def ingest(
        self,
        records: Iterable[Record | Rejection],
        *,
        source: str,
        instrument: str | None = None,
        license: str | None = None,
        license_url: str | None = None,
        pixel_size_um: float | None = None,
        workers: int = 1,
        progress: bool = False,
        shard_rows: int = 4096,
        shard_bytes: int = 256 * 1024 * 1024,
        max_bytes: int = MAX_BYTES,
        max_pixels: int = MAX_PIXELS,
        max_label_chars: int = MAX_LABEL_CHARS,
        retry_rejected: bool = False,
    ) -> IngestReport:
        """Store every image of `records` under `source`; record every other input in
        `rejected`. Exact duplicates (same bytes, in any source) are stored once. Resumable
        and idempotent: inputs whose `origin` is already accounted for are skipped. The
        keyword metadata fill the fields a record leaves empty. Limits: `max_bytes` and
        `max_pixels` per image (`too_large`), `max_label_chars` per raw label (`bad_label`).
        `retry_rejected`: read again the inputs this source rejected (e.g. repaired in place);
        each one's old rejection is replaced by its new outcome."""
        if not _SOURCE_NAME.match(source):
            raise StoreError(
                f"invalid source name {source!r}: use letters, digits, '.', '_' or '-'"
            )
        defaults = {
            "instrument": instrument,
            "license": license,
            "license_url": license_url,
            "pixel_size_um": pixel_size_um,
        }
        report = IngestReport(source)
        with self._lock():
            for tmp in self.path.glob("*/*/*.tmp"):  # debris of a killed run
                tmp.unlink()
            journal = self._journal()
            marker = f"retry:{source}"
            retry = retry_rejected or marker in journal  # a killed retry run is completed
            accounted = set(self._column("objects", "origin", source))
            accounted.update(self._column("rejected", "origin", source))
            candidates: set[str] = set()
            if retry:  # rejected in listed shards and stored in none; not re-read yet
                pending = {self.path / e for e in journal}  # shards of a killed run
                listed, reread = {}, set()
                for kind in ("objects", "rejected"):
                    shards = self._shards(kind, source)
                    listed[kind] = _origins(p for p in shards if p not in pending)
                    reread |= _origins(p for p in shards if p in pending)
                candidates = listed["rejected"] - listed["objects"]
                accounted -= candidates - reread
            if retry and marker not in journal:
                journal.append(marker)
                atomic_write(self.layout.journal, json.dumps(journal))
            known = _KnownObjects()
            for path in self._shards("objects"):
                t = pq.read_table(path, columns=["object_id", "source", "raw_label"])
                for oid, src, label in zip(*(c.to_pylist() for c in t.columns), strict=True):
                    known.add(oid, src, label)
            writer = _ShardWriter(self.path, source, shard_rows, shard_bytes, journal)
            seen_now: set[str] = set()

            def fresh() -> Iterator[Record | Rejection]:
                for item in records:
                    if item.origin in accounted:
                        report.skipped += 1
                        continue
                    report.read += 1
                    report.retried += item.origin in candidates
                    if item.origin in seen_now:
                        yield Rejection(
                            item.origin,
                            "duplicate_input",
                            "the reader produced this input twice",
                            item.source_object_id,
                            item.raw_label,
                        )
                        continue
                    seen_now.add(item.origin)
                    if item.raw_label is not None and len(item.raw_label) > max_label_chars:
                        # bounded before anything parses it (the label resolver runs under
                        # the lock); the rejection keeps the label's start
                        yield Rejection(
                            item.origin,
                            item.reason if isinstance(item, Rejection) else "bad_label",
                            item.message
                            if isinstance(item, Rejection)
                            else f"raw label of {len(item.raw_label):,} characters is over the "
                            f"{max_label_chars:,}-character limit",
                            item.source_object_id,
                            item.raw_label[:_LABEL_KEPT] + "…",
                        )
                        continue
                    if isinstance(item, Record):
                        for key in DEFAULTABLE:
                            if getattr(item, key) is None and defaults[key] is not None:
                                setattr(item, key, defaults[key])
                    yield item

            results = self._processed(fresh(), workers, max_bytes, max_pixels)
            now = datetime.now(UTC)
            with _progress(progress, source) as advance:
                for result in results:
                    self._file(result, source, now, known, writer, report)
                    advance()
            writer.flush()
            retired = self._retire_rejections(source, candidates, writer) if retry else []
            self._resolve_labels(source)
            self._write_manifest()
            for path in retired:  # no longer listed: their replacements are
                path.unlink(missing_ok=True)
            self.layout.journal.unlink(missing_ok=True)  # every journalled shard is listed
        return report

    def _processed(self, items, workers: int, max_bytes: int, max_pixels: int):
        def needs_examining(item) -> bool:
            return isinstance(item, Record) and item.image is not None

        if workers <= 1:
            for item in items:
                examined = (
                    examine(item.image, item.origin, max_bytes, max_pixels)
                    if needs_examining(item)
                    else None
                )
                yield _outcome(item, examined)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        def done(chunk, future):
            results = iter(future.result())
            for item in chunk:
                yield _outcome(item, next(results) if needs_examining(item) else None)

        # spawn: DuckDB / Arrow threads in this process make fork unsafe. At most two chunks
        # per worker in flight: memory stays flat however many inputs come.
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                pending: deque = deque()
                for chunk in _chunks(items, 64):
                    images = [(i.image, i.origin) for i in chunk if needs_examining(i)]
                    job = pool.submit(examine_many, (images, max_bytes, max_pixels))
                    pending.append((chunk, job))
                    if len(pending) >= 2 * workers:
                        yield from done(*pending.popleft())
                while pending:
                    yield from done(*pending.popleft())
        except BrokenProcessPool:
            raise StoreError(
                "a worker process of ingest(workers>1) died: in a script, put the code under "
                "`if __name__ == '__main__':` (each worker re-imports the script), or use "
                "workers=1"
            ) from None

    @staticmethod
    def _file(result, source: str, now: datetime, known, writer, report) -> None:
        def reject(rej: Rejection, object_id: str | None = None) -> None:
            report.rejected += 1
            report.reasons[rej.reason.split(":")[0]] += 1
            writer.reject(
                (  # schema.REJECTED order
                    source,
                    rej.origin,
                    rej.source_object_id,
                    rej.raw_label,
                    rej.reason,
                    rej.message,
                    object_id,
                    now,
                    __version__,
                )
            )

        if isinstance(result, Rejection):
            reject(result)
            return
        record, info, object_id = result
        info: ImageInfo | None
        if object_id is None:  # metadata-only: identity from the source's own id
            object_id = sha256_bytes(f"{source}\0{record.source_object_id}".encode())
        kept = known.get(object_id)
        if kept:
            kept_source, kept_label = kept
            conflict = kept_label != record.raw_label
            report.label_conflicts += conflict
            reject(
                Rejection(
                    record.origin,
                    f"duplicate_of:{object_id}",
                    f"identical to an object already stored in {kept_source!r}"
                    + (f" as {kept_label!r}: label conflict" if conflict else ""),
                    record.source_object_id,
                    record.raw_label,
                ),
                object_id,
            )
            return
        known.add(object_id, source, record.raw_label)
        report.stored += 1
        writer.add(
            (  # schema.OBJECTS order
                object_id,
                source,
                record.source_object_id,
                record.raw_label,
                record.image,
                info.format if info else None,
                info.width if info else None,
                info.height if info else None,
                info.channels if info else None,
                record.instrument,
                record.pixel_size_um,
                record.lat,
                record.lon,
                record.depth_min,
                record.depth_max,
                _utc(record.time_utc),
                record.sample_id,
                record.license,
                record.license_url,
                record.origin,
                json.dumps(record.extra, sort_keys=True, default=str) if record.extra else None,
                now,
                __version__,
            )
        )

    def _write_manifest(self) -> None:
        """Describe every trusted shard (`_shards`); keep the entries of shards already
        listed (immutable, checked intact by `_shards`), hash only the journalled ones.
        Written by atomic rename."""
        previous = {
            shard["path"]: shard
            for entry in self.manifest()["sources"].values()
            for key in ("shards", "rejected_shards")
            for shard in entry[key]
        }

        def describe(path: Path) -> dict:
            rel = path.relative_to(self.path).as_posix()
            old = previous.get(rel)
            if old:
                return old
            size = path.stat().st_size
            rows = pq.ParquetFile(path).metadata.num_rows
            return {"path": rel, "rows": rows, "bytes": size, "sha256": sha256_file(path)}

        from planktonzilla.taxonomy import mapping_version

        sources: dict[str, dict] = {}
        for kind, key in (("objects", "shards"), ("rejected", "rejected_shards")):
            for path in self._shards(kind):
                entry = sources.setdefault(
                    path.parent.name,
                    {"objects": 0, "rejected": 0, "shards": [], "rejected_shards": []},
                )
                shard = describe(path)
                entry[key].append(shard)
                entry[kind] += shard["rows"]
        manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "tool_version": __version__,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "taxonomy_version": mapping_version(),
            "objects": sum(e["objects"] for e in sources.values()),
            "rejected": sum(e["rejected"] for e in sources.values()),
            "sources": dict(sorted(sources.items())),
        }
        atomic_write(self.layout.manifest, json.dumps(manifest, indent=1))


#: The shard columns a `metadata/<source>.parquet` table may fill (`pz enrich`).
ENRICHED_COLUMNS = ("lat", "lon", "depth_min", "depth_max", "time_utc")


def _metadata_view(con, layout: StoreLayout) -> None:
    """`objects_enriched`: `objects_raw` with its empty lat/lon/depth/time filled from the
    per-source metadata tables (keyed by object_id); a value in the shard always wins."""
    files = sorted(str(p) for p in layout.metadata.glob("*.parquet"))
    if not files:
        con.execute("CREATE VIEW objects_enriched AS SELECT * FROM objects_raw")
        return
    filled = ", ".join(f"COALESCE(o.{c}, m.{c}) AS {c}" for c in ENRICHED_COLUMNS)
    con.execute(
        f"CREATE VIEW objects_enriched AS SELECT o.* REPLACE ({filled}) FROM objects_raw o"
        f" LEFT JOIN (SELECT object_id, {', '.join(ENRICHED_COLUMNS)}"
        f" FROM read_parquet({_sql_list(files)}, union_by_name = true)) m USING (object_id)"
    )


def _origins(paths: Iterable[Path]) -> set[str]:
    return {o for p in paths for o in pq.read_table(p, columns=["origin"])["origin"].to_pylist()}


def _sql_list(paths: list[str]) -> str:
    """A DuckDB list literal of file paths (DDL statements take no parameters)."""
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _pairs(table: pa.Table) -> Iterator[tuple[str, str]]:
    return zip(table["source"].to_pylist(), table["raw_label"].to_pylist(), strict=True)


_LINEAGE_TEXT = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

#: Duplicates whose kept copy was filed under another raw label (in any source).
LABEL_CONFLICTS_SQL = """
SELECT r.source, r.origin, r.raw_label, o.source AS kept_source, o.origin AS kept_origin,
       o.raw_label AS kept_label, o.object_id
FROM rejected r JOIN objects o ON o.object_id = r.object_id
WHERE r.reason LIKE 'duplicate_of:%'
  AND r.raw_label IS DISTINCT FROM o.raw_label
ORDER BY r.source, r.origin
"""


@contextmanager
def _progress(enabled: bool, source: str):
    if not enabled:
        yield lambda: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,} inputs"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"ingesting {source}", total=None)
        yield lambda: bar.advance(task)
