"""Install fpr_plugin's loss into a running arcface_torch ``train_v2.py``, without editing the host's files.

``train_v2.py`` binds ``CombinedMarginLoss`` (from ``losses``),
``PartialFC_V2`` (from ``partial_fc_v2``) and ``PolynomialLRWarmup`` (from
``lr_scheduler``) at its top and looks them up when ``main()`` runs, after
the config was imported. :func:`install` rebinds them in those modules and,
when the script is already running as ``__main__``, in its globals:

- ``CombinedMarginLoss`` -> a factory for ``config.loss`` (class-sharded);
- ``PartialFC_V2`` -> :class:`~fpr_plugin.hosts.arcface_torch.partial_fc.PartialFC`,
  only for losses that need the normalised features;
- ``PolynomialLRWarmup`` -> step decay, only when ``config.lr_steps`` is set;
  or the same polynomial schedule where this torch rejects the host's class.

The config-file route: a file in the checkout's ``configs/`` that ends with
``install(config)`` runs with the stock ``torchrun ... train_v2.py configs/NAME``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from fpr_plugin.hosts.arcface_torch.margins import margin_loss_factory, needs_features
from fpr_plugin.hosts.arcface_torch.partial_fc import PartialFC
from fpr_plugin.hosts.arcface_torch.schedule import PolynomialWarmupLR, host_scheduler_works, step_decay_scheduler

__all__ = ["install"]


def _bindings(config: Mapping[str, Any]) -> dict[str, Any]:
    names: dict[str, Any] = {"CombinedMarginLoss": margin_loss_factory(config)}
    if needs_features(str(config.get("loss") or ""), dict(config.get("loss_params") or {})):
        names["PartialFC_V2"] = PartialFC
    if config.get("lr_steps"):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        steps_per_epoch = max(1, int(config["num_image"]) // (int(config["batch_size"]) * world))
        names["PolynomialLRWarmup"] = step_decay_scheduler(
            steps_per_epoch, config["lr_steps"], config.get("lr_decay", 0.1), config.get("warmup_epoch", 0.0)
        )
    elif not host_scheduler_works():
        names["PolynomialLRWarmup"] = PolynomialWarmupLR
    return names


def install(config: Mapping[str, Any]) -> dict[str, Any]:
    """Rebind the host's loss (and, where needed, PartialFC and schedule) for ``config``; returns what was bound.

    ``config`` needs ``loss`` (a registered name), ``num_classes`` and
    optionally ``loss_params``, ``sample_rate``, ``frequent``, ``lr_steps``.
    """
    names = _bindings(config)
    homes = {"CombinedMarginLoss": "losses", "PartialFC_V2": "partial_fc_v2", "PolynomialLRWarmup": "lr_scheduler"}
    for name, value in names.items():
        module = sys.modules.get(homes[name])
        if module is not None:
            setattr(module, name, value)
    script = sys.modules.get("__main__")
    if script is not None and hasattr(script, "CombinedMarginLoss"):  # train_v2.py is running: its globals
        for name, value in names.items():
            if hasattr(script, name):
                setattr(script, name, value)
    return names
