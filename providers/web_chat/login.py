"""Logging in to a chat site with the endpoint's credentials, and knowing whether we are.

Credential values are typed into the page and nowhere else: errors name the credential
keys and the step that failed, never a value, and Playwright's own messages (which may
quote what was typed) are not passed on.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urljoin

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from providers.errors import AuthError, PageTrouble, ProtocolError, SessionExpired
from providers.web_chat.actions import click, run_steps
from providers.web_chat.config import LoginConfig, WebChatConfig, url_matches
from providers.web_chat.engine import Trouble, find_trouble, find_visible, visible_count

LOGIN_POLL_S = 0.1


def missing_credentials(login: LoginConfig, credentials: dict[str, str]) -> list[str]:
    return [f.credential for f in login.fields if not credentials.get(f.credential)]


async def logged_in(page: Page, login: LoginConfig) -> bool:
    if url_matches(login.success_url_pattern, page.url):
        return True
    return await visible_count(page, login.success) > 0


async def wait_for_login_state(page: Page, config: WebChatConfig, timeout_s: float) -> bool:
    """True once the page shows it is logged in, False once it shows it is not."""
    assert config.login is not None
    deadline = time.monotonic() + timeout_s
    while True:
        if await logged_in(page, config.login):
            return True
        if await find_trouble(page, page, config.trouble) == Trouble.LOGGED_OUT:
            return False
        if time.monotonic() >= deadline:
            # Neither marker showed: without a success marker, no logged-out page means in.
            return config.login.success is None and config.login.success_url_pattern is None
        await asyncio.sleep(LOGIN_POLL_S)


async def log_in(
    page: Page, config: WebChatConfig, credentials: dict[str, str], base_url: str
) -> None:
    """Fill and submit the login form, then wait for the success marker."""
    login = config.login
    assert login is not None
    missing = missing_credentials(login, credentials)
    if missing:
        raise SessionExpired(
            f"logged out and no credentials to log in again (missing: {', '.join(missing)})"
        )
    try:
        await _submit_form(page, login, credentials, base_url)
        await run_steps(
            page,
            page,
            login.after_submit,
            timeout_s=login.timeout_s,
            credentials=credentials,
            role="login step after submit",
        )
        await _await_success(page, config)
    except PlaywrightError:
        raise AuthError("the login form could not be filled and submitted") from None
    except ProtocolError as exc:
        raise AuthError(f"login failed: {exc.message}") from None


async def _submit_form(
    page: Page, login: LoginConfig, credentials: dict[str, str], base_url: str
) -> None:
    url = urljoin(base_url, login.url) if login.url else base_url
    await page.goto(url, wait_until="domcontentloaded", timeout=login.timeout_s * 1000)
    notes: dict[str, str] = {}
    await run_steps(
        page,
        page,
        login.open,
        timeout_s=login.timeout_s,
        credentials=credentials,
        role="login opener",
    )
    last_field = None
    for field_ in login.fields:
        last_field = await find_visible(
            page, field_.selector, login.timeout_s, role=f"{field_.credential} field", notes=notes
        )
        await last_field.fill(credentials[field_.credential])
    if login.submit:
        button = await find_visible(
            page, login.submit, login.timeout_s, role="login button", notes=notes
        )
        await click(button)
    elif last_field is not None:
        await last_field.press("Enter")


async def _await_success(page: Page, config: WebChatConfig) -> None:
    login = config.login
    assert login is not None
    if login.success is None and login.success_url_pattern is None:
        await _await_not_logged_out(page, config)
        return
    deadline = time.monotonic() + login.timeout_s
    while not await logged_in(page, login):
        trouble = await find_trouble(page, page, config.trouble)
        if trouble == Trouble.CAPTCHA:
            raise PageTrouble("the login page asks for a captcha", reason=Trouble.CAPTCHA)
        if await visible_count(page, login.failure):
            raise AuthError("login was refused (the site shows a login error)")
        if time.monotonic() >= deadline:
            raise AuthError("login was not accepted (no sign of a logged-in page)")
        await asyncio.sleep(LOGIN_POLL_S)


async def _await_not_logged_out(page: Page, config: WebChatConfig) -> None:
    """Without a success marker, success is the login page going away after the submit."""
    await page.wait_for_load_state("domcontentloaded")
    await asyncio.sleep(0.5)  # let a client-side redirect happen
    if await find_trouble(page, page, config.trouble) == Trouble.LOGGED_OUT:
        raise AuthError("login was not accepted (still on a logged-out page)")
