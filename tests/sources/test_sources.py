"""The public collections: registry, downloads against a real loopback HTTP server, safe
extraction, layout rules and one-call ingest — on archives built at test time from the real
images in ../shared/data."""

from __future__ import annotations

import csv
import gzip
import io
import json
import socket
import tarfile
import threading
import uuid
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import typer
from typer.testing import CliRunner

from planktonzilla.sources import download as dl
from planktonzilla.sources import extract as ex
from planktonzilla.sources.ingest import (
    SourceError,
    fetch,
    ifcb_name,
    ingest_source,
    plan,
    prepare,
    with_urls,
)
from planktonzilla.sources.registry import collections, get
from planktonzilla.store import ObjectStore

FAST = {"retries": 3, "backoff": 0.01}


# --- a real HTTP server on 127.0.0.1 ------------------------------------------------------


class Site:
    """Files served by path, with per-path misbehaviour, and a Fairdata download service."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.rules: dict[str, set[str]] = {}
        self.log: list[tuple[str, str, dict]] = []
        self.fd_packages: dict[str, tuple[str, bytes]] = {}  # dataset -> (package, bytes)
        self.fd_requested: dict[str, int] = {}  # dataset -> polls since the request
        self.fd_tokens: dict[str, str] = {}  # token -> dataset (single use)
        self.fd_drop_once = False
        self.base = ""

    def add(self, path: str, data: bytes, *rules: str) -> str:
        self.files[path] = data
        self.rules[path] = set(rules)
        return self.base + path


def _handler(site: Site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", ctype="application/octet-stream", headers=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code, obj):
            self._send(code, json.dumps(obj).encode(), "application/json")

        def _body(self, data: bytes, rules: set[str], drop: bool):
            rng = self.headers.get("Range")
            start = 0
            if rng and "no_range" not in rules:
                start = int(rng.split("=")[1].split("-")[0])
                end = rng.split("-")[1]
                stop = int(end) + 1 if end else len(data)
                if start >= len(data):
                    return self._send(416, headers={"Content-Range": f"bytes */{len(data)}"})
                chunk = data[start:stop]
                code, extra = 206, {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
            else:
                chunk, code, extra = data, 200, {}
            extra["Accept-Ranges"] = "bytes"
            if not drop:
                return self._send(code, chunk, headers=extra)
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(chunk)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _files(self):
            url = urlsplit(self.path)
            site.log.append((self.command, url.path, dict(self.headers)))
            if url.path.startswith("/fd/"):
                return self._fairdata(url)
            if url.path not in site.files:
                return self._send(404, b"not found", "text/plain")
            data, rules = site.files[url.path], site.rules[url.path]
            if "403" in rules:
                return self._send(403, b"<html>Forbidden</html>", "text/html")
            if "html" in rules:
                page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
                return self._send(200, page, "text/html; charset=utf-8")
            if "html_sniff" in rules:  # lies about its type
                return self._send(200, b"\n  <!doctype html><html>login</html>")
            if self.command == "HEAD" and "no_head" in rules:
                return self._send(405, b"", "text/plain")
            drop = "drop_once" in rules and self.command == "GET"
            if drop:
                rules.discard("drop_once")
            return self._body(data, rules, drop)

        def _fairdata(self, url):
            q = parse_qs(url.query)
            route = url.path[len("/fd") :]
            if route == "/requests" and self.command == "POST":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                site.fd_requested[body["dataset"]] = 0
                return self._json(201, {"dataset": body["dataset"]})
            if route == "/requests" and self.command == "GET":
                ds = q["dataset"][0]
                if ds not in site.fd_requested:
                    return self._json(404, {"error": "no active requests"})
                site.fd_requested[ds] += 1
                done = site.fd_requested[ds] >= 2  # pending on the first poll
                package = site.fd_packages[ds][0]
                status = "SUCCESS" if done else "PENDING"
                entry = {"status": status} | ({"package": package} if done else {})
                return self._json(200, {"dataset": ds, "partial": [], "complete": entry})
            if route == "/authorize" and self.command == "POST":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                ds = body["dataset"]
                if site.fd_packages.get(ds, ("",))[0] != body.get("package"):
                    return self._json(404, {"error": "no such package"})
                token = uuid.uuid4().hex
                site.fd_tokens[token] = ds
                return self._json(200, {"token": token})
            if route == "/download" and self.command == "GET":
                ds = site.fd_tokens.pop(q.get("token", [""])[0], None)  # single use
                if ds is None:
                    return self._json(401, {"error": "invalid or used token"})
                drop = site.fd_drop_once
                site.fd_drop_once = False
                return self._body(site.fd_packages[ds][1], set(), drop)
            return self._json(404, {"error": "unknown route"})

        do_GET = do_HEAD = do_POST = _files

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up: not test failures
        pass


@pytest.fixture
def site():
    s = Site()
    server = _Server(("127.0.0.1", 0), _handler(s))
    s.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield s
    server.shutdown()
    server.server_close()


# --- archives built from the real images ---------------------------------------------------


def pick(shared_data: Path, classes: int = 3, per_class: int = 4, skip: int = 0):
    """[(class, path)] from the real ISIIS images (sorted, deterministic)."""
    root = shared_data / "isiis_ndsb"
    out = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir())[skip : skip + classes]:
        out += [(cls, p) for p in sorted((root / cls).glob("*.jpg"))[:per_class]]
    return out


def make_tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


PLANKTONSET_PREFIX = "0127422/2.3/data/0-data/FINAL_Plankton_Segments_12082014"


def planktonset_archive(images) -> bytes:
    members = {f"{PLANKTONSET_PREFIX}/{c}/{p.name}": p.read_bytes() for c, p in images}
    members["0127422/2.3/about/readme.txt"] = b"NCEI accession 0127422"
    return make_tar(members)


def class_folder(tmp: Path, images) -> Path:
    root = tmp / "user_copy"
    for cls, p in images:
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / p.name).write_bytes(p.read_bytes())
    (root / ".DS_Store").write_bytes(b"junk")
    return root


def objects(store: Path, sql: str = "SELECT * FROM objects ORDER BY origin"):
    return ObjectStore(store).query(sql).to_pylist()


# --- registry -------------------------------------------------------------------------------


def test_registry_has_the_15_collections_with_their_facts(shared_data):
    cs = collections()
    assert len(cs) == 15
    assert sum(c.images for c in cs) == 17_404_047
    with open(shared_data / "source_labels.csv") as fh:
        assert {c.id for c in cs} == {row["source"] for row in csv.DictReader(fh)}
    for c in cs:
        assert c.license and c.license_url.startswith("https://")
        assert c.doi and c.citation and c.instrument and c.layout
        assert c.download.urls or c.download.dataset
    j = get("jedioceans")
    assert (j.metadata.kind, j.metadata.lat, j.metadata.lon, j.metadata.depth) == (
        "site",
        34.682718,
        139.444779,
        20.0,
    )
    assert j.archive == "zip-in-zip" and j.license == "CC-BY-SA-4.0"
    s = get("sykezooscan2024")
    assert s.download.kind == "fairdata" and s.download.size == 79_363_785
    assert get("whoi").license_note  # MIT is a code licence: flagged
    assert get("planktonset1.0").instrument == "ISIIS-2"
    assert get("zoolake").split.kind == "lists"
    assert dict(get("lensless").split.dirs) == {"TRAIN_IMAGE": "train", "TEST_IMAGE": "test"}
    assert get("zooscan").split.kind == "table"
    with pytest.raises(KeyError, match="unknown collection"):
        get("nope")


def test_ifcb_file_names_give_bin_time_and_roi():
    bin_id, when, roi = ifcb_name("IFCB1_2006_158_000036_01314")
    assert bin_id == "IFCB1_2006_158_000036" and roi == 1314
    assert when.isoformat() == "2006-06-07T00:00:36+00:00"
    bin_id, when, roi = ifcb_name("D20130825T230904_IFCB014_00013")
    assert bin_id == "D20130825T230904_IFCB014" and roi == 13
    assert when.isoformat() == "2013-08-25T23:09:04+00:00"
    assert ifcb_name("copepod_123") is None


# --- downloads ------------------------------------------------------------------------------


def test_download_resumes_after_a_dropped_connection(site, tmp_path, shared_data):
    data = planktonset_archive(pick(shared_data))
    url = site.add("/a.tar.gz", data, "drop_once")
    out = dl.download(url, tmp_path / "a.tar.gz", size=len(data), **FAST)
    assert out.read_bytes() == data
    assert not (tmp_path / "a.tar.gz.part").exists()
    gets = [h for m, p, h in site.log if m == "GET"]
    assert len(gets) == 2 and "Range" not in gets[0]
    assert gets[1]["Range"] == f"bytes={len(data) // 2}-"
    assert gets[0]["User-Agent"].startswith("planktonzilla/")


def test_download_continues_a_part_file_and_restarts_when_range_is_ignored(site, tmp_path):
    data = bytes(range(256)) * 400
    url = site.add("/b.zip", data)
    (tmp_path / "b.zip.part").write_bytes(data[:1000])
    assert dl.download(url, tmp_path / "b.zip", **FAST).read_bytes() == data
    assert site.log[-1][2]["Range"] == "bytes=1000-"
    url = site.add("/c.zip", data, "no_range")
    (tmp_path / "c.zip.part").write_bytes(b"x" * 1000)  # server sends all: start over
    assert dl.download(url, tmp_path / "c.zip", **FAST).read_bytes() == data


def test_download_errors_are_clear_and_leave_no_file(site, tmp_path):
    data = b"PK" + b"\0" * 5000
    url = site.add("/forbidden.zip", data, "403")
    with pytest.raises(dl.DownloadError, match="HTTP 403 forbidden"):
        dl.download(url, tmp_path / "f.zip", **FAST)
    url = site.add("/wall.zip", data, "html")
    with pytest.raises(dl.LoginWallError, match="HTML page"):
        dl.download(url, tmp_path / "w.zip", **FAST)
    url = site.add("/sniff.zip", data, "html_sniff")
    with pytest.raises(dl.LoginWallError):
        dl.download(url, tmp_path / "s.zip", **FAST)
    url = site.add("/size.zip", data)
    with pytest.raises(dl.VerificationError, match="99 were expected"):
        dl.download(url, tmp_path / "z.zip", size=99, **FAST)
    url = site.add("/sum.zip", data)
    with pytest.raises(dl.VerificationError, match="SHA-256"):
        dl.download(url, tmp_path / "h.zip", sha256="0" * 64, **FAST)
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download(site.base + "/missing.zip", tmp_path / "m.zip", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no .part


def test_probe_falls_back_to_a_ranged_get_when_head_is_refused(site):
    data = b"\x1f\x8b" + b"\0" * 12345
    url = site.add("/nohead.tar.gz", data, "no_head")
    p = dl.probe(url)
    assert p.ok and p.size == len(data) and p.method == "GET bytes=0-0"
    assert [m for m, path, _ in site.log if path == "/nohead.tar.gz"] == ["HEAD", "GET"]
    assert site.log[-1][2]["Range"] == "bytes=0-0"
    assert dl.probe(site.add("/plain.zip", data)).size == len(data)
    wall = dl.probe(site.add("/wall.zip", data, "html"))
    assert not wall.ok and "HTML" in wall.message
    down = dl.probe("http://127.0.0.1:9/x.zip")
    assert not down.ok and "unreachable" in down.message


# --- safe extraction --------------------------------------------------------------------------


def test_extract_refuses_traversal_absolute_paths_and_links(tmp_path):
    evil = make_zip({"ok/a.txt": b"a", "../evil.txt": b"pwned"})
    (tmp_path / "evil.zip").write_bytes(evil)
    with pytest.raises(ex.UnsafeArchiveError, match=r"\.\."):
        ex.extract(tmp_path / "evil.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.glob(".out*"))

    (tmp_path / "abs.tar").write_bytes(make_tar({"/etc/x": b"x"}, "w"))
    with pytest.raises(ex.UnsafeArchiveError, match="absolute"):
        ex.extract(tmp_path / "abs.tar", tmp_path / "out")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("d/file.txt")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"hello"))
        inside = tarfile.TarInfo("d/alias.txt")
        inside.type, inside.linkname = tarfile.SYMTYPE, "file.txt"
        tf.addfile(inside)
    (tmp_path / "in.tar").write_bytes(buf.getvalue())
    with pytest.raises(ex.UnsafeArchiveError, match="link"):  # links are refused, even inside
        ex.extract(tmp_path / "in.tar", tmp_path / "in")

    with tarfile.open(tmp_path / "link.tar", "w") as tf:
        link = tarfile.TarInfo("d/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(ex.UnsafeArchiveError, match="link"):
        ex.extract(tmp_path / "link.tar", tmp_path / "out")
    with tarfile.open(tmp_path / "hard.tar", "w") as tf:
        link = tarfile.TarInfo("h")
        link.type, link.linkname = tarfile.LNKTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(ex.UnsafeArchiveError):
        ex.extract(tmp_path / "hard.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_limits_truncation_and_nesting(tmp_path):
    bomb = make_zip({"zeros.bin": b"\0" * 2_000_000})
    (tmp_path / "bomb.zip").write_bytes(bomb)
    with pytest.raises(ex.ExtractError, match="limit"):
        ex.extract(tmp_path / "bomb.zip", tmp_path / "o1", max_bytes=1_000_000)
    many = make_zip({f"f{i}.txt": b"x" for i in range(20)})
    (tmp_path / "many.zip").write_bytes(many)
    with pytest.raises(ex.ExtractError, match="members"):
        ex.extract(tmp_path / "many.zip", tmp_path / "o2", max_members=10)

    payload = make_tar({f"d/f{i}.bin": bytes([i]) * 20000 for i in range(5)})
    (tmp_path / "cut.tar.gz").write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ex.ExtractError, match="truncated or corrupt"):
        ex.extract(tmp_path / "cut.tar.gz", tmp_path / "o3")
    plain = make_tar({f"d/f{i}.bin": bytes([i]) * 20000 for i in range(5)}, "w")
    (tmp_path / "cut.tar").write_bytes(plain[:50000])
    with pytest.raises(ex.ExtractError, match="truncated"):
        ex.extract(tmp_path / "cut.tar", tmp_path / "o4")
    (tmp_path / "cut.zip").write_bytes(many[: len(many) - 40])
    with pytest.raises(ex.ExtractError, match="truncated or corrupt"):
        ex.extract(tmp_path / "cut.zip", tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))

    inner = make_zip({"Release1/LClass_Copepod/a.jpg": b"a"})
    outer = make_zip({"CPICS_Validated/release1.zip": inner, "CPICS_Validated/notes.txt": b"n"})
    (tmp_path / "outer.zip").write_bytes(outer)
    out = ex.extract(tmp_path / "outer.zip", tmp_path / "nested")
    assert (out / "CPICS_Validated/release1/Release1/LClass_Copepod/a.jpg").read_bytes() == b"a"
    assert not (out / "CPICS_Validated/release1.zip").exists()


# --- ingest: folders and archives -------------------------------------------------------------


def test_ingest_user_folder_as_planktonset_carries_licence_instrument_citation(
    tmp_path, shared_data
):
    images = pick(shared_data, classes=3, per_class=4)
    store = tmp_path / "store"
    report = ingest_source("planktonset1.0", store, from_path=class_folder(tmp_path, images))
    assert report.ok and report.stored == len(images) == 12
    rows = objects(store)
    c = get("planktonset1.0")
    assert {r["source"] for r in rows} == {"planktonset1.0"}
    assert {r["license"] for r in rows} == {"other"}
    assert {r["license_url"] for r in rows} == {c.license_url}
    assert {r["instrument"] for r in rows} == {"ISIIS-2"}
    assert sorted(r["raw_label"] for r in rows) == sorted(cls for cls, _ in images)
    extra = json.loads(rows[0]["extra"])
    assert extra["citation"] == c.citation and extra["doi"] == "10.7289/v5d21vjd"
    assert rows[0]["origin"] == f"{images[0][0]}/{images[0][1].name}"
    again = ingest_source("planktonset1.0", store, from_path=class_folder(tmp_path, images))
    assert again.read == 0 and again.skipped == 12  # resumable, no duplicates


def test_full_isiis_ndsb_ingested_as_planktonset(tmp_path, shared_data):
    """The user's copy of the 30,336-image training half (about 20 s here)."""
    store = tmp_path / "store"
    report = ingest_source("planktonset1.0", store, from_path=shared_data / "isiis_ndsb")
    assert report.ok and report.read == 30_336
    (row,) = objects(
        store,
        "SELECT count(*) AS n, count(DISTINCT raw_label) AS classes, "
        "min(license) AS lic, max(license) AS lic2, min(instrument) AS ins, "
        "max(instrument) AS ins2, count(*) FILTER (WHERE json_extract_string(extra, "
        "'$.citation') LIKE 'Cowen%PlanktonSet 1.0%') AS cited FROM objects",
    )
    assert row["n"] == report.stored and row["classes"] == 121 and row["cited"] == row["n"]
    assert row["lic"] == row["lic2"] == "other" and row["ins"] == row["ins2"] == "ISIIS-2"


