"""fpr_plugin.eval: fairness evaluation of face-embedding models as a library (``fpr-eval`` is its CLI).

:func:`evaluate_models` takes ONNX models and loaded test sets
(:mod:`fpr_plugin.eval.sets`) and returns a :class:`Report`;
:class:`ReportFolder` owns an output folder and puts a report in it as a whole;
:class:`FairScorer` gives post-hoc calibrated pair scores (:mod:`fpr_plugin.eval.calibration`).
"""
from fpr_plugin.eval.output import ReportFolder
from fpr_plugin.eval.runner import ModelResult, Report, SetResult, evaluate_models
from fpr_plugin.eval.calibration import FairScorer  # noqa: E402 - after the runner: it imports eval submodules

__all__ = ["FairScorer", "ModelResult", "Report", "ReportFolder", "SetResult", "evaluate_models"]
