"""`pz predict`: batch prediction over any mix of inputs (folders, images, IFCB bins, FlowCam
runs, EcoTaxa exports, stores) into CSV / Parquet / EcoTaxa files, streaming and resumable.
The classifier itself lives in `planktonzilla.inference` (re-exported here).

>>> from planktonzilla.predict import predict_to_file
>>> predict_to_file("models/sup", ["day/"], "pred.csv")                # doctest: +SKIP
"""

from planktonzilla.inference import (
    CALIBRATION,
    Classifier,
    Prediction,
    calibrate,
    rank_thresholds,
)
from planktonzilla.predict.batch import predict_to_file

__all__ = [
    "CALIBRATION",
    "Classifier",
    "Prediction",
    "calibrate",
    "predict_to_file",
    "rank_thresholds",
]
