"""Chromium for one endpoint: launch, one browser context, anti-detection and fingerprints.

The endpoint's context is what survives restarts: its storage state (cookies, local storage)
and the fingerprint it was created with are saved together as one blob, so a restored
session looks like the same browser to the site that issued the cookies.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from providers.errors import Unavailable
from providers.web_chat.config import BrowserConfig

SYSTEM_CHROMIUM = "/usr/bin/chromium"
STATE_FORMAT = 1

# Closed networks otherwise flood the log with refused background connections.
QUIET_ARGS = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
)
STEALTH_ARGS = ("--disable-blink-features=AutomationControlled",)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A coherent identity: the user agent's OS matches the platform, locale and screen."""

    ua_os: str
    platform: str
    width: int
    height: int
    locale: str
    timezone: str

    def user_agent(self, chrome_major: str) -> str:
        return (
            f"Mozilla/5.0 ({self.ua_os}) AppleWebKit/537.36 (KHTML, like Gecko) "
            f"Chrome/{chrome_major}.0.0.0 Safari/537.36"
        )


MAC_OS = "Macintosh; Intel Mac OS X 10_15_7"
FINGERPRINTS: tuple[Fingerprint, ...] = (
    Fingerprint("Windows NT 10.0; Win64; x64", "Win32", 1920, 1080, "en-US", "America/New_York"),
    Fingerprint("Windows NT 10.0; Win64; x64", "Win32", 1536, 864, "en-GB", "Europe/London"),
    Fingerprint("Windows NT 10.0; Win64; x64", "Win32", 1366, 768, "de-DE", "Europe/Berlin"),
    Fingerprint(MAC_OS, "MacIntel", 1440, 900, "en-US", "America/Los_Angeles"),
    Fingerprint(MAC_OS, "MacIntel", 1680, 1050, "fr-FR", "Europe/Paris"),
    Fingerprint("X11; Linux x86_64", "Linux x86_64", 1920, 1080, "en-US", "America/Chicago"),
)

_STEALTH_SCRIPT = """
(() => {
  const fp = %s;
  const define = (proto, name, value) => {
    try { Object.defineProperty(proto, name, {get: () => value, configurable: true}); }
    catch (e) {}
  };
  // A normal Chrome reports false (never undefined, which pages that check the type of
  // the property take for a broken browser).
  define(Navigator.prototype, 'webdriver', false);
  if (fp.platform) define(Navigator.prototype, 'platform', fp.platform);
  if (fp.languages) define(Navigator.prototype, 'languages', fp.languages);
  if (!window.chrome) window.chrome = {runtime: {}};
})();
"""


def pick_fingerprint(rng: random.Random | None = None) -> Fingerprint:
    return (rng or random).choice(FINGERPRINTS)


def browser_executable(playwright: Playwright) -> str | None:
    """AIEM_BROWSER_EXECUTABLE, else Playwright's own Chromium, else the system one."""
    configured = os.environ.get("AIEM_BROWSER_EXECUTABLE")
    if configured:
        return configured
    try:
        own = playwright.chromium.executable_path
    except PlaywrightError:
        own = ""
    if own and Path(own).exists():
        return None
    return SYSTEM_CHROMIUM if Path(SYSTEM_CHROMIUM).exists() else None


