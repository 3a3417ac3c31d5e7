"""Declarative settings of a web chat: where to type, how to send, how to read the answer.

A ``WebChatConfig`` describes one chat site. Every element role takes ranked candidate CSS
selectors (a single string is accepted as a list of one); the first is tried first and the
others right after it. Selectors pierce open shadow roots (Playwright's CSS engine does), and
``frame`` names an iframe that holds the whole chat widget.

A config may start from a preset (``{"preset": "zai", ...}``): the preset's JSON is loaded from
``providers/presets`` and the given keys override it, nested sections merged key by key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from providers.presets import load_preset
from providers.util import deep_merge


def _as_candidates(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    return value


Candidates = Annotated[
    list[str],
    BeforeValidator(_as_candidates),
    Field(min_length=1, description="Ranked candidate CSS selectors; the first is the primary."),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginField(_Section):
    selector: Candidates
    credential: str = Field(description="Key of the endpoint's credentials to type here.")


class LoginConfig(_Section):
    """How to log in and how to recognise that it worked."""

    url: str | None = Field(
        default=None, description="Login page (absolute or relative to the endpoint URL)."
    )
    open: list[Candidates] = Field(
        default_factory=list, description="Elements to click before the form shows, in order."
    )
    fields: list[LoginField] = Field(min_length=1)
    submit: Candidates | None = Field(
        default=None, description="Submit button; when absent Enter is pressed in the last field."
    )
    success: Candidates | None = Field(
        default=None, description="An element only a logged-in page shows."
    )
    success_url_pattern: str | None = Field(
        default=None, description="Regular expression the URL matches once logged in."
    )
    failure: Candidates | None = Field(
        default=None, description="An element a refused login shows (wrong password)."
    )
    timeout_s: float = Field(default=20.0, gt=0, le=300)


class SendConfig(_Section):
    button: Candidates | None = Field(
        default=None, description="Send button to click; when absent `key` is pressed."
    )
    key: str = Field(default="Enter", description="Key pressed in the input to send.")


class CompletionConfig(_Section):
    """Signals that an answer is done; `quorum` of the available ones must agree."""

    stop_button: Candidates | None = Field(
        default=None, description="Visible while the site is generating; gone when done."
    )
    done_marker: Candidates | None = Field(
        default=None, description="Appears (in the page or the chat frame) when an answer ends."
    )
    send_enabled: bool = Field(
        default=False, description="Count the send button being enabled again as a signal."
    )
    stable_ms: int = Field(
        default=1200, ge=50, le=60_000, description="Text unchanged this long is a signal."
    )
    quorum: int | None = Field(
        default=None,
        ge=1,
        le=4,
        description="Signals that must agree; default: two, or one when only one is available.",
    )
    poll_ms: int = Field(default=40, ge=10, le=1000)


class TroubleConfig(_Section):
    """Markers of pages that must not be read as answers."""

    logged_out: Candidates | None = Field(
        default=None, description="An element only a logged-out page shows (a login form)."
    )
    logged_out_url_pattern: str | None = Field(
        default=None, description="Regular expression matched by the URL of a logged-out page."
    )
    error_banner: Candidates | None = None
    captcha: Candidates | None = None


class ConversationConfig(_Section):
    new_button: Candidates | None = Field(
        default=None, description="Starts a new conversation; when absent `new_url` is opened."
    )
    new_url: str | None = Field(
        default=None, description="Page of a new conversation; default: the endpoint URL."
    )
    url_pattern: str | None = Field(
        default=None,
        description="Regular expression a conversation's URL matches; the URL is stored "
        "so the chat session continues there, also after a restart.",
    )
    replay_history: bool = Field(
        default=True,
        description="On a new conversation, type earlier turns of the request as a transcript.",
    )


class WebChatConfig(BaseModel):
    """A chat web page described as data."""

    model_config = ConfigDict(extra="forbid")

    login: LoginConfig | None = None
    frame: Candidates | None = Field(
        default=None, description="The iframe that holds the chat widget, when it is in one."
    )
    input: Candidates = Field(description="Where to type: textarea, input or contenteditable.")
    input_method: Literal["fill", "insert_text"] = Field(
        default="fill",
        description="`fill` sets the value; `insert_text` focuses and types it as one input "
        "event, for editors that ignore programmatic values.",
    )
    send: SendConfig = Field(default_factory=SendConfig)
    assistant_message: Candidates = Field(
        description="Each assistant message; the newest one is the answer being read."
    )
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    trouble: TroubleConfig = Field(default_factory=TroubleConfig)
    answer_timeout_s: float = Field(
        default=90.0, gt=0, le=3600, description="Base time allowed for an answer."
    )
    timeout_per_1k_prompt_chars_s: float = Field(
        default=15.0, ge=0, le=600, description="Extra time per thousand characters typed."
    )
    page_timeout_s: float = Field(
        default=20.0, gt=0, le=300, description="Time allowed to load a page or find an element."
    )
    queue_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="How long a request waits for a free page; default: the request timeout.",
    )
    idle_pages: int = Field(
        default=8,
        ge=0,
        le=500,
        description="Pages of idle chat sessions kept open beyond the concurrency cap.",
    )
    state_save_interval_s: float = Field(default=300.0, ge=5, le=86_400)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "preset" in data:
            overrides = dict(data)
            base = load_preset(overrides.pop("preset"))
            return deep_merge(base, overrides)
        return data

    def answer_timeout(self, prompt: str, ceiling: float) -> float:
        """Time allowed for one answer, longer for long prompts, never past ``ceiling``."""
        scaled = self.answer_timeout_s + self.timeout_per_1k_prompt_chars_s * len(prompt) / 1000
        return min(scaled, ceiling)


class Viewport(_Section):
    width: int = Field(default=1280, ge=200, le=10_000)
    height: int = Field(default=800, ge=200, le=10_000)


class BrowserConfig(BaseModel):
    """The seed's ``browser_config``: how the endpoint's Chromium context looks."""

    model_config = ConfigDict(extra="forbid")

    headless: bool = True
    user_agent: str | None = None
    viewport: Viewport | None = None
    locale: str | None = None
    timezone: str | None = None
    proxy_url: str | None = None
    anti_detection: bool = True
    fingerprint_rotation: bool = False
