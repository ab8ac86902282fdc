"""`pz predict`: real inputs (IFCB bins, a FlowCam run, an EcoTaxa export, ISIIS vignettes, a
store) through a tiny random-weight model into CSV / Parquet / EcoTaxa outputs; resume after
an interruption; flat memory on a long stream; the CLI."""

from __future__ import annotations

import csv
import io
import shutil
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.inference.writers import (
    csv_bytes,
    ecotaxa_tsv_bytes,
    open_writer,
    prediction_rows,
)
from planktonzilla.predict import Classifier
from planktonzilla.predict.batch import predict_to_file
from planktonzilla.readers.detect import detect, read_inputs
from planktonzilla.readers.ecotaxa import read_ecotaxa
from planktonzilla.readers.flowcam import read_flowcam
from planktonzilla.readers.ifcb import read_ifcb
from planktonzilla.records import Record, Rejection

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
LINEAGES = [
    {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda", "order": "Calanoida",
     "name": "Calanoida", "rank": "order", "aphia_id": 1100},
    {"kingdom": "Animalia", "phylum": "Chaetognatha", "name": "Chaetognatha", "rank": "phylum",
     "aphia_id": 2081},
    {"name": "detritus", "rank": None, "aphia_id": None, "root_class": "detritus"},
]  # fmt: skip
LINEAGES = [{**dict.fromkeys(RANKS), **lin} for lin in LINEAGES]
ECOTAXA_EXPORT = "ecotaxa_exports/ecotaxa_qa/import_test"  # 2 TSVs and their 11 vignettes
IFCB_BIN = "ifcb_bins/smhi/bins/D20220519T124533_IFCB134.roi"
FLOWCAM_RUN = "flowcam_protist/raw_runs/7-Pygsuia-SF-SW-NITRATE-day5-sample3-replicate3-08April2024"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The CI machine is shared: one torch thread is several times faster than two fighting.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from planktonzilla.models import build_model, save_model

    torch.manual_seed(0)
    config = {
        "kind": "supervised",
        "backbone": "vit_tiny",
        "image_size": 32,
        "classes": [lin["name"] for lin in LINEAGES],
        "class_lineages": LINEAGES,
    }
    return save_model(build_model(config), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def classifier(model_dir) -> Classifier:
    return Classifier.load(model_dir)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def png(seed: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), seed % 256).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- inputs


def test_inputs_detected_by_content_and_every_path_accounted_for(shared_data, tmp_path):
    renamed = tmp_path / "vignette.dat"  # an image whatever its name says
    shutil.copy(next((shared_data / "isiis_ndsb/amphipods").glob("*.jpg")), renamed)
    notes = tmp_path / "notes.md"
    notes.write_text("field notes\n")
    paths = [
        shared_data / IFCB_BIN,
        shared_data / FLOWCAM_RUN,
        shared_data / ECOTAXA_EXPORT,
        shared_data / "isiis_ndsb/amphipods",
        renamed,
        notes,
        tmp_path / "missing.png",
    ]
    assert [detect(p) for p in paths[:-1]] == [
        "ifcb", "flowcam", "ecotaxa", "images", "image", None,
    ]  # fmt: skip
    items = list(read_inputs(paths))
    origins = [i.origin for i in items]
    assert len(origins) == len(set(origins))  # unique across inputs: the resume key
    assert all("::" in o for o in origins)
    by_input = Counter(o.split("::")[0] for o in origins)
    assert by_input[str(shared_data / IFCB_BIN)] == 17
    assert by_input[str(shared_data / FLOWCAM_RUN)] == 1000
    assert by_input[str(shared_data / ECOTAXA_EXPORT)] == 11
    rejected = {i.origin.split("::")[0]: i.reason for i in items if isinstance(i, Rejection)}
    assert rejected == {
        str(notes): "unsupported_format",
        str(tmp_path / "missing.png"): "missing_file",
    }
    image = next(i for i in items if i.origin.startswith(str(renamed)))
    assert Image.open(io.BytesIO(image.image_bytes())).format == "JPEG"


