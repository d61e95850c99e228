"""Post-hoc score calibration for fairness: FSN, FairCal (label-free) and the Oracle (group labels).

Each method is fitted on embeddings of a labelled *calibration* set whose
identities are disjoint from the test set's, and maps a pair's cosine (and the
clusters of its two images) to a calibrated score; one global threshold on the
calibrated scores then gives more even group FPRs. ``fpr-calibrate`` fits and
writes a JSON file (:mod:`.cli`); ``fpr-eval --calibration`` reports the
calibrated scores beside the raw ones; :class:`FairScorer` scores pairs for deployment.

One module per method (:mod:`.fsn`, :mod:`.faircal`, :mod:`.oracle`) over
:mod:`.base` (scoring, JSON file), with :mod:`.kmeans`, :mod:`.beta`,
:mod:`.fitdata` (what is fitted on) and :mod:`.protocols` (the report's protocols on calibrated scores).
"""
from fpr_plugin.eval.calibration.base import METHODS, Calibration, load_calibration
from fpr_plugin.eval.calibration.faircal import FairCal
from fpr_plugin.eval.calibration.fit import calibrate_model, fit_calibration
from fpr_plugin.eval.calibration.fitdata import FitData, fit_data
from fpr_plugin.eval.calibration.fsn import FSN
from fpr_plugin.eval.calibration.oracle import Oracle
from fpr_plugin.eval.calibration.scorer import FairScorer

__all__ = ["Calibration", "FSN", "FairCal", "FairScorer", "FitData", "METHODS", "Oracle", "calibrate_model",
           "fit_calibration", "fit_data", "load_calibration"]