def test_ingest_downloads_resumes_and_extracts_the_archive_layout(site, tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=5)
    site.add("/planktonset1.0/127422.2.3.tar.gz", planktonset_archive(images), "drop_once")
    store = tmp_path / "store"
    report = ingest_source(
        "planktonset1.0", store, mirror=site.base, cache=tmp_path / "cache", **FAST
    )
    assert report.ok and report.stored == 10 and report.rejected == 0  # readme.txt: not a class
    rows = objects(store)
    # same origins as the user's class-folder copy: the layout prefix is not part of them
    assert {r["origin"] for r in rows} == {f"{c}/{p.name}" for c, p in images}
    assert any("Range" in h for m, _, h in site.log if m == "GET")


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ("403", "HTTP 403"),
        ("html", "HTML page"),
        ("truncated", "truncated or corrupt"),
        ("zipslip", "escapes"),
    ],
)
def test_failed_fetch_never_leaves_a_partial_store(site, tmp_path, shared_data, rule, error):
    images = pick(shared_data, classes=2, per_class=3)
    data = planktonset_archive(images)
    if rule == "truncated":
        data = data[: len(data) * 2 // 3]
    if rule == "zipslip":
        data = make_zip(
            {f"{PLANKTONSET_PREFIX}/{c}/{p.name}": p.read_bytes() for c, p in images}
            | {"../../escaped.jpg": images[0][1].read_bytes()}
        )
    rules = (rule,) if rule in ("403", "html") else ()
    site.add("/planktonset1.0/127422.2.3.tar.gz", data, *rules)
    store = tmp_path / "store"
    with pytest.raises(Exception, match=error) as info:
        ingest_source("planktonset1.0", store, mirror=site.base, cache=tmp_path / "c", **FAST)
    assert isinstance(info.value, dl.DownloadError | ex.ExtractError)
    assert not store.exists()
    assert not list(tmp_path.rglob("escaped.jpg"))
    assert not (tmp_path / "c/sources/planktonset1.0/extracted").exists() or not any(
        (tmp_path / "c/sources/planktonset1.0/extracted").iterdir()
    )


def test_wrong_layout_is_an_error_before_the_store(tmp_path, shared_data):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.jpg").write_bytes(pick(shared_data, 1, 1)[0][1].read_bytes())
    with pytest.raises(SourceError, match="layout"):
        ingest_source("planktonset1.0", tmp_path / "store", from_path=flat)
    assert not (tmp_path / "store").exists()
    with pytest.raises(SourceError, match="a person must visit"):
        fetch("lensless", tmp_path / "dl")


def test_fairdata_flow_for_sykezooscan2024(site, tmp_path, shared_data):
    images = pick(shared_data, classes=3, per_class=3, skip=10)
    inner = make_zip({f"SYKE_ZooScan/{c}/{p.name}": p.read_bytes() for c, p in images})
    package = make_zip({"sykezooscan2024/images.zip": inner, "sykezooscan2024/README": b"r"})
    c = get("sykezooscan2024")
    site.fd_packages[c.download.dataset] = ("dataset_package.zip", package)
    site.fd_drop_once = True  # the single-use URL dies mid-body: authorize again, resume
    c = replace(c, download=replace(c.download, size=len(package)))
    store = tmp_path / "store"
    report = ingest_source(
        c,
        store,
        cache=tmp_path / "cache",
        fairdata_url=site.base + "/fd",
        poll_interval=0.01,
        **FAST,
    )
    assert report.ok and report.stored == 9
    routes = [(m, p) for m, p, _ in site.log]
    assert routes[:3] == [
        ("GET", "/fd/requests"),
        ("POST", "/fd/requests"),
        ("GET", "/fd/requests"),
    ]
    assert routes.count(("POST", "/fd/authorize")) == 2  # one token per (re)start
    downloads = [h for m, p, h in site.log if p == "/fd/download"]
    assert "Range" not in downloads[0] and downloads[1]["Range"].startswith("bytes=")
    rows = objects(store)
    assert {r["license"] for r in rows} == {"CC-BY-4.0"}
    assert {r["raw_label"] for r in rows} == {cls for cls, _ in images}

    with pytest.raises(dl.VerificationError):  # the real package size is checked
        fetch("sykezooscan2024", tmp_path / "dl2", fairdata_url=site.base + "/fd",
              poll_interval=0.01, **FAST)  # fmt: skip


def test_jedioceans_nested_zips_keep_raw_labels_and_fixed_site(site, tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=3, skip=20)
    rel = {
        f"release{i}.zip": make_zip(
            {f"Release{i}/LClass_{c}/{p.name}": p.read_bytes() for c, p in images[i::2]}
        )
        for i in (0, 1)
    }
    outer = make_zip({f"CPICS_Validated/{k}": v for k, v in rel.items()})
    url = site.add("/jedi/CPICS_Validated.zip", outer)
    store = tmp_path / "store"
    c = with_urls(get("jedioceans"), url)
    report = ingest_source(c, store, cache=tmp_path / "cache", **FAST)
    assert report.ok and report.stored == 6
    rows = objects(store)
    assert {r["raw_label"] for r in rows} == {f"LClass_{cls}" for cls, _ in images}
    assert {(r["lat"], r["lon"], r["depth_min"], r["depth_max"]) for r in rows} == {
        (34.682718, 139.444779, 20.0, 20.0)
    }
    assert {r["license"] for r in rows} == {"CC-BY-SA-4.0"}
    assert all(r["origin"].startswith("release") for r in rows)  # two roots: prefixed


def test_upstream_splits_from_lists_folders_and_tables(tmp_path, shared_data):
    images = pick(shared_data, classes=3, per_class=3, skip=30)
    # zoolake: <class>/training_data/ images and train/val/test file lists
    z = tmp_path / "zoolake"
    lists = {"train": [], "val": [], "test": []}
    for i, (cls, p) in enumerate(images):
        d = z / "data/zooplankton_0p5x" / cls / "training_data"
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name).write_bytes(p.read_bytes())
        lists[("train", "val", "test")[i % 3]].append(f"./data/zooplankton_0p5x/{cls}/{p.name}")
    sep = z / "data/zoolake_train_test_val_separated"
    sep.mkdir(parents=True)
    for name, lines in lists.items():
        (sep / f"{name}_filenames.txt").write_text("\n".join(lines) + "\n")
    ingest_source("zoolake", tmp_path / "s1", from_path=z)
    rows = objects(tmp_path / "s1")
    assert {r["raw_label"] for r in rows} == {c for c, _ in images}  # not "training_data"
    got = {Path(r["origin"]).name: json.loads(r["extra"])["upstream_split"] for r in rows}
    want = {Path(f).name: s for s, fs in lists.items() for f in fs}
    assert got == want and {r["license"] for r in rows} == {"CC0-1.0"}

    # lensless: TRAIN_IMAGE/<class>, TEST_IMAGE/<class>, given as a zip the user downloaded
    members = {}
    for i, (cls, p) in enumerate(images):
        part = "TRAIN_IMAGE" if i % 2 else "TEST_IMAGE"
        members[f"PlanktonData/{part}/{cls}/{p.name}"] = p.read_bytes()
    (tmp_path / "PlanktonData.zip").write_bytes(make_zip(members))
    ingest_source(
        "lensless", tmp_path / "s2", from_path=tmp_path / "PlanktonData.zip", cache=tmp_path / "c"
    )
    rows = objects(tmp_path / "s2")
    assert len(rows) == len(images)
    for r in rows:
        split = json.loads(r["extra"])["upstream_split"]
        assert split == ("train" if r["origin"].startswith("TRAIN_IMAGE") else "test")
        assert r["raw_label"] in {c for c, _ in images}

    # SEANOE: ZooScanNet/imgs/<class>/<objid>.jpg and a 70/15/15 split table
    zs = tmp_path / "zooscan"
    rows_out = [("objid", "set")]
    for i, (cls, p) in enumerate(images):
        d = zs / "ZooScanNet/imgs" / cls
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{1000 + i}.jpg").write_bytes(p.read_bytes())
        rows_out.append((str(1000 + i), ("train", "valid", "test")[i % 3]))
    with gzip.open(zs / "ZooScanNet/splits.csv.gz", "wt", newline="") as fh:
        csv.writer(fh).writerows(rows_out)
    (zs / "ZooScanNet/features_native.csv").write_text("objid,area\n1000,3\n")
    report = ingest_source("zooscan", tmp_path / "s3", from_path=zs)
    assert report.ok and report.rejected == 0
    rows = objects(tmp_path / "s3")
    want = {f"{1000 + i}": ("train", "val", "test")[i % 3] for i in range(len(images))}
    assert {r["source_object_id"]: json.loads(r["extra"])["upstream_split"] for r in rows} == want
    assert {r["license"] for r in rows} == {"CC-BY-NC-4.0"}


