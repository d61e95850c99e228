"""BUPT-Globalface R34: IResNet-34 on BUPT-Globalface, 24 epochs.

BUPT-Globalface: 38,000 identities, about 2M images,
races in world proportions. Learning rate 0.1, divided by 10 at epochs
10, 18, 22. Settings of the CIFP paper (method.md, "Experimental settings"):
global batch 512, SGD momentum 0.9, weight decay 5e-4, s 64, m 0.35, and for
the FPR penalty gamma_u 1e-4, p 2, alpha 1. ``--loss cosface`` on this recipe
trains the CosFace baseline; ``--loss arcface`` the ArcFace one (with m 0.5).
"""

from easydict import EasyDict as edict

config = edict()
config.network = "r34"
config.embedding_size = 512
# Record folder with train.rec / train.idx / property (38,000 classes, ~2M images);
# point it at yours with --set rec=/path/to/folder. num_classes and num_image
# are read from it.
config.rec = "/data/bupt_globalface"
config.num_epoch = 24
config.lr = 0.1
config.lr_steps = [10, 18, 22]
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
