"""A small WoRMS REST client (https://www.marinespecies.org/rest) with an on-disk cache.

- every request has explicit timeouts;
- 429, 5xx and transport errors (timeouts, refused connections) are retried with exponential
  backoff (honouring `Retry-After` on 429, capped), then raise `WormsError`;
- answers are cached in SQLite: 200 with its JSON, and 204 ("no content": WoRMS's *not
  found*) as a cached miss. A transport error or a 5xx is never cached, so an outage is never
  remembered as "not found".

>>> client = WormsClient(cache_path=":memory:")            # doctest: +SKIP
>>> client.lineage("Calanus finmarchicus").family          # doctest: +SKIP
'Calanidae'
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import quote

import httpx

from planktonzilla.taxonomy.lineage import RANK_DEPTH, RANKS, Lineage

DEFAULT_BASE_URL = "https://www.marinespecies.org/rest"
USER_AGENT = "planktonzilla-taxonomy (+https://github.com/planktonzilla)"
RETRY_STATUS = {429, 500, 502, 503, 504}


class WormsError(RuntimeError):
    """WoRMS could not be reached or kept failing (nothing was cached)."""


def default_cache_path() -> Path:
    return Path.home() / ".cache" / "planktonzilla" / "worms.sqlite"


class WormsClient:
    """Query WoRMS by name and AphiaID, caching answers on disk.

    Parameters: `base_url` (a local mirror or test server), `cache_path` (SQLite file, or
    ":memory:"), `timeout` (seconds, per request phase), `retries` (extra attempts after the
    first), `backoff` (first wait in seconds, doubled each retry), `max_wait` (cap on a wait).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        cache_path: str | Path | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
        )
        path = cache_path if cache_path is not None else default_cache_path()
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "create table if not exists responses ("
            " url text primary key, status integer not null, body text, fetched real)"
        )
        self._db.commit()
        self._lock = threading.Lock()
        self.requests = 0  #: HTTP requests actually sent (cache misses and retries)

    # -- endpoints ---------------------------------------------------------------------------

    def records_by_name(self, name: str) -> list[dict]:
        """AphiaRecords whose scientific name is exactly `name` ([] when WoRMS has none)."""
        path = f"/AphiaRecordsByName/{quote(name)}?like=false&marine_only=false"
        body = self._get(path)
        return body or []

    def classification(self, aphia_id: int) -> dict | None:
        """The nested classification (kingdom → taxon) of an AphiaID, or None."""
        return self._get(f"/AphiaClassificationByAphiaID/{int(aphia_id)}")

    def accepted_record(self, name: str) -> dict | None:
        """The accepted AphiaRecord for `name` (following `valid_AphiaID`), or None."""
        records = self.records_by_name(name)
        if not records:
            return None
        accepted = [r for r in records if r.get("status") == "accepted"]
        record = (accepted or records)[0]
        valid = record.get("valid_AphiaID")
        if valid and valid != record.get("AphiaID"):
            record = dict(record, AphiaID=valid, scientificname=record.get("valid_name"))
        return record

    def lineage(self, name: str) -> Lineage | None:
        """The lineage of the accepted taxon for `name`, or None when WoRMS has no such name."""
        record = self.accepted_record(name)
        if record is None:
            return None
        tree = self.classification(record["AphiaID"])
        if tree is None:
            return None
        values: dict[str, str] = {}
        node, last = tree, None
        while node:
            rank = str(node.get("rank", "")).lower()
            if rank in RANKS:
                values[rank] = node.get("scientificname", "")
            if rank in RANK_DEPTH or node.get("scientificname"):
                last = node
            node = node.get("child") or None
        deepest = max((RANKS.index(r) for r in values), default=-1)
        filled = [values.get(r, "") for r in RANKS[: deepest + 1]]
        if not all(filled):  # keep ranks contiguous
            cut = filled.index("")
            filled = filled[:cut]
        filled += [""] * (len(RANKS) - len(filled))
        rank = str((last or {}).get("rank", record.get("rank", ""))).lower()
        return Lineage(
            *filled,
            name=(last or {}).get("scientificname") or record.get("scientificname", name),
            rank=rank if rank in RANK_DEPTH else "",
            aphia_id=int((last or record)["AphiaID"]),
            root_class="living",
            plankton=True,
        )

    # -- transport -----------------------------------------------------------------------------

    def _get(self, path: str):
        url = self.base_url + path
        with self._lock:
            row = self._db.execute(
                "select status, body from responses where url = ?", (url,)
            ).fetchone()
        if row is not None:
            status, body = row
            return json.loads(body) if status == 200 and body else None
        status, body = self._fetch(url)
        with self._lock:
            self._db.execute(
                "insert or replace into responses values (?, ?, ?, ?)",
                (url, status, body, time.time()),
            )
            self._db.commit()
        return json.loads(body) if status == 200 and body else None

    def _fetch(self, url: str) -> tuple[int, str | None]:
        """(status, body) for a cacheable answer (200 or 204/404), else raise WormsError."""
        last_error = ""
        for attempt in range(self.retries + 1):
            wait = min(self.backoff * (2**attempt), self.max_wait)
            try:
                self.requests += 1
                response = self._http.get(url)
            except httpx.TransportError as exc:  # timeouts, refused, reset …
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    text = response.text.strip()
                    if not text:
                        return 204, None
                    try:
                        json.loads(text)
                    except ValueError:
                        last_error = "200 with a body that is not JSON"
                    else:
                        return 200, text
                elif response.status_code in (204, 404):
                    return 204, None
                elif response.status_code in RETRY_STATUS:
                    last_error = f"HTTP {response.status_code}"
                    retry_after = response.headers.get("Retry-After", "")
                    ascii_digits = retry_after.isascii() and retry_after.isdigit()
                    if response.status_code == 429 and ascii_digits:
                        wait = min(float(retry_after), self.max_wait)
                else:
                    raise WormsError(f"{url}: HTTP {response.status_code}")
            if attempt < self.retries:
                time.sleep(wait)
        raise WormsError(f"{url}: {last_error} after {self.retries + 1} attempts")

    def close(self) -> None:
        self._http.close()
        self._db.close()

    def __enter__(self) -> WormsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
