"""Name -> constructor registries for losses and backbones (timm-style).

``@register_loss("cosface")`` on a class or factory makes it buildable with
``build_loss("cosface", s=64, m=0.35)``. Built-in entries are imported lazily
on first use; third-party packages add entries through the
``fpr_plugin.losses`` / ``fpr_plugin.backbones`` entry-point groups.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from importlib import metadata
from typing import Any, Callable, TypeVar

T = TypeVar("T", bound=Callable[..., Any])

__all__ = [
    "Registry",
    "UnknownNameError",
    "LOSSES",
    "BACKBONES",
    "register_loss",
    "build_loss",
    "available_losses",
    "register_backbone",
    "build_backbone",
    "available_backbones",
]


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return matches[0] if matches else None


def check_params(kind: str, name: str, factory: Callable[..., Any], params: dict) -> None:
    """Raise TypeError naming any keyword in ``params`` that ``factory`` does not take."""
    sig = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    accepted = [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in params:
        if key not in accepted:
            hint = closest(key, accepted)
            suggestion = f"; did you mean {hint!r}?" if hint else ""
            raise TypeError(
                f"{kind} {name!r} got an unknown parameter {key!r}{suggestion} "
                f"(accepted: {', '.join(accepted) or 'none'})"
            )


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    """A named collection of constructors with lazy built-ins and entry points."""

    def __init__(self, kind: str, builtin_module: str, entry_point_group: str) -> None:
        self.kind = kind
        self._builtin_module = builtin_module
        self._group = entry_point_group
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or factory under ``name``."""

        def decorator(factory: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered by {existing!r}")
            self._entries[name] = factory
            return factory

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        importlib.import_module(self._builtin_module)
        for ep in metadata.entry_points(group=self._group):
            if ep.name in self._entries:
                continue
            try:
                self._entries[ep.name] = ep.load()
            except Exception as exc:  # a broken plugin must not hide the built-ins
                raise ImportError(
                    f"{self.kind} plugin {ep.name!r} from entry point {ep.value!r} "
                    f"(group {self._group!r}) failed to load: {exc}"
                ) from exc

    def names(self) -> list[str]:
        """Sorted names of every registered entry (built-ins and plugins)."""
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        """The constructor registered under ``name``; KeyError lists the known names."""
        self._load()
        if name not in self._entries:
            known = self.names()
            hint = closest(name, known)
            suggestion = f" Did you mean {hint!r}?" if hint else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{suggestion} Known: {', '.join(known)}"
            )
        return self._entries[name]

    def build(self, name: str, **params: Any) -> Any:
        """Construct entry ``name`` with keyword ``params`` (unknown keywords fail)."""
        factory = self.get(name)
        check_params(self.kind, name, factory, params)
        return factory(**params)


LOSSES = Registry("loss", "fpr_plugin.losses", "fpr_plugin.losses")
BACKBONES = Registry("backbone", "fpr_plugin.backbones", "fpr_plugin.backbones")


def register_loss(name: str) -> Callable[[T], T]:
    """Register a margin loss class under ``name`` (decorator)."""
    return LOSSES.register(name)


def build_loss(name: str, **params: Any) -> Any:
    """Build the loss registered as ``name`` with keyword parameters."""
    return LOSSES.build(name, **params)


def available_losses() -> list[str]:
    """Names of every registered loss."""
    return LOSSES.names()


def register_backbone(name: str) -> Callable[[T], T]:
    """Register a backbone factory under ``name`` (decorator)."""
    return BACKBONES.register(name)


def build_backbone(name: str, **params: Any) -> Any:
    """Build the backbone registered as ``name`` with keyword parameters."""
    return BACKBONES.build(name, **params)


def available_backbones() -> list[str]:
    """Names of every registered backbone."""
    return BACKBONES.names()
