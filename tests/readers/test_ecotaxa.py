"""EcoTaxa / EcoPart reader on the real exports in ../shared/data/ecotaxa_exports."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from planktonzilla.readers.ecotaxa import ZipMember, read_ecopart, read_ecotaxa
from planktonzilla.readers.ecotaxa_tsv import write_ecotaxa_tsv
from planktonzilla.records import Record, Rejection

REASONS = {
    "bad_row",
    "bad_header",
    "duplicate_object_id",
    "empty",
    "missing_file",
    "not_objects",
    "unsafe_path",
    "corrupt",
}


@pytest.fixture(scope="module")
def exports(shared_data: Path) -> Path:
    return shared_data / "ecotaxa_exports"


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The data rows of a TSV read independently with csv (type row skipped)."""
    text = path.read_bytes().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    header = [h.lower() for h in rows[0]]
    body = rows[1:]
    if body and all(re.fullmatch(r"(\[[A-Za-z]\])?", c.strip()) for c in body[0]):
        body = body[1:]
    return header, [dict(zip(header, r, strict=False)) for r in body]


def _by_origin(items):
    return {i.origin: i for i in items}


# ------------------------------------------------------------------ types and metadata


def test_type_row_file_metadata_matches_the_tsv(exports: Path):
    folder = exports / "ecotaxa_qa/import_test/m106_mn01_n1_sml"
    tsv = folder / "ecotaxa_m106_mn01_n1_sml.tsv"
    _, rows = _rows(tsv)
    items = list(read_ecotaxa(tsv))
    assert all(isinstance(i, Record) for i in items)
    assert len(items) == len(rows) == 8
    for row, rec in zip(rows, items, strict=True):
        assert rec.origin == f"{tsv.name}#{row['object_id']}"
        assert rec.source_object_id == row["object_id"]
        assert rec.raw_label == row["object_annotation_category"]
        assert rec.lat == pytest.approx(float(row["object_lat"]))
        assert rec.lon == pytest.approx(float(row["object_lon"]))
        assert rec.depth_min == float(row["object_depth_min"])
        assert rec.depth_max == float(row["object_depth_max"])
        assert rec.sample_id == row["sample_id"]
        assert rec.instrument == row["acq_instrument"]
        assert rec.pixel_size_um == pytest.approx(float(row["process_pixel"]))  # ZooProcess µm
        assert rec.extra["acq_id"] == row["acq_id"]
        assert rec.extra["process_id"] == row["process_id"]
        assert rec.extra["annotation_status"] == row["object_annotation_status"]
        # [f] columns are numbers, [t] columns text
        assert rec.extra["object_area"] == float(row["object_area"])
        assert isinstance(rec.extra["object_new_field"], float)
        assert rec.extra["object_annotation_person_name"] == row["object_annotation_person_name"]
        assert rec.image_bytes() == (folder / row["img_file_name"]).read_bytes()
    # '420' is HHMM in EcoTaxa: 04:20 (EcoTaxa's own export of this object says 042000)
    assert items[0].time_utc == datetime(2014, 4, 20, 4, 20, tzinfo=UTC)


def test_no_type_row_infers_numbers_and_keeps_hierarchy(exports: Path):
    tsv = exports / "ecotaxa_qa/ref_exports/doi/ecotaxa_export_1_20210530_1122.tsv"
    header, rows = _rows(tsv)
    assert "object_annotation_hierarchy" in header
    items = list(read_ecotaxa(tsv))
    assert len(items) == len(rows) == 12
    for row, rec in zip(rows, items, strict=True):
        assert isinstance(rec, Record)
        assert rec.image_bytes() == (tsv.parent / row["img_file_name"]).read_bytes()
        assert rec.extra["hierarchy"] == row["object_annotation_hierarchy"]
        assert rec.raw_label == row["object_annotation_category"]
        assert rec.extra["object_area"] == float(row["object_area"])
        assert rec.lat == pytest.approx(float(row["object_lat"]))
        assert rec.time_utc.tzinfo is not None


