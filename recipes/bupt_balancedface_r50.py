"""IResNet-50 on BUPT-Balancedface (28,000 identities, 7,000 per race), 40 epochs, lr /10 at 20, 32, 36.

The paper's settings (recipes/_bupt.py): global batch 512, SGD 0.9 / 5e-4,
s 64, m 0.35, FPR penalty gamma_u 1e-4, p 2, alpha 1. Point `rec` at your
record folder with `--set rec=/path`; `--loss cosface` trains the baseline.
"""

import runpy
from pathlib import Path

config = runpy.run_path(str(Path(__file__).with_name("_bupt.py")))["bupt_config"]("balancedface", "r50")