def test_zip_of_images_and_metadata_only_rows(shared_data, tmp_path):
    bundle = tmp_path / "vignettes.zip"
    sources = sorted((shared_data / "isiis_ndsb/chaetognath_sagitta").glob("*.jpg"))[:3]
    with zipfile.ZipFile(bundle, "w") as zf:
        for path in sources:
            zf.write(path, f"chaetognath_sagitta/{path.name}")
        zf.writestr("readme.txt", "not an image")
    items = list(read_inputs(bundle))
    assert [type(i).__name__ for i in items] == ["Record"] * 3 + ["Rejection"]
    assert items[0].image_bytes() == sources[0].read_bytes()
    assert items[0].raw_label == "chaetognath_sagitta"
    # an EcoTaxa table without images: rows are rejected for prediction, with a reason
    tara = list(read_inputs(shared_data / "ecotaxa_exports/tara_zooscan/export.tsv"))
    assert tara and all(isinstance(i, Rejection) for i in tara)
    assert {i.reason for i in tara} <= {"missing_file", "no_image"}


# --------------------------------------------------------------------------- EcoTaxa


@pytest.mark.parametrize("fmt", ["ecotaxa", "ecotaxa-zip"])
def test_ecotaxa_output_reads_back(shared_data, tmp_path, classifier, fmt):
    export = shared_data / ECOTAXA_EXPORT
    inputs = [r for r in read_ecotaxa(export) if isinstance(r, Record)]
    assert len(inputs) == 11
    expected = {
        r.source_object_id: p.label
        for r, p in zip(inputs, classifier.predict([r.image for r in inputs]), strict=True)
    }
    out = tmp_path / ("out.tsv" if fmt == "ecotaxa" else "out.zip")
    report = predict_to_file(classifier, [export], out, top_k=2)
    assert (report.read, report.predicted, report.rejected) == (11, 11, 0)

    if fmt == "ecotaxa-zip":
        with zipfile.ZipFile(out) as zf:
            names = zf.namelist()
        assert names[0] == "ecotaxa_out.tsv" and len(names) == 12
        back = list(read_ecotaxa(out))  # images found inside the zip
    else:
        assert out.read_text().splitlines()[1].startswith("[t]\t[t]")  # the type row
        back = list(read_ecotaxa(out, missing_images="metadata"))
    assert all(isinstance(r, Record) for r in back), [r for r in back if isinstance(r, Rejection)]
    assert sorted(r.source_object_id for r in back) == sorted(expected)
    source = {r.source_object_id: r for r in inputs}
    for r in back:
        original = source[r.source_object_id]
        assert r.raw_label == expected[r.source_object_id]  # object_annotation_category
        assert r.extra["annotation_status"] == "predicted"
        assert r.extra["hierarchy"].endswith(r.raw_label)
        assert 0 < r.extra["object_score"] <= 1
        assert (r.lat, r.lon) == pytest.approx((original.lat, original.lon))
        assert (r.depth_min, r.depth_max) == (original.depth_min, original.depth_max)
        assert r.time_utc == original.time_utc and r.sample_id == original.sample_id
        assert r.instrument == original.instrument
        if fmt == "ecotaxa-zip":
            assert r.image_bytes() == original.image_bytes()


def test_confident_category_and_in_memory_helpers(shared_data, tmp_path, classifier):
    records = [r for r in read_ecotaxa(shared_data / ECOTAXA_EXPORT) if isinstance(r, Record)]
    predictions = classifier.predict([r.image for r in records], top_k=3)
    rows = prediction_rows(records, predictions, top_k=3)
    assert [r["object_id"] for r in rows] == [r.source_object_id for r in records]
    (tmp_path / "web.tsv").write_bytes(ecotaxa_tsv_bytes(rows, category="confident"))
    back = list(read_ecotaxa(tmp_path / "web.tsv", missing_images="metadata"))
    assert [r.raw_label for r in back] == [p.confident_name for p in predictions]
    parsed = list(csv.DictReader(io.StringIO(csv_bytes(rows).decode())))
    assert [r["top1_label"] for r in parsed] == [p.label for p in predictions]
    assert parsed[0]["lat"] == repr(records[0].lat)


# --------------------------------------------------------------------------- instruments


