"""Inference with a trained model, the floor under prediction, evaluation and the web app:
lineage-aware, abstaining classification with an out-of-distribution flag (`Classifier`),
calibration of its thresholds, and the prediction tables (CSV / Parquet / EcoTaxa rows).

>>> from planktonzilla import Classifier
>>> clf = Classifier.load("pz-demo/models/supervised")                 # doctest: +SKIP
>>> [p.confident_name for p in clf.predict(["a.png"])]                 # doctest: +SKIP
"""

from planktonzilla.inference.classifier import (
    CALIBRATION,
    Classifier,
    Prediction,
    calibrate,
    rank_thresholds,
)

__all__ = ["CALIBRATION", "Classifier", "Prediction", "calibrate", "rank_thresholds"]