def test_ifcb_collection_gets_bin_and_time_from_file_names(tmp_path, shared_data):
    src = shared_data / "ifcb_whoi"
    labels = {}
    with open(src / "labels.csv") as fh:
        for row in csv.DictReader(fh):
            labels.setdefault(row["class"], []).append(row["file"])
    year = tmp_path / "whoi" / "2013"
    chosen = [(c, f) for c in sorted(labels)[:4] for f in labels[c][:2]]
    for cls, f in chosen:
        (year / cls).mkdir(parents=True, exist_ok=True)
        (year / cls / f).write_bytes((src / "images" / f).read_bytes())
    report = ingest_source("whoi", tmp_path / "store", from_path=tmp_path / "whoi")
    assert report.ok and report.stored == len(chosen)
    for r in objects(tmp_path / "store"):
        bin_id, when, roi = ifcb_name(Path(r["origin"]).stem)
        assert r["sample_id"] == bin_id and r["time_utc"] == when
        assert json.loads(r["extra"])["roi_number"] == roi
        assert r["instrument"] == "IFCB" and r["license"] == "MIT"
        assert "licence" in json.loads(r["extra"])["license_note"]


def test_object_table_gives_labels_and_metadata_in_bulk(tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=3, skip=40)
    tree = tmp_path / "uvp5"
    table = ["object_id\ttaxon\tsample_id\tlat\tlon\tdepth_min\tdepth_max\tdate\ttime"]
    for i, (cls, p) in enumerate(images):
        d = tree / "121258" / f"sample_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"obj{i}.jpg").write_bytes(p.read_bytes())
        table.append(
            f"obj{i}\t{cls}\tprofile{i % 2}\t-12.5\t45.25\t{i}.0\t{i + 1}.0\t20150602\t130500"
        )
    table.append("obj_missing\tCopepoda\tprofile9\t0\t0\t0\t1\t20150602\t000000")
    (tree / "120871").mkdir()
    with gzip.open(tree / "120871/objects.tsv.gz", "wt") as fh:
        fh.write("\n".join(table) + "\n")
    report = ingest_source("global_uvp5", tmp_path / "store", from_path=tree)
    assert report.ok and report.stored == 6 and report.rejected == 1
    assert report.reasons["missing_file"] == 1
    rows = objects(tmp_path / "store")
    by_id = {r["source_object_id"]: r for r in rows}
    r = by_id["obj3"]
    assert r["raw_label"] == images[3][0] and r["sample_id"] == "profile1"
    assert (r["lat"], r["lon"], r["depth_min"], r["depth_max"]) == (-12.5, 45.25, 3.0, 4.0)
    assert r["time_utc"].isoformat() == "2015-06-02T13:05:00+00:00"


