"""Careful HTTP downloads of large public archives.

- resumable: bytes go to `<name>.part`, a retry continues it with a `Range` request, and the
  file takes its final name only when complete (and verified when a size or checksum is known);
- explicit timeouts, retries with exponential backoff on transport errors and 5xx/429;
- an honest User-Agent naming the tool (some hosts drop generic library agents);
- `probe` asks with HEAD and falls back to a one-byte ranged GET when HEAD is refused, answers
  anything but 2xx, raises or times out (darchive drops HEAD connections, dbarchive refuses HEAD,
  NCEI times out on HEAD: sources-verified.md);
- a `200` that returns an HTML page where an archive is expected is a login wall or a
  landing page, never data: `LoginWallError`;
- the Fairdata download service flow (request -> poll -> authorize -> single-use URL).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planktonzilla.exceptions import DownloadError
from planktonzilla.fileio import commit_file, sha256_file

if TYPE_CHECKING:
    import httpx

PROJECT_URL = "https://github.com/planktonzilla/planktonzilla"
#: The Fairdata download API root (sources-verified.md: download.fairdata.fi answers 404 there).
FAIRDATA_URL = "https://etsin.fairdata.fi/api/download"
CHUNK = 1 << 20
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class LoginWallError(DownloadError):
    """The host answered `200` with an HTML page where an archive was expected."""


class VerificationError(DownloadError):
    """The bytes received are not the expected ones (size or checksum)."""


def user_agent() -> str:
    from planktonzilla._version import __version__

    return f"planktonzilla/{__version__} (+{PROJECT_URL})"


def make_client(*, timeout: float = 30.0, connect_timeout: float = 10.0) -> httpx.Client:
    import httpx

    return httpx.Client(
        headers={"User-Agent": user_agent()},
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=True,
    )


def _looks_like_html(content_type: str | None, head: bytes = b"") -> bool:
    if content_type and content_type.split(";")[0].strip().lower() in (
        "text/html",
        "application/xhtml+xml",
    ):
        return True
    start = head[:512].lstrip().lower()
    return start.startswith((b"<!doctype", b"<html")) or b"<html" in start[:256]


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", value or "")
    return int(m.group(3)) if m and m.group(3) != "*" else None


@dataclass(frozen=True)
class Probe:
    """What a host says about a URL without sending the body."""

    url: str
    ok: bool
    status: int | None
    size: int | None = None
    content_type: str | None = None
    accepts_ranges: bool = False
    method: str = "HEAD"
    message: str = ""


def probe(url: str, *, client: httpx.Client | None = None) -> Probe:
    """Reachability and size of `url`: HEAD, or a one-byte ranged GET when HEAD is refused,
    answers anything but 2xx, raises or times out (the GET's answer is the verdict)."""
    import httpx

    own = client is None
    client = client or make_client()
    try:
        try:
            r = client.head(url)
            if 200 <= r.status_code < 300:
                return _probe_result(url, r, "HEAD", b"")
            why = f"HEAD {r.status_code}"
        except httpx.HTTPError as exc:
            why = f"HEAD {type(exc).__name__}"
        method = f"GET bytes=0-0 ({why})"
        try:
            with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as r:
                head = next(r.iter_bytes(512), b"") if r.status_code < 400 else b""
                return _probe_result(url, r, method, head)
        except httpx.HTTPError as exc:
            return Probe(
                url,
                False,
                None,
                method=method,
                message=f"unreachable ({why}; GET {type(exc).__name__}: {exc})",
            )
    finally:
        if own:
            client.close()


def _probe_result(url: str, r: httpx.Response, method: str, head: bytes) -> Probe:
    ctype = r.headers.get("content-type")
    size = None
    if r.status_code == 206:
        size = _total_from_content_range(r.headers.get("content-range"))
    elif r.status_code == 200 and "content-length" in r.headers:
        size = int(r.headers["content-length"])
    ranges = r.status_code == 206 or r.headers.get("accept-ranges", "").lower() == "bytes"
    if r.status_code >= 400:
        return Probe(url, False, r.status_code, None, ctype, ranges, method, _status_help(r))
    if _looks_like_html(ctype, head):
        return Probe(
            url,
            False,
            r.status_code,
            size,
            ctype,
            ranges,
            method,
            "the host returns an HTML page (a login wall or landing page), not an archive: "
            "download it in a browser and pass the file with --from",
        )
    return Probe(url, True, r.status_code, size, ctype, ranges, method, "reachable")


def _status_help(r: httpx.Response) -> str:
    code = r.status_code
    what = {
        401: "authentication required",
        403: "forbidden: the host refuses this download (it may need a browser session)",
        404: "not found: the collection may have moved; check its DOI landing page",
        410: "gone: the collection has been withdrawn or moved",
        416: "requested range not satisfiable",
    }.get(code, r.reason_phrase or "error")
    return f"HTTP {code} {what} ({r.request.url})"


def download(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    expect_archive: bool = True,
    client: httpx.Client | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if an earlier attempt left one.

    `dest` appears only once the whole body arrived and matches `size` / `sha256` when they are
    given. Transport errors and 5xx/429 answers are retried (with Range from the bytes already
    on disk) up to `retries` times, sleeping `backoff * 2**attempt` seconds in between; other
    4xx answers and HTML login walls fail at once with a `DownloadError`.
    """
    import httpx

    dest = Path(dest)
    if dest.exists():
        _verify(dest, size, sha256, url)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own = client is None
    client = client or make_client()
    try:
        attempt = 0
        while True:
            try:
                done = _fetch_once(client, url, part, size, expect_archive, progress)
            except httpx.TransportError as exc:
                done, error = False, f"{type(exc).__name__}: {exc or 'connection dropped'}"
            except _Retryable as exc:
                done, error = False, str(exc)
            if done:
                break
            attempt += 1
            if attempt > retries:
                raise DownloadError(
                    f"{url}: gave up after {retries} retries ({error}); rerun to resume from "
                    f"{part.stat().st_size if part.exists() else 0:,} bytes"
                )
            time.sleep(backoff * 2 ** (attempt - 1))
    finally:
        if own:
            client.close()
    try:
        _verify(part, size, sha256, url)
    except DownloadError:
        part.unlink(missing_ok=True)  # a wrong body must not be resumed
        raise
    commit_file(part, dest)
    return dest


class _Retryable(Exception):
    pass


def _fetch_once(client, url, part: Path, size, expect_archive, progress) -> bool:
    """One GET; appends to `part`. True when the body is complete."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return True
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:
            total = _total_from_content_range(r.headers.get("content-range"))
            if total == have:
                return True
            part.unlink()  # our partial file does not fit the remote one: start over
            raise _Retryable(f"HTTP 416 with {have:,} bytes on disk; restarting")
        if r.status_code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code} {r.reason_phrase}")
        if r.status_code >= 400:
            raise DownloadError(
                f"{_status_help(r)}. Download it by other means and pass it with --from PATH."
            )
        if r.status_code == 206:
            start = int(
                re.match(r"bytes\s+(\d+)", r.headers.get("content-range", "bytes 0")).group(1)
            )
            total = _total_from_content_range(r.headers.get("content-range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Retryable(f"server resumed at byte {start}, not {have}; restarting")
            mode = "ab"
        else:  # 200: the whole body (the host ignored our Range, or this is the first try)
            have, mode = 0, "wb"
            total = int(r.headers["content-length"]) if "content-length" in r.headers else None
        if size is not None and total is not None and total != size:
            raise VerificationError(
                f"{url}: the host offers {total:,} bytes but {size:,} were expected; the file "
                "has changed upstream or this is not the collection's archive"
            )
        chunks = r.iter_bytes()  # as received: a dropped connection loses nothing
        first = b""
        if have == 0:
            first = next(chunks, b"")
            if expect_archive and _looks_like_html(r.headers.get("content-type"), first):
                raise LoginWallError(
                    f"{url}: the host answered {r.status_code} with an HTML page instead of the "
                    "archive (a login wall, cookie banner or landing page). Download the file in a "
                    "browser and pass it with --from PATH."
                )
        with open(part, mode) as fh:
            if first:
                fh.write(first)
                have += len(first)
            for block in chunks:
                fh.write(block)
                have += len(block)
                if progress:
                    progress(have, total)
    if total is not None and have < total:
        raise _Retryable(f"connection closed at {have:,} of {total:,} bytes")
    return True


def _verify(path: Path, size: int | None, sha256: str | None, url: str) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise VerificationError(f"{url}: got {actual:,} bytes, expected {size:,}")
    if sha256 and sha256_file(path) != sha256.lower():
        raise VerificationError(f"{url}: SHA-256 mismatch (expected {sha256})")


# --- Fairdata -----------------------------------------------------------------------------
# The Etsin download API as recorded in sources-verified.md: the parameter is `cr_id` everywhere;
# GET/POST `requests` answer one flat object {"package", "status", "size", "checksum", …};
# `authorize` answers {"url": …}, a single-use download URL used as is.


def fairdata_url() -> str:
    return os.environ.get("PZ_FAIRDATA_URL", FAIRDATA_URL).rstrip("/")


def fairdata_request(client: httpx.Client, base: str, cr_id: str) -> dict:
    """The package request of dataset `cr_id` (`GET {base}/requests?cr_id=`). Any answer but a
    200 with a JSON object is a `DownloadError`: a 404 means a wrong host or path."""
    r = client.get(f"{base}/requests", params={"cr_id": cr_id})
    return _fd_object(r, "requests")


def _fd_object(r: httpx.Response, what: str) -> dict:
    if r.status_code >= 400:
        raise DownloadError(f"Fairdata {what}: {_status_help(r)}: {r.text[:200]}")
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise DownloadError(f"Fairdata {what}: not a JSON object: {r.text[:200]}")
    return body


def fairdata_download(
    dataset: str,
    dest: Path,
    *,
    base_url: str | None = None,
    size: int | None = None,
    client: httpx.Client | None = None,
    poll_interval: float = 5.0,
    max_wait: float = 3600.0,
    retries: int = 5,
    backoff: float = 1.0,
) -> Path:
    """Fetch the package of Fairdata dataset `dataset` (its `cr_id`):

    1. `GET {base}/requests?cr_id=` tells whether a package is ready (`status` SUCCESS);
    2. if not, `POST {base}/requests` `{"cr_id"}` asks for one, and `GET` is polled until
       `status` is SUCCESS (FAILED is an error);
    3. `POST {base}/authorize` `{"cr_id", "package"}` answers `{"url"}`, a single-use URL,
       fetched as is; a broken transfer asks for a new URL and resumes the `.part` file.
    The package's `size` and `checksum` (`sha256:…`) are verified.
    """
    import httpx

    dest = Path(dest)
    if dest.exists():
        _verify(dest, size, None, f"fairdata:{dataset}")
        return dest
    base = (base_url or fairdata_url()).rstrip("/")
    own = client is None
    client = client or make_client()
    try:
        info = _fairdata_package(client, base, dataset, poll_interval, max_wait)
        size = size if size is not None else info.get("size")
        checksum = str(info.get("checksum") or "")
        sha256 = checksum.split(":", 1)[1] if checksum.lower().startswith("sha256:") else None
        last: Exception | None = None
        for attempt in range(retries + 1):
            r = client.post(
                f"{base}/authorize", json={"cr_id": dataset, "package": info["package"]}
            )
            url = _fd_object(r, "authorize").get("url")
            if not url:
                raise DownloadError(f"Fairdata authorize gave no url: {r.text[:200]}")
            try:
                return download(
                    url, dest, size=size, sha256=sha256, client=client, retries=0, backoff=backoff
                )
            except DownloadError as exc:  # single-use URL spent: authorize again and resume
                if isinstance(exc, LoginWallError | VerificationError):
                    raise
                last = exc
                time.sleep(backoff * 2**attempt)
        raise DownloadError(f"Fairdata download of {dataset} failed: {last}")
    except httpx.HTTPError as exc:
        raise DownloadError(f"Fairdata download service unreachable at {base}: {exc}") from exc
    finally:
        if own:
            client.close()


def _fairdata_package(client, base, dataset, poll_interval, max_wait) -> dict:
    def ready(info: dict) -> bool:
        status = str(info.get("status", "")).upper()
        if status == "FAILED":
            raise DownloadError(f"Fairdata could not package dataset {dataset}: {info}")
        return status == "SUCCESS" and bool(info.get("package"))

    r = client.get(f"{base}/requests", params={"cr_id": dataset})
    # no request yet may answer 404; the POST below then tells a wrong root (404 again) apart
    info = {} if r.status_code == 404 else _fd_object(r, "requests")
    if ready(info):
        return info
    info = _fd_object(client.post(f"{base}/requests", json={"cr_id": dataset}), "requests")
    deadline = time.monotonic() + max_wait
    while not ready(info):
        if time.monotonic() > deadline:
            raise DownloadError(
                f"Fairdata did not finish packaging {dataset} within {max_wait:.0f} s; rerun later"
            )
        time.sleep(poll_interval)
        info = fairdata_request(client, base, dataset)
    return info
