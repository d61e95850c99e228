"""Adapters into Tencent TFace: ``HEAD_NAME: FprPenalty`` / ``FprPenaltyTface`` in TFace's head factory.

- :func:`install` wraps TFace's ``get_head(key, dist_fc)`` (in ``torchkit.head``
  and in every module that bound it) so our two names resolve to
  :mod:`~fpr_plugin.hosts.tface.distfc` heads (master's signature, 3-tuple,
  class-sharded loss) or :mod:`~fpr_plugin.hosts.tface.localfc` heads
  (v0.1.0's ``Cifp`` signature, 2-tuple, data-parallel loss);
- ``python -m fpr_plugin.hosts.tface --root R --config C`` runs TFace's own
  training script with them (:mod:`~fpr_plugin.hosts.tface.launcher`).

Importing this package imports neither TFace nor anything heavy beyond torch.
"""

from fpr_plugin.hosts.tface.checkout import Checkout, CheckoutError, detect_checkout
from fpr_plugin.hosts.tface.common import HEAD_LOSSES
from fpr_plugin.hosts.tface.factory import install, installed, uninstall

__all__ = ["Checkout", "CheckoutError", "HEAD_LOSSES", "detect_checkout", "install", "installed", "uninstall"]
