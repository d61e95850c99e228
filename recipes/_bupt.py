"""Settings shared by the six BUPT recipes: the CIFP paper's (method.md, "Experimental settings").

Not a recipe itself: ``bupt_<dataset>_r<depth>.py`` call :func:`bupt_config`.
Global batch 512, SGD momentum 0.9, weight decay 5e-4, lr 0.1 divided by 10 at
the dataset's milestones, s 64, m 0.35, and for the FPR penalty gamma_u 1e-4,
p 2, alpha 1. ``--loss cosface`` trains the CosFace baseline, ``--loss arcface``
the ArcFace one (with m 0.5, its usual margin).
"""

from easydict import EasyDict as edict

# Per data set: record folder (point it at yours with --set rec=...), epochs, lr milestones.
DATASETS = {
    # 28,000 identities, 7,000 per race, about 1.3M images.
    "balancedface": {"rec": "/data/bupt_balancedface", "num_epoch": 40, "lr_steps": [20, 32, 36]},
    # 38,000 identities, about 2M images, races in world proportions.
    "globalface": {"rec": "/data/bupt_globalface", "num_epoch": 24, "lr_steps": [10, 18, 22]},
}


def bupt_config(dataset: str, network: str) -> edict:
    """The paper's recipe for BUPT-``dataset`` (balancedface | globalface) with IResNet ``network``."""
    config = edict()
    config.network = network
    config.embedding_size = 512
    config.update(DATASETS[dataset])  # num_classes and num_image are read from the records
    config.lr = 0.1
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
    return config
