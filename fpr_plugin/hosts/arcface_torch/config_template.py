"""arcface_torch config that trains with fpr_plugin's FPR penalty under the stock command.

Copy this file into the checkout's ``configs/`` (e.g. as ``configs/ms1mv3_r50_fpr.py``) and run
arcface_torch's own command unchanged::

    torchrun --nproc_per_node=8 train_v2.py configs/ms1mv3_r50_fpr

``install(config)`` rebinds ``CombinedMarginLoss`` in the running ``train_v2.py`` (and, for losses
that need the normalised features, ``PartialFC_V2``). The margin comes from ``margin_list``.
"""

from easydict import EasyDict as edict

from fpr_plugin.hosts.arcface_torch import install

config = edict()
config.margin_list = (1.0, 0.0, 0.35)  # CosFace m = 0.35, the paper's base; (1.0, 0.5, 0.0) for ArcFace
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 64
config.lr = 0.1
config.verbose = 2000
config.dali = False
config.rec = "/data/bupt_balancedface"
config.num_classes = 28000
config.num_image = 1300000
config.num_epoch = 40
config.warmup_epoch = 0
config.val_targets = []

# fpr_plugin's keys: the registered loss and its own parameters (not s or m: those are the host's)
config.loss = "fpr_penalty"
config.loss_params = {"gamma_u": 1e-4, "p": 2.0, "alpha": 1.0}
config.lr_steps = [20, 32, 36]  # the paper's step decay in place of the polynomial schedule

install(config)
