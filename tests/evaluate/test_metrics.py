"""Evaluation metrics (planktonzilla.evaluate.metrics) against hand-computed values, and F1 /
confusion matrix against scikit-learn."""

import json

import numpy as np
import pytest
from pytest import approx
from sklearn import metrics as skm

from planktonzilla.data.dataset import RANKS
from planktonzilla.evaluate.metrics import (
    calibration,
    classification_report,
    confusion_matrix,
    coverage_curve,
    f1_summary,
    lineage_depth_agreement,
    mistake_severity,
    per_class_scores,
    rank_metrics,
    top_k_accuracy,
)

# --- the hand example: 7 samples, 5 classes ------------------------------------------------
# class 3 is predicted once but has no support; class 4 appears nowhere.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 3, 2, 0])
# class 0: TP 2 (#0 #1), FP 1 (#6), FN 1 (#2) -> P 2/3, R 2/3, F1 2/3
# class 1: TP 1 (#3),    FP 1 (#2), FN 1 (#4) -> P 1/2, R 1/2, F1 1/2
# class 2: TP 1 (#5),    FP 0,      FN 1 (#6) -> P 1,   R 1/2, F1 2/(1+1/2)·1/2 = 2/3
# class 3: TP 0,         FP 1 (#4), FN 0      -> P 0,   R 0 (no support), F1 0
# class 4: absent                             -> all 0, left out of macro F1
# macro F1 over {0, 1, 2, 3} = (2/3 + 1/2 + 2/3 + 0) / 4 = 11/24
# weighted F1 over supports 3, 2, 2 = (3·2/3 + 2·1/2 + 2·2/3) / 7 = (13/3) / 7 = 13/21
HAND_CONFUSION = [
    [2, 1, 0, 0, 0],
    [0, 1, 0, 1, 0],
    [1, 0, 1, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]
# scores whose argmax is Y_PRED; #6 ties classes 0 and 2 -> 0 (lowest index) wins
HAND_SCORES = np.array(
    [
        [0.7, 0.1, 0.1, 0.05, 0.05],
        [0.6, 0.2, 0.1, 0.05, 0.05],
        [0.2, 0.5, 0.1, 0.1, 0.1],
        [0.1, 0.8, 0.05, 0.05, 0.0],
        [0.1, 0.3, 0.1, 0.5, 0.0],
        [0.0, 0.1, 0.9, 0.0, 0.0],
        [0.4, 0.1, 0.4, 0.1, 0.0],
    ]
)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 5)
    assert cm.dtype == np.int64
    assert cm.tolist() == HAND_CONFUSION


def test_per_class_scores_by_hand():
    s = per_class_scores(Y_TRUE, Y_PRED, 5)
    np.testing.assert_allclose(s["precision"], [2 / 3, 1 / 2, 1, 0, 0])
    np.testing.assert_allclose(s["recall"], [2 / 3, 1 / 2, 1 / 2, 0, 0])
    np.testing.assert_allclose(s["f1"], [2 / 3, 1 / 2, 2 / 3, 0, 0])
    assert s["support"].tolist() == [3, 2, 2, 0, 0]


def test_f1_summary_by_hand():
    s = f1_summary(Y_TRUE, Y_PRED, 5)
    assert s["macro_f1"] == pytest.approx(11 / 24)
    assert s["weighted_f1"] == pytest.approx(13 / 21)
    # adding never-seen classes to the label space does not change the scores
    assert f1_summary(Y_TRUE, Y_PRED, 50) == s


def test_f1_and_confusion_match_sklearn():
    rng = np.random.default_rng(0)
    # 12 classes, of which only some occur in truth and some only in predictions
    y_true = rng.choice([0, 1, 2, 4, 5, 7, 9], size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.choice([0, 1, 3, 4, 7, 11], size=300))
    labels = np.union1d(y_true, y_pred)
    ours = f1_summary(y_true, y_pred, 12)
    assert ours["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=labels, average="macro")
    )
    assert ours["weighted_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=labels, average="weighted")
    )
    cm = confusion_matrix(y_true, y_pred, 12)
    np.testing.assert_array_equal(
        cm[np.ix_(labels, labels)], skm.confusion_matrix(y_true, y_pred, labels=labels)
    )
    assert cm.sum() == 300
    p, r, f, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(12), zero_division=0
    )
    s = per_class_scores(y_true, y_pred, 12)
    np.testing.assert_allclose(s["precision"], p)
    np.testing.assert_allclose(s["recall"], r)
    np.testing.assert_allclose(s["f1"], f)
    np.testing.assert_array_equal(s["support"], support)