def test_plan_resolves_the_layout_below_the_given_folder(tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=2, skip=50)
    deep = tmp_path / "t" / "2.3/data/0-data/FINAL_Plankton_Segments_12082014"
    for cls, p in images:
        (deep / cls).mkdir(parents=True, exist_ok=True)
        (deep / cls / p.name).write_bytes(p.read_bytes())
    p = plan("planktonset1.0", tmp_path / "t")
    assert [r.path for r in p.roots] == [deep]
    assert prepare("planktonset1.0", from_path=tmp_path / "t") == tmp_path / "t"


# --- command line --------------------------------------------------------------------------


@pytest.fixture
def pz():
    from planktonzilla.cli import sources

    app = typer.Typer()
    ingest_app = typer.Typer()  # a fresh one: the real `pz ingest` is wired by cli/__init__
    app.add_typer(ingest_app, name="ingest")
    app.add_typer(sources.app, name="sources")
    sources.register(app, ingest_app)
    runner = CliRunner()

    def run(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return run


def test_cli_list_show_and_check(pz, site, tmp_path, shared_data):
    r = pz("sources", "list")
    assert r.exit_code == 0 and "jedioceans" in r.output and "17,404,047" in r.output
    r = pz("sources", "show", "planktonset1.0")
    assert r.exit_code == 0 and "Cowen" in r.output and "doi.org/10.7289/v5d21vjd" in r.output
    assert pz("sources", "show", "nope").exit_code == 2

    data = planktonset_archive(pick(shared_data, 1, 2))
    site.add("/planktonset1.0/127422.2.3.tar.gz", data, "no_head")
    r = pz("sources", "check", "planktonset1.0", "--mirror", site.base, "--dest", tmp_path)
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("OK") and "kB" in lines[0]
    assert any(line.startswith("OK") and "disk" in line for line in lines)

    site.add("/zooscan/113141.tar", data, "403")
    r = pz("sources", "check", "zooscan", "planktonset1.0", "--mirror", site.base)
    assert r.exit_code == 1 and "FAIL  zooscan" in r.output and "403" in r.output
    r = pz("sources", "check", "lensless", "--dest", tmp_path)
    assert r.exit_code == 1 and "manual" in r.output


def test_cli_fetch_ingest_source_and_build(pz, site, tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=2, skip=60)
    site.add("/planktonset1.0/127422.2.3.tar.gz", planktonset_archive(images))
    env = {"PZ_CACHE": str(tmp_path / "cache")}
    r = pz("fetch", "planktonset1.0", "--mirror", site.base, "--dest", tmp_path / "dl", env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "dl/127422.2.3.tar.gz").is_file()

    store = tmp_path / "store"
    folder = class_folder(tmp_path, images)
    r = pz("ingest", "source", "planktonset1.0", "--store", store, "--from", folder, env=env)
    assert r.exit_code == 0, r.output
    assert objects(store, "SELECT count(*) AS n FROM objects")[0]["n"] == 4

    site.add("/zooscan/113141.tar", b"", "html")
    r = pz("ingest", "source", "zooscan", "--store", tmp_path / "s2", "--mirror", site.base,
           "--retries", 0, env=env)  # fmt: skip
    assert r.exit_code == 1 and not (tmp_path / "s2").exists()

    # build: one collection from a copy in --from-dir, one whose copy is missing (manual)
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "127422.2.3.tar.gz").write_bytes(planktonset_archive(images))
    r = pz("build", "--sources", "planktonset1.0,lensless", "--store", tmp_path / "b",
           "--from-dir", copies, env=env)  # fmt: skip
    assert r.exit_code == 1 and "lensless" in r.output
    assert objects(tmp_path / "b", "SELECT count(*) AS n FROM objects")[0]["n"] == 4
    r = pz("build", "--sources", "planktonset1.0", "--store", tmp_path / "b",
           "--from-dir", copies, env=env)  # fmt: skip
    assert r.exit_code == 0, r.output
