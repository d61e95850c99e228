"""BUPT-Balancedface R50: IResNet-50 on BUPT-Balancedface, 40 epochs.

BUPT-Balancedface: 28,000 identities, 7,000 per race,
about 1.3M images. Learning rate 0.1, divided by 10 at epochs
20, 32, 36. Settings of the CIFP paper (method.md, "Experimental settings"):
global batch 512, SGD momentum 0.9, weight decay 5e-4, s 64, m 0.35, and for
the FPR penalty gamma_u 1e-4, p 2, alpha 1. ``--loss cosface`` on this recipe
trains the CosFace baseline; ``--loss arcface`` the ArcFace one (with m 0.5).
"""

from easydict import EasyDict as edict

config = edict()
config.network = "r50"
config.embedding_size = 512
# Record folder with train.rec / train.idx / property (28,000 classes, ~1.3M images);
# point it at yours with --set rec=/path/to/folder. num_classes and num_image
# are read from it.
config.rec = "/data/bupt_balancedface"
config.num_epoch = 40
config.lr = 0.1
config.lr_steps = [20, 32, 36]
config.batch_size = 512
config.momentum = 0.9
config.weight_decay = 5e-4
config.fp16 = "fp16"
config.num_workers = 4
config.frequent = 50
config.save_every = 2000
config.loss = "fpr_penalty"
config.loss_params = {
    "s": 64.0,
    "m": 0.35,
    "gamma_u": 1e-4,
    "p": 2.0,
    "alpha": 1.0,
    "arcface": {"m": 0.5},
}
