"""Lineage-aware abstention on hand-built probabilities, label restriction, threshold
calibration and the Classifier on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from planktonzilla.data.dataset import RANKS
from planktonzilla.inference.classifier import TaxonomyTree
from planktonzilla.models import build_model, save_model
from planktonzilla.predict import CALIBRATION, Classifier, calibrate, rank_thresholds


def lineage(name, rank, *ranks):
    out = dict(zip(RANKS, [*ranks, *[None] * (7 - len(ranks))], strict=True))
    return {**out, "name": name, "rank": rank}


COPEPODA = ("Animalia", "Arthropoda", "Copepoda")
LINEAGES = [
    lineage(
        "Calanus finmarchicus",
        "species",
        *COPEPODA,
        "Calanoida",
        "Calanidae",
        "Calanus",
        "Calanus finmarchicus",
    ),
    lineage(
        "Calanus helgolandicus",
        "species",
        *COPEPODA,
        "Calanoida",
        "Calanidae",
        "Calanus",
        "Calanus helgolandicus",
    ),
    lineage("Oithona", "genus", *COPEPODA, "Cyclopoida", "Oithonidae", "Oithona"),
    lineage(
        "Sagitta",
        "genus",
        "Animalia",
        "Chaetognatha",
        "Sagittoidea",
        "Aphragmophora",
        "Sagittidae",
        "Sagitta",
    ),
    {**lineage("detritus", None), "root_class": "detritus"},
]
NAMES = [lin["name"] for lin in LINEAGES]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    out = {}
    for kind in ("supervised", "clip"):
        torch.manual_seed(0)
        config = {
            "kind": kind,
            "backbone": "vit_tiny",
            "image_size": 32,
            "classes": NAMES,
            "class_lineages": LINEAGES,
        }
        if kind == "clip":
            config.update(embed_dim=32, text={"width": 32, "heads": 2, "layers": 1})
        out[kind] = save_model(build_model(config), root / kind)
    return out


def at(rank: float) -> dict[str, float]:
    return dict.fromkeys(RANKS, rank)


def test_abstention_reports_the_deepest_rank_clearing_its_threshold():
    tree = TaxonomyTree(LINEAGES)
    probs = np.array(
        [
            [0.50, 0.30, 0.10, 0.05, 0.05],  # Calanus 0.8, C. finmarchicus 0.5
            [0.30, 0.30, 0.30, 0.05, 0.05],  # Calanoida 0.6 vs Cyclopoida 0.3
            [0.10, 0.10, 0.10, 0.60, 0.10],  # Sagitta 0.6, Animalia 0.9
        ]
    )
    (path, n), (path2, n2), (path3, n3) = tree.confident_path(probs, at(0.6))
    assert path[n - 1][:2] == ("genus", "Calanus") and path[n - 1][2] == pytest.approx(0.8)
    assert path[n] == ("species", "Calanus finmarchicus", pytest.approx(0.5))
    # the species clears a threshold of exactly its probability
    (p, k), *_ = tree.confident_path(probs, {**at(0.6), "species": 0.5})
    assert p[k - 1][1] == "Calanus finmarchicus"
    # Calanoida, Calanidae and Calanus all hold 0.6; each species only 0.3
    assert path2[n2 - 1][:2] == ("genus", "Calanus")
    (p, k), *_ = tree.confident_path(probs[1:2], at(0.61))
    assert p[k - 1][:2] == ("class", "Copepoda")
    assert path3[n3 - 1][1] == "Sagitta"
    (p, k), *_ = tree.confident_path(probs[2:3], at(0.95))
    assert k == 0  # not even the kingdom (0.9) is confident


def test_abstention_property_on_random_probabilities():
    rng = np.random.default_rng(0)
    tree = TaxonomyTree(LINEAGES)
    for _ in range(200):
        probs = rng.dirichlet(np.ones(len(LINEAGES)) * 0.5, size=1)
        thresholds = dict(zip(RANKS, rng.uniform(0.2, 0.9, 7), strict=True))
        (path, n), *_ = tree.confident_path(probs, thresholds)
        masses = [m for _, _, m in path]
        assert masses == sorted(masses, reverse=True)  # mass only shrinks down a path
        for i in range(len(path)):
            # coarser rank reported exactly when the finer mass is below its threshold
            assert (i < n) == all(path[j][2] >= thresholds[path[j][0]] for j in range(i + 1))


def test_predictions_living_call_and_ood_flag(model_dirs):
    clf = Classifier.load(model_dirs["supervised"])
    clf.thresholds = {"rank": at(0.6), "ood": -1.0}
    probs = np.array([[0.5, 0.3, 0.1, 0.05, 0.05], [0.05, 0.05, 0.05, 0.05, 0.8]])
    a, b = clf._predictions(probs, np.array([-2.0, 0.5]), top_k=2)
    assert a.top == [("Calanus finmarchicus", 0.5), ("Calanus helgolandicus", 0.3)]
    assert (a.confident_rank, a.confident_name) == ("genus", "Calanus")
    assert a.lineage["genus"] == "Calanus" and a.living and a.ood is False
    assert b.living is False and b.living_probability == pytest.approx(0.2)
    assert (b.confident_rank, b.confident_name) == (None, "detritus") and b.ood is True
    row = a.to_row(3)
    assert row["top2_label"] == "Calanus helgolandicus" and row["top3_label"] is None
    assert row["confident_name"] == "Calanus" and row["error"] is None


def test_restricting_the_label_list_restricts_predictions(model_dirs, shared_data):
    images = sorted((shared_data / "isiis_ndsb").glob("*/*.jpg"))[:12]
    for directory in model_dirs.values():
        clf = Classifier.load(directory)
        copepods = clf.restrict(["Copepoda"])
        assert copepods.classes == NAMES[:3]
        for p in copepods.predict(images, top_k=5):
            assert {label for label, _ in p.top} <= set(NAMES[:3])
            assert sum(prob for _, prob in p.top) == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError, match="Notataxon"):
            clf.restrict(["Notataxon"])
    # a CLIP-style model takes any taxon the taxonomy resolves as a new candidate
    # (named as the taxonomy resolves it: Oikopleura is filed at its family here)
    clip = Classifier.load(model_dirs["clip"], labels=["Sagitta", "Oikopleura"])
    assert clip.classes == ["Sagitta", "Oikopleuridae"]
    assert clip.class_lineages[1]["class"] == "Appendicularia"
    assert {p.label for p in clip.predict(images)} <= set(clip.classes)
    with pytest.raises(ValueError, match="Oikopleura"):
        Classifier.load(model_dirs["supervised"], labels=["Oikopleura"])


def test_bad_images_get_an_error_not_an_exception(model_dirs, shared_data):
    good = sorted((shared_data / "isiis_ndsb").glob("*/*.jpg"))[0]
    data = good.read_bytes()
    preds = Classifier.load(model_dirs["supervised"]).predict(
        [good, b"", b"not an image", data[: len(data) // 2], data], batch_size=2
    )
    assert [p.error is None for p in preds] == [True, False, False, False, True]
    assert preds[1].error.startswith("empty") and preds[2].error.startswith("unsupported")
    assert preds[3].error.startswith(("truncated", "corrupt")) and preds[3].label is None
    assert preds[0].top == preds[4].top  # path and bytes give the same answer


def test_rank_thresholds_by_hand():
    masses = {"genus": np.array([0.9, 0.8, 0.7, 0.6])}
    correct = {"genus": np.array([True, True, False, True])}
    # precision of the top-i: 1, 1, 2/3, 3/4
    assert rank_thresholds(masses, correct, 0.75)["genus"] == 0.6
    assert rank_thresholds(masses, correct, 0.9)["genus"] == 0.8
    assert rank_thresholds(masses, {"genus": np.zeros(4, bool)}, 0.5)["genus"] == 1.0


def test_calibration_is_written_and_loaded(tmp_path):
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.splits import make_split
    from planktonzilla.store import ObjectStore
    from planktonzilla.synthetic import synthetic_records

    store = ObjectStore(tmp_path / "store")
    store.ingest(synthetic_records("ISIIS", per_class=6), source="synthetic-isiis")
    make_split(store, "stratified", seed=0)
    view = dataset_view(store, "stratified")
    model = build_model(
        {
            "kind": "supervised",
            "backbone": "vit_tiny",
            "image_size": 32,
            "classes": view.classes,
            "class_lineages": view.class_lineages,
        }
    )
    directory = save_model(model, tmp_path / "m", filters=view.filters)
    thresholds = calibrate(directory, store, "stratified")
    saved = json.loads((directory / CALIBRATION).read_text())
    assert saved == thresholds and saved["calibrated_on"]["images"] == view.counts()["val"]
    assert all(0 <= t <= 1 for t in saved["rank"].values())
    clf = Classifier.load(directory)
    assert clf.thresholds["ood"] == saved["ood"]
    flagged = [
        p.ood
        for p in clf.predict([synthetic_records("ZooScan", per_class=1).__next__().image_bytes()])
    ]
    assert flagged[0] in (True, False)