def launch_args(marker: str, anti_detection: bool) -> list[str]:
    args = list(QUIET_ARGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run sandboxed as root
    if anti_detection:
        args.extend(STEALTH_ARGS)
    # Names this endpoint's browser in process listings (operators, crash tests).
    args.append(f"--aiem-endpoint={re.sub(r'[^A-Za-z0-9_.:-]', '_', marker)}")
    return args


def proxy_settings(proxy_url: str | None) -> dict[str, str] | None:
    """Playwright proxy settings; credentials in the URL move to their own fields."""
    if not proxy_url:
        return None
    parts = urlsplit(proxy_url)
    server = f"{parts.scheme or 'http'}://{parts.hostname}"
    if parts.port:
        server += f":{parts.port}"
    proxy = {"server": server}
    if parts.username:
        proxy["username"] = unquote(parts.username)
        proxy["password"] = unquote(parts.password or "")
    return proxy


@dataclass(slots=True)
class SavedState:
    storage_state: dict[str, Any] | None = None
    fingerprint: Fingerprint | None = None

    def to_bytes(self) -> bytes:
        payload = {
            "format": STATE_FORMAT,
            "storage_state": self.storage_state,
            "fingerprint": asdict(self.fingerprint) if self.fingerprint else None,
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> SavedState:
        """A saved blob; an unreadable one is treated as absent (a fresh login follows)."""
        if not data:
            return cls()
        try:
            payload = json.loads(data)
            fingerprint = payload.get("fingerprint")
            return cls(
                storage_state=payload.get("storage_state"),
                fingerprint=Fingerprint(**fingerprint) if fingerprint else None,
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


class _Driver:
    """The Playwright driver (a node process) shared by the endpoints of one event loop.

    Starting it costs over a second, so endpoints share it; each still gets its own
    Chromium. It stops when the last endpoint using it closes.
    """

    def __init__(self) -> None:
        self.playwright: Playwright | None = None
        self.users = 0
        self.lock = asyncio.Lock()


_drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Driver] = (
    weakref.WeakKeyDictionary()
)


async def acquire_driver() -> Playwright:
    driver = _drivers.setdefault(asyncio.get_running_loop(), _Driver())
    async with driver.lock:
        if driver.playwright is None:
            driver.playwright = await async_playwright().start()
        driver.users += 1
        return driver.playwright


async def release_driver() -> None:
    driver = _drivers.get(asyncio.get_running_loop())
    if driver is None:
        return
    async with driver.lock:
        driver.users -= 1
        if driver.users <= 0 and driver.playwright is not None:
            playwright, driver.playwright, driver.users = driver.playwright, None, 0
            await playwright.stop()


class BrowserSession:
    """One Chromium process and the endpoint's one context."""

    def __init__(self, settings: BrowserConfig, marker: str) -> None:
        self.settings = settings
        self.marker = marker
        self.fingerprint: Fingerprint | None = None
        self._playwright: Playwright | None = None
        self.browser: Browser | None = None
        self.context: BrowserContext | None = None
        self.closing = False

    async def open(self, saved: SavedState, on_disconnect: Callable[[], None]) -> None:
        try:
            self._playwright = await acquire_driver()
            self.browser = await self._launch(self._playwright)
            self.browser.on("disconnected", lambda _browser: on_disconnect())
            self.context = await self._new_context(saved)
        except PlaywrightError as exc:
            await self.close()
            raise Unavailable(f"cannot start Chromium: {first_line(exc)}") from None

    async def _launch(self, playwright: Playwright) -> Browser:
        return await playwright.chromium.launch(
            executable_path=browser_executable(playwright),
            headless=self.settings.headless,
            args=launch_args(self.marker, self.settings.anti_detection),
            ignore_default_args=["--enable-automation"] if self.settings.anti_detection else None,
            proxy=proxy_settings(self.settings.proxy_url),  # type: ignore[arg-type]
        )

    async def _new_context(self, saved: SavedState) -> BrowserContext:
        assert self.browser is not None
        if self.settings.fingerprint_rotation:
            self.fingerprint = saved.fingerprint or pick_fingerprint()
        options = self._context_options()
        if saved.storage_state:
            options["storage_state"] = saved.storage_state
        context = await self.browser.new_context(**options)
        if self.settings.anti_detection or self.fingerprint:
            await context.add_init_script(self._stealth_script(options))
        return context

    def _context_options(self) -> dict[str, Any]:
        settings, fingerprint = self.settings, self.fingerprint
        options: dict[str, Any] = {}
        user_agent = settings.user_agent or self._default_user_agent()
        if user_agent:
            options["user_agent"] = user_agent
        if settings.viewport:
            options["viewport"] = settings.viewport.model_dump()
        elif fingerprint:
            options["viewport"] = {"width": fingerprint.width, "height": fingerprint.height}
        locale = settings.locale or (fingerprint.locale if fingerprint else None)
        if locale:
            options["locale"] = locale
        timezone = settings.timezone or (fingerprint.timezone if fingerprint else None)
        if timezone:
            options["timezone_id"] = timezone
        return options

    def _default_user_agent(self) -> str | None:
        assert self.browser is not None
        major = self.browser.version.split(".")[0]
        if self.fingerprint:
            return self.fingerprint.user_agent(major)
        if self.settings.anti_detection and self.settings.headless:
            # Headless Chromium announces itself as "HeadlessChrome" in its user agent.
            return FINGERPRINTS[-1].user_agent(major)
        return None

    def _stealth_script(self, options: dict[str, Any]) -> str:
        locale = options.get("locale")
        facts = {
            "platform": self.fingerprint.platform if self.fingerprint else None,
            "languages": [locale, locale.split("-")[0]] if locale else None,
        }
        return _STEALTH_SCRIPT % json.dumps(facts)

    async def snapshot(self) -> SavedState:
        assert self.context is not None
        storage = await self.context.storage_state()
        return SavedState(storage_state=dict(storage), fingerprint=self.fingerprint)

    @property
    def connected(self) -> bool:
        return self.browser is not None and self.browser.is_connected()

    async def close(self) -> None:
        """Close everything; never raises (the browser may already be gone)."""
        self.closing = True
        for closer in (self._close_context, self._close_browser, self._stop_playwright):
            try:
                await closer()
            except Exception:  # noqa: BLE001 - teardown of a possibly dead browser
                pass

    async def _close_context(self) -> None:
        if self.context is not None and self.connected:
            await self.context.close()

    async def _close_browser(self) -> None:
        if self.browser is not None and self.connected:
            await self.browser.close()

    async def _stop_playwright(self) -> None:
        if self._playwright is not None:
            self._playwright = None
            await release_driver()


def first_line(exc: BaseException) -> str:
    """Playwright messages carry call logs over many lines; the first one says what failed."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