def test_tara_zooscan_export_without_images(exports: Path):
    tsv = exports / "tara_zooscan/export.tsv"
    _, rows = _rows(tsv)
    strict = list(read_ecotaxa(tsv))
    assert {i.reason for i in strict} == {"missing_file"}  # images are not shipped
    items = list(read_ecotaxa(tsv, missing_images="metadata"))
    assert len(items) == len(rows) == 99
    for row, rec in zip(rows, items, strict=True):
        assert rec.image is None and rec.extra["missing_image"] == row["img_file_name"]
        assert rec.extra["hierarchy"] == row["object_annotation_hierarchy"]
        assert rec.sample_id == row["sample_id"]
        assert rec.instrument == "zooscan"
        assert rec.pixel_size_um == pytest.approx(10.6)  # process_particle_pixel_size_mm 0.0106
        d, t = row["object_date"], row["object_time"].zfill(6)
        assert rec.time_utc == datetime(
            int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]), int(t[4:6]), tzinfo=UTC
        )
        assert rec.depth_min == float(row["object_depth_min"])


def test_time_formats_and_latin1(exports: Path):
    sparse = list(read_ecotaxa(exports / "ecotaxa_qa/import_sparse"))
    assert sparse[0].time_utc == datetime(2016, 7, 19, 2, 1, 39, 315000, tzinfo=UTC)
    assert sparse[0].instrument == "VPR"
    weird = _by_origin(read_ecotaxa(exports / "ecotaxa_qa/import_test_weird"))
    first = weird["m106_mn01_n4_sml/ecotaxa_m106_mn01_n4_sml.tsv#m106_mn01_n4_sml_1"]
    assert first.time_utc == datetime(2014, 4, 20, 4, 20, tzinfo=UTC)  # 2014-04-20 04:20:00
    # a cp1252 file with 'µ' in a header still reads
    items = list(
        read_ecotaxa(
            exports / "irfcb/ecotaxa_table_without_classification.tsv", missing_images="metadata"
        )
    )
    assert len(items) == 7 and all(isinstance(i, Record) for i in items)
    assert items[0].pixel_size_um == pytest.approx(25400 / 2400)  # process_img_resolution dpi


def test_uvp6_degree_minute_positions(exports: Path):
    items = list(read_ecotaxa(exports / "ecotaxa_qa/UVP6_example.zip"))
    assert len(items) == 15 and all(isinstance(i, Record) for i in items)
    assert items[0].lat == 43.0 and items[0].lon == 17.0  # written '43°0 0' / '17°0 0'


# ------------------------------------------------------------------ every file accounted


def test_every_ecotaxa_qa_table_ingests_or_gives_a_reason(exports: Path):
    root = exports / "ecotaxa_qa"
    items = list(read_ecotaxa(root))
    assert len({i.origin for i in items}) == len(items)  # origins unique
    for item in items:
        if isinstance(item, Rejection):
            assert item.reason in REASONS and item.message
    tables = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and (p.suffix == ".tsv" or p.name.endswith(".tsv.gz") or p.name.startswith("ecotaxa."))
    ]
    assert len(tables) > 70
    for table in tables:
        rel = table.relative_to(root).as_posix()
        mine = [i for i in items if i.origin.split("#")[0].rsplit(":", 1)[0] == rel]
        assert mine, f"{rel} produced nothing"
        if len(mine) == 1 and isinstance(mine[0], Rejection) and "#" not in mine[0].origin:
            continue  # the whole file rejected
        if table.suffix == ".tsv" and not table.name.endswith(".gz"):
            _, rows = _rows(table)
            assert len(mine) == len(rows), rel  # one item per object row
    # zip bundles: every TSV inside is read too
    assert any(i.origin.startswith("import_test.zip!") for i in items)
    assert any(i.origin.startswith("UVP6_example.zip!b_da_19_Images.zip!") for i in items)


EXPECTED_ISSUES = {
    # case: {reason or "stored": count}
    "breaking_hierarchy": {"stored": 1},  # an EcoTaxa-DB conflict; the file alone is sound
    "classif_without_state": {"stored": 1},  # unlabelled, issue noted
    "corrupted_img": {"stored": 3, "missing_file": 1},  # the store rejects the corrupt JPEG
    "duplicate_in_tsv": {"stored": 1, "duplicate_object_id": 1},
    "empty_tsv": {"empty": 1},
    "empty_tsv2": {"empty": 1},
    "extra_data_without_header": {"bad_row": 1},
    "no_classif_id": {"stored": 1},
    "predicted_but_what": {"stored": 1},  # unlabelled, issue noted
    "tsv_issues": {"stored": 3, "bad_row": 2, "missing_file": 1},
    "tsv_too_many_cols": {"stored": 1},  # 65 sample columns: an EcoTaxa limit, not ours
}


