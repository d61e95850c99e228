"""Fine-tune a pretrained IResNet-50 (an arcface_torch backbone.pth) on BUPT-Balancedface with the FPR penalty.

Starting a strong model from its weights is the usual way to apply a fairness
loss: the backbone starts from `init_backbone`, the classifier over the 28,000
BUPT identities starts fresh, and a short schedule at a tenth of the from-scratch
learning rate adds the penalty without retraining the network. Everything else
is the paper's BUPT setting (recipes/_bupt.py): global batch 512, SGD 0.9 / 5e-4,
s 64, m 0.35, gamma_u 1e-4, p 2, alpha 1.

    fpr-train recipes/finetune_bupt_r50.py --loss fpr_penalty \\
        --set init_backbone=/path/to/backbone.pth --set rec=/path/to/bupt_balancedface

The file must be an r50 with 512-d embeddings (arcface_torch's
`iresnet50(num_features=512)`, or an fpr-train model.pt of this recipe's network);
`--loss cosface` fine-tunes the baseline the same way.
"""

import runpy
from pathlib import Path

config = runpy.run_path(str(Path(__file__).with_name("_bupt.py")))["bupt_config"]("balancedface", "r50")
# Point it at your pretrained model with --set init_backbone=/path/to/backbone.pth.
config.init_backbone = "/models/arcface_torch_r50/backbone.pth"
config.lr = 0.01  # a tenth of the from-scratch lr: the backbone is already trained
config.num_epoch = 4
config.lr_steps = [2, 3]
config.save_every = 1000
