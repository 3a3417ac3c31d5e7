"""Provider registry: built-ins and third-party plugins through the same pluggy hook."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import pluggy

from providers import hookspecs
from providers.base import Provider

# Built-in providers register through the same hook as third-party packages.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "providers.openai_api",
    "providers.rest_api",
    "providers.anthropic_api",
    "providers.codegen_api",
    "providers.web_chat.provider",
    "providers.zai_web",
)


class UnknownEndpointType(LookupError):
    def __init__(self, endpoint_type: str, known: list[str]) -> None:
        super().__init__(
            f"unknown endpoint_type {endpoint_type!r}; known types: {', '.join(sorted(known))}"
        )
        self.endpoint_type = endpoint_type
        self.known = sorted(known)


class ProviderRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Provider]] = {}

    def register(self, cls: type) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise TypeError(f"{cls!r} is not a Provider subclass")
        self._classes[cls.endpoint_type] = cls

    def get(self, endpoint_type: str) -> type[Provider]:
        try:
            return self._classes[endpoint_type]
        except KeyError:
            raise UnknownEndpointType(endpoint_type, list(self._classes)) from None

    def types(self) -> list[str]:
        return sorted(self._classes)

    def describe(self) -> list[dict[str, Any]]:
        return [self._classes[name].describe() for name in self.types()]


def make_plugin_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("aiem")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A built-in whose module is absent from this build is skipped, not fatal.
            if exc.name and module_name.startswith(exc.name):
                continue
            raise
        pm.register(module, name=module_name)
    if load_entry_points:
        pm.load_setuptools_entrypoints("aiem")
    return pm


def build_registry(pm: pluggy.PluginManager | None = None) -> ProviderRegistry:
    registry = ProviderRegistry()
    (pm or make_plugin_manager()).hook.register_providers(register=registry.register)
    return registry


_default: ProviderRegistry | None = None
_lock = threading.Lock()


def default_registry() -> ProviderRegistry:
    """The process-wide registry, built once."""
    global _default
    with _lock:
        if _default is None:
            _default = build_registry()
        return _default
