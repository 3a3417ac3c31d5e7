"""The runtime bundle the HTTP surface and the CLI use: store, registry, manager, chat."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from providers.registry import ProviderRegistry, default_registry
from runtime.chat import ChatService
from runtime.declarative import import_file
from runtime.discovery import DiscoveryOptions, DiscoveryService
from runtime.manager import EndpointManager, ManagerOptions
from store.db import Store

log = logging.getLogger("aiem.runtime")


@dataclass
class RuntimeOptions:
    database_url: str
    data_dir: Path
    secret_key: str | None = None
    config_file: Path | None = None
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)


class Runtime:
    def __init__(self, options: RuntimeOptions, registry: ProviderRegistry | None = None) -> None:
        self.options = options
        self.registry = registry or default_registry()
        self.store = Store.open(
            url=options.database_url, data_dir=options.data_dir, secret_key=options.secret_key
        )
        self.manager = EndpointManager(self.store, self.registry, options.manager)
        self.chat = ChatService(self.manager)
        self.discovery = DiscoveryService(self.store, self.manager, self.chat, options.discovery)
        self.started = False

    async def start(self) -> None:
        if self.options.config_file and Path(self.options.config_file).is_file():
            summary = import_file(self.manager.repo, Path(self.options.config_file))
            log.info("declarative config %s: %s", self.options.config_file, summary)
        await self.manager.startup()
        await self.discovery.start()
        self.started = True

    async def stop(self) -> None:
        self.started = False
        await self.discovery.stop()
        await self.manager.shutdown()
        self.store.dispose()
