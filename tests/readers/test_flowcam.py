"""FlowCam VisualSpreadsheet runs and libraries from ../shared/data: particles cropped out of
their collages at the `.lst` boxes, labelled from the `.cla`, run metadata from `.ctx`."""

from __future__ import annotations

import io
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image

from planktonzilla.readers.flowcam import read_cla, read_flowcam, read_lst
from planktonzilla.records import Record, Rejection

RUN40 = "416_Station40_09012015_10x"


@pytest.fixture(scope="module")
def station40(shared_data: Path) -> Path:
    return shared_data / "flowcam_station40" / RUN40


@pytest.fixture(scope="module")
def station40_records(station40: Path) -> list:
    return list(read_flowcam(station40))


def _lst_rows(path: Path) -> dict[int, dict[str, str]]:
    """id → row, parsed independently of the reader."""
    lines = path.read_text().splitlines()
    n = int(lines[1].split("|")[1])
    names = [ln.split("|")[0] for ln in lines[2 : 2 + n]]
    rows = [dict(zip(names, ln.split("|"), strict=True)) for ln in lines[2 + n :] if ln]
    return {int(r["id"]): r for r in rows}


def _cla_counts(path: Path) -> Counter:
    """class → particle count, from the file's own per-class counts."""
    lines = path.read_text().splitlines()
    counts: Counter = Counter()
    i, nclass = 4, int(lines[3])
    for _ in range(nclass):
        name, nfilt = lines[i], int(lines[i + 2])
        i += 3 + nfilt
        count = int(lines[i])
        if count:
            counts[name] = count
        i += 1 + count
    return counts


def test_station40_all_particles_cropped_and_labelled(station40: Path, station40_records):
    rows = _lst_rows(station40 / f"{RUN40}.lst")
    assert len(rows) == 3122
    records = station40_records
    assert len(records) == 3122 and all(isinstance(r, Record) for r in records)
    assert len({r.origin for r in records}) == 3122
    for r in records:
        row = rows[r.extra["particle_id"]]
        im = Image.open(io.BytesIO(r.image))
        assert im.format == "PNG"
        assert im.size == (int(row["image_w"]), int(row["image_h"]))  # crop size = .lst size
        assert r.extra["collage_file"] == row["collage_file"]
    labels = Counter(r.raw_label for r in records)
    assert labels == _cla_counts(station40 / f"{RUN40}.cla")
    assert labels["Unidentified"] == 2140 and labels["Colonial Cyanobacteria"] == 445
    assert labels["Aulocoseira"] == 267 and labels["Detritus"] == 109
    assert None not in labels


def test_station40_crop_pixels_and_metadata(station40: Path, station40_records):
    rows = _lst_rows(station40 / f"{RUN40}.lst")
    first = station40_records[1]  # particle 2: box (29, 0, 22, 25) in collage 1
    row = rows[first.extra["particle_id"]]
    x, y, w, h = (int(row[k]) for k in ("image_x", "image_y", "image_w", "image_h"))
    collage = Image.open(station40 / row["collage_file"])
    assert collage.mode == "RGB"
    crop = Image.open(io.BytesIO(first.image))
    assert crop.mode == "RGB"
    assert crop.tobytes() == collage.crop((x, y, x + w, y + h)).tobytes()

    assert first.origin == first.source_object_id == f"{RUN40}/{row['id']}"
    assert first.sample_id == RUN40 and first.instrument == "FlowCam"
    assert first.pixel_size_um == pytest.approx(0.5517)
    assert first.time_utc == datetime(2017, 2, 1, 0, 0, 18, tzinfo=UTC)  # .ctx RunStartTime
    assert first.extra["run_start_local"] == "2017-01-31 19:00:18"
    assert first.extra["particle_timestamp"] == row["timestamp"]
    assert first.extra["esd_diameter"] == pytest.approx(float(row["esd_diameter"]))
    assert first.extra["image_id"] == row["image_id"]
    assert first.extra["software"] == "4.0.27" and first.extra["magnification"] == "10"


def test_cla_parser(station40: Path, shared_data: Path):
    name, labels = read_cla(station40 / f"{RUN40}.cla")
    assert name == f"{RUN40}_Class" and len(labels) == 3122
    assert labels[20] == "Aulocoseira" and labels[1057] == "Asterionella"
    # the newer format names a filter file for each class
    run = next((shared_data / "flowcam_protist/raw_runs").iterdir())
    name, labels = read_cla(next(run.glob("*.cla")))
    assert name == "karla_protist_class_2"
    assert set(labels.values()) <= {"Junk", "protist", "missed"}
    assert sum(Counter(labels.values()).values()) == sum(
        _cla_counts(next(run.glob("*.cla"))).values()
    )