def test_ifcb_bins_one_row_per_roi(shared_data, tmp_path, classifier):
    bins = shared_data / "ifcb_bins/pyifcb"  # two bins, plus empty / partial / invalid ones
    expected = list(read_ifcb(bins))
    rois = [r.origin for r in expected if isinstance(r, Record)]
    out = tmp_path / "bins.parquet"
    report = predict_to_file(classifier, [bins], out, batch_size=16)
    table = pq.read_table(out)
    assert not (tmp_path / "bins.parquet.partial").exists()
    assert table.num_rows == len(expected) == report.read
    ok = table.filter(table["error"].is_null())
    assert sorted(ok["origin"].to_pylist()) == sorted(rois)
    assert report.rejected == len(expected) - len(rois) > 0
    assert set(ok["instrument"].to_pylist()) == {"IFCB"}
    assert str(table.schema.field("time_utc").type) == "timestamp[us, tz=UTC]"
    assert set(ok["label"].to_pylist()) <= {lin["name"] for lin in LINEAGES}

    one = tmp_path / "bin.csv"
    predict_to_file(classifier, [shared_data / IFCB_BIN], one)
    rows = read_csv(one)
    assert [r["origin"] for r in rows] == [
        r.origin for r in read_ifcb(shared_data / IFCB_BIN) if isinstance(r, Record)
    ]
    assert rows[0]["img_file_name"] == f"{rows[0]['object_id']}.png"


def test_flowcam_run(shared_data, tmp_path, classifier):
    run = shared_data / FLOWCAM_RUN
    particles = [r.origin for r in read_flowcam(run)]
    out = tmp_path / "run.csv"
    report = predict_to_file(classifier, [run], out, batch_size=128, top_k=2)
    rows = read_csv(out)
    assert [r["origin"] for r in rows] == particles and report.predicted == len(particles)
    assert {r["instrument"] for r in rows} == {"FlowCam"}
    assert {r["sample_id"] for r in rows} == {run.name}
    assert float(rows[0]["esd_diameter"]) > 0  # the run's measurements come along
    assert "top3_label" not in rows[0]


