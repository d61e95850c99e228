"""``python -m fpr_plugin.hosts.arcface_torch``: see :mod:`fpr_plugin.hosts.arcface_torch.launcher`."""

import sys

from fpr_plugin.hosts.arcface_torch.launcher import main

sys.exit(main())
