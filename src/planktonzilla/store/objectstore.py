"""The object store: a directory of immutable Parquet shards that pyarrow, DuckDB, pandas or
Hugging Face `datasets` can open directly.

    objects/<source>/part-NNNNN.parquet    one row per stored image (schema.OBJECTS)
    rejected/<source>/part-NNNNN.parquet   one row per input not stored (schema.REJECTED)
    manifest.json                          written last, atomically: what readers see

Crash safety: a shard appears only by atomic rename, and every shard on disk is complete.
A rerun of an interrupted ingest skips the inputs (by `origin`) already in a shard, adopts the
shards the crashed run wrote, and then rewrites the manifest. Readers only see the shards the
manifest lists, so a crashed ingest leaves the previous view intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from planktonzilla._version import __version__
from planktonzilla.exceptions import StoreError, StoreLockedError
from planktonzilla.fileio import atomic_path, atomic_write, sha256_bytes, sha256_file
from planktonzilla.images import MAX_BYTES, MAX_PIXELS, ImageInfo, examine, examine_many
from planktonzilla.records import DEFAULTABLE, Record, Rejection
from planktonzilla.store import schema
from planktonzilla.store.layout import StoreLayout, read_manifest

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

    def __init__(self, root: Path, source: str, shard_rows: int, shard_bytes: int):
        layout = StoreLayout(root)
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
                columns = [
                    pa.array(values, type=field.type)
                    for values, field in zip(zip(*rows, strict=True), table_schema, strict=True)
                ]
                _atomic_parquet(
                    pa.Table.from_arrays(columns, schema=table_schema), self.dirs[kind] / name
                )
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
        """The current manifest (an empty one for a new store)."""
        manifest = read_manifest(self.path)
        if manifest is None:
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
        object_id, split: every `splits/<scheme>.parquet`; empty when none)."""
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
        con.execute(
            "CREATE VIEW objects AS SELECT o.*, "
            + lineage
            + ", NULLIF(t.name, '') AS taxon, NULLIF(t.rank, '') AS taxon_rank, t.aphia_id,"
            " NULLIF(t.root_class, '') AS root_class, t.plankton,"
            " NULLIF(t.qualifier, '') AS qualifier, t.status AS taxonomy_status"
            " FROM objects_raw o LEFT JOIN taxonomy t"
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
        return con

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

    def _shards_on_disk(self, kind: str, source: str | None = None) -> list[Path]:
        base = self.path / kind
        if not base.is_dir():
            return []
        dirs = [base / source] if source else sorted(p for p in base.iterdir() if p.is_dir())
        return sorted(p for d in dirs if d.is_dir() for p in d.iterdir() if _PART.match(p.name))

    def _column(self, kind: str, name: str, source: str | None = None) -> Iterator[Any]:
        for path in self._shards_on_disk(kind, source):
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
    ) -> IngestReport:
        """Store every image of `records` under `source`; record every other input in
        `rejected`. Exact duplicates (same bytes, in any source) are stored once. Resumable
        and idempotent: inputs whose `origin` is already accounted for are skipped. The
        keyword metadata fill the fields a record leaves empty."""
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
            accounted = set(self._column("objects", "origin", source))
            accounted.update(self._column("rejected", "origin", source))
            known = _KnownObjects()
            for path in self._shards_on_disk("objects"):
                t = pq.read_table(path, columns=["object_id", "source", "raw_label"])
                for oid, src, label in zip(*(c.to_pylist() for c in t.columns), strict=True):
                    known.add(oid, src, label)
            writer = _ShardWriter(self.path, source, shard_rows, shard_bytes)
            seen_now: set[str] = set()

            def fresh() -> Iterator[Record | Rejection]:
                for item in records:
                    if item.origin in accounted:
                        report.skipped += 1
                        continue
                    report.read += 1
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
            self._resolve_labels(source)
            self._write_manifest()
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

        def jobs(chunks):
            for chunk in chunks:
                images = [(i.image, i.origin) for i in chunk if needs_examining(i)]
                yield chunk, (images, max_bytes, max_pixels)

        # spawn: DuckDB / Arrow threads in this process make fork unsafe.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pending: list[list] = []

            def args():
                for chunk, job in jobs(_chunks(items, 64)):
                    pending.append(chunk)
                    yield job

            for examined in pool.imap(examine_many, args(), chunksize=1):
                chunk = pending.pop(0)
                results = iter(examined)
                for item in chunk:
                    yield _outcome(item, next(results) if needs_examining(item) else None)

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
        """Describe every shard on disk; reuse checksums of shards already described (shards
        are immutable), hash only new ones. Written by atomic rename."""
        previous = {
            shard["path"]: shard
            for entry in self.manifest()["sources"].values()
            for key in ("shards", "rejected_shards")
            for shard in entry[key]
        }

        def describe(path: Path) -> dict:
            rel = path.relative_to(self.path).as_posix()
            size = path.stat().st_size
            old = previous.get(rel)
            if old and old["bytes"] == size:
                return old
            rows = pq.ParquetFile(path).metadata.num_rows
            return {"path": rel, "rows": rows, "bytes": size, "sha256": sha256_file(path)}

        from planktonzilla.taxonomy import mapping_version

        sources: dict[str, dict] = {}
        for kind, key in (("objects", "shards"), ("rejected", "rejected_shards")):
            for path in self._shards_on_disk(kind):
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
