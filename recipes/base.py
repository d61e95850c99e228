"""Default recipe: every key the trainer reads, with its meaning.

Generated from fpr_plugin/train/schema.py, the one definition of the config
keys (the values fpr-train starts from are the schema's; a test checks this
file against it). Regenerate with ``python -m fpr_plugin.train.schema``.

A recipe file (``recipes/<name>.py``) defines ``config = EasyDict(...)`` with
only the keys it changes; ``fpr_plugin.train.config.load_config`` merges it on
top of these defaults (dict-valued keys such as ``loss_params`` are merged one
level deep) and then applies ``--loss NAME`` and ``--set key=value`` from the
command line. A recipe is Python and runs as code, as arcface_torch's configs
do: run only recipes you trust. A key that is not defined here is rejected,
with the closest known key in the message.
"""

from easydict import EasyDict as edict

config = edict()

# ---- model -----------------------------------------------------------------
# Backbone name in the backbone registry: r18, r34, r50, r100, r200 (IResNet),
# or a plugin's.
config.network = "r50"
# Extra keyword arguments of the backbone factory, e.g. {"width": 16,
# "stem_stride": 2} for a small CPU model, {"fp16": True} for half-precision
# convolutions inside the backbone.
config.backbone_params = {}
# Size of the face embedding (the backbone's output and the classifier's input).
config.embedding_size = 512
# Dropout before the backbone's final FC layer (0 disables it).
config.dropout = 0.0
# Pretrained backbone a fresh run starts from (fine-tuning): an arcface_torch
# backbone.pth or an fpr-train model.pt, keys with or without "module.". Its
# depth and embedding size must be the recipe's. None: random initialisation.
# Not read on resume, where the checkpoint's weights win.
config.init_backbone = None

# ---- data ------------------------------------------------------------------
# Record folder holding train.rec, train.idx and property (InsightFace layout);
# an optional groups.tsv beside them enables per-group FPR logging.
config.rec = ""
# Number of identities; None reads it from the record set's property file.
config.num_classes = None
# Number of training images; None reads it from the record set's index.
config.num_image = None
# Horizontal flip augmentation (decided per sample from seed, epoch and
# position, so data order and flips are reproducible and resumable).
config.random_flip = True
# DataLoader worker processes per rank (0 loads in the training process).
config.num_workers = 2
# Before training, read every image record's header and check its label (a
# finite integer in [0, num_classes)) and framing, so a bad record stops the run
# before it writes anything. One pass over the file's pages (about a read of the
# .rec); False checks the first record only, for sets of WebFace42M size on slow
# storage.
config.check_labels = True

# ---- optimisation ----------------------------------------------------------
# Number of passes over the data.
config.num_epoch = 20
# GLOBAL batch size (all ranks together); each rank gets batch_size /
# world_size.
config.batch_size = 128
# Base learning rate of SGD (before warmup and step decay).
config.lr = 0.1
# Epochs at which the learning rate is multiplied by lr_decay.
config.lr_steps = []
# Factor applied to the learning rate at each entry of lr_steps.
config.lr_decay = 0.1
# Linear warmup from lr / warmup_steps to lr over this many epochs (0 = none).
config.warmup_epoch = 0.0
# SGD momentum.
config.momentum = 0.9
# SGD weight decay, applied to backbone and classifier weights.
config.weight_decay = 0.0005
# Mixed precision on CUDA: False (float32), "fp16" (with a gradient scaler) or
# "bf16". Ignored with a warning on CPU, which trains in float32.
config.fp16 = False
# Clip the backbone's gradient norm to this value (None disables clipping).
config.grad_clip = 5.0
# Standard deviation of the normal initialisation of the classifier weights.
config.head_init_std = 0.01
# Stop after this many optimisation steps in total (None = train all epochs).
config.max_steps = None
# Seed of everything random: initialisation, data order, flips.
config.seed = 2048

# ---- loss ------------------------------------------------------------------
# Margin loss from the loss registry: cosface, arcface, combined, fpr_penalty,
# fpr_penalty_tface (or a plugin's). --loss NAME on the command line.
config.loss = "cosface"
# Parameters of the loss. Flat entries are shared: each is passed to the chosen
# loss when its constructor takes it and skipped otherwise (so gamma_u does not
# reach cosface). A nested dict keyed by a loss name overrides entries for that
# loss only, e.g. {"s": 64.0, "m": 0.35, "arcface": {"m": 0.5}}.
config.loss_params = {"s": 64.0, "m": 0.35}

# ---- output, logging, checkpoints ------------------------------------------
# Output folder; None means work_dirs/<recipe>_<loss>.
config.output = None
# Log a line (and a metrics.jsonl record) every this many steps.
config.frequent = 10
# Also checkpoint every this many steps (0: only at the end of each epoch).
config.save_every = 0
# Number of most recent complete checkpoints kept on disk (older are deleted).
config.keep_checkpoints = 2
# Continue from the last complete checkpoint in output (--resume).
config.resume = False
# Write TensorBoard event files when tensorboard is installed.
config.tensorboard = True
