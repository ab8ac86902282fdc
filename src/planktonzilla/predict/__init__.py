"""Prediction on new images with a trained model: lineage-aware, abstaining, with an
out-of-distribution flag (`Classifier`), and batch prediction into CSV / Parquet / EcoTaxa
files (`pz predict`).

>>> from planktonzilla.predict import Classifier
>>> clf = Classifier.load("pz-demo/models/supervised")                 # doctest: +SKIP
>>> [p.confident_name for p in clf.predict(["a.png"])]                 # doctest: +SKIP
"""

from planktonzilla.predict.classifier import (
    CALIBRATION,
    Classifier,
    Prediction,
    calibrate,
    rank_thresholds,
)

__all__ = ["CALIBRATION", "Classifier", "Prediction", "calibrate", "rank_thresholds"]
