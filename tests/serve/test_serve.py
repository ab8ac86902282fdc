"""`pz serve`'s app on a real uvicorn server (loopback, free port) with a tiny random-weight
model and a small store of real images: predictions, store browsing, every refusal path of
the upload limits, and a bounded load test."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import re
import shutil
import socket
import stat
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from planktonzilla.images import probe
from planktonzilla.records import Record
from pz_testing import CLASSES, running

ISIIS_CLASSES = ("copepod_calanoid", "chaetognath_other", "detritus_other")
VLIZ_CLASSES = ("Noctilucales", "Tripos")
# Straits of Florida, where ISIIS sampled; the VLIZ images stay without a position
POINTS = [(25.5, -79.9), (25.8, -80.1), (26.2, -79.6)]
MAX_REQUEST = 2 * 1024 * 1024


def _sample_tree(shared: Path, dest: Path, collection: str, classes, n: int) -> Path:
    for name in classes:
        (dest / name).mkdir(parents=True)
        for path in sorted((shared / collection / name).iterdir())[:n]:
            shutil.copy(path, dest / name / path.name)
    return dest


def _located(records):
    for i, record in enumerate(records):
        if isinstance(record, Record):
            record.lat, record.lon = POINTS[i % len(POINTS)]
        yield record


@pytest.fixture(scope="session")
def model_dir(tiny_models) -> Path:
    return tiny_models["supervised"]


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory, shared_data) -> Path:
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.store import ObjectStore

    base = tmp_path_factory.mktemp("serve-store")
    isiis = _sample_tree(shared_data, base / "isiis", "isiis_ndsb", ISIIS_CLASSES, 10)
    vliz = _sample_tree(shared_data, base / "vliz", "flowcam_vliz", VLIZ_CLASSES, 3)
    store = ObjectStore(base / "store")
    assert store.ingest(_located(read_folder(isiis)), source="isiis_ndsb", instrument="ISIIS").ok
    assert store.ingest(read_folder(vliz), source="flowcam_vliz", instrument="FlowCam").ok
    return store.path


@pytest.fixture(scope="session")
def base_url(model_dir, store_dir):
    from planktonzilla.serve import Limits, create_app

    limits = Limits(
        max_request_bytes=MAX_REQUEST, max_files=40, max_zip_members=30, max_zip_bytes=64 << 20
    )
    with running(create_app(model_dir, store=store_dir, limits=limits)) as url:
        yield url


@pytest.fixture
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def jpegs(shared_data) -> list[Path]:
    return sorted((shared_data / "isiis_ndsb" / "copepod_calanoid").iterdir())[20:40]


def post(client, files: list[tuple[str, bytes]], **params) -> httpx.Response:
    return client.post("/api/predict", files=[("files", f) for f in files], params=params)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def assert_prediction(p: dict, top_k: int) -> None:
    assert p["label"] in CLASSES
    probs = [t["probability"] for t in p["top"]]
    assert len(probs) == min(top_k, len(CLASSES))
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert p["top"][0]["label"] == p["label"] and p["probability"] == probs[0]
    assert set(p["lineage"]) == {"kingdom", "phylum", "class", "order", "family", "genus",
                                 "species"}  # fmt: skip
    assert isinstance(p["living"], bool) and isinstance(p["ood_score"], float)


# ---------------------------------------------------------------------- predictions
def test_predict_one_real_image_and_download(client, jpegs):
    r = post(client, [(jpegs[0].name, jpegs[0].read_bytes())], top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 1 and body["errors"] == [] and body["top_k"] == 3
    (p,) = body["predictions"]
    assert p["file"] == jpegs[0].name and p["format"] == "jpeg"
    assert_prediction(p, 3)
    assert "thumbnail" not in p

    r = client.get(body["downloads"]["csv"])
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 1
    assert rows[0]["label"] == p["label"] and rows[0]["top3_label"] == p["top"][2]["label"]
    assert jpegs[0].name in rows[0]["img_file_name"] + rows[0]["origin"]

    r = client.get(body["downloads"]["ecotaxa"])
    assert r.status_code == 200
    lines = r.text.splitlines()
    header, types = lines[0].split("\t"), lines[1].split("\t")
    assert {"img_file_name", "object_id", "object_annotation_category"} <= set(header)
    assert set(types) <= {"[t]", "[f]"} and len(lines) == 3
    row = dict(zip(header, lines[2].split("\t"), strict=True))
    assert row["object_annotation_category"] == p["label"]

    assert client.get("/api/results/nope?format=csv").json()["error"]["code"] == "not_found"
    assert client.get(body["downloads"]["csv"].replace("csv", "xml")).status_code == 400


def test_predict_several_formats_and_a_zip(client, jpegs, shared_data):
    png = sorted((shared_data / "flowcam_protist" / "classes" / "Protist").iterdir())[0]
    vliz = sorted((shared_data / "flowcam_vliz" / "Tripos").iterdir())[0]
    singles = [(p.name, p.read_bytes()) for p in (jpegs[1], png, vliz)]
    archive = zip_bytes(
        {
            **{f"run1/{p.name}": p.read_bytes() for p in jpegs[2:5]},
            "__MACOSX/run1/._x.jpg": b"junk",  # skipped, as a Mac leaves it
            "run1/": b"",
        }
    )
    r = post(client, [*singles, ("run1.zip", archive)], top_k=5, thumbnails="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["errors"] == []
    files = [p["file"] for p in body["predictions"]]
    assert files == [n for n, _ in singles] + [f"run1.zip/run1/{p.name}" for p in jpegs[2:5]]
    assert [p["format"] for p in body["predictions"][:3]] == ["jpeg", "png", "jpeg"]
    for p in body["predictions"]:
        assert_prediction(p, 5)
        png_bytes = base64.b64decode(p["thumbnail"].removeprefix("data:image/png;base64,"))
        info = probe(png_bytes)
        assert info.format == "png" and max(info.width, info.height) <= 96
    rows = list(csv.DictReader(io.StringIO(client.get(body["downloads"]["csv"]).text)))
    assert [row["label"] for row in rows] == [p["label"] for p in body["predictions"]]


def test_model_health_docs_offline(client):
    model = client.get("/api/model").json()
    assert model["classes"] == CLASSES and model["kind"] == "supervised"
    assert set(model["thresholds"]["rank"]) >= {"kingdom", "species"}
    assert model["limits"]["max_request_bytes"] == MAX_REQUEST
    assert client.get("/api/health").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/stats", "/api/model", "/api/health"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/docs.js" in docs.text
    assert client.get("/redoc").status_code == 404
    page = client.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # nothing the browser loads may point off this server (the SVG namespace is a name)
    for path in ("/", "/docs", "/static/app.js", "/static/docs.js", "/static/style.css"):
        text = client.get(path).text
        assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text), path
        assert "//cdn" not in text


# ---------------------------------------------------------------------- store
def test_stats_and_images(client):
    stats = client.get("/api/stats").json()
    assert stats["totals"]["objects"] == 36 and stats["totals"]["located"] == 30
    assert {s["source"]: s["objects"] for s in stats["sources"]} == {
        "isiis_ndsb": 30,
        "flowcam_vliz": 6,
    }
    assert {i["instrument"]: i["objects"] for i in stats["instruments"]} == {
        "ISIIS": 30,
        "FlowCam": 6,
    }
    assert sum(t["objects"] for t in stats["taxa"]) == 36
    assert sorted((p["lat"], p["lon"], p["objects"]) for p in stats["locations"]) == [
        (25.5, -79.9, 10),
        (25.8, -80.1, 10),
        (26.2, -79.6, 10),
    ]
    assert len(stats["samples"]) == 5
    for sample in stats["samples"]:
        assert 1 <= len(sample["object_ids"]) <= 4 and sample["objects"] >= 3

    object_id = stats["samples"][0]["object_ids"][0]
    r = client.get(f"/api/images/{object_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert probe(r.content).format == "jpeg"
    r = client.get(f"/api/images/{object_id}", params={"size": 24})
    info = probe(r.content)
    assert r.headers["content-type"] == "image/png" and max(info.width, info.height) <= 24
    for missing in ("0" * 64, "not-an-id", "'; drop table objects; --"):
        r = client.get(f"/api/images/{missing}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_report_missing_then_newest(client, store_dir):
    r = client.get("/report")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    old, new = store_dir / "evaluations" / "a", store_dir / "evaluations" / "b"
    for d, text in ((old, "old report"), (new, "new report")):
        d.mkdir(parents=True)
        (d / "report.html").write_text(f"<html><body>{text}</body></html>")
    os.utime(old / "report.html", (time.time() + 60, time.time() + 60))  # newest by mtime
    r = client.get("/report")
    assert r.status_code == 200 and "old report" in r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert client.get("/api/stats").json()["report"]["evaluation"] == "a"


def test_without_store_store_endpoints_answer_404(model_dir):
    from planktonzilla.serve import create_app

    with running(create_app(model_dir)) as url, httpx.Client(base_url=url) as c:
        for path in ("/api/stats", "/api/images/" + "0" * 64, "/report"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert c.get("/api/health").json()["store"] is False


# ---------------------------------------------------------------------- refusals
def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # 100 Mpx, a few kB on disk
    return buf.getvalue()


def _link_zip(target: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("photos/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"/etc/passwd")
        zf.writestr("photos/real.jpg", target)
    return buf.getvalue()


def _encrypted_zip(jpeg: bytes) -> bytes:
    data = bytearray(zip_bytes({"secret.jpg": jpeg}))
    data[data.find(b"PK\x01\x02") + 8] |= 0x1  # the central directory's "encrypted" flag
    return bytes(data)


def _cases() -> dict:
    """name -> (files to upload given a real JPEG, expected status, expected error code)"""
    return {
        "text file": (lambda j: [("notes.png", b"station 40, net tow\n" * 20)], 415,
                      "unsupported_format"),
        "truncated jpeg": (lambda j: [("cut.jpg", j[: len(j) // 2])], 422, "truncated"),
        "empty file": (lambda j: [("empty.jpg", b"")], 422, "empty"),
        "decompression bomb": (lambda j: [("bomb.png", _bomb_png())], 413,
                               "decompression_bomb"),
        # incompressible bytes over the request limit
        "oversized upload": (lambda j: [("big.jpg", os.urandom(MAX_REQUEST + 1024))], 413,
                             "request_too_large"),
        "zip with ../": (lambda j: [("evil.zip", zip_bytes({"ok.jpg": j, "../evil.png": j}))],
                         400, "unsafe_path"),
        "zip with absolute member": (lambda j: [("abs.zip", zip_bytes({"/tmp/abs.png": j}))],
                                     400, "unsafe_path"),
        "zip with a link": (lambda j: [("link.zip", _link_zip(j))], 400, "unsafe_member"),
        "zip bomb": (lambda j: [("bomb.zip", zip_bytes({"zeros.png": bytes(40 << 20)}))], 413,
                     "zip_bomb"),
        "nested too deep": (
            lambda j: [("deep.zip", zip_bytes({"a.zip": zip_bytes({"b.zip": zip_bytes(
                {"c.jpg": j})})}))],
            400, "nested_too_deep"),
        "encrypted member": (lambda j: [("enc.zip", _encrypted_zip(j))], 415,
                             "encrypted_member"),
        "too many members": (lambda j: [("many.zip", zip_bytes({f"{i}.txt": b"" for i in
                                                               range(31)}))],
                             413, "too_many_members"),
        "corrupt zip": (lambda j: [("broken.zip", zip_bytes({"a.jpg": j})[:60])], 422,
                        "corrupt_archive"),
        "too many files": (lambda j: [(f"{i}.jpg", j) for i in range(41)], 413,
                           "too_many_files"),
    }  # fmt: skip


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(client, jpegs, case):
    jpeg = jpegs[5].read_bytes()
    make, status, code = CASES[case]
    files = make(jpeg)
    r = post(client, files)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    if code not in ("request_too_large", "too_many_files"):  # those concern the request
        assert error["file"].startswith(files[0][0])
    ok = post(client, [("next.jpg", jpeg)])
    assert ok.status_code == 200 and ok.json()["count"] == 1


def test_mixed_upload_answers_200_with_per_file_errors(client, jpegs):
    good = jpegs[6].read_bytes()
    r = post(client, [("good.jpg", good), ("bad.txt", b"not an image"), ("cut.jpg", good[:99])])
    assert r.status_code == 200
    body = r.json()
    assert [p["file"] for p in body["predictions"]] == ["good.jpg"]
    assert [(e["file"], e["code"]) for e in body["errors"]] == [
        ("bad.txt", "unsupported_format"),
        ("cut.jpg", "truncated"),
    ]
    rows = list(csv.DictReader(io.StringIO(client.get(body["downloads"]["csv"]).text)))
    assert len(rows) == 3 and [bool(row["error"]) for row in rows] == [False, True, True]

    r = post(client, [("bad.txt", b"not an image"), ("cut.jpg", good[:99])])
    assert r.status_code == 415  # all bad: the first file's status, every error listed
    assert [e["code"] for e in r.json()["errors"]] == ["unsupported_format", "truncated"]


def test_malformed_requests(client, jpegs):
    r = client.post("/api/predict", json={"files": ["a.jpg"]})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/api/predict", files={"other": ("a.jpg", b"x")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_files"
    r = post(client, [("a.jpg", jpegs[0].read_bytes())], top_k=0)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
    assert client.get("/api/nothing").json()["error"]["code"] == "not_found"

    # no Content-Length (chunked): the body is cut off once it passes the limit
    boundary = "pzboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(MAX_REQUEST // 65536 + 4):
            yield bytes(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/api/predict",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert post(client, [("a.jpg", jpegs[0].read_bytes())]).status_code == 200


# ---------------------------------------------------------------------- load
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:  # the server runs in this process (a thread)
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_bounded_load_300_requests_20_concurrent(base_url, jpegs):
    images = [(p.name, p.read_bytes()) for p in jpegs]

    async def main(n: int):
        gate = asyncio.Semaphore(20)
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as c:

            async def one(i: int):
                async with gate:
                    name, data = images[i % len(images)]
                    r = await c.post("/api/predict", files=[("files", (name, data))])
                    return r.status_code, r.json()

            return await asyncio.gather(*(one(i) for i in range(n)))

    warm = asyncio.run(main(100))  # allocator pools, model buffers and caches settle here
    settled = _rss_bytes()
    answers = warm + asyncio.run(main(200))
    grown = _rss_bytes() - settled
    assert [status for status, _ in answers] == [200] * 300
    assert all(body["count"] == 1 and not body["errors"] for _, body in answers)
    assert len({body["id"] for _, body in answers}) == 300
    # flat: the 200 later requests keep well under 1 MB each (results are kept for the last
    # few only); 64 MB leaves room for allocator noise, not for a per-request leak
    assert grown < 64 << 20, f"RSS grew {grown / 2**20:.0f} MB over 200 requests"


# ---------------------------------------------------------------------- hostile clients
def test_foreign_host_header_is_refused(client):
    """DNS rebinding: a page on evil.example resolving its name to 127.0.0.1 sends its own
    name as Host; only the bound (loopback) names are answered."""
    assert client.get("/api/health").status_code == 200
    for path in ("/api/stats", "/api/images", "/"):
        r = client.get(path, headers={"Host": "evil.example:8000"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_host", path


def test_csv_download_escapes_formulas(client, jpegs):
    data = jpegs[0].read_bytes()
    r = post(client, [("=HYPERLINK(1).jpg", data), ("@sum.jpg", data)])
    assert r.status_code == 200
    csv_text = client.get(r.json()["downloads"]["csv"]).text
    cells = [c for row in csv.reader(io.StringIO(csv_text)) for c in row]
    assert "'=HYPERLINK(1).jpg" in cells and "'@sum.jpg" in cells
    assert not any(c.startswith(("=", "@")) for c in cells)


def test_slow_body_is_cut_off(model_dir):
    from planktonzilla.serve import create_app

    with running(create_app(model_dir, body_timeout=0.5)) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                b"--b\r\n"
            )  # ...and nothing more
            start = time.monotonic()
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - start < 8
