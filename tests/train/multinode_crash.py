"""``fpr-train`` on a node that dies right after saving a given step (a test stand-in for a lost machine).

Run by torchrun in place of ``-m fpr_plugin.train``. After the checkpoint of
step ``FPR_TEST_KILL_AFTER_STEP`` is written (every rank has passed the
save's barrier, so the checkpoint is complete), each worker SIGKILLs its
torchrun agent and exits at once: the whole node is gone, and the other
node's ranks lose their peers in the middle of the next step.
"""

import os
import signal
import sys

from fpr_plugin.train.checkpoint import TrainState
from fpr_plugin.train.cli import main

KILL_AFTER = int(os.environ["FPR_TEST_KILL_AFTER_STEP"])
_save = TrainState.save


def save_then_die(self, *args, **kwargs):
    path = _save(self, *args, **kwargs)
    if self.global_step == KILL_AFTER:
        try:
            os.kill(os.getppid(), signal.SIGKILL)  # this node's torchrun agent
        except ProcessLookupError:
            pass
        os._exit(1)
    return path


TrainState.save = save_then_die

if __name__ == "__main__":
    sys.exit(main())
