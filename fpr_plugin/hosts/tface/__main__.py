"""``python -m fpr_plugin.hosts.tface``: see :mod:`fpr_plugin.hosts.tface.launcher`."""

import sys

from fpr_plugin.hosts.tface.launcher import main

sys.exit(main())