@pytest.mark.parametrize("case", sorted(EXPECTED_ISSUES))
def test_import_issues_cases(exports: Path, case: str):
    items = list(read_ecotaxa(exports / "ecotaxa_qa/import_issues" / case))
    got: dict[str, int] = {}
    for item in items:
        key = "stored" if isinstance(item, Record) else item.reason
        got[key] = got.get(key, 0) + 1
    assert got == EXPECTED_ISSUES[case]
    for item in items:
        if isinstance(item, Rejection):
            assert item.message
    records = [i for i in items if isinstance(i, Record)]
    if case == "predicted_but_what":
        assert records[0].raw_label is None
        assert "without a category" in records[0].extra["issues"][0]
    if case == "classif_without_state":
        assert records[0].raw_label is None and records[0].extra["issues"]
    if case == "tsv_issues":
        bad = [i for i in items if isinstance(i, Rejection) and i.reason == "bad_row"]
        assert any("object_lat 100.0" in r.message and "20140433" in r.message for r in bad)
        assert any("no object_id" in r.message for r in bad)
    if case == "extra_data_without_header":
        assert "90 values for 88 columns" in next(i for i in items if i.reason == "bad_row").message
    if case == "empty_tsv":
        assert "type row has 85 cells for 89 columns" in items[0].message


# ------------------------------------------------------------------ EcoPart / UVP5


def test_uvp5_ecopart_objects(exports: Path):
    folder = exports / "uvp5_ecopart"
    items = list(read_ecopart(folder))
    records = [i for i in items if isinstance(i, Record)]
    rejected = [i for i in items if isinstance(i, Rejection)]
    assert len(records) == 25_054
    assert all(r.raw_label and r.image is None for r in records)
    assert {r.extra["annotation_status"] for r in records} == {"validated"}  # classif_qual V
    assert len({r.raw_label for r in records}) == 52
    assert len(rejected) == 25 and {r.reason for r in rejected} == {"not_objects"}
    assert all("_PAR_raw_" in r.origin for r in rejected)
    # position and time from the metadata summary, read independently
    _, summary = _rows(next(folder.glob("*Export_metadata_summary.tsv")))
    ctd1 = next(s for s in summary if s["profileid"] == "bats361_ctd1")
    zoo = next(folder.glob("*_bats361_ctd1_ZOO_raw_*.tsv"))
    _, zoo_rows = _rows(zoo)
    mine = [r for r in records if r.origin.startswith(zoo.name + "#")]
    assert len(mine) == len(zoo_rows)
    for row, rec in zip(zoo_rows, mine, strict=True):
        assert rec.source_object_id == row["orig_id"]
        assert rec.raw_label == row["name"]
        assert rec.extra["hierarchy"] == row["taxo_hierarchy"]
        assert rec.depth_min == rec.depth_max == float(row["depth_including_offset"])
        assert rec.sample_id == "bats361_ctd1"
        assert rec.lat == float(ctd1["latitude"]) and rec.lon == float(ctd1["longitude"])
        assert rec.time_utc == datetime.fromisoformat(ctd1["sampledate"]).replace(tzinfo=UTC)
        assert rec.pixel_size_um == pytest.approx(92.0)  # acq_pixel 0.092 mm
        assert rec.instrument == "UVP5"
        assert rec.extra["esd"] == float(row["esd"])
    assert len({r.sample_id for r in records}) == 24


# ------------------------------------------------------------------ zips and safety


def test_zip_bundle_images_match_the_folder(exports: Path):
    root = exports / "ecotaxa_qa"
    items = [i for i in read_ecotaxa(root / "import_test.zip") if isinstance(i, Record)]
    assert len(items) == 8  # the zip holds an older, shorter n1 table than the folder
    for rec in items:
        assert isinstance(rec.image, ZipMember)
        rel = rec.image.members[-1]
        assert rec.image_bytes() == (root / "import_test" / rel).read_bytes()
        assert pickle.loads(pickle.dumps(rec.image))() == rec.image_bytes()
    nested = [i for i in read_ecotaxa(root / "UVP6_example.zip") if isinstance(i, Record)]
    assert all(r.image_bytes().startswith(b"\x89PNG") for r in nested)
    assert nested[0].image.members[0] == "b_da_19_Images.zip"


