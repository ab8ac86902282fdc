"""The public collections on the archives' real shapes (../shared/sources-verified.md): the
registry, downloads from a real loopback HTTP server (WHOI's nine `…/download` URLs, the
Fairdata download API as recorded, hosts that refuse, drop or stall HEAD), safe extraction,
and one miniature archive per collection, with its real folder names and tables, ingested
through `pz ingest source ID --from ARCHIVE` — built at test time from the real images in
../shared/data."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import socket
import tarfile
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from typer.testing import CliRunner

from _loopback import serve
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
    """Files served by path, with per-path misbehaviour, and the Fairdata download API."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.rules: dict[str, set[str]] = {}
        self.log: list[tuple[str, str, dict]] = []
        self.fd_packages: dict[str, tuple[str, bytes]] = {}  # cr_id -> (package, bytes)
        self.fd_polls: dict[str, int] = {}  # cr_id -> polls since the request
        self.fd_tokens: dict[str, str] = {}  # token -> cr_id (single use)
        self.fd_drop_once = False
        self.base = ""

    def add(self, path: str, data: bytes, *rules: str) -> str:
        self.files[path] = data
        self.rules[path] = set(rules)
        return self.base + path

    def handle(self, req):
        url = urlsplit(req.path)
        self.log.append((req.command, url.path, dict(req.headers)))
        if url.path.startswith("/fd/"):
            return self._fairdata(req, url)
        if url.path not in self.files:
            return req.send(404, b"not found", "text/plain")
        data, rules = self.files[url.path], self.rules[url.path]
        if req.command == "HEAD":
            if "head_drop" in rules:  # darchive: the connection closes without an answer
                req.close_connection = True
                return req.connection.shutdown(socket.SHUT_RDWR)
            if "head_stall" in rules:  # NCEI: HEAD times out
                time.sleep(1.5)
                return req.send(200, b"", headers={"Content-Length": str(len(data))})
            for code in ("400", "405", "404"):
                if f"head_{code}" in rules:
                    return req.send(int(code), b"", "text/plain")
        if "403" in rules:
            return req.send(403, b"<html>Forbidden</html>", "text/html")
        if "html" in rules:
            page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            return req.send(200, page, "text/html; charset=utf-8")
        if "html_sniff" in rules:  # lies about its type
            return req.send(200, b"\n  <!doctype html><html>login</html>")
        if "cut_once" in rules and req.command == "GET":  # no length: looks complete
            rules.discard("cut_once")
            req.send_response(200)
            req.send_header("Content-Type", "application/octet-stream")
            req.send_header("Connection", "close")
            req.end_headers()
            req.wfile.write(data[: len(data) // 2])
            req.wfile.flush()
            req.close_connection = True
            return req.connection.shutdown(socket.SHUT_RDWR)
        drop = "drop_once" in rules and req.command == "GET"
        if drop:
            rules.discard("drop_once")
        return _body(req, data, rules, drop)

    def _fairdata(self, req, url):
        """The Etsin download API exactly as sources-verified.md records it."""
        q = parse_qs(url.query)
        route = url.path[len("/fd") :]
        if "dataset" in q:
            return req.json(400, {"error": "unknown parameter: dataset"})
        if route == "/requests" and req.command == "GET":
            cr_id = q.get("cr_id", [""])[0]
            if cr_id not in self.fd_polls:
                return req.json(404, {"error": "no active requests"})
            self.fd_polls[cr_id] += 1
            return req.json(200, self._fd_status(cr_id, ready=self.fd_polls[cr_id] >= 2))
        if route == "/requests" and req.command == "POST":
            cr_id = req.body_json().get("cr_id")
            if cr_id is None:
                return req.json(400, {"error": "cr_id required"})
            created = cr_id not in self.fd_polls
            self.fd_polls.setdefault(cr_id, 0)
            status = self._fd_status(cr_id, ready=False)
            return req.json(200, status | ({} if created else {"created": False}))
        if route == "/authorize" and req.command == "POST":
            body = req.body_json()
            if self.fd_packages.get(body.get("cr_id"), ("",))[0] != body.get("package"):
                return req.json(404, {"error": "no such package"})
            token = uuid.uuid4().hex
            self.fd_tokens[token] = body["cr_id"]
            return req.json(200, {"url": f"{self.base}/fd/download?token={token}"})
        if route == "/download" and req.command == "GET":
            cr_id = self.fd_tokens.pop(q.get("token", [""])[0], None)  # single use
            if cr_id is None:
                return req.json(401, {"error": "invalid or used token"})
            drop, self.fd_drop_once = self.fd_drop_once, False
            return _body(req, self.fd_packages[cr_id][1], set(), drop)
        return req.json(404, {"error": "unknown route"})

    def _fd_status(self, cr_id: str, ready: bool) -> dict:
        package, data = self.fd_packages[cr_id]
        return {
            "package": package,
            "status": "SUCCESS" if ready else "PENDING",
            "size": len(data),
            "checksum": "sha256:" + hashlib.sha256(data).hexdigest(),
        }


def _body(req, data: bytes, rules: set[str], drop: bool):
    rng = req.headers.get("Range")
    if rng and "no_range" not in rules:
        start = int(rng.split("=")[1].split("-")[0])
        end = rng.split("-")[1]
        stop = int(end) + 1 if end else len(data)
        if start >= len(data):
            return req.send(416, headers={"Content-Range": f"bytes */{len(data)}"})
        chunk = data[start:stop]
        code, extra = 206, {"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"}
    else:
        chunk, code, extra = data, 200, {}
    extra["Accept-Ranges"] = "bytes"
    if not drop:
        return req.send(code, chunk, headers=extra)
    req.send_response(code)  # a truncated transfer: half the body, then the connection closes
    req.send_header("Content-Type", "application/octet-stream")
    req.send_header("Content-Length", str(len(chunk)))
    for k, v in extra.items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.write(chunk[: len(chunk) // 2])
    req.wfile.flush()
    req.close_connection = True
    req.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def site():
    s = Site()
    with serve(s.handle) as base:
        s.base = base
        yield s


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


def make_zip(members: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            if modes and name in modes:
                info = zipfile.ZipInfo(name)
                info.external_attr = modes[name] << 16
                zf.writestr(info, data)
            else:
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


def taxa_csv_gz(rows) -> bytes:
    """A SEANOE `taxa.csv.gz` with its real columns (sources-verified.md)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["objid", "taxon_level1", "lineage_level1", "taxon_level2", "plankton", "set", "img_path"]
    )
    for objid, cls, split in rows:
        w.writerow([objid, cls, f"living>{cls}", cls, "True", split, f"{cls}/{objid}.jpg"])
    return gzip.compress(buf.getvalue().encode())


def png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    return buf.getvalue()


def whoi_images(shared_data: Path, n: int = 2):
    """[(class, IFCB file name, PNG bytes)]: real WHOI IFCB images under old-style IFCB names
    (WHOI-Plankton names them IFCB<n>_<yyyy>_<ddd>_<hhmmss>_<roi>.png)."""
    src = shared_data / "ifcb_whoi"
    with open(src / "labels.csv") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["file"])
    out = []
    for i, row in enumerate(rows[:n]):
        out.append((row["class"].replace(" ", "_"), i, png(src / "images" / row["file"])))
    return out


# --- one miniature archive per collection, in its real shape ---------------------------------
# Each builder writes the archive(s) under `tmp` and returns (the --from path, expectations):
# the number of images, the raw labels, and {source_object_id: upstream split} where the
# collection ships one.

SEANOE_WRAPPER = {
    "zooscan": ("ZooScanNet/", "113141.tar"),
    "zoocamnet": ("ZooCamNet/", "113094.tar"),
    "uvp6net": ("", "119452.tar"),  # imgs/ and taxa.csv.gz at the tar root
    "isiisnet": ("ISIISNet/", "113146.tar"),
    "flowcamnet": ("FlowCamNet/", "113201.tar"),
}


def _seanoe(cid):
    def build(images, tmp):
        wrapper, name = SEANOE_WRAPPER[cid]
        members, rows, split = {}, [], {}
        for i, (cls, p) in enumerate(images):
            objid = str(80_000_000 + i)
            members[f"{wrapper}imgs/{cls}/{objid}.jpg"] = p.read_bytes()
            side = ("train", "valid", "test")[i % 3]  # the 2025 releases write `valid`
            rows.append((objid, cls, side))
            split[objid] = "val" if side == "valid" else side
        members[f"{wrapper}taxa.csv.gz"] = taxa_csv_gz(rows)
        members[f"{wrapper}features_native.csv.gz"] = gzip.compress(
            b"objid,area,mean\n" + b"".join(f"{o},3,1.5\n".encode() for o, _, _ in rows)
        )
        members[f"{wrapper}inventory.tsv"] = b"taxon\tn\n"
        path = tmp / name
        path.write_bytes(make_tar(members, "w"))
        return path, {"labels": {c for c, _ in images}, "split": split}

    return build


def _planktoscope(images, tmp):
    members = {f"Planktoscope_reference/imgs/{c}/{p.name}": p.read_bytes() for c, p in images}
    members[f"Planktoscope_reference/imgs/{images[0][0]}/._{images[0][1].name}"] = b"\0\5\26"
    members["Planktoscope_reference/.DS_Store"] = b"junk"
    path = tmp / "124113.tar"
    path.write_bytes(make_tar(members, "w"))
    return path, {"labels": {c for c, _ in images}}


def _global_uvp5(images, tmp):
    """Two zips: the images in per-sample folders, and objects.tsv.gz of which only
    `object_id` and `taxon` are verified column names."""
    folder = tmp / "uvp5"
    folder.mkdir()
    members, lines = {}, ["object_id\ttaxon\tacq_id"]
    for i, (cls, p) in enumerate(images):
        members[f"images/sample_{i % 2}/uvp5_{i}.jpg"] = p.read_bytes()
        lines.append(f"uvp5_{i}\t{cls}\tacq_{i % 2}")
    (folder / "121258.zip").write_bytes(make_zip(members))
    table = gzip.compress(("\n".join(lines) + "\n").encode())
    (folder / "120871.zip").write_bytes(make_zip({"objects.tsv.gz": table}))
    return folder, {"labels": {c for c, _ in images}}


def _whoi(images, tmp, data):
    folder = tmp / "whoi"
    folder.mkdir()
    shots = whoi_images(data, n=27)
    for k, year in enumerate(range(2006, 2015)):
        wrap = f"{year}/" if k % 2 else ""  # class folders, possibly under a year folder
        members = {
            f"{wrap}{cls}/IFCB1_{year}_{100 + i:03d}_01{k:02d}00_{i + 1:05d}.png": b
            for cls, i, b in shots[3 * k : 3 * k + 3]
        }
        (folder / f"{year}.zip").write_bytes(make_zip(members))
    return folder, {"labels": {c for c, _, _ in shots}, "n": 27}


def _jedioceans(images, tmp):
    """Per-release inner zips in CPICS_Validated.zip; LClass_ folders; odd permission bits."""
    inner = {}
    for r, release in enumerate(("20141001-07", "20150301-07")):
        part = images[r::2]
        members = {f"LClass_{c}/{p.name}": p.read_bytes() for c, p in part}
        modes = {name: 0o104777 for name in list(members)[:1]}  # setuid + 777, a regular file
        inner[f"CPICS_Validated/{release}.zip"] = make_zip(members, modes)
    path = tmp / "CPICS_Validated.zip"
    path.write_bytes(make_zip(inner))
    return path, {"labels": {f"LClass_{c}" for c, _ in images}}


def _ifcb_zip(prefix, name, instrument):
    """Class folders of PNG ROIs named as IFCB names them (D<yyyymmdd>T<hhmmss>_IFCB<n>_<roi>)."""

    def build(images, tmp):
        members = {
            f"{prefix}{c}/D20190501T1{i:01d}0000_{instrument}_{i + 1:05d}.png": png(p)
            for i, (c, p) in enumerate(images)
        }
        path = tmp / name
        path.write_bytes(make_zip(members))
        return path, {"labels": {c for c, _ in images}}

    return build


def _planktonset(images, tmp):
    path = tmp / "127422.2.3.tar.gz"
    path.write_bytes(planktonset_archive(images))
    return path, {"labels": {c for c, _ in images}}


def _sykezooscan(images, tmp):
    inner = make_zip({f"SYKE_ZooScan_2024/{c}/{p.name}": p.read_bytes() for c, p in images})
    path = tmp / "6fa42787-9772-41a5-a6fc-0dde489ed908.zip"
    path.write_bytes(make_zip({"sykezooscan2024/images.zip": inner, "README.txt": b"r"}))
    return path, {"labels": {c for c, _ in images}}


def _zoolake(images, tmp):
    members, lists, split = {}, {"train": [], "val": [], "test": []}, {}
    for i, (cls, p) in enumerate(images):
        members[f"data/zooplankton_0p5x/{cls}/training_data/{p.name}"] = p.read_bytes()
        side = ("train", "val", "test")[i % 3]
        lists[side].append(f"./data/zooplankton_0p5x/{cls}/{p.name}")
        split[p.stem] = side
    for side, names in lists.items():
        members[f"data/zoolake_train_test_val_separated/{side}_filenames.txt"] = (
            "\n".join(names) + "\n"
        ).encode()
    path = tmp / "data.zip"
    path.write_bytes(make_zip(members))
    return path, {"labels": {c for c, _ in images}, "split": split}


def _lensless(images, tmp):
    members, split = {}, {}
    for i, (cls, p) in enumerate(images):
        part = "TRAIN_IMAGE" if i % 2 else "TEST_IMAGE"
        members[f"PlanktonData/{part}/{cls}/{p.name}"] = p.read_bytes()
        split[p.stem] = "train" if i % 2 else "test"
    path = tmp / "PlanktonData.zip"
    path.write_bytes(make_zip(members))
    return path, {"labels": {c for c, _ in images}, "split": split}


MINIATURES = {
    "global_uvp5": _global_uvp5,
    "whoi": _whoi,
    "jedioceans": _jedioceans,
    **{cid: _seanoe(cid) for cid in SEANOE_WRAPPER},
    "planktoscope": _planktoscope,
    "medplanktonset": _ifcb_zip("IFCB_images/", "IFCB_images.zip", "IFCB145"),
    "syke_ifcb_2022": _ifcb_zip("labeled_20201020/", "phytoplankton_labeled.zip", "IFCB114"),
    "planktonset1.0": _planktonset,
    "sykezooscan2024": _sykezooscan,
    "zoolake": _zoolake,
    "lensless": _lensless,
}


def build_miniature(cid: str, shared_data: Path, tmp: Path):
    images = pick(shared_data, classes=2, per_class=3, skip=5 * list(MINIATURES).index(cid))
    builder = MINIATURES[cid]
    if cid == "whoi":
        return builder(images, tmp, shared_data)
    path, want = builder(images, tmp)
    want.setdefault("n", len(images))
    return path, want


@pytest.fixture
def pz():
    """The real `pz` command line."""
    from planktonzilla.cli import app

    runner = CliRunner()

    def run(*args, env=None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return run


def test_registry_lists_a_miniature_for_every_collection():
    assert set(MINIATURES) == {c.id for c in collections()}


@pytest.mark.parametrize("cid", list(MINIATURES))
def test_each_collection_ingests_from_its_real_shape(cid, pz, tmp_path, shared_data):
    archive, want = build_miniature(cid, shared_data, tmp_path)
    store = tmp_path / "store"
    env = {"PZ_CACHE": str(tmp_path / "cache")}
    r = pz("ingest", "source", cid, "--store", store, "--from", archive, env=env)
    assert r.exit_code == 0, r.output
    assert "SHORT by" in r.output  # a miniature is far below the expected count: said loudly
    c = get(cid)
    rows = objects(store)
    columns = {"lat": "lat", "lon": "lon", "depth": "depth_min", "time": "time_utc"}
    gaps = ", ".join(
        f"{k} {n}" for k, col in columns.items() if (n := sum(row[col] is None for row in rows))
    )
    assert (f"empty: {gaps}" in r.output) == bool(gaps), r.output  # every empty field is said
    assert len(rows) == want["n"]
    assert {r["raw_label"] for r in rows} == want["labels"]
    assert {(r["license"], r["license_url"], r["instrument"]) for r in rows} == {
        (c.license, c.license_url, c.instrument)
    }
    if c.metadata.kind == "site":
        m = c.metadata
        assert {(r["lat"], r["lon"], r["depth_min"]) for r in rows} == {(m.lat, m.lon, m.depth)}
    if c.metadata.kind == "ifcb_name":
        assert all(r["sample_id"] and r["time_utc"] for r in rows)
    got = {r["source_object_id"]: json.loads(r["extra"]).get("upstream_split") for r in rows}
    if "split" not in want:
        assert set(got.values()) == {None}
        return
    assert got == want["split"]
    r = pz("split", "--store", store, "--scheme", "upstream")
    assert r.exit_code == 0, r.output
    from planktonzilla.data.splits import read_split

    by_id = {r["object_id"]: r["source_object_id"] for r in rows}
    table = read_split(ObjectStore(store), "upstream").to_pylist()
    assert {by_id[t["object_id"]]: t["split"] for t in table} == want["split"]


# --- registry -------------------------------------------------------------------------------

WHOI_UUIDS = (
    "5bf89ef0-0155-5ac2-923b-f2a8578c963a",
    "e1fd23e9-1b79-51a8-a165-1f9bb30177d8",
    "67fd1c6a-9268-58f6-808d-a757bf49a345",
    "c1b63530-b104-5a1f-a8b3-f55898f788e7",
    "7d6bd792-3fad-59aa-8906-af1fb377115e",
    "18b14b5a-2a68-5f85-845f-1c1591a8f1a6",
    "c9bf8e43-fa1c-5fd7-9328-04598db52c2e",
    "ff635112-6337-5b34-9354-4035847dae24",
    "6968c380-3713-57b1-bdca-5b21e514a996",
)


def test_registry_has_the_15_collections_with_their_verified_facts(shared_data):
    cs = collections()
    assert len(cs) == 15
    assert sum(c.images for c in cs) == 17_404_047
    with open(shared_data / "source_labels.csv") as fh:
        assert {c.id for c in cs} == {row["source"] for row in csv.DictReader(fh)}
    for c in cs:
        assert c.license and c.license_url.startswith("https://")
        assert c.doi and c.citation and c.instrument and c.layout
        assert c.download.urls or c.download.dataset
        assert len(set(c.file_names())) == len(c.file_names())
    w = get("whoi")
    assert w.download.urls == tuple(
        f"https://darchive.mblwhoilibrary.org/bitstreams/{u}/download" for u in WHOI_UUIDS
    )
    assert w.file_names() == tuple(f"{y}.zip" for y in range(2006, 2015))
    assert (w.enrich.kind, w.enrich.lat, w.enrich.lon) == ("ifcb_dashboard", 41.325, -70.5667)
    for cid in SEANOE_WRAPPER:  # the upstream split is in taxa.csv.gz, metadata in EcoTaxa
        c = get(cid)
        assert c.split.files == ("**/taxa.csv.gz",) and c.split.verified
        assert c.enrich.kind == "ecotaxa"
    assert get("zoocamnet").layout == ("ZooCamNet/imgs/<class>/*",)  # case-exact
    assert get("flowcamnet").layout == ("FlowCamNet/imgs/<class>/*",)
    assert not get("planktoscope").split.verified
    j = get("jedioceans")
    assert (j.metadata.kind, j.metadata.lat, j.metadata.lon, j.metadata.depth) == (
        "site",
        34.682718,
        139.444779,
        20.0,
    )
    s = get("sykezooscan2024")
    assert s.download.kind == "fairdata" and s.download.size == 79_363_785
    assert dl.FAIRDATA_URL == "https://etsin.fairdata.fi/api/download"
    assert get("whoi").license_note  # MIT is a code licence: flagged
    with pytest.raises(KeyError, match="unknown collection"):
        get("nope")


def test_registry_refuses_download_names_that_collide():
    from planktonzilla.sources.registry import _parse

    raw = {
        "id": "x",
        "name": "x",
        "instrument": "i",
        "images": 1,
        "license": "CC0-1.0",
        "license_url": "https://x",
        "citation": "c",
        "doi": "d",
        "reader": "folder",
        "archive": "zip",
        "layout": ["<class>/*"],
        "download": {"kind": "http", "urls": ["https://h/a/download", "https://h/b/download"]},
    }
    with pytest.raises(ValueError, match="collide"):
        _parse(raw)
    raw["download"]["names"] = ["a.zip", "b.zip"]
    assert _parse(raw).file_names() == ("a.zip", "b.zip")


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


@pytest.mark.parametrize("rule", ["head_405", "head_400", "head_404", "head_drop", "head_stall"])
def test_probe_falls_back_to_a_ranged_get_whatever_head_does(site, rule):
    """dbarchive refuses HEAD, darchive drops it, NCEI lets it time out: the one-byte GET is
    the verdict (sources-verified.md)."""
    data = b"\x1f\x8b" + b"\0" * 12345
    url = site.add(f"/{rule}.tar.gz", data, rule)
    with dl.make_client(timeout=0.5) as client:
        p = dl.probe(url, client=client)
    assert p.ok and p.size == len(data) and p.method.startswith("GET bytes=0-0"), p
    gets = [h for m, path, h in site.log if path == f"/{rule}.tar.gz" and m == "GET"]
    assert gets[-1]["Range"] == "bytes=0-0"


def test_probe_reports_what_really_fails(site):
    data = b"\x1f\x8b" + b"\0" * 100
    assert dl.probe(site.add("/plain.zip", data)).size == len(data)
    assert dl.probe(site.add("/plain.zip", data)).method == "HEAD"
    wall = dl.probe(site.add("/wall.zip", data, "html"))
    assert not wall.ok and "HTML" in wall.message
    gone = dl.probe(site.base + "/missing.zip")
    assert not gone.ok and gone.status == 404
    down = dl.probe("http://127.0.0.1:9/x.zip")
    assert not down.ok and "unreachable" in down.message


def test_whoi_nine_download_urls_give_nine_archives_and_resume_a_truncated_one(
    site, tmp_path, shared_data
):
    shots = whoi_images(shared_data, n=18)
    urls, zips = [], {}
    for k, (uid, year) in enumerate(zip(WHOI_UUIDS, range(2006, 2015), strict=True)):
        members = {
            f"{year}/{cls}/IFCB1_{year}_{100 + i:03d}_000000_{i + 1:05d}.png": b
            for cls, i, b in shots[2 * k : 2 * k + 2]
        }
        zips[year] = make_zip(members)
        rules = ("drop_once",) if k == 4 else ()  # the 2010 transfer breaks half-way
        urls.append(site.add(f"/bitstreams/{uid}/download", zips[year], *rules))
    c = with_urls(get("whoi"), *urls)
    paths = fetch(c, tmp_path / "dl", **FAST)
    assert [p.name for p in paths] == [f"{y}.zip" for y in range(2006, 2015)]
    assert [p.read_bytes() for p in paths] == [zips[y] for y in range(2006, 2015)]
    resumed = [h for m, p, h in site.log if p == f"/bitstreams/{WHOI_UUIDS[4]}/download"]
    assert "Range" not in resumed[0] and resumed[1]["Range"].startswith("bytes=")

    result = ingest_source(c, tmp_path / "store", from_path=paths, cache=tmp_path / "c")
    assert result.ok and result.ingest.stored == 18
    assert dict(result.counts.by_archive) == {str(y): 2 for y in range(2006, 2015)}
    years = {r["time_utc"].year for r in objects(tmp_path / "store")}
    assert years == set(range(2006, 2015))


def test_an_archive_cut_short_without_a_length_is_detected_and_resumed(site, tmp_path, shared_data):
    shots = whoi_images(shared_data, n=18)
    urls = []
    for k, (uid, year) in enumerate(zip(WHOI_UUIDS, range(2006, 2015), strict=True)):
        members = {
            f"{cls}/IFCB1_{year}_{100 + i:03d}_000000_{i + 1:05d}.png": b
            for cls, i, b in shots[2 * k : 2 * k + 2]
        }
        rules = ("cut_once",) if year == 2012 else ()
        urls.append(site.add(f"/bitstreams/{uid}/download", make_zip(members), *rules))
    c = with_urls(get("whoi"), *urls)
    result = ingest_source(c, tmp_path / "store", cache=tmp_path / "c", **FAST)
    assert result.ok and result.ingest.stored == 18 and result.counts.by_archive["2012"] == 2
    again = [h for m, p, h in site.log if p == f"/bitstreams/{WHOI_UUIDS[6]}/download"]
    assert len(again) == 2 and again[1]["Range"].startswith("bytes=")  # resumed, not restarted


def test_a_missing_archive_is_a_loud_named_shortfall(pz, tmp_path, shared_data):
    archive, _ = build_miniature("whoi", shared_data, tmp_path)
    for year in range(2007, 2015):
        (archive / f"{year}.zip").unlink()  # 1 year of 9: the failure this check prevents
    env = {"PZ_CACHE": str(tmp_path / "cache")}
    store = tmp_path / "store"
    r = pz("ingest", "source", "whoi", "--store", store, "--from", archive, env=env)
    assert r.exit_code == 0, r.output
    assert "SHORT by 3,563,592" in r.output
    assert "archives with no images: 2007, 2008" in r.output
    r = pz("ingest", "source", "whoi", "--store", store, "--from", archive, "--strict", env=env)
    assert r.exit_code == 1 and "SHORT by" in r.output


def test_seanoe_split_shortfall_names_the_split(tmp_path, shared_data):
    archive, want = build_miniature("zooscan", shared_data, tmp_path)
    with tarfile.open(archive) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    gone = next(n for n in members if n.endswith("80000001.jpg"))  # a `valid` image
    del members[gone]
    archive.write_bytes(make_tar(members, "w"))
    result = ingest_source("zooscan", tmp_path / "s", from_path=archive, cache=tmp_path / "c")
    assert result.shortfall
    assert "  split val: 1 of 2 listed in the split table" in result.count_lines()


def test_fairdata_flow_as_recorded_for_sykezooscan2024(site, tmp_path, shared_data):
    archive, want = build_miniature("sykezooscan2024", shared_data, tmp_path)
    package = archive.read_bytes()
    c = get("sykezooscan2024")
    site.fd_packages[c.download.dataset] = (f"{c.download.dataset}_1.zip", package)
    site.fd_drop_once = True  # the single-use URL dies mid-body: authorize again, resume
    c = replace(c, download=replace(c.download, size=len(package)))
    store = tmp_path / "store"
    result = ingest_source(
        c,
        store,
        cache=tmp_path / "cache",
        fairdata_url=site.base + "/fd",
        poll_interval=0.01,
        **FAST,
    )
    assert result.ok and result.ingest.stored == want["n"]
    routes = [(m, p) for m, p, _ in site.log]
    assert routes[:3] == [
        ("GET", "/fd/requests"),
        ("POST", "/fd/requests"),
        ("GET", "/fd/requests"),
    ]
    assert routes.count(("POST", "/fd/authorize")) == 2  # one URL per (re)start
    downloads = [h for m, p, h in site.log if p == "/fd/download"]
    assert "Range" not in downloads[0] and downloads[1]["Range"].startswith("bytes=")
    assert {r["raw_label"] for r in objects(store)} == want["labels"]

    site.fd_packages[c.download.dataset] = ("p.zip", package[:-1] + b"\0")  # checksum differs
    site.fd_polls.clear()
    with pytest.raises(dl.VerificationError):  # the registry's exact size is checked too
        fetch(
            "sykezooscan2024",
            tmp_path / "dl2",
            fairdata_url=site.base + "/fd",
            poll_interval=0.01,
            **FAST,
        )


def test_preflight_fails_on_a_fairdata_404_and_passes_the_right_root(pz, site, tmp_path):
    c = get("sykezooscan2024")
    site.fd_packages[c.download.dataset] = ("p.zip", b"PK")
    args = ("sources", "check", "sykezooscan2024", "--dest", tmp_path)
    r = pz(*args, "--fairdata-url", site.base + "/api/v1")  # the wrong root: 404 everywhere
    assert r.exit_code == 1 and "FAIL  sykezooscan2024" in r.output and "404" in r.output
    site.fd_polls[c.download.dataset] = 5
    r = pz(*args, "--fairdata-url", site.base + "/fd")
    assert r.exit_code == 0, r.output
    assert "OK    sykezooscan2024  fairdata" in r.output and "SUCCESS" in r.output
    assert ("GET", "/fd/requests") in [(m, p) for m, p, _ in site.log]


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


# --- ingest: folders, archives, tables ------------------------------------------------------


def test_ingest_user_folder_as_planktonset_carries_licence_instrument_citation(
    tmp_path, shared_data
):
    images = pick(shared_data, classes=3, per_class=4)
    store = tmp_path / "store"
    report = ingest_source("planktonset1.0", store, from_path=class_folder(tmp_path, images))
    assert report.ok and report.ingest.stored == len(images) == 12
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
    assert again.ingest.read == 0 and again.ingest.skipped == 12  # resumable, no duplicates


def test_full_isiis_ndsb_ingested_as_planktonset(tmp_path, shared_data):
    """The user's copy of the 30,336-image training half (about 20 s here)."""
    store = tmp_path / "store"
    report = ingest_source("planktonset1.0", store, from_path=shared_data / "isiis_ndsb")
    assert report.ok and report.ingest.read == 30_336
    (row,) = objects(
        store,
        "SELECT count(*) AS n, count(DISTINCT raw_label) AS classes, "
        "min(license) AS lic, max(license) AS lic2, min(instrument) AS ins, "
        "max(instrument) AS ins2, count(*) FILTER (WHERE json_extract_string(extra, "
        "'$.citation') LIKE 'Cowen%PlanktonSet 1.0%') AS cited FROM objects",
    )
    assert row["n"] == report.ingest.stored and row["classes"] == 121 and row["cited"] == row["n"]
    assert row["lic"] == row["lic2"] == "other" and row["ins"] == row["ins2"] == "ISIIS-2"


def test_ingest_downloads_resumes_and_extracts_the_archive_layout(site, tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=5)
    site.add("/planktonset1.0/127422.2.3.tar.gz", planktonset_archive(images), "drop_once")
    store = tmp_path / "store"
    report = ingest_source(
        "planktonset1.0", store, mirror=site.base, cache=tmp_path / "cache", **FAST
    )
    assert (
        report.ok and report.ingest.stored == 10 and report.ingest.rejected == 0
    )  # readme.txt: not a class
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


def test_plan_resolves_the_layout_below_the_given_folder(tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=2, skip=50)
    deep = tmp_path / "t" / "2.3/data/0-data/FINAL_Plankton_Segments_12082014"
    for cls, p in images:
        (deep / cls).mkdir(parents=True, exist_ok=True)
        (deep / cls / p.name).write_bytes(p.read_bytes())
    p = plan("planktonset1.0", tmp_path / "t")
    assert [r.path for r in p.roots] == [deep]
    p.tables.close()
    assert prepare("planktonset1.0", from_path=tmp_path / "t") == tmp_path / "t"


def test_jedi_inner_zip_links_are_refused_but_odd_modes_are_data(tmp_path, shared_data):
    (cls, img), *_ = pick(shared_data, 1, 1, skip=90)
    ok = make_zip(
        {f"LClass_{cls}/{img.name}": img.read_bytes()},
        {f"LClass_{cls}/{img.name}": 0o100600 | 0o7000},
    )
    (tmp_path / "ok.zip").write_bytes(make_zip({"CPICS_Validated/20141001-07.zip": ok}))
    out = ex.extract(tmp_path / "ok.zip", tmp_path / "ok")
    assert (out / f"CPICS_Validated/20141001-07/LClass_{cls}/{img.name}").is_file()
    link = make_zip({"LClass_x/a.jpg": b"../../etc/passwd"}, {"LClass_x/a.jpg": 0o120777})
    (tmp_path / "bad.zip").write_bytes(make_zip({"CPICS_Validated/20150301-07.zip": link}))
    with pytest.raises(ex.UnsafeArchiveError, match="link"):
        ex.extract(tmp_path / "bad.zip", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_object_table_is_streamed_and_unknown_columns_are_kept_and_reported(tmp_path, shared_data):
    archive, want = build_miniature("global_uvp5", shared_data, tmp_path)
    with zipfile.ZipFile(archive / "120871.zip") as zf:
        table = gzip.decompress(zf.read("objects.tsv.gz")).decode()
    table += "uvp5_missing\tCopepoda\tacq_9\n"  # listed, no image: a rejection
    (archive / "120871.zip").write_bytes(
        make_zip({"objects.tsv.gz": gzip.compress(table.encode())})
    )
    result = ingest_source("global_uvp5", tmp_path / "s", from_path=archive, cache=tmp_path / "c")
    assert result.ok and result.ingest.stored == 6 and result.ingest.reasons["missing_file"] == 1
    (warning,) = result.warnings
    assert "no column for lat, lon, depth_min, date, sample_id" in warning
    assert "columns found: object_id, taxon, acq_id" in warning
    rows = objects(tmp_path / "s")
    assert {r["raw_label"] for r in rows} == want["labels"]
    assert {json.loads(r["extra"])["object_table"]["acq_id"] for r in rows} == {"acq_0", "acq_1"}


def test_object_table_gives_metadata_when_its_columns_are_there(tmp_path, shared_data):
    images = pick(shared_data, classes=2, per_class=3, skip=100)
    tree = tmp_path / "uvp5"
    table = ["object_id\ttaxon\tsample_id\tlat\tlon\tdepth_min\tdepth_max\tdate\ttime"]
    for i, (cls, p) in enumerate(images):
        d = tree / "121258" / f"sample_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"obj{i}.jpg").write_bytes(p.read_bytes())
        table.append(
            f"obj{i}\t{cls}\tprofile{i % 2}\t-12.5\t45.25\t{i}.0\t{i + 1}.0\t20150602\t130500"
        )
    (tree / "120871").mkdir()
    (tree / "120871/objects.tsv.gz").write_bytes(gzip.compress(("\n".join(table) + "\n").encode()))
    result = ingest_source("global_uvp5", tmp_path / "store", from_path=tree)
    assert result.ok and result.ingest.stored == 6 and not result.warnings
    r = {r["source_object_id"]: r for r in objects(tmp_path / "store")}["obj3"]
    assert r["raw_label"] == images[3][0] and r["sample_id"] == "profile1"
    assert (r["lat"], r["lon"], r["depth_min"], r["depth_max"]) == (-12.5, 45.25, 3.0, 4.0)
    assert r["time_utc"].isoformat() == "2015-06-02T13:05:00+00:00"


# --- command line --------------------------------------------------------------------------


def test_cli_list_show_and_check(pz, site, tmp_path, shared_data):
    r = pz("sources", "list")
    assert r.exit_code == 0 and "jedioceans" in r.output and "17,404,047" in r.output
    r = pz("sources", "show", "planktonset1.0")
    assert r.exit_code == 0 and "Cowen" in r.output and "doi.org/10.7289/v5d21vjd" in r.output
    r = pz("sources", "show", "isiisnet")
    assert "fetches depth, lat, lon, time from EcoTaxa" in r.output
    assert pz("sources", "show", "nope").exit_code == 2

    data = planktonset_archive(pick(shared_data, 1, 2))
    site.add("/planktonset1.0/127422.2.3.tar.gz", data, "head_stall")
    r = pz(
        "sources",
        "check",
        "planktonset1.0",
        "--mirror",
        site.base,
        "--dest",
        tmp_path,
        "--timeout",
        "0.5",
    )
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("OK") and "kB" in lines[0]
    assert any(line.startswith("OK") and "disk" in line for line in lines)

    site.add("/zooscan/113141.tar", data, "403")
    r = pz("sources", "check", "zooscan", "planktonset1.0", "--mirror", site.base)
    assert r.exit_code == 1 and "FAIL  zooscan" in r.output and "403" in r.output
    assert "upstream split from table (verified)" in r.output
    assert "`pz enrich zooscan` fetches depth, lat, lon, time from EcoTaxa" in r.output
    r = pz("sources", "check", "lensless", "--dest", tmp_path)
    assert r.exit_code == 1 and "manual" in r.output


def test_build_dry_run_says_what_is_fetched_and_missing(pz, tmp_path):
    r = pz("build", "--sources", "all", "--dry-run", "--store", tmp_path / "s")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "whoi: download (http)" in out and "9 file(s): 2006.zip" in out
    assert "fetches depth, lat, lon from the IFCB dashboard (offline: fixed site stamped)" in out
    assert "jedioceans: download" in out and "metadata in the archive: lat, lon, depth" in out
    assert "upstream split from table (NOT verified to exist)" in out  # planktoscope
    assert "medplanktonset" in out and "metadata missing: lat, lon, depth" in out


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
    r = pz(
        "ingest",
        "source",
        "zooscan",
        "--store",
        tmp_path / "s2",
        "--mirror",
        site.base,
        "--retries",
        0,
        env=env,
    )
    assert r.exit_code == 1 and not (tmp_path / "s2").exists()

    # build: one collection from a copy in --from-dir, one whose copy is missing (manual)
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "127422.2.3.tar.gz").write_bytes(planktonset_archive(images))
    r = pz(
        "build",
        "--sources",
        "planktonset1.0,lensless",
        "--store",
        tmp_path / "b",
        "--from-dir",
        copies,
        env=env,
    )
    assert r.exit_code == 1 and "lensless" in r.output
    assert objects(tmp_path / "b", "SELECT count(*) AS n FROM objects")[0]["n"] == 4
    r = pz(
        "build",
        "--sources",
        "planktonset1.0",
        "--store",
        tmp_path / "b",
        "--from-dir",
        copies,
        env=env,
    )
    assert r.exit_code == 0, r.output
    r = pz(
        "build",
        "--sources",
        "planktonset1.0",
        "--store",
        tmp_path / "b",
        "--from-dir",
        copies,
        "--strict",
        env=env,
    )
    assert r.exit_code == 1 and "SHORT by 60,732" in r.output
