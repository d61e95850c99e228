"""``python -m fpr_plugin.train`` / ``torchrun -m fpr_plugin.train``: the fpr-train command."""

import sys

from fpr_plugin.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
