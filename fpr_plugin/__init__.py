"""fpr_plugin: the FPR-penalty (CIFP, CVPR 2021) fairness loss for face recognition.

Importing the package is cheap and has no side effects: no process group, no
device, no heavy imports. Losses and backbones register themselves when
:mod:`fpr_plugin.losses` / :mod:`fpr_plugin.backbones` are imported, which the
registry does on first use.
"""

__version__ = "0.1.0"

from fpr_plugin.registry import (  # noqa: E402
    available_backbones,
    available_losses,
    build_backbone,
    build_loss,
    register_backbone,
    register_loss,
)

__all__ = [
    "__version__",
    "available_backbones",
    "available_losses",
    "build_backbone",
    "build_loss",
    "register_backbone",
    "register_loss",
]
