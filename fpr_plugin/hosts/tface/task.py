"""TFace's training script, run unchanged, with its ``TrainTask`` reading ``--config``.

TFace's scripts (master's ``train.py``, v0.1.0's ``tasks/*/train_*.py``) end in
``main()``, which builds ``TrainTask(<the yaml beside the script>)`` and runs
it. The launcher loads the script as a module (so its ``__main__`` block does
not run), replaces the name ``TrainTask`` in that module with a subclass whose
only change is the config path (and, on master, FPR statistics added to
TFace's log buffer), and calls the script's own ``main()``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fpr_plugin.hosts.tface.config import ConfigError
from fpr_plugin.losses.stats import LOG_LABELS

__all__ = ["EntryError", "configure_task", "load_entry"]

_ORIGINAL_INIT = "_fpr_plugin_original_init"
_ORIGINAL_LOG = "_fpr_plugin_original_log"


class EntryError(ValueError):
    """TFace's training script cannot be loaded or has no ``main()`` / ``TrainTask``."""


def load_entry(script: Path) -> ModuleType:
    """TFace's training ``script`` as a module (its ``__main__`` block not run)."""
    name = f"_tface_entry_{script.stem}"
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise EntryError(f"{script}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as exc:
        del sys.modules[name]
        package = {"yaml": "pyyaml", "cv2": "opencv-python"}.get((exc.name or "").split(".")[0], exc.name)
        raise EntryError(f"{script}: TFace needs the module {exc.name!r}, which is not installed (pip install {package})") from None
    except TypeError as exc:
        del sys.modules[name]
        if "Descriptors cannot be created directly" in str(exc):
            raise EntryError(
                f"{script}: TFace's torchkit/data/example_pb2.py was generated for protobuf 3; set "
                "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python before anything imports protobuf, or pip install 'protobuf<=3.20'"
            ) from None
        raise
    for needed in ("main", "TrainTask"):
        if not hasattr(module, needed):
            raise EntryError(f"{script}: has no {needed} (expected a TFace training script: TrainTask and main())")
    return module


def _fpr_log(task) -> dict[str, str]:
    """The FPR statistics of the last step of each of our heads, as TFace's LogHook prints them."""
    from fpr_plugin.hosts.tface.distfc import DistFcHead
    from fpr_plugin.hosts.tface.localfc import LocalFcHead

    heads = getattr(task, "heads", None)
    values = heads.values() if isinstance(heads, dict) else heads or []
    stats = [head.loss.last_stats for head in values if isinstance(head, (DistFcHead, LocalFcHead)) and head.loss.last_stats]
    if not stats:
        return {}
    return {label: ", ".join(f"{s[key]:.6g}" for s in stats) for key, label in LOG_LABELS if all(key in s for s in stats)}


def configure_task(module: ModuleType, config: Path) -> type:
    """Point the script's ``TrainTask`` at ``config`` (and, on master, log FPR statistics); returns the class.

    The class itself is patched, not replaced: TFace's ``__init__`` calls
    ``super(TrainTask, self)`` through the module's global name.
    """
    task = module.TrainTask
    original_init = task.__dict__.get(_ORIGINAL_INIT) or task.__init__
    config = str(config)

    def __init__(self, cfg_file=None):
        try:
            original_init(self, config)
        except KeyError as exc:
            key = exc.args[0] if exc.args else exc
            raise ConfigError(f"{config}: TFace's TrainTask rejected the config: key {key!r} is missing") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{config}: TFace's TrainTask rejected the config: {type(exc).__name__}: {exc}") from None

    __init__.__doc__ = f"TFace's {task.__name__}, reading {config} (fpr_plugin launcher)"
    setattr(task, _ORIGINAL_INIT, original_init)
    task.__init__ = __init__
    original_log = task.__dict__.get(_ORIGINAL_LOG) or getattr(task, "update_log_and_summary", None)
    if original_log is not None and hasattr(task, "update_log_buffer"):  # master's distfc task

        def update_log_and_summary(self, *args, **kwargs):
            original_log(self, *args, **kwargs)
            self.update_log_buffer(_fpr_log(self))

        setattr(task, _ORIGINAL_LOG, original_log)
        task.update_log_and_summary = update_log_and_summary
    return task
