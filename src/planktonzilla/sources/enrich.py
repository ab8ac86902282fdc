"""Metadata that is not in the archives, fetched after ingest (`pz enrich SOURCE`).

The SEANOE `*Net` tars carry no lat, lon, depth or date: those live in the EcoTaxa projects the
images came from. WHOI's live in the IFCB dashboard, one answer per bin (sources-verified.md).
This step asks those services, keeps every answer in an SQLite cache in the store
(`cache/enrich/<source>.sqlite`, committed per page or per answer, so a killed run resumes
without refetching), and writes `metadata/<source>.parquet` (object_id -> lat, lon, depth_min,
depth_max, time_utc, metadata_source), joined at read time by the store's `objects` view (a
value in the shard wins). No shard is rewritten.

- EcoTaxa, project known: the project object query, one request per page of `window_size`
  objects. Endpoint and shape from the EcoTaxa API (ecotaxa_back, FastAPI)
  `POST /api/object_set/{project_id}/query?fields=obj.latitude,…&window_start=&window_size=`
  with a filters JSON body, answering `{"object_ids": [...], "details": [[...], ...],
  "total_ids": N}` (`details` rows in `fields` order).
- EcoTaxa, project unknown (the SEANOE objid -> project mapping is not published): the
  per-object endpoint `GET /api/object/{objid}` (`latitude`, `longitude`, `depth_min`,
  `depth_max`, `objdate`, `objtime`), `concurrency` requests at a time, cached, and reported.
- IFCB dashboard: `GET {base}/api/bin/{bin_id}` -> `lat`, `lng`, `depth`, `timestamp_iso`.
  Offline, a fixed-site collection is stamped with its site and marked `fixed_site`.

Requests are rate-limited (`rate` per second across threads), time out, and are retried on
429 (honouring Retry-After), 5xx and transport errors, like the WoRMS client; a failure is
never cached, so an outage is not remembered as "no metadata".
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from planktonzilla.exceptions import SourceError
from planktonzilla.sources.ingest import _float, _when, empty_fields
from planktonzilla.sources.registry import Collection, get

if TYPE_CHECKING:
    import httpx

    from planktonzilla.store import ObjectStore

ECOTAXA_URL = "https://ecotaxa.obs-vlfr.fr"
IFCB_DASHBOARD_URL = "https://ifcb-data.whoi.edu"
#: The project query's fields, in the order of each `details` row.
ECOTAXA_FIELDS = (
    "obj.latitude",
    "obj.longitude",
    "obj.depth_min",
    "obj.depth_max",
    "obj.objdate",
    "obj.objtime",
    "obj.orig_id",
)
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_ANSWER = ("lat", "lon", "depth_min", "depth_max", "time_utc")


class EnrichError(SourceError):
    """A metadata service kept failing (what was fetched so far stays cached)."""


def offline() -> bool:
    return os.environ.get("PZ_OFFLINE", "").lower() in ("1", "true", "yes")


class JsonClient:
    """JSON over HTTP with timeouts, a shared rate limit, and retries with backoff."""

    def __init__(
        self,
        client: httpx.Client,
        *,
        rate: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
    ):
        self.http = client
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        self.requests = 0
        self._lock = threading.Lock()
        self._next = 0.0

    def _wait_turn(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def call(self, method: str, url: str, **kwargs) -> dict | None:
        """The JSON object answered, None on 404; `EnrichError` after the retries."""
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff * 2**attempt, self.max_wait)
            self._wait_turn()
            try:
                with self._lock:
                    self.requests += 1
                r = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:  # timeouts, refused, reset
                last = f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code == 404:
                    return None
                if r.status_code < 300:
                    try:
                        body = r.json()
                    except ValueError:
                        body = None
                    if isinstance(body, dict):
                        return body
                    last = f"HTTP {r.status_code} with a body that is not a JSON object"
                elif r.status_code in _RETRY_STATUS:
                    last = f"HTTP {r.status_code}"
                    after = r.headers.get("Retry-After", "")
                    if after.isdigit():
                        wait = min(float(after), self.max_wait)
                else:
                    raise EnrichError(f"{url}: HTTP {r.status_code} {r.text[:200]}")
            if attempt < self.retries:
                time.sleep(wait)
        raise EnrichError(f"{url}: {last} after {self.retries + 1} attempts")


class _Cache:
    """Answers by key (EcoTaxa objid, or IFCB bin id) and the pages already fetched."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.lock = threading.Lock()
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, found INTEGER NOT NULL,"
            " lat REAL, lon REAL, depth_min REAL, depth_max REAL, time_utc TEXT, origin TEXT);"
            "CREATE TABLE IF NOT EXISTS pages (project TEXT, window_start INTEGER,"
            " window_end INTEGER, total INTEGER, PRIMARY KEY (project, window_start));"
        )

    def put(self, rows: Iterable[tuple], page: tuple[str, int, int, int] | None = None) -> None:
        """Store answers (and mark their page done) in one transaction."""
        with self.lock, self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            if page:
                self.db.execute("INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?)", page)

    def known(self) -> set[str]:
        """Keys the service answered (a stamped fixed site is asked again next time)."""
        with self.lock:
            rows = self.db.execute("SELECT key FROM answers WHERE origin != 'fixed_site'")
            return {k for (k,) in rows}

    def pages(self, project: str) -> tuple[dict[int, int], int | None]:
        """({window_start: window_end} of the pages fetched, the project's total)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT window_start, window_end, total FROM pages WHERE project = ?", (project,)
            ).fetchall()
        return {s: e for s, e, _ in rows}, (rows[0][2] if rows else None)

    def table(self):
        """All answers as an Arrow table (read in chunks, never one dict per answer)."""
        import pyarrow as pa

        schema = pa.schema(
            [("key", pa.string()), ("found", pa.int8())]
            + [(n, pa.float64()) for n in _ANSWER[:4]]
            + [("time_utc", pa.string()), ("origin", pa.string())]
        )
        batches = []
        with self.lock:
            cur = self.db.execute(f"SELECT {', '.join(schema.names)} FROM answers")
            while chunk := cur.fetchmany(50_000):
                cols = zip(*chunk, strict=True)
                batches.append(
                    pa.table(
                        [pa.array(c, f.type) for c, f in zip(cols, schema, strict=True)],
                        schema=schema,
                    )
                )
        return pa.concat_tables(batches) if batches else None

    def close(self) -> None:
        self.db.close()


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _ecotaxa_row(key: str, lat, lon, dmin, dmax, date, tm) -> tuple:
    when = _when(str(date) if date else None, str(tm) if tm else None)
    return (key, 1, _float(lat), _float(lon), _float(dmin), _float(dmax), _iso(when), "ecotaxa")


@dataclass
class EnrichReport:
    source: str
    objects: int = 0
    keys: int = 0  # objids or bins the store holds
    requests: int = 0
    from_cache: int = 0
    not_found: int = 0  # answered 404 (cached)
    failed: int = 0  # kept failing: not cached, fetched by the next run
    mode: str = ""
    skipped: str = ""  # why nothing was fetched
    empty: dict[str, int] = field(default_factory=dict)  # field -> objects still without it

    @property
    def ok(self) -> bool:
        """Nothing failed (offline or nothing to fetch is not a failure)."""
        return not self.failed and not self.skipped.startswith("stopped")

    def lines(self) -> list[str]:
        out = [f"{self.source}: {self.mode}" + (f" — {self.skipped}" if self.skipped else "")]
        if not self.skipped:
            out.append(
                f"  {self.keys:,} keys for {self.objects:,} objects: {self.from_cache:,} cached, "
                f"{self.requests:,} requests, {self.not_found:,} not found, {self.failed:,} failed"
            )
        for name, n in self.empty.items():
            if n:
                out.append(f"  {name}: empty for {n:,} of {self.objects:,} objects")
        return out


def enrich(
    c: Collection | str,
    store: ObjectStore,
    *,
    ecotaxa_url: str = ECOTAXA_URL,
    dashboard_url: str = IFCB_DASHBOARD_URL,
    projects: Iterable[int] = (),
    window_size: int = 5000,
    concurrency: int = 4,
    rate: float = 10.0,
    retries: int = 4,
    backoff: float = 0.5,
    timeout: float = 30.0,
    is_offline: bool | None = None,
) -> EnrichReport:
    """Fetch the metadata of collection `c`'s objects in `store` and write
    `metadata/<source>.parquet`. Resumable; offline it only stamps a fixed site."""
    from planktonzilla.sources.download import make_client

    c = get(c) if isinstance(c, str) else c
    if c.id not in store.manifest()["sources"]:
        raise SourceError(f"{c.id} is not in the store at {store.path}: ingest it first")
    report = EnrichReport(c.id)
    if c.enrich is None:
        report.mode, report.skipped = "no metadata service", "nothing to fetch for this collection"
        return _finish(store, c, report, None)
    cache = _Cache(store.layout.cache("enrich") / f"{c.id}.sqlite")
    try:
        keys = _store_keys(store, c)
        report.objects = sum(keys.values())
        report.keys = len(keys)
        if is_offline if is_offline is not None else offline():
            report.mode, report.skipped = c.enrich.kind, "offline: skipped (PZ_OFFLINE)"
            if c.enrich.lat is not None:
                _stamp_site(c, cache, keys)
                report.skipped += "; the fixed site is stamped (metadata_source=fixed_site)"
            return _finish(store, c, report, cache)
        projects = tuple(projects) or c.enrich.projects
        with make_client(timeout=timeout, connect_timeout=min(timeout, 10.0)) as http:
            api = JsonClient(http, rate=rate, retries=retries, backoff=backoff)
            try:
                if c.enrich.kind == "ecotaxa" and projects:
                    report.mode = f"EcoTaxa project query ({', '.join(map(str, projects))})"
                    for project in projects:
                        _ecotaxa_project(api, cache, ecotaxa_url, int(project), window_size)
                    if rest := len(set(keys) - cache.known()):  # objids outside the projects
                        report.mode += f", then per-object for {rest:,} objids not in them"
                        fetch = _ecotaxa_object(ecotaxa_url)
                        _per_key(api, cache, keys, report, concurrency, fetch)
                elif c.enrich.kind == "ecotaxa":
                    report.mode = "EcoTaxa per-object (project unknown: one request per objid)"
                    _per_key(api, cache, keys, report, concurrency, _ecotaxa_object(ecotaxa_url))
                else:
                    report.mode = "IFCB dashboard (one request per bin)"
                    _per_key(api, cache, keys, report, concurrency, _ifcb_bin(dashboard_url))
            except EnrichError as exc:
                report.skipped = f"stopped: {exc} (what was fetched is cached; rerun to resume)"
                if c.enrich.lat is not None:
                    _stamp_site(c, cache, keys)
            finally:
                report.requests = api.requests
        if report.failed and c.enrich.lat is not None:
            _stamp_site(c, cache, keys)
        return _finish(store, c, report, cache)
    finally:
        cache.close()


def _store_keys(store: ObjectStore, c: Collection) -> dict[str, int]:
    """Key (objid or bin id) -> number of the source's objects carrying it."""
    column = "sample_id" if c.enrich.kind == "ifcb_dashboard" else "source_object_id"
    rows = store.query(
        f"SELECT {column} AS k, count(*) AS n FROM objects_raw WHERE source = "
        f"'{c.id}' AND {column} IS NOT NULL GROUP BY 1"
    )
    return dict(zip(rows["k"].to_pylist(), rows["n"].to_pylist(), strict=True))


