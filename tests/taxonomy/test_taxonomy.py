"""Taxonomy engine: parser, backbone, resolver, captions, mapping checks — on a small backbone
written in the packaged CSV format to a temporary directory."""

from __future__ import annotations

import csv

import pytest

from planktonzilla.taxonomy import (
    COLUMNS,
    QUALIFIERS,
    Backbone,
    Lineage,
    Resolver,
    bioclip_caption,
    check_mapping,
    lineage_caption,
    parse_label,
    ranked_caption,
)
from planktonzilla.taxonomy.mapping import build_mapping, check_files, load_mapping, write_mapping
from planktonzilla.taxonomy.resolve import resolutions_table, validate_row
from test_taxonomy_fixture import write_fixture


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("backbone"))


@pytest.fixture(scope="module")
def backbone(fixture_dir) -> Backbone:
    return Backbone.load(fixture_dir)


@pytest.fixture(scope="module")
def resolver(backbone) -> Resolver:
    return Resolver(backbone)


# -- parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, words, parent, qualifier, category",
    [
        ("copepod_calanoid_eggs", ("copepod", "calanoid"), (), "egg", ""),
        ("part<Crustacea", (), ("Crustacea",), "part", ""),
        ("tail<Chaetognatha", (), ("Chaetognatha",), "part_tail", ""),
        ("head<Crustacea", (), ("Crustacea",), "part_head", ""),
        ("like<Copepoda", (), ("Copepoda",), "like", ""),
        ("egg_Actinopterygii", ("Actinopterygii",), (), "egg", ""),
        ("badfocus<artefact", (), (), "badfocus", "badfocus"),
        ("fiber_plastic", (), (), "", "plastic"),
        ("LClass_Pa.35.Marine_snow_aggregate_large", (), (), "", "detritus"),
        ("LClass_Cy.1.Trichodesmium_spp", ("Trichodesmium",), (), "", ""),
        ("LClass_32.1Adult_Fish", ("Fish",), (), "", ""),
        ("Pseudo-nitzschia_spp._2_cells", ("Pseudo-nitzschia",), (), "colony", ""),
        ("Tripos_cf._minutus", ("Tripos", "minutus"), (), "like", ""),
        ("Cylindrotheca_closterium-like", ("Cylindrotheca", "closterium"), (), "like", ""),
        ("chaetognath_non_sagitta", ("chaetognath",), (), "", ""),
        ("ctenophore_cydippid_no_tentacles", ("ctenophore", "cydippid"), (), "", ""),
        (
            "copepod_calanoid_frillyAntennae",
            ("copepod", "calanoid", "frilly", "Antennae"),
            (),
            "",
            "",
        ),
        ("PARAMECIUM  BURSARIA", ("PARAMECIUM", "BURSARIA"), (), "", ""),
        ("Flota sp.", ("Flota",), (), "", ""),
    ],
)
def test_parse_label(raw, words, parent, qualifier, category):
    p = parse_label(raw)
    assert p.words == words
    assert p.parent_words == parent
    assert p.qualifier == qualifier
    assert p.category == category


def test_parse_markers():
    assert parse_label("t001").unresolved == "temporary category"
    assert parse_label("unknown").unresolved
    assert parse_label("other<living").living
    assert parse_label("Katodinium_or_Torodinium").connector == "or"
    assert parse_label("Rhizosolenia inter. Richelia").connector == "host"
    assert parse_label("echinoderm_larva_pluteus_urchin").stages == ("pluteus",)
    assert parse_label("dead<house").qualifier == "dead"


# -- backbone --------------------------------------------------------------------------------


def test_backbone_lookup_synonyms_and_lineage(backbone):
    assert backbone.find("neoceratium").name == "Tripos"
    assert backbone.find("Neoceratium furca").name == "Tripos furca"
    assert backbone.find("LARVACEA").name == "Appendicularia"
    lin = backbone.lineage("Calanus finmarchicus")
    assert lin.ranks() == (
        "Animalia",
        "Arthropoda",
        "Copepoda",
        "Calanoida",
        "Calanidae",
        "Calanus",
        "Calanus finmarchicus",
    )
    assert lin.aphia_id == 104464001 and lin.plankton is True and lin.is_contiguous()
    assert backbone.lineage("Insecta").plankton is False  # flag inherited, here set on the taxon
    # a missing family is filled so ranks stay contiguous
    assert backbone.lineage("Cladopyxis").family == "Gonyaulacales incertae sedis"
    assert backbone.common_ancestor([backbone.find("Calanus"), backbone.find("Oithona")]).name == (
        "Copepoda"
    )
    assert backbone.problems == []


