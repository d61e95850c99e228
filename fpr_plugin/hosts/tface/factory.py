"""``HEAD_NAME: FprPenalty`` / ``FprPenaltyTface`` in TFace's head factory, without editing TFace.

TFace's ``torchkit/head/__init__.py: get_head(key, dist_fc)`` builds its
name-to-class dict inside the function, and ``torchkit/task/base_task.py``
(like v0.1.0's ``tasks/localfc/train_localfc.py``) binds the function by name
at import. :func:`install` therefore replaces ``get_head`` in
``torchkit.head`` *and* in every module already imported that bound it;
modules imported later bind the wrapper. The wrapper answers our two names
(distfc or localfc head by ``dist_fc``, as TFace's own factory does) and
hands every other name to TFace's factory unchanged, adding a hint when an
unknown name is close to ours.
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from fpr_plugin.hosts.tface import distfc, localfc
from fpr_plugin.hosts.tface.checkout import detect_checkout
from fpr_plugin.hosts.tface.common import HEAD_LOSSES

__all__ = ["bind_loss_params", "closest_head", "head_class", "install", "installed", "uninstall"]

_ORIGINAL = "fpr_plugin_original"  # attribute of the wrapper: TFace's own get_head


def closest_head(key: str) -> str | None:
    """Our head name closest to ``key`` (case-insensitive), or None when none is close."""
    if not isinstance(key, str):
        return None
    lowered = {name.lower(): name for name in HEAD_LOSSES}
    match = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.75)
    return lowered[match[0]] if match else None


def bind_loss_params(cls: type, loss_params: Mapping[str, Any] | None) -> type:
    """``cls``, or a subclass of it of the same name whose loss takes ``loss_params`` by default."""
    if not loss_params:
        return cls
    namespace = {"loss_params": dict(loss_params), "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), namespace)


def head_class(key: str, dist_fc: bool, loss_params: Mapping[str, Any] | None = None) -> type:
    """Our head class for ``HEAD_NAME: key`` (distfc or localfc), bound to ``loss_params``."""
    module = distfc if dist_fc else localfc
    return bind_loss_params(getattr(module, key), loss_params)


def _make_get_head(original: Callable, loss_params: Mapping[str, Any] | None) -> Callable:
    params = dict(loss_params or {})

    def get_head(key, dist_fc):
        """TFace's ``get_head`` plus fpr_plugin's ``FprPenalty`` and ``FprPenaltyTface``."""
        if key in HEAD_LOSSES:
            return head_class(key, bool(dist_fc), params)
        try:
            return original(key, dist_fc)
        except KeyError:
            hint = closest_head(key)
            if hint is None:
                raise
            raise KeyError(
                f"not support head {key!r}: did you mean {hint!r}? (fpr_plugin adds {', '.join(HEAD_LOSSES)})"
            ) from None

    setattr(get_head, _ORIGINAL, original)
    get_head.loss_params = params
    return get_head


def _rebind(old: Callable, new: Callable, original: Callable) -> None:
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        bound = namespace.get("get_head")
        if bound is not None and (bound is old or bound is original or getattr(bound, _ORIGINAL, None) is original):
            namespace["get_head"] = new


def _import_torchkit_head(root: str | os.PathLike | None):
    if root is not None:
        checkout = detect_checkout(root)
        if str(checkout.root) not in sys.path:
            sys.path.insert(0, str(checkout.root))
    try:
        import torchkit.head as head_module
    except ImportError as exc:
        raise ImportError(
            f"TFace's torchkit is not importable ({exc}): put TFace's recognition folder on sys.path "
            "or pass install(root=...)"
        ) from exc
    if root is not None:
        where = Path(head_module.__file__).resolve()
        if checkout.root not in where.parents:
            raise ImportError(f"torchkit is already imported from {where.parents[1]}, not from {checkout.root}")
    return head_module


def install(loss_params: Mapping[str, Any] | None = None, root: str | os.PathLike | None = None) -> Callable:
    """Wrap TFace's ``get_head`` so that ``FprPenalty`` / ``FprPenaltyTface`` resolve to our heads.

    ``loss_params`` become the default parameters of the heads' loss
    (``fpr_penalty``: gamma_u, p, alpha, base, penalty_grad; ``s`` / ``m``
    only where TFace passes no scale / margin). ``root`` (optional) is put on
    ``sys.path`` first. Calling it again replaces the parameters. Returns the wrapper.
    """
    if loss_params is not None and not isinstance(loss_params, Mapping):
        raise TypeError(f"loss_params must be a mapping of loss parameters, got {type(loss_params).__name__}")
    head_module = _import_torchkit_head(root)
    current = head_module.get_head
    original = getattr(current, _ORIGINAL, current)
    wrapper = _make_get_head(original, loss_params)
    head_module.get_head = wrapper
    _rebind(current, wrapper, original)
    return wrapper


def installed() -> bool:
    """True when ``torchkit.head.get_head`` is our wrapper."""
    head_module = sys.modules.get("torchkit.head")
    return head_module is not None and hasattr(getattr(head_module, "get_head", None), _ORIGINAL)


def uninstall() -> None:
    """Give TFace's own ``get_head`` back to every module that holds the wrapper."""
    head_module = sys.modules.get("torchkit.head")
    current = getattr(head_module, "get_head", None)
    original = getattr(current, _ORIGINAL, None)
    if original is None:
        return
    head_module.get_head = original
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and getattr(namespace.get("get_head"), _ORIGINAL, None) is original:
            namespace["get_head"] = original
