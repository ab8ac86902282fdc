"""`pz enrich`: the metadata that is not in the archives, from loopback EcoTaxa and IFCB
dashboard servers answering the shapes the services document (sources-verified.md; the project
query is EcoTaxa's `POST /api/object_set/{project_id}/query`, ecotaxa_back), with 429, 5xx,
stalls and a SIGKILL mid-way."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from typer.testing import CliRunner

from _loopback import serve
from planktonzilla.exceptions import SourceError
from planktonzilla.sources.enrich import ECOTAXA_FIELDS, enrich
from planktonzilla.sources.ingest import ingest_source
from planktonzilla.store import ObjectStore

PROJECT, N_OBJECTS, FIRST_OBJID = 4242, 10_000, 80_000_000
FAST = {"retries": 3, "backoff": 0.01, "rate": 0.0, "timeout": 0.5}


def truth(objid: int) -> dict:
    """What the loopback EcoTaxa knows about an object (a deterministic function of objid)."""
    return {
        "latitude": (objid % 170) - 85 + 0.5,
        "longitude": (objid % 350) - 175 + 0.25,
        "depth_min": float(objid % 100),
        "depth_max": float(objid % 100 + 5),
        "objdate": "2016-07-21",
        "objtime": f"12:{objid % 60:02d}:00",
        "orig_id": f"orig_{objid}",
    }


class EcoTaxa:
    """A project of N_OBJECTS objects, its object query and the per-object endpoint. `plan`
    lists misbehaviours for the next requests ("429", "500", "stall"); `block_at` makes the
    query for that window_start wait until `release` is set."""

    def __init__(self):
        self.log: list[tuple[str, str, dict]] = []
        self.plan: list[str] = []
        self.lock = threading.Lock()
        self.block_at: int | None = None
        self.reached, self.release = threading.Event(), threading.Event()

    def handle(self, req):
        url = urlsplit(req.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.log.append((req.command, url.path, q))
            trouble = self.plan.pop(0) if self.plan else None
        if trouble == "429":
            return req.json(429, {"detail": "slow down"}, {"Retry-After": "0"})
        if trouble == "500":
            return req.json(500, {"detail": "boom"})
        if trouble == "stall":
            time.sleep(1.5)  # longer than the client's 0.5 s timeout
        parts = url.path.strip("/").split("/")
        if req.command == "POST" and parts[:2] == ["api", "object_set"] and parts[3:] == ["query"]:
            req.body_json()  # the filters
            if int(parts[2]) != PROJECT:
                return req.json(404, {"detail": "no such project"})
            start, size = int(q["window_start"]), int(q["window_size"])
            if start == self.block_at:
                self.reached.set()
                self.release.wait(30)
            ids = list(range(FIRST_OBJID, FIRST_OBJID + N_OBJECTS))[start : start + size]
            fields = [f.removeprefix("obj.") for f in q["fields"].split(",")]
            details = [[truth(i)[f] for f in fields] for i in ids]
            return req.json(200, {"object_ids": ids, "details": details, "total_ids": N_OBJECTS})
        if req.command == "GET" and parts[:2] == ["api", "object"] and len(parts) == 3:
            objid = int(parts[2])
            if not FIRST_OBJID <= objid < FIRST_OBJID + N_OBJECTS:
                return req.json(404, {"detail": "object not found"})
            return req.json(200, {"objid": objid, **truth(objid)})
        return req.json(404, {"detail": "unknown route"})

    def queries(self) -> list[int]:
        return [int(q["window_start"]) for m, p, q in self.log if m == "POST"]


@pytest.fixture
def ecotaxa():
    e = EcoTaxa()
    with serve(e.handle) as base:
        e.base = base
        yield e
    e.release.set()


def zooscan_store(tmp_path: Path, shared_data: Path, objids: list[int]) -> Path:
    """A zooscan store of real images named by EcoTaxa objid, as in ZooScanNet/imgs/."""
    images = sorted((shared_data / "isiis_ndsb").glob("*/*.jpg"))[: len(objids)]
    tree = tmp_path / "tree/ZooScanNet"
    rows = [
        ("objid", "taxon_level1", "lineage_level1", "taxon_level2", "plankton", "set", "img_path")
    ]
    for objid, path in zip(objids, images, strict=True):
        cls = path.parent.name
        (tree / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        (tree / "imgs" / cls / f"{objid}.jpg").write_bytes(path.read_bytes())
        rows.append((objid, cls, cls, cls, "True", "train", f"{cls}/{objid}.jpg"))
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    (tree / "taxa.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    store = tmp_path / "store"
    assert ingest_source("zooscan", store, from_path=tmp_path / "tree").ok
    return store


OBJIDS = [FIRST_OBJID + 831 * i for i in range(12)]  # spread over the ten pages


def shard_digests(store: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((store / "objects").rglob("*.parquet"))
    }


def enriched(store: Path) -> dict[str, dict]:
    rows = (
        ObjectStore(store)
        .query("SELECT source_object_id, lat, lon, depth_min, depth_max, time_utc FROM objects")
        .to_pylist()
    )
    return {r["source_object_id"]: r for r in rows}


def expected(objid: int) -> dict:
    t = truth(objid)
    when = datetime(2016, 7, 21, 12, objid % 60, tzinfo=UTC)
    return {
        "source_object_id": str(objid),
        "lat": t["latitude"],
        "lon": t["longitude"],
        "depth_min": t["depth_min"],
        "depth_max": t["depth_max"],
        "time_utc": when,
    }


def test_project_query_fills_metadata_in_one_request_per_page(ecotaxa, tmp_path, shared_data):
    outsider = FIRST_OBJID + N_OBJECTS + 7  # not in the project: asked per object (404)
    store = zooscan_store(tmp_path, shared_data, [*OBJIDS, outsider])
    before = shard_digests(store)
    assert all(r["lat"] is None for r in enriched(store).values())  # not in the archive
    ecotaxa.plan = ["429", "500", "stall"]  # each retried
    report = enrich(
        "zooscan",
        ObjectStore(store),
        ecotaxa_url=ecotaxa.base,
        projects=[PROJECT],
        window_size=1000,
        **FAST,
    )
    assert report.ok, report.lines()
    pages = N_OBJECTS // 1000
    assert sorted(set(ecotaxa.queries())) == [1000 * i for i in range(pages)]
    # O(pages): 10 pages + 3 retries, and one request for the object outside the project
    assert report.requests == len(ecotaxa.log) == pages + 3 + 1
    assert ecotaxa.log[-1][:2] == ("GET", f"/api/object/{outsider}")
    fields = ecotaxa.log[0][2]["fields"].split(",")
    assert fields == list(ECOTAXA_FIELDS)
    got = enriched(store)
    assert {k: v for k, v in got.items() if k != str(outsider)} == {
        str(o): expected(o) for o in OBJIDS
    }
    assert report.not_found == 1 and report.empty == {"lat": 1, "lon": 1, "depth": 1, "time": 1}
    assert shard_digests(store) == before  # no shard rewritten: joined at read time
    assert (store / "metadata/zooscan.parquet").is_file()

    again = enrich(
        "zooscan",
        ObjectStore(store),
        ecotaxa_url=ecotaxa.base,
        projects=[PROJECT],
        window_size=3000,  # another window size: the offsets already fetched still count
        **FAST,
    )
    assert again.ok and again.requests == 0  # every page and the 404 are cached


def test_per_object_endpoint_when_the_project_is_unknown(ecotaxa, tmp_path, shared_data):
    outsider = FIRST_OBJID + N_OBJECTS + 7  # EcoTaxa does not know it: 404
    store = zooscan_store(tmp_path, shared_data, [*OBJIDS[:5], outsider])
    ecotaxa.plan = ["500"]
    report = enrich("zooscan", ObjectStore(store), ecotaxa_url=ecotaxa.base, concurrency=3, **FAST)
    assert "per-object" in report.mode and report.ok
    gets = [p for m, p, _ in ecotaxa.log if m == "GET"]
    assert sorted(set(gets)) == sorted(f"/api/object/{o}" for o in [*OBJIDS[:5], outsider])
    assert len(gets) == 7  # one per object, one retry
    assert report.not_found == 1 and report.empty == {"lat": 1, "lon": 1, "depth": 1, "time": 1}
    got = enriched(store)
    assert all(got[str(o)] == expected(o) for o in OBJIDS[:5])
    assert any("lat: empty for 1 of 6 objects" in line for line in report.lines())
    again = enrich("zooscan", ObjectStore(store), ecotaxa_url=ecotaxa.base, **FAST)
    assert again.requests == 0 and again.from_cache == 6  # a 404 is an answer, cached


def test_enrich_needs_the_source_in_the_store(tmp_path):
    with pytest.raises(SourceError, match="ingest it first"):
        enrich("zooscan", ObjectStore(tmp_path / "empty"))


def test_a_service_that_keeps_failing_is_reported_not_fatal(tmp_path, shared_data):
    store = zooscan_store(tmp_path, shared_data, OBJIDS[:3])
    report = enrich("zooscan", ObjectStore(store), ecotaxa_url="http://127.0.0.1:9", **FAST)
    assert not report.ok and "stopped" in report.skipped
    assert report.empty["lat"] == 3  # and nothing was cached as "no metadata":
    assert not (store / "metadata/zooscan.parquet").exists()


@pytest.mark.slow  # a real subprocess (about 5 s)
def test_sigkill_mid_way_resumes_without_refetching(ecotaxa, tmp_path, shared_data):
    store = zooscan_store(tmp_path, shared_data, OBJIDS)
    ecotaxa.block_at = 3000  # the killed run gets pages 0, 1000 and 2000
    src = Path(__file__).resolve().parents[2] / "src"
    cmd = [
        sys.executable,
        "-c",
        "from planktonzilla.cli import app; app()",
        "enrich",
        "zooscan",
        "--store",
        str(store),
        "--ecotaxa-project",
        str(PROJECT),
        "--ecotaxa-url",
        ecotaxa.base,
        "--window-size",
        "1000",
        "--rate",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert ecotaxa.reached.wait(60), proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ecotaxa.block_at = None
    ecotaxa.release.set()
    first = len(ecotaxa.log)
    assert ecotaxa.queries()[:3] == [0, 1000, 2000]
    report = enrich(
        "zooscan",
        ObjectStore(store),
        ecotaxa_url=ecotaxa.base,
        projects=[PROJECT],
        window_size=1000,
        **FAST,
    )
    assert report.ok
    resumed = [int(q["window_start"]) for _, _, q in ecotaxa.log[first:]]
    assert resumed == [1000 * i for i in range(3, 10)]  # nothing fetched twice
    assert enriched(store) == {str(o): expected(o) for o in OBJIDS}


# --- WHOI: the IFCB dashboard, one request per bin -------------------------------------------


def whoi_store(tmp_path: Path, shared_data: Path) -> tuple[Path, list[str]]:
    """Nine real IFCB images in three bins, named as WHOI-Plankton names them."""
    src = sorted((shared_data / "ifcb_whoi/images").glob("*.jpg"))[:9]
    bins = [f"IFCB1_2009_{150 + b:03d}_1{b}0000" for b in range(3)]
    for i, path in enumerate(src):
        d = tmp_path / "whoi/2009/cls"
        d.mkdir(parents=True, exist_ok=True)
        Image.open(path).save(d / f"{bins[i % 3]}_{i + 1:05d}.png")
    store = tmp_path / "store"
    assert ingest_source("whoi", store, from_path=tmp_path / "whoi").ok
    return store, bins


def test_ifcb_dashboard_per_bin_and_the_shard_keeps_its_own_time(tmp_path, shared_data):
    store, bins = whoi_store(tmp_path, shared_data)
    log = []

    def handle(req):
        log.append(req.path)
        bin_id = req.path.rsplit("/", 1)[-1]
        if not req.path.startswith("/api/bin/") or bin_id not in bins:
            return req.json(404, {"error": "not found"})
        k = bins.index(bin_id)
        return req.json(
            200,
            {
                "lat": 41.3 + k,
                "lng": -70.5 - k,
                "depth": 4.0 + k,
                "timestamp_iso": "2009-06-01T00:00:00Z",
            },
        )

    assert enrich("whoi", ObjectStore(store), is_offline=True).ok  # the fixed site, for now
    with serve(handle) as base:
        report = enrich("whoi", ObjectStore(store), dashboard_url=base, **FAST)
    # 3 requests for 9 images; a stamped site is not an answer: the bins are asked
    assert report.ok and sorted(log) == sorted(f"/api/bin/{b}" for b in bins)
    rows = (
        ObjectStore(store)
        .query("SELECT sample_id, lat, lon, depth_min, time_utc FROM objects")
        .to_pylist()
    )
    assert len(rows) == 9
    for r in rows:
        k = bins.index(r["sample_id"])
        assert (r["lat"], r["lon"], r["depth_min"]) == (41.3 + k, -70.5 - k, 4.0 + k)
        # the shard's time (from the file name) wins over the dashboard's timestamp_iso
        assert r["time_utc"] == datetime(2009, 1, 1, 10 + k, tzinfo=UTC) + timedelta(149 + k)


def test_offline_stamps_the_fixed_site_and_marks_it(tmp_path, shared_data):
    store, _ = whoi_store(tmp_path, shared_data)
    report = enrich("whoi", ObjectStore(store), is_offline=True)
    assert report.ok and "offline" in report.skipped and "fixed_site" in report.skipped
    s = ObjectStore(store)
    rows = s.query("SELECT DISTINCT lat, lon, depth_min FROM objects").to_pylist()
    assert rows == [{"lat": 41.325, "lon": -70.5667, "depth_min": 4.0}]
    marks = s.query(
        f"SELECT DISTINCT metadata_source FROM read_parquet('{store}/metadata/whoi.parquet')"
    ).to_pylist()
    assert marks == [{"metadata_source": "fixed_site"}]
    assert report.empty == {"lat": 0, "lon": 0, "depth": 0, "time": 0}


def test_an_offline_build_with_enrich_still_builds(tmp_path, shared_data):
    from planktonzilla.cli import app

    images = sorted((shared_data / "isiis_ndsb").glob("*/*.jpg"))[:3]
    tree = tmp_path / "copies/zooscan/ZooScanNet/imgs/cls"
    tree.mkdir(parents=True)
    for i, p in enumerate(images):
        (tree / f"{FIRST_OBJID + i}.jpg").write_bytes(p.read_bytes())
    r = CliRunner().invoke(
        app,
        [
            "build",
            "--sources",
            "zooscan",
            "--store",
            str(tmp_path / "s"),
            "--from-dir",
            str(tmp_path / "copies"),
            "--enrich",
        ],
        env={"PZ_OFFLINE": "1", "PZ_CACHE": str(tmp_path / "cache")},
    )
    assert r.exit_code == 0, r.output
    assert "offline: skipped" in r.output and "lat: empty for 3 of 3 objects" in r.output
    assert "no upstream split found" in r.output  # a copy without taxa.csv.gz: said so