def _stamp_site(c: Collection, cache: _Cache, keys: dict[str, int]) -> None:
    """The fixed site for every key without an answer, marked `fixed_site`."""
    e = c.enrich
    with cache.lock, cache.db:
        cache.db.execute("DELETE FROM answers WHERE origin = 'fixed_site'")
    todo = set(keys) - cache.known()
    cache.put((k, 1, e.lat, e.lon, e.depth, e.depth, None, "fixed_site") for k in sorted(todo))


def _ecotaxa_project(api: JsonClient, cache: _Cache, base: str, project: int, size: int) -> None:
    """Every object of an EcoTaxa project, one request per page; the offsets already cached
    (by this or an earlier run, whatever its window size) are not asked again."""
    done, total = cache.pages(str(project))
    start = 0
    while total is None or start < total:
        if done.get(start, start) > start:
            start = done[start]
            continue
        body = api.call(
            "POST",
            f"{base.rstrip('/')}/api/object_set/{project}/query",
            params={"fields": ",".join(ECOTAXA_FIELDS), "window_start": start, "window_size": size},
            json={},
        )
        if body is None:
            raise EnrichError(f"EcoTaxa project {project} not found (HTTP 404)")
        ids, details = body.get("object_ids"), body.get("details")
        if not isinstance(ids, list) or not isinstance(details, list) or len(ids) != len(details):
            raise EnrichError(f"EcoTaxa project {project}: unexpected answer {str(body)[:200]}")
        total = int(body.get("total_ids", len(ids)))
        rows = [_ecotaxa_row(str(i), *d[:6]) for i, d in zip(ids, details, strict=True)]
        cache.put(rows, (str(project), start, start + len(ids), total))
        if not ids:
            break
        start += len(ids)