def test_unsafe_paths_are_rejected(tmp_path: Path, exports: Path):
    img = (exports / "ecotaxa_qa/import_test/m106_mn01_n2_sml/m106_mn01_n2_sml_1.jpg").read_bytes()
    tsv = "object_id\timg_file_name\tobject_annotation_category\n"
    tsv += "a\tok.jpg\tx\nb\t../outside.jpg\ty\nc\t/etc/passwd\tz\n"
    bundle = tmp_path / "b.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.writestr("ecotaxa_x.tsv", tsv)
        zf.writestr("ok.jpg", img)
        zf.writestr("../evil.tsv", tsv)
    got = {i.origin: i for i in read_ecotaxa(bundle)}
    assert isinstance(got["b.zip!ecotaxa_x.tsv#a"], Record)
    assert got["b.zip!ecotaxa_x.tsv#b"].reason == "unsafe_path"
    assert got["b.zip!ecotaxa_x.tsv#c"].reason == "unsafe_path"
    assert got["b.zip!../evil.tsv"].reason == "unsafe_path"
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    (rej,) = read_ecotaxa(broken)
    assert rej.reason == "corrupt"


# ------------------------------------------------------------------ writer


def test_write_ecotaxa_tsv_round_trip(tmp_path: Path):
    rows = [
        {"object_id": "a1", "object_lat": 43.5, "object_area": 12, "object_date": "20200101"},
        {"object_id": "a2", "object_lat": -1.25, "object_annotation_category": "Copepoda"},
    ]
    path = tmp_path / "ecotaxa_out.tsv"
    assert write_ecotaxa_tsv(rows, path) == 2
    lines = path.read_text().splitlines()
    assert lines[1].split("\t") == ["[t]", "[f]", "[f]", "[t]", "[t]"]
    back = list(read_ecotaxa(path))
    assert [r.lat for r in back] == [43.5, -1.25]
    assert back[0].extra["object_area"] == 12.0
    assert back[1].raw_label == "Copepoda"


# ------------------------------------------------------------------ through the store and CLI


def test_store_and_cli_end_to_end(tmp_path: Path, exports: Path):
    from typer.testing import CliRunner

    from planktonzilla.cli import app
    from planktonzilla.store import ObjectStore

    store = tmp_path / "store"
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "ecotaxa",
            str(exports / "ecotaxa_qa/import_issues"),
            "--store",
            str(store),
            "--source",
            "ecotaxa-qa",
        ],
    )
    assert result.exit_code == 0, result.output
    s = ObjectStore(store)
    objects = s.query("SELECT origin, raw_label, lat, time_utc, extra FROM objects").to_pylist()
    rejected = s.query("SELECT origin, reason FROM rejected").to_pylist()
    reasons = {r["origin"]: r["reason"].split(":")[0] for r in rejected}
    expected = sum(sum(v.values()) for v in EXPECTED_ISSUES.values())
    assert len(objects) + len(rejected) == expected
    corrupt = "corrupted_img/ecotaxa.PS122.txt#20200108 082117  116  000001 0000 0648"
    assert reasons[corrupt] in ("corrupt", "truncated")
    assert reasons["tsv_issues/ecotaxa_m106_mn01_n3_sml.tsv#m106_mn01_n3_sml_corrupted_image.jpg"]
    # identical images are stored once (e.g. tsv_too_many_cols repeats tsv_issues' image)
    assert reasons["tsv_too_many_cols/ecotaxa_m106_mn01_n3_sml.tsv#m106_mn01_n3_sml_1"] == (
        "duplicate_of"
    )
    assert all(json.loads(o["extra"])["acq_id"] for o in objects if o["extra"])
    # a rerun skips everything already accounted for
    again = CliRunner().invoke(
        app,
        ["ingest", "ecotaxa", str(exports / "ecotaxa_qa/import_issues"), "--store", str(store)]
        + ["--source", "ecotaxa-qa"],
    )
    assert again.exit_code == 0
    assert len(s.query("SELECT origin FROM objects")) == len(objects)


def test_uvp5_through_the_store(tmp_path: Path, exports: Path):
    from planktonzilla.store import ObjectStore

    store = ObjectStore(tmp_path / "store")
    report = store.ingest(read_ecotaxa(exports / "uvp5_ecopart"), source="uvp5-bats")
    assert report.ok and report.stored == 25_054 and report.rejected == 25
    (row,) = store.query(
        "SELECT count(*) AS n, count(DISTINCT sample_id) AS profiles, min(depth_min) AS d,"
        " count(lat) AS with_lat FROM objects"
    ).to_pylist()
    assert row["n"] == 25_054 and row["profiles"] == 24 and row["with_lat"] == 25_054