def test_backbone_reports_problems(tmp_path):
    (tmp_path / "backbone.csv").write_text(
        "name,rank,parent,aphia_id,status,accepted,plankton\n"
        "Animalia,kingdom,,2,accepted,,\n"
        "Foo,genus,Nowhere,,accepted,,\n"
        "Bar,genus,,,synonym,Baz,\n"
        "Qux,superduper,Animalia,,accepted,,\n"
    )
    bb = Backbone.load(tmp_path)
    text = " ".join(bb.problems)
    assert "unknown parent 'Nowhere'" in text
    assert "synonym of unknown 'Baz'" in text
    assert "unknown rank" in text


def test_backbone_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Backbone.load(tmp_path)
    (tmp_path / "backbone.csv").write_text("name,rank\nAnimalia,kingdom\n")
    with pytest.raises(ValueError, match="missing column"):
        Backbone.load(tmp_path)


def test_fuzzy_and_suggest(backbone):
    assert backbone.fuzzy("Aohanizomenon").name == "Aphanizomenon"
    assert backbone.fuzzy("Cladocera").name == "Cladocera"
    assert backbone.fuzzy("Cladoxyz") is None
    assert "Chaetognatha" in backbone.suggest("chaetognata")


# -- resolver --------------------------------------------------------------------------------

CASES = [
    # raw, source, name, rank, qualifier, root_class, provenance
    ("copepod_calanoid_eggs", "", "Calanoida", "order", "egg", "living", "rule"),
    (
        "Calanus finmarchicus",
        "",
        "Calanus finmarchicus",
        "species",
        "full_body",
        "living",
        "backbone",
    ),
    ("chaetognath_sagitta", "", "Sagitta", "genus", "full_body", "living", "backbone"),
    ("chaetognath_non_sagitta", "", "Chaetognatha", "phylum", "full_body", "living", "rule"),
    ("siphonophore_calycophoran_abylidae", "", "Abylidae", "family", "full_body", "living", None),
    ("hydromedusae_narco_young", "", "Narcomedusae", "order", "juvenile", "living", "rule"),
    ("Cladocera", "", "Cladocera", "order", "full_body", "living", "backbone"),
    ("Neoceratium furca", "", "Tripos furca", "species", "full_body", "living", "backbone"),
    ("Neoceratium", "", "Tripos", "genus", "full_body", "living", "backbone"),
    ("part<Crustacea", "", "Crustacea", "subphylum", "part", "living", "backbone"),
    ("like<Copepoda", "", "Copepoda", "class", "like", "living", "backbone"),
    ("badfocus<Copepoda", "", "Copepoda", "class", "badfocus", "living", "backbone"),
    ("badfocus<artefact", "", "badfocus", "", "", "artefact", "rule"),
    ("Cnidaria<Hydrozoa", "", "Hydrozoa", "class", "full_body", "living", None),
    ("G_delicatula_parasite", "", "Guinardia delicatula", "species", "parasite", "living", "rule"),
    (
        "Chaetoceros curvusetus",
        "",
        "Chaetoceros curvisetus",
        "species",
        "full_body",
        "living",
        "rule",
    ),
    ("LClass_Cy.1.Trichodesmium_tuft", "", "Trichodesmium", "genus", "colony", "living", None),
    ("puff", "", "Trichodesmium", "genus", "colony", "living", "rule"),
    ("Calanidae finmarchicus", "", "Calanus finmarchicus", "species", "full_body", "living", None),
    ("copepoda-cut", "", "Copepoda", "class", "part", "living", "backbone"),
    ("Oithona-Calanus", "", "Copepoda", "class", "mix", "living", None),
    ("Calanus cf. finmarchicus", "", "Calanus finmarchicus", "species", "like", "living", None),
    ("maybe_copepod", "", "Copepoda", "class", "like", "living", "rule"),
    ("molt", "", "Crustacea", "subphylum", "molt", "living", "rule"),
    ("LClass_carapace", "", "Crustacea", "subphylum", "part_carapace", "living", "rule"),
    ("duplicate", "", "artefact", "", "", "artefact", "rule"),
    ("moving", "", "artefact", "", "", "artefact", "rule"),
    ("egg 1 temp", "", "Biota", "", "egg", "living", "rule"),
    ("like<egg", "", "Biota", "", "like", "living", "rule"),
    ("Chaetoceros_didymus_diatom", "", "Chaetoceros didymus", "species", "mix", "living", None),
    ("copepod-like_other", "", "Copepoda", "class", "like", "living", "rule"),
    ("chainlarge", "", "Biota", "", "colony", "living", "rule"),
    ("LClass_copepod_lavae", "", "Copepoda", "class", "larvae", "living", "rule"),
    ("LClass_Larvacea", "", "Appendicularia", "class", "full_body", "living", "backbone"),
    ("Aohanizomenon", "", "Aphanizomenon", "genus", "full_body", "living", "rule"),
    ("LClass_Pa.35.Marine_snow", "", "detritus", "", "", "detritus", "rule"),
    ("fiber_plastic", "", "plastic", "", "", "inert", "rule"),
    ("other<living", "", "Biota", "", "", "living", "rule"),
    ("egg_other", "", "Biota", "", "egg", "living", "rule"),
    ("multiple organisms", "", "Biota", "", "multiple", "living", "rule"),
    ("copepod_cyclopoid_oithona_eggs", "", "Oithona", "genus", "egg", "living", "backbone"),
    ("echinoderm_larva_seastar_bipinnaria", "", "Asteroidea", "class", "larvae", "living", "rule"),
    ("tunicate_doliolid", "", "Doliolida", "order", "full_body", "living", "rule"),
    ("Copepod_nauplii", "", "Copepoda", "class", "larvae", "living", "rule"),
    ("nauplii", "", "Crustacea", "subphylum", "larvae", "living", "rule"),
    ("Ciliates", "", "Ciliophora", "phylum", "full_body", "living", "rule"),
    ("LClass_Crust.+Decap", "", "Crustacea", "subphylum", "full_body", "living", "rule"),
    ("Dactyliosolen guinardia mix", "", "Rhizosoleniaceae", "family", "mix", "living", None),
    ("ceratium", "zoolake", "Ceratium", "genus", "full_body", "living", "manual"),
    ("LClass_shell", "jedioceans", "Biota", "", "part", "living", "manual"),
]