@pytest.mark.parametrize("folder", ["raw_runs", "FlowCam_raw_test_files"])
def test_protist_raw_runs(shared_data: Path, folder: str):
    root = shared_data / "flowcam_protist" / folder
    out = list(read_flowcam(root))
    assert all(isinstance(r, Record) for r in out)
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    per_run = Counter(r.sample_id for r in out)
    for run in runs:
        lst = read_lst(run / f"{run.name}.lst")
        assert per_run[run.name] == len(lst.rows) == 1000
        labelled = Counter(r.raw_label for r in out if r.sample_id == run.name and r.raw_label)
        assert labelled == _cla_counts(run / f"{run.name}.cla")
    rows = _lst_rows(runs[0] / f"{runs[0].name}.lst")
    for r in out[:1000]:
        row = rows[r.extra["particle_id"]]
        assert Image.open(io.BytesIO(r.image)).size == (int(row["image_w"]), int(row["image_h"]))
        assert r.pixel_size_um == pytest.approx(0.5544) and r.time_utc.tzinfo is not None


def test_library_files(shared_data: Path):
    out = list(read_flowcam(shared_data / "flowcam_library"))
    records = [r for r in out if isinstance(r, Record)]
    rejected = [r for r in out if isinstance(r, Rejection)]
    assert Counter(r.raw_label for r in records) == {
        "C fusus": 65,
        "Ceratium fusus": 27,
        "Lge ciliate unidentified": 33,
    }
    # "C fusus_lib_images_000001.tif" is missing from the data set: its particles are rejected
    assert len(rejected) == 127 and {r.reason for r in rejected} == {"missing_file"}
    assert all("C fusus_lib_images_000001.tif" in r.message for r in rejected)
    assert all(r.raw_label == "C fusus" for r in rejected)
    flb = read_lst(shared_data / "flowcam_library/Tripos fusus/C fusus.flb")
    assert len(flb.rows) == 65 + 127


def _copy_run(station40: Path, dest: Path, collages: int = 2) -> Path:
    run = dest / RUN40
    run.mkdir()
    for suffix in (".lst", ".cla", ".ctx"):
        shutil.copy(station40 / f"{RUN40}{suffix}", run)
    for i in range(1, collages + 1):
        shutil.copy(station40 / f"{RUN40}_{i:06d}.tif", run)
    return run


def test_missing_collage_and_out_of_bounds(station40: Path, tmp_path: Path):
    run = _copy_run(station40, tmp_path)
    lst = run / f"{RUN40}.lst"
    lines = lst.read_text().splitlines()
    header = 66
    fields = lines[header].split("|")
    fields[1] = "1290"  # image_x of particle 1: box now leaves the 1292 px wide collage
    lines[header] = "|".join(fields)
    lst.write_text("\n".join(lines + ["1|2|3"]) + "\n")  # and a malformed last row

    out = list(read_flowcam(run))
    reasons = Counter(r.reason for r in out if isinstance(r, Rejection))
    n_rows = len(lines) - header
    rows = _lst_rows(station40 / f"{RUN40}.lst")
    in_first_two = sum(
        r["collage_file"] in {f"{RUN40}_000001.tif", f"{RUN40}_000002.tif"} for r in rows.values()
    )
    assert reasons == {"out_of_bounds": 1, "missing_file": n_rows - in_first_two, "bad_row": 1}
    assert sum(isinstance(r, Record) for r in out) == in_first_two - 1
    oob = next(r for r in out if getattr(r, "reason", None) == "out_of_bounds")
    assert oob.origin == f"{RUN40}/1" and "1292x964" in oob.message
    assert len(out) == n_rows + 1  # every row accounted for


def test_invalid_list(tmp_path: Path):
    (tmp_path / "run.lst").write_text("this is not a list file\n")
    (bad,) = read_flowcam(tmp_path)
    assert bad.reason == "invalid_list" and "num-fields" in bad.message
    (missing,) = read_flowcam(tmp_path / "nope")
    assert missing.reason == "missing_file"


def test_cli_end_to_end(station40: Path, shared_data: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from planktonzilla.cli import app
    from planktonzilla.store import ObjectStore

    store = tmp_path / "store"
    paths = [str(station40), str(shared_data / "flowcam_library")]
    result = CliRunner().invoke(
        app, ["ingest", "flowcam", *paths, "--store", str(store), "--source", "flowcam"]
    )
    assert result.exit_code == 0, result.output
    s = ObjectStore(store)
    rows = s.query(
        "select sample_id, raw_label, count(*) as n, min(channels) as c, "
        "min(pixel_size_um) as px from objects group by 1, 2"
    ).to_pylist()
    by_label = {(r["sample_id"], r["raw_label"]): r["n"] for r in rows}
    assert sum(n for (sample, _), n in by_label.items() if sample == RUN40) == 3122
    assert by_label[(RUN40, "Unidentified")] == 2140
    assert by_label[(None, "Ceratium fusus")] == 27
    assert {r["c"] for r in rows} == {3}
    sizes = s.query(
        "select width, height, extra from objects where origin = '416_Station40_09012015_10x/2'"
    ).to_pylist()[0]
    assert (sizes["width"], sizes["height"]) == (22, 25)
    rejected = s.query("select reason, count(*) as n from rejected group by 1").to_pylist()
    assert rejected == [{"reason": "missing_file", "n": 127}]
