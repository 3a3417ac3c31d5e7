"""Hook specifications for provider plugins (entry-point group ``aiem``)."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("aiem")
hookimpl = pluggy.HookimplMarker("aiem")


@hookspec
def register_providers(register: Callable[[type], None]) -> None:
    """Register provider classes: call ``register(ProviderClass)`` for each."""