def test_image_folder_with_a_corrupt_file(shared_data, tmp_path, classifier):
    folder = tmp_path / "vignettes"
    for cls in ("copepod_calanoid", "detritus_blob"):
        (folder / cls).mkdir(parents=True)
        for path in sorted((shared_data / "isiis_ndsb" / cls).glob("*.jpg"))[:5]:
            shutil.copy(path, folder / cls / path.name)
    whole = next((folder / "detritus_blob").glob("*.jpg")).read_bytes()
    (folder / "detritus_blob" / "broken.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out.csv"
    report = predict_to_file(classifier, [folder], out)
    rows = read_csv(out)
    assert len(rows) == report.read == 11
    errors = [r for r in rows if r["error"]]
    assert [r["origin"] for r in errors] == ["detritus_blob/broken.jpg"]
    assert errors[0]["error"].split(":")[0] in ("corrupt", "truncated")
    assert report.reasons == Counter({errors[0]["error"].split(":")[0]: 1})
    assert {r["raw_label"] for r in rows} == {"copepod_calanoid", "detritus_blob"}
    assert all(r["label"] for r in rows if not r["error"])


def test_store_input(shared_data, tmp_path, classifier):
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.store import ObjectStore

    images = tmp_path / "images" / "chaetognath_sagitta"
    images.mkdir(parents=True)
    for path in sorted((shared_data / "isiis_ndsb/chaetognath_sagitta").glob("*.jpg"))[:6]:
        shutil.copy(path, images / path.name)
    store = ObjectStore(tmp_path / "store")
    store.ingest(read_folder(tmp_path / "images"), source="isiis", instrument="ISIIS")
    stored = {r["object_id"]: r["origin"] for r in store.objects(columns=["object_id", "origin"])}
    out = tmp_path / "store.csv"
    report = predict_to_file(classifier, [tmp_path / "store"], out)
    rows = read_csv(out)
    assert report.predicted == len(rows) == len(stored) == 6
    assert {r["object_id"]: r["origin"] for r in rows} == {
        oid: f"isiis/{origin}" for oid, origin in stored.items()
    }
    assert {r["instrument"] for r in rows} == {"ISIIS"}
    assert all(r["img_file_name"] == f"{r['object_id']}.jpg" for r in rows)


# --------------------------------------------------------------------------- resume


def stream(n: int, *, fail_after: int | None = None):
    """n tiny generated vignettes (bytes, not files); raises after `fail_after` of them."""
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("instrument disconnected")
        yield Record(f"roi/{i:05d}", png(i), instrument="synthetic")


@pytest.mark.parametrize("name", ["out.csv", "out.parquet", "out.zip"])
def test_interrupted_run_resumes_without_duplicates(tmp_path, classifier, name):
    out = tmp_path / name
    with pytest.raises(RuntimeError, match="disconnected"):
        predict_to_file(classifier, stream(120, fail_after=70), out, batch_size=16)
    partial = predict_to_file(classifier, stream(120), out, batch_size=16, limit=10)
    assert 0 < partial.skipped <= 70 and partial.read == 10
    report = predict_to_file(classifier, stream(120), out, batch_size=16)
    assert report.skipped == partial.skipped + 10 and report.skipped + report.read == 120
    if name.endswith(".csv"):
        origins = [r["origin"] for r in read_csv(out)]
    elif name.endswith(".parquet"):
        origins = pq.read_table(out)["origin"].to_pylist()
    else:
        origins = [r.extra["object_origin"] for r in read_ecotaxa(out)]
        assert all(isinstance(r, Record) for r in read_ecotaxa(out))
    assert sorted(origins) == [f"roi/{i:05d}" for i in range(120)]
    again = predict_to_file(classifier, stream(120), out)  # finished: nothing left to do
    assert (again.read, again.skipped) == (0, 120)


@pytest.mark.parametrize("name", ["out.csv", "out.tsv", "out.parquet"])
def test_resume_matches_names_with_line_breaks(tmp_path, classifier, name):
    """A name holding a newline or tab is written on one line (as spaces): the resumed run
    must still recognise it, not predict it again."""
    records = [
        Record(f"roi/{i}\nline\ttab" if i % 2 else f"roi/{i}", png(i), instrument="synthetic")
        for i in range(6)
    ]
    out = tmp_path / name
    first = predict_to_file(classifier, records, out)
    again = predict_to_file(classifier, records, out)
    assert first.read == 6 and (again.read, again.skipped) == (0, 6)


def test_torn_last_line_is_written_again(tmp_path, classifier):
    out = tmp_path / "out.csv"
    predict_to_file(classifier, stream(20), out, limit=12)
    with open(out, "a") as fh:
        fh.write("roi_00012,roi/000")  # a kill in the middle of a row
    report = predict_to_file(classifier, stream(20), out)
    assert (report.skipped, report.read) == (12, 8)
    rows = read_csv(out)
    assert [r["origin"] for r in rows] == [f"roi/{i:05d}" for i in range(20)]
    assert all(None not in r and r["instrument"] == "synthetic" for r in rows)
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a pz predict output"):
        open_writer(other)


def test_memory_stays_flat_on_a_long_stream(tmp_path, classifier):
    def peak(n: int, out: Path) -> int:
        tracemalloc.start()
        try:
            report = predict_to_file(classifier, stream(n), out, batch_size=32)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert report.predicted == n

    # Measured peaks are ~0.67 MB for both (Python objects; torch's tensors are not traced):
    # holding even the rows alone (~1.5 kB each) would add over 1 MB to the large run.
    peak(64, tmp_path / "warm.csv")  # lazy imports and caches out of the way
    small = peak(300, tmp_path / "small.csv")
    large = peak(1200, tmp_path / "large.csv")
    assert large < 1.25 * small, (small, large)
    assert len(read_csv(tmp_path / "large.csv")) == 1200


# --------------------------------------------------------------------------- CLI


def test_cli_end_to_end(shared_data, tmp_path, model_dir):
    runner = CliRunner()
    out = tmp_path / "day.tsv"
    args = ["predict", str(model_dir), str(shared_data / IFCB_BIN), "--out", str(out)]
    result = runner.invoke(app, [*args, "--top-k", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "read 17 = predicted 17 + rejected 0" in result.output
    rows = list(read_ecotaxa(out, missing_images="metadata"))
    assert len(rows) == 17 and all(isinstance(r, Record) for r in rows)

    again = runner.invoke(app, [*args, "--no-progress"])
    assert again.exit_code == 0 and "already done: 17" in again.output

    only = runner.invoke(
        app, [*args[:-1], str(tmp_path / "two.csv"), "--labels", "Chaetognatha,detritus"]
    )
    assert only.exit_code == 0, only.output
    assert {r["label"] for r in read_csv(tmp_path / "two.csv")} <= {"Chaetognatha", "detritus"}

    for bad in (
        ["predict", str(tmp_path / "no-model"), str(shared_data / IFCB_BIN), "--out", "x.csv"],
        ["predict", str(model_dir), "--out", str(tmp_path / "x.csv")],
        [*args[:-1], str(tmp_path / "x.csv"), "--labels", "Mammalia"],
        [*args[:-1], str(tmp_path / "x.txt")],
    ):
        failed = runner.invoke(app, bad)
        assert failed.exit_code == 2, (bad, failed.output)  # user errors
        assert "Traceback" not in failed.output
        assert isinstance(failed.exception, SystemExit)
