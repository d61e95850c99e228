"""``python tface_driver.py ARGS...``: the TFace launcher in a fresh process, for the host tests.

Same as ``python -m fpr_plugin.hosts.tface ARGS...``, except that

- :mod:`tface_standins` fills in for torchvision / tensorboard where the real
  ones do not import;
- with ``TFACE_TEST_CPU=1``, torch's CUDA moves become no-ops so that TFace's
  real training loop runs on CPU with gloo: ``torch.cuda.set_device``,
  ``Tensor.cuda`` and ``Module.cuda`` do nothing, ``torch.cuda.is_available``
  answers True (the launcher refuses a machine without CUDA), and DDP is given
  no ``device_ids`` for a CPU module. This is test scaffolding, not part of
  the adapter: a real TFace run needs a GPU.
"""

import os
import sys

from tface_standins import install_missing


def cpu_shims() -> None:
    """Make TFace's CUDA calls no-ops (test only)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    torch.cuda.set_device = lambda device: None
    torch.cuda.is_available = lambda: True
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    ddp_init = DistributedDataParallel.__init__

    def __init__(self, module, device_ids=None, *args, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        ddp_init(self, module, None if on_cpu else device_ids, *args, **kwargs)

    DistributedDataParallel.__init__ = __init__


if __name__ == "__main__":
    standins = install_missing()
    if standins:
        print(f"tface_driver: test stand-ins for {', '.join(standins)}", file=sys.stderr)
    if os.environ.get("TFACE_TEST_CPU") == "1":
        cpu_shims()
    from fpr_plugin.hosts.tface.launcher import main

    sys.exit(main(sys.argv[1:]))