def _ecotaxa_object(base: str):
    def fetch(api: JsonClient, key: str) -> tuple | None:
        body = api.call("GET", f"{base.rstrip('/')}/api/object/{key}")
        if body is None:
            return None
        return _ecotaxa_row(
            key,
            *(
                body.get(k)
                for k in ("latitude", "longitude", "depth_min", "depth_max", "objdate", "objtime")
            ),
        )

    return fetch


def _ifcb_bin(base: str):
    def fetch(api: JsonClient, key: str) -> tuple | None:
        body = api.call("GET", f"{base.rstrip('/')}/api/bin/{key}")
        if body is None:
            return None
        depth = _float(body.get("depth"))
        when = body.get("timestamp_iso")
        if when:
            when = datetime.fromisoformat(str(when).replace("Z", "+00:00")).isoformat()
        return (
            key,
            1,
            _float(body.get("lat")),
            _float(body.get("lng")),
            depth,
            depth,
            when,
            "ifcb_dashboard",
        )

    return fetch


def _per_key(api, cache: _Cache, keys: dict[str, int], report, concurrency: int, fetch) -> None:
    """One request per key not cached yet, `concurrency` at a time; each answer is committed
    as it arrives. A key that keeps failing is counted and left for the next run."""
    known = cache.known()
    todo = sorted(set(keys) - known)
    report.from_cache = len(keys) - len(todo)
    errors: list[str] = []

    def one(key: str) -> None:
        try:
            row = fetch(api, key)
        except EnrichError as exc:
            errors.append(str(exc))
            return
        if row is None:
            report.not_found += 1
            row = (key, 0, None, None, None, None, None, "not_found")
        cache.put([row])

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(one, todo))
    report.failed = len(errors)
    if errors and len(errors) == len(todo):
        raise EnrichError(f"every request failed, e.g. {errors[0]}")


def _finish(store: ObjectStore, c: Collection, report: EnrichReport, cache) -> EnrichReport:
    """Write `metadata/<source>.parquet` from the cache, then count the empty fields."""
    from planktonzilla.fileio import atomic_path

    table = cache.table() if cache is not None else None
    path = store.layout.source_metadata(c.id)
    if table is not None:
        import pyarrow as pa

        column = "sample_id" if c.enrich.kind == "ifcb_dashboard" else "source_object_id"
        con = store.connect()
        try:
            con.register("answers", table.filter(pa.compute.equal(table["found"], 1)))
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                con.execute(
                    "COPY (SELECT o.object_id, a.lat, a.lon, a.depth_min, a.depth_max,"
                    " CAST(a.time_utc AS TIMESTAMPTZ) AS time_utc, a.origin AS metadata_source"
                    f" FROM objects_raw o JOIN answers a ON a.key = o.{column}"
                    f" WHERE o.source = '{c.id}' ORDER BY o.object_id)"
                    f" TO '{tmp}' (FORMAT parquet)"
                )
        finally:
            con.close()
    report.objects, report.empty = empty_fields(store, c.id)
    return report