@pytest.mark.parametrize("raw, source, name, rank, qualifier, root_class, provenance", CASES)
def test_resolve(resolver, raw, source, name, rank, qualifier, root_class, provenance):
    res = resolver.resolve(raw, source)
    lin = res.lineage
    assert res.status == "resolved", res.reason
    assert (lin.name, lin.rank, lin.qualifier, lin.root_class) == (
        name,
        rank,
        qualifier,
        root_class,
    )
    if provenance:
        assert res.provenance == provenance
    assert lin.is_contiguous()
    assert validate_row(res.row()) == []


def test_alternatives_resolve_to_common_ancestor(resolver):
    res = resolver.resolve("Chaetoceros_curvisetus_Chaetoceros_pseudocurvisetus")
    assert res.lineage.name == "Chaetoceros" and "common ancestor" in res.reason
    assert res.lineage.qualifier == "mix"
    assert res.confidence <= 0.8


@pytest.mark.parametrize(
    "raw, source, reason",
    [
        ("t001", "", "temporary"),
        ("unknown", "", "unidentified"),
        ("othertocheck", "", "checking"),
        ("chordate_type1", "planktonset1.0", "unknown chordate"),
        ("Zorglub", "", "Zorglub"),
    ],
)
def test_unresolved_has_reason(resolver, raw, source, reason):
    res = resolver.resolve(raw, source)
    assert res.status == "unresolved"
    assert reason in res.reason
    assert res.lineage.ranks() == ("",) * 7


def test_coarse_labels_stay_coarse(resolver):
    """'Cladocera' is the order, not the genus Cladopyxis that starts alike."""
    assert resolver.resolve("Cladocera").lineage.genus == ""
    assert resolver.resolve("Crustacea").lineage.rank == "subphylum"


def test_same_taxon_one_lineage_across_spellings(resolver):
    names = ["Neoceratium", "Tripos", "neoceratium", "TRIPOS"]
    lineages = {resolver.resolve(n).lineage.ranks() for n in names}
    assert len(lineages) == 1


# -- captions --------------------------------------------------------------------------------


