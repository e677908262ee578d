"""A secret-keeping plug-in named in the environment as `package.module:factory` (a KMS key, a
secret store): found and called once, the one way every such setting is read."""

from __future__ import annotations

import importlib


def provided(spec: str, variable: str, wanted: tuple[str, ...], what: str) -> object:
    """What the factory `spec` returns, once it has every attribute in `wanted`; ValueError
    naming `variable` otherwise (the factory reads its own configuration: none is passed)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{variable} must be 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{variable} {spec!r} cannot be loaded: {exc}") from None
    if not callable(factory):
        raise ValueError(f"{variable} {spec!r} is not callable")
    found = factory()
    if not all(hasattr(found, name) for name in wanted):
        raise ValueError(f"{variable} {spec!r} did not return {what}")
    return found
