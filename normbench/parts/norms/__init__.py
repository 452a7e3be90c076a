"""Normalization layers by name: the registry (registry.py), the built-in norms (catalog.py), `explain`
(explain.py), the layer classes (layers.py) and their formula implementations (reference.py)."""

from normbench.parts.norms import catalog as _catalog  # noqa: F401  (registers the built-in norms)
from normbench.parts.norms.explain import NormExplanation, explain
from normbench.parts.norms.registry import (
    IMPLS,
    LAYOUTS,
    NORMS,
    Layout,
    NormSpec,
    Support,
    build_norm,
    get_norm,
    on,
    register_norm,
)

__all__ = [
    "IMPLS",
    "LAYOUTS",
    "NORMS",
    "Layout",
    "NormExplanation",
    "NormSpec",
    "Support",
    "build_norm",
    "explain",
    "get_norm",
    "on",
    "register_norm",
]