def test_top_k_ties_go_to_lower_index():
    scores = np.array(
        [
            [0.5, 0.5, 0.0],  # true 1: order 0, 1, 2 -> top1 wrong, top2 right
            [0.2, 0.3, 0.3],  # true 2: order 1, 2, 0 -> top1 wrong, top2 right
            [0.1, 0.1, 0.1],  # true 2: order 0, 1, 2 -> right only at top3
            [0.0, 1.0, 0.0],  # true 1: right at top1
        ]
    )
    y = [1, 2, 2, 1]
    assert top_k_accuracy(y, scores, 1) == pytest.approx(1 / 4)
    assert top_k_accuracy(y, scores, 2) == pytest.approx(3 / 4)
    assert top_k_accuracy(y, scores, 3) == 1.0
    assert top_k_accuracy(y, scores, 5) == 1.0  # k > C means k = C
    with pytest.raises(ValueError):
        top_k_accuracy(y, scores, 0)


def test_top_k_ties_among_many_classes():
    # 100 classes with scores rounded to 0.1, so many ties: top-k must be the first k of a
    # stable sort of -scores (sorting algorithms that are not stable reorder ties here)
    rng = np.random.default_rng(2)
    scores = np.round(rng.random((50, 100)), 1)
    y = rng.integers(0, 100, size=50)
    # place of the true class when classes are ordered by (descending score, index)
    place = []
    for row, true in zip(scores, y, strict=True):
        order = sorted(range(100), key=lambda c, row=row: (-row[c], c))
        place.append(order.index(true))
    for k in (1, 5, 20):
        assert top_k_accuracy(y, scores, k) == pytest.approx(np.mean(np.array(place) < k))


def test_calibration_by_hand():
    # 5 bins: [0, .2] (.2, .4] (.4, .6] (.6, .8] (.8, 1]
    conf = [0.0, 0.2, 0.3, 0.9, 0.95, 1.0, 0.8]
    correct = [0, 1, 0, 1, 1, 0, 1]
    # bin 0: {0.0, 0.2}       conf 0.1,  acc 1/2 -> gap 0.4, n 2
    # bin 1: {0.3}            conf 0.3,  acc 0   -> gap 0.3, n 1
    # bin 2: empty
    # bin 3: {0.8}            conf 0.8,  acc 1   -> gap 0.2, n 1
    # bin 4: {.9, .95, 1.0}   conf 0.95, acc 2/3 -> gap 0.95 - 2/3, n 3
    # ECE = (2·0.4 + 0.3 + 0.2 + 3·(0.95 - 2/3)) / 7 = 2.15 / 7
    c = calibration(conf, correct, bins=5)
    assert c["ece"] == pytest.approx(2.15 / 7)
    assert [b["count"] for b in c["bins"]] == [2, 1, 0, 1, 3]
    assert [b["lower"] for b in c["bins"]] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert c["bins"][-1]["upper"] == 1.0
    assert c["bins"][0]["confidence"] == pytest.approx(0.1)
    assert c["bins"][0]["accuracy"] == pytest.approx(0.5)
    assert c["bins"][4]["confidence"] == pytest.approx(0.95)
    assert c["bins"][4]["accuracy"] == pytest.approx(2 / 3)
    assert c["bins"][2] == {
        "lower": 0.4,
        "upper": 0.6,
        "count": 0,
        "confidence": None,
        "accuracy": None,
    }
    # 0.7 sits exactly on a 10-bin edge: it belongs to (0.6, 0.7], not (0.7, 0.8]
    tenths = calibration([0.7], [1], bins=10)["bins"]
    assert tenths[6]["count"] == 1 and tenths[7]["count"] == 0
    with pytest.raises(ValueError):
        calibration([1.5], [1])