def test_captions(backbone):
    lin = backbone.lineage("Calanus finmarchicus")
    assert (
        lineage_caption(lin)
        == "animalia arthropoda copepoda calanoida calanidae calanus finmarchicus"
    )
    assert (
        bioclip_caption(lin)
        == "a photo of Animalia Arthropoda Copepoda Calanoida Calanidae Calanus finmarchicus."
    )
    assert ranked_caption(lin) == (
        "kingdom Animalia phylum Arthropoda class Copepoda order Calanoida family Calanidae "
        "genus Calanus species Calanus finmarchicus"
    )
    genus = backbone.lineage("Cladopyxis")  # incertae sedis filler left out
    assert lineage_caption(genus) == "chromista myzozoa dinophyceae gonyaulacales cladopyxis"
    egg = genus.with_flags(qualifier="egg")
    assert lineage_caption(egg, qualifier=True).endswith("cladopyxis egg")
    assert lineage_caption(Lineage(name="detritus", root_class="detritus")) == "detritus"
    assert bioclip_caption(Lineage(name="Biota", root_class="living")) == "a photo of Biota."


# -- mapping ---------------------------------------------------------------------------------

PAIRS = [
    ("s1", "Calanus finmarchicus"),
    ("s1", "copepod_calanoid_eggs"),
    ("s1", "detritus"),
    ("s1", "t001"),
    ("s2", "Neoceratium furca"),
    ("s2", "Tripos furca"),
    ("s2", "part<Crustacea"),
    ("zoolake", "ceratium"),
]


def test_mapping_roundtrip_and_check(tmp_path, backbone):
    out = tmp_path / "mapping.csv"
    meta = write_mapping(build_mapping(PAIRS, backbone), out, backbone_digest=backbone.digest)
    assert meta["rows"] == len(PAIRS) and meta["status"] == {"resolved": 7, "unresolved": 1}
    rows = load_mapping(out)
    assert set(rows) == set(PAIRS)
    with open(out, newline="") as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == COLUMNS
    assert rows[("s2", "Neoceratium furca")]["species"] == rows[("s2", "Tripos furca")]["species"]
    assert rows[("s1", "Calanus finmarchicus")]["aphia_id"] == 104464001
    assert rows[("s1", "detritus")]["plankton"] is False
    errors, _ = check_files(out, backbone)
    assert errors == []
    errors, _ = check_mapping(rows.values(), backbone, PAIRS + [("s3", "missing")])
    assert errors == ["s3/missing: missing from the mapping"]
    # a hand edit breaks the checksum
    out.write_text(out.read_text().replace("Calanidae", "Calanidea"))
    errors, _ = check_files(out, backbone)
    assert any("checksum" in e for e in errors)
    assert any("two lineages" in e or "lineages" in e or "differs" in e for e in errors)


def test_check_catches_bad_rows(backbone):
    good = Resolver(backbone).resolve("Calanus finmarchicus", "s").row()
    hole = dict(good, raw_label="hole", family="")
    bad_q = dict(good, raw_label="q", qualifier="sideways")
    synonym = dict(good, raw_label="syn", name="Neoceratium", rank="genus")
    silent = dict(good, raw_label="blank", status="unresolved", reason="")
    fiber = dict(good, raw_label="f1", **{r: "" for r in ("kingdom", "phylum", "class")})
    fiber.update(order="", family="", genus="", species="", rank="", aphia_id=None)
    fiber.update(name="fiber", root_class="inert", qualifier="")
    fiber2 = dict(fiber, raw_label="f2", root_class="detritus")
    rows = [good, hole, bad_q, synonym, silent, fiber, fiber2]
    errors, _ = check_mapping(rows, backbone)
    text = "\n".join(errors)
    assert "ranks not contiguous" in text
    assert "qualifier 'sideways'" in text
    assert "synonym" in text
    assert "unresolved without a reason" in text
    assert "lineages" in text  # Calanus finmarchicus with and without a family
    assert "non-living 'fiber' has root classes ['detritus', 'inert']" in text


def test_resolutions_table_schema(resolver):
    import pyarrow as pa

    table = resolutions_table(resolver.resolve(x, "s") for x in ["Calanus", "t001", "bubble"])
    assert table.column_names == list(COLUMNS)
    assert table.schema.field("aphia_id").type == pa.int64()
    assert table.schema.field("plankton").type == pa.bool_()
    assert table.column("status").to_pylist() == ["resolved", "unresolved", "resolved"]


def test_qualifier_vocabulary_is_closed(resolver):
    labels = [c[0] for c in CASES] + ["tentacle<Cnidaria", "nectophore_Diphyidae", "molt"]
    for raw in labels:
        q = resolver.resolve(raw).lineage.qualifier
        assert q == "" or q in QUALIFIERS
