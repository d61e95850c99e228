"""IResNet-34 on BUPT-Globalface (38,000 identities, world proportions), 24 epochs, lr /10 at 10, 18, 22.

The paper's settings (recipes/_bupt.py): global batch 512, SGD 0.9 / 5e-4,
s 64, m 0.35, FPR penalty gamma_u 1e-4, p 2, alpha 1. Point `rec` at your
record folder with `--set rec=/path`; `--loss cosface` trains the baseline.
"""

import runpy
from pathlib import Path

config = runpy.run_path(str(Path(__file__).with_name("_bupt.py")))["bupt_config"]("globalface", "r34")