def test_coverage_and_aurc_by_hand():
    conf = [0.6, 0.9, 0.7, 0.8]
    correct = [1, 1, 1, 0]
    c = coverage_curve(conf, correct)
    # thresholds 0, .6, .7, .8, .9 keep 4, 4, 3, 2, 1 samples
    assert c["threshold"] == [0.0, 0.6, 0.7, 0.8, 0.9]
    assert c["coverage"] == [1.0, 1.0, 0.75, 0.5, 0.25]
    assert c["accuracy"] == pytest.approx([3 / 4, 3 / 4, 2 / 3, 1 / 2, 1.0])
    # by confidence: .9 ok, .8 wrong, .7 ok, .6 ok -> risk of top-i: 0, 1/2, 1/3, 1/4
    assert c["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # a threshold that keeps nothing
    c = coverage_curve(conf, correct, thresholds=[0.5, 0.95])
    assert c["coverage"] == [1.0, 0.0]
    assert c["accuracy"] == [0.75, None]


def test_aurc_ties_do_not_depend_on_order():
    # two samples tied at 0.9, one wrong: each counts half an error
    # top-1: 0.5 / 1, top-2: 1 / 2, top-3: 1 / 3 -> AURC = (0.5 + 0.5 + 1/3) / 3
    expected = (0.5 + 0.5 + 1 / 3) / 3
    assert coverage_curve([0.9, 0.9, 0.5], [1, 0, 1])["aurc"] == pytest.approx(expected)
    assert coverage_curve([0.9, 0.9, 0.5], [0, 1, 1])["aurc"] == pytest.approx(expected)


def test_coverage_thresholds_capped_for_many_confidences():
    rng = np.random.default_rng(1)
    conf = rng.random(5000)
    correct = rng.random(5000) < conf
    c = coverage_curve(conf, correct)
    assert len(c["threshold"]) <= 101
    assert c["threshold"][0] == 0.0 and c["threshold"][-1] == conf.max()
    assert c["threshold"] == sorted(c["threshold"])
    assert c["coverage"][0] == 1.0 and c["coverage"][-1] == 1 / 5000
    # AURC = mean over i of the cumulative error rate of the i most confident
    errors = 1 - correct[np.argsort(-conf)]
    assert c["aurc"] == pytest.approx(np.mean(np.cumsum(errors) / np.arange(1, 5001)))


# --- lineages ---------------------------------------------------------------------------------
DIATOM = ("Chromista", "Ochrophyta", "Bacillariophyceae")
COPEPOD = ("Animalia", "Arthropoda", "Copepoda", "Calanoida", "Calanidae")
NAVICULA = (*DIATOM, "Naviculales", "Naviculaceae", "Navicula", None)
DIATOMS = (*DIATOM, None, None, None, None)
CALANUS = (*COPEPOD, "Calanus", "Calanus finmarchicus")
CALANIDAE = (*COPEPOD, None, None)
NEOCALANUS = (*COPEPOD, "Neocalanus", "Neocalanus cristatus")
# (true, predicted)
LINEAGE_PAIRS = [
    (NAVICULA, NAVICULA),  # 1 right
    (NAVICULA, DIATOMS),  # 2 prediction stops at class
    (DIATOMS, NAVICULA),  # 3 truth stops at class: deeper ranks not scored
    (CALANUS, CALANIDAE),  # 4 prediction stops at family
    (CALANIDAE, CALANUS),  # 5 truth stops at family
    (CALANUS, NEOCALANUS),  # 6 wrong genus
    (NAVICULA, CALANUS),  # 7 wrong kingdom
]


def test_lineage_depth_agreement():
    assert lineage_depth_agreement(CALANUS, CALANUS) == 7
    assert lineage_depth_agreement(NAVICULA, NAVICULA) == 6  # no species on either side
    assert lineage_depth_agreement(CALANUS, NEOCALANUS) == 5
    assert lineage_depth_agreement(CALANUS, CALANIDAE) == 5
    assert lineage_depth_agreement(NAVICULA, CALANUS) == 0
    assert lineage_depth_agreement((None,) * 7, (None,) * 7) == 0
    assert lineage_depth_agreement(dict(zip(RANKS, CALANUS, strict=True)), list(NEOCALANUS)) == 5


def test_mistake_severity_by_hand():
    trues, preds = zip(*LINEAGE_PAIRS, strict=True)
    s = mistake_severity(trues, preds)
    # errors: #2 and #3 share 3 ranks, #4 #5 #6 share 5, #7 shares 0
    assert s["errors"] == 6
    assert s["mean_lca_depth_errors"] == pytest.approx((3 + 3 + 5 + 5 + 5 + 0) / 6)
    assert s["histogram"] == {0: 1, 1: 0, 2: 0, 3: 2, 4: 0, 5: 3, 6: 0}
    # "" and None are both an absent rank: not an error
    blank = tuple("" if n is None else n for n in NAVICULA)
    s = mistake_severity([NAVICULA], [blank])
    assert s["errors"] == 0 and s["mean_lca_depth_errors"] is None


def test_rank_metrics_by_hand():
    trues, preds = zip(*LINEAGE_PAIRS, strict=True)
    m = rank_metrics(trues, preds)
    assert list(m) == list(RANKS)
    # kingdom, phylum, class: all 7 scored, only #7 wrong.
    # Chromista TP 3 FN 1 -> F1 6/7; Animalia TP 3 FP 1 -> 6/7
    for rank in ("kingdom", "phylum", "class"):
        assert m[rank] == {"n": 7, "top1": approx(6 / 7), "macro_f1": approx(6 / 7), "classes": 2}
    # order and family: #3 not scored; #2 predicts <none>, #7 the wrong name.
    # Naviculales TP 1 FN 2 -> 1/2; Calanoida TP 3 FP 1 -> 6/7; <none> left out
    for rank in ("order", "family"):
        macro = (1 / 2 + 6 / 7) / 2
        assert m[rank] == {"n": 6, "top1": approx(4 / 6), "macro_f1": approx(macro), "classes": 2}
    # genus: #3 and #5 have no true genus. #1 right; #2, #4 <none>; #6 Neocalanus; #7 Calanus.
    # Navicula TP 1 FN 2 -> 1/2; Calanus TP 0 -> 0; Neocalanus (predicted only) -> 0
    assert m["genus"] == {"n": 5, "top1": approx(1 / 5), "macro_f1": approx(1 / 6), "classes": 2}
    # species: #4 (<none>) and #6 (N. cristatus), both wrong
    assert m["species"] == {"n": 2, "top1": 0.0, "macro_f1": 0.0, "classes": 1}
    # a rank no true lineage reaches
    m = rank_metrics([DIATOMS], [NAVICULA], ranks=("class", "genus"))
    assert m["class"]["top1"] == 1.0
    assert m["genus"] == {"n": 0, "top1": None, "macro_f1": None, "classes": 0}
    with pytest.raises(ValueError):
        rank_metrics([DIATOMS], [NAVICULA], ranks=("subclass",))


# --- the report -------------------------------------------------------------------------------
def test_classification_report_on_probabilities():
    classes = ["Navicula", "Calanus", "Calanidae", "Neocalanus", "Bacillariophyceae"]
    lineages = [
        {**dict(zip(RANKS, lin, strict=True)), "name": name}
        for lin, name in zip(
            (NAVICULA, CALANUS, CALANIDAE, NEOCALANUS, DIATOMS), classes, strict=True
        )
    ]
    r = classification_report(
        Y_TRUE, HAND_SCORES, classes, class_lineages=lineages, train_counts={"Navicula": 40}
    )
    json.dumps(r)  # plain Python values throughout
    assert r["n"] == 7
    assert r["top1"] == pytest.approx(4 / 7)
    assert r["top5"] == 1.0
    assert r["macro_f1"] == pytest.approx(11 / 24)
    assert r["weighted_f1"] == pytest.approx(13 / 21)
    assert r["confusion"] == {"labels": classes, "matrix": HAND_CONFUSION}
    assert r["per_class"][2] == {
        "class": "Calanidae",
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
        "train_count": 0,
    }
    assert r["per_class"][0]["train_count"] == 40
    # rows sum to 1: the scores are the confidences as they are
    confidence = HAND_SCORES.max(axis=1)
    correct = Y_PRED == Y_TRUE
    assert r["ece"] == pytest.approx(calibration(confidence, correct)["ece"])
    assert r["reliability"] == calibration(confidence, correct)["bins"]
    assert r["coverage"] == coverage_curve(confidence, correct)
    true_lineages = [lineages[i] for i in Y_TRUE]
    pred_lineages = [lineages[i] for i in Y_PRED]
    assert r["per_rank"] == rank_metrics(true_lineages, pred_lineages)
    assert r["severity"] == mistake_severity(true_lineages, pred_lineages)
    # errors: #2 Navicula for Calanus and #6 Calanidae for Navicula (depth 0), #4 Calanus for
    # Neocalanus (depth 5)
    assert r["severity"]["errors"] == 3
    assert r["severity"]["mean_lca_depth_errors"] == pytest.approx(5 / 3)
    assert r["severity"]["histogram"] == {0: 2, 1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 0}
    assert r["per_rank"]["genus"]["n"] == 5  # the 2 Calanidae have no genus


def test_classification_report_softmaxes_logits():
    logits = np.log(HAND_SCORES + 1e-3) * 2.0 + 5.0  # same argmax, rows far from summing to 1
    classes = list("abcde")
    r = classification_report(Y_TRUE, logits, classes, top_k=(3,))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    correct = Y_PRED == Y_TRUE
    assert r["ece"] == pytest.approx(calibration(probs.max(axis=1), correct)["ece"])
    assert r["top1"] == pytest.approx(4 / 7) and "top3" in r and "top5" not in r
    assert r["per_class"][0]["train_count"] is None
    assert "per_rank" not in r and "severity" not in r
    # negative values are logits even when a row sums to 1
    r = classification_report([0], [[2.0, -1.0]], ["a", "b"])
    assert r["ece"] == pytest.approx(1 - np.exp(2) / (np.exp(2) + np.exp(-1)))


def test_single_class():
    r = classification_report([0, 0, 0], [[1.0], [1.0], [1.0]], ["Noctiluca"])
    assert r["top1"] == 1.0 and r["top5"] == 1.0
    assert r["macro_f1"] == 1.0 and r["weighted_f1"] == 1.0
    assert r["ece"] == 0.0
    assert r["confusion"]["matrix"] == [[3]]
    assert r["coverage"]["aurc"] == 0.0


def test_empty_input():
    lineages = [dict(zip(RANKS, NAVICULA, strict=True)), dict(zip(RANKS, CALANUS, strict=True))]
    r = classification_report(
        [], np.zeros((0, 2)), ["Navicula", "Calanus"], class_lineages=lineages
    )
    json.dumps(r)
    assert r["n"] == 0
    assert r["top1"] is None and r["top5"] is None
    assert r["macro_f1"] is None and r["weighted_f1"] is None and r["ece"] is None
    assert r["confusion"]["matrix"] == [[0, 0], [0, 0]]
    assert all(b["count"] == 0 for b in r["reliability"])
    assert r["coverage"]["aurc"] is None and r["coverage"]["coverage"] == [None]
    assert r["per_rank"]["kingdom"] == {"n": 0, "top1": None, "macro_f1": None, "classes": 0}
    assert r["severity"]["errors"] == 0
    assert top_k_accuracy([], [], 1) is None
    assert f1_summary([], [], 3) == {"macro_f1": None, "weighted_f1": None}


def test_invalid_input_raises():
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)  # class index out of range
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 3)  # lengths differ
    with pytest.raises(ValueError):
        classification_report([0], [[0.5, 0.5]], ["a", "b", "c"])  # columns ≠ classes
