"""Configs of the fixture sites and small helpers shared by the web chat tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from providers.base import EndpointSpec, ProviderContext, StateStore
from providers.web_chat.config import WebChatConfig
from providers.web_chat.provider import WebChatProvider
from tests.web_chat.webchat_sites import PASSWORD, USERNAME, SiteServer

TROUBLE = {"error_banner": "#error-banner", "captcha": "#captcha"}

SITE_CONFIGS: dict[str, dict[str, Any]] = {
    "textarea": {
        "input": "#prompt",
        "send": {"button": "#send"},
        "assistant_message": ".msg.assistant",
        "completion": {"stop_button": "#stop", "send_enabled": True, "stable_ms": 300},
        "conversation": {"url_pattern": "/textarea/c/"},
        "trouble": TROUBLE,
    },
    "editable": {
        "input": ["div[contenteditable=true][role=textbox]", "#composer"],
        "send": {"key": "Enter"},
        "assistant_message": "article[data-author=bot]",
        "completion": {"done_marker": "article[data-author=bot][data-done]", "stable_ms": 250},
        "conversation": {"url_pattern": r"\?c="},
        "trouble": TROUBLE,
    },
    "login": {
        "login": {
            "url": "/login/signin",
            "fields": [
                {"selector": "input[name=username]", "credential": "username"},
                {"selector": "input[name=password]", "credential": "password"},
            ],
            "submit": "button[type=submit]",
            "success": ".user-badge",
            "failure": ".login-error",
            "timeout_s": 5,
        },
        "input": "#q",
        "assistant_message": ".bot-msg",
        "completion": {"stable_ms": 300},
        "conversation": {"url_pattern": "/login/c/"},
        "trouble": {**TROUBLE, "logged_out": "form#signin", "logged_out_url_pattern": "/signin"},
    },
    "sse": {
        "input": "#ask",
        "send": {"button": "button.go"},
        "assistant_message": "section.answer .content",
        "completion": {"stop_button": "#stop", "stable_ms": 300},
        "conversation": {"url_pattern": "/sse/c/"},
        "trouble": TROUBLE,
    },
    "iframe": {
        "frame": "iframe#chatframe",
        "input": ".w-input",
        "send": {"button": ".w-send"},
        "assistant_message": ".w-msg.bot",
        "completion": {"stable_ms": 300},
        "conversation": {"url_pattern": r"\?c="},
        "trouble": TROUBLE,
    },
    "shadow": {
        "input": ["chat-widget .missing-on-purpose", "chat-widget .entry"],
        "send": {"button": ".fire"},
        "assistant_message": ".bubble.bot",
        "completion": {"stable_ms": 300},
        "trouble": TROUBLE,
    },
}

SITE_PATHS = {name: f"/{name}/" for name in SITE_CONFIGS}


class FileStateStore(StateStore):
    """Browser state in a file, as the runtime keeps it in the store: survives a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0

    async def load(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    async def save(self, data: bytes) -> None:
        self.path.write_bytes(data)
        self.saves += 1


class StateReports:
    """Collects report_state calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, state: str, reason: str) -> None:
        self.calls.append((state, reason))


def site_spec(
    sites: SiteServer,
    site: str,
    *,
    name: str | None = None,
    credentials: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    **fields: Any,
) -> EndpointSpec:
    raw = {**SITE_CONFIGS[site], **(overrides or {})}
    fields.setdefault("request_timeout", 20.0)
    fields.setdefault("persistent_session", True)
    return EndpointSpec(
        name=name or f"{site}_site",
        url=sites.url(SITE_PATHS[site]),
        model_name=f"{site}-bot",
        config=WebChatConfig.model_validate(raw),
        credentials=credentials if credentials is not None else {},
        browser_config={"headless": True},
        **fields,
    )


def good_credentials() -> dict[str, str]:
    return {"username": USERNAME, "password": PASSWORD}


def members_endpoint(sites: SiteServer) -> dict[str, Any]:
    """POST /endpoints body: the login site as a started, persistent web chat "members"."""
    return {
        "name": "members",
        "endpoint_type": "web_chat",
        "url": sites.url(SITE_PATHS["login"]),
        "model_name": "login-bot",
        "config": SITE_CONFIGS["login"],
        "browser_config": {"headless": True},
        "credentials": good_credentials(),
        "persistent_session": True,
        "request_timeout": 30,
        "start": True,
    }


def make_provider(
    spec: EndpointSpec, store: StateStore | None = None, reports: StateReports | None = None
) -> WebChatProvider:
    context = ProviderContext(report_state=reports)
    if store is not None:
        context.state_store = store
    return WebChatProvider(spec, context)
