"""Adapters into insightface's arcface_torch (``recognition/arcface_torch``).

- ``python -m fpr_plugin.hosts.arcface_torch --root PATH CONFIG --loss fpr_penalty``: runs the host's
  unchanged ``train_v2.py`` with a registered loss in place of ``CombinedMarginLoss`` (:mod:`.launcher`);
- :func:`install`: the same from a config file in the host's ``configs/``;
- :class:`PartialFC`: ``PartialFC_V2``'s interface, passing the normalised features to the loss;
- :mod:`.mxnet_standin`: an opt-in ``mxnet`` for the host's ``MXFaceDataset``.
"""

from fpr_plugin.hosts.arcface_torch.install import install
from fpr_plugin.hosts.arcface_torch.partial_fc import PartialFC

__all__ = ["PartialFC", "install"]
