"""The `pz` command line, run as a user runs it, plus exports and the synthetic demo."""

import csv
import io
import json
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.store import ObjectStore
from planktonzilla.synthetic import CLASSES, INSTRUMENTS, synthetic_records

runner = CliRunner()


def pz(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def vliz_store(tmp_path_factory, shared_data):
    store = tmp_path_factory.mktemp("cli") / "store"
    result = pz(
        "ingest", "folder", shared_data / "flowcam_vliz", "--store", store,
        "--source", "vliz", "--instrument", "FlowCam", "--license", "Apache-2.0",
        "--license-url", "https://www.apache.org/licenses/LICENSE-2.0", "--pixel-size-um", "1.6",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "read 105 = stored 105 + rejected 0" in result.output
    return store


def test_ingest_folder_stamps_metadata(vliz_store):
    rows = (
        ObjectStore(vliz_store)
        .query("select distinct instrument, license, license_url, pixel_size_um from objects")
        .to_pylist()
    )
    assert rows == [
        {
            "instrument": "FlowCam",
            "license": "Apache-2.0",
            "license_url": "https://www.apache.org/licenses/LICENSE-2.0",
            "pixel_size_um": 1.6,
        }
    ]


def test_rerun_via_cli_adds_nothing(vliz_store, shared_data):
    result = pz(
        "ingest", "folder", shared_data / "flowcam_vliz", "-s", vliz_store, "--source", "vliz"
    )
    assert result.exit_code == 0
    assert "read 0 = stored 0 + rejected 0  (already in store: 105)" in result.output


def test_stats_json_and_query(vliz_store):
    result = pz("stats", "--store", vliz_store, "--json")
    assert result.exit_code == 0
    stats = json.loads(result.stdout)
    assert stats["stored"] == 105
    assert {r["raw_label"]: r["stored"] for r in stats["raw_labels"]}["Tripos"] > 0
    result = pz(
        "query", "select raw_label, count(*) n from objects group by 1 order by 1",
        "--store", vliz_store, "--format", "csv",
    )  # fmt: skip
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["raw_label"] for r in rows] == [
        "Actinoptychus", "Bacillariophyceae", "Ciliophora", "Dinoflagellata", "Noctilucales",
        "Tripos",
    ]  # fmt: skip
    assert sum(int(r["n"]) for r in rows) == 105
    human = pz("stats", "--store", vliz_store)
    assert human.exit_code == 0 and "read 105 = stored 105 + rejected 0" in human.stdout


def test_bad_sql_is_a_clear_error(vliz_store):
    result = pz("query", "select nope from objects", "--store", vliz_store)
    assert result.exit_code == 2
    assert "query failed" in result.output


def test_export_parquet_loads_with_datasets(vliz_store, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "parquet"
    result = pz("export", "parquet", "--store", vliz_store, "--out", out)
    assert result.exit_code == 0, result.output
    ds = load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    assert len(ds) == 105
    stored = {r["object_id"]: r for r in ObjectStore(vliz_store).objects(images=True)}
    row = ds[0]
    original = stored[row["object_id"]]
    assert row["image"].size == (original["width"], original["height"])  # decodes as an Image
    assert row["license"] == "Apache-2.0" and row["pixel_size_um"] == 1.6
    from datasets import Image as HFImage

    raw = ds.cast_column("image", HFImage(decode=False))[0]["image"]
    assert raw["bytes"] == original["image"]  # the original bytes, untouched


def test_export_imagefolder(vliz_store, tmp_path):
    out = tmp_path / "folder"
    result = pz("export", "imagefolder", "--store", vliz_store, "--out", out)
    assert result.exit_code == 0, result.output
    files = sorted(p for p in out.rglob("*.jpg"))
    assert len(files) == 105
    assert {p.parent.name for p in files} == {
        "Actinoptychus", "Bacillariophyceae", "Ciliophora", "Dinoflagellata", "Noctilucales",
        "Tripos",
    }  # fmt: skip
    with open(out / "metadata.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    assert len(meta) == 105 and (out / meta[0]["file_name"]).is_file()


def test_help_on_every_command():
    for args in (["--help"], ["ingest", "--help"], ["ingest", "folder", "--help"],
                 ["stats", "--help"], ["query", "--help"], ["export", "--help"],
                 ["demo", "--help"], ["evaluate", "--help"], ["report", "--help"],
                 ["calibrate", "--help"], ["predict", "--help"], ["serve", "--help"]):  # fmt: skip
        result = pz(*args)
        assert result.exit_code == 0, args
        assert "Usage" in result.output


def test_cli_startup_does_not_import_heavy_libraries():
    code = (
        "import sys; import planktonzilla.cli; "
        "heavy = [m for m in ('pyarrow', 'duckdb', 'torch', 'open_clip', 'PIL', 'fastapi', 'matplotlib', 'sklearn') if m in sys.modules]; "  # noqa: E501
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_synthetic_sample_is_deterministic_and_varied():
    a = list(synthetic_records("FlowCam", per_class=2, seed=3))
    b = list(synthetic_records("FlowCam", per_class=2, seed=3))
    assert [r.image for r in a] == [r.image for r in b]
    assert len(a) == 2 * len(CLASSES)
    assert len({r.raw_label for r in a}) == len(CLASSES)
    with Image.open(io.BytesIO(a[0].image)) as im:
        assert im.mode == "RGB"
    looks = {name: next(synthetic_records(name, per_class=1)).image[:4] for name in INSTRUMENTS}
    assert looks["ISIIS"].startswith(b"\xff\xd8") and looks["IFCB"].startswith(b"\x89PNG")


@pytest.mark.slow
def test_demo_builds_a_store(tmp_path):
    result = pz("demo", "--out", tmp_path, "--per-class", "3")
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    stats = ObjectStore(tmp_path / "store").stats()
    assert stats["stored"] == 3 * len(CLASSES) * len(INSTRUMENTS)
    assert {s["source"] for s in stats["sources"]} == {
        f"synthetic-{name.lower()}" for name in INSTRUMENTS
    }
    # the four vocabularies harmonize: every label resolves, copepods meet in one class
    store = ObjectStore(tmp_path / "store")
    unresolved = store.query(
        "select distinct source, raw_label from objects where taxonomy_status <> 'resolved'"
    ).to_pylist()
    assert unresolved == []
    copepods = store.query(
        "select distinct source from objects where class = 'Copepoda'"
    ).to_pylist()
    assert len(copepods) == len(INSTRUMENTS)
    assert "Copepoda" in (tmp_path / "flow.html").read_text()
    # too few images for a test side: no evaluation, but the new images are classified
    assert "evaluation skipped" in result.output
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(CLASSES) * len(INSTRUMENTS)
    assert all(r["label"] and not r["error"] for r in rows)
    assert (tmp_path / "predictions-ecotaxa.zip").is_file()
