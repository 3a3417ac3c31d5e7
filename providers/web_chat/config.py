"""Declarative settings of a web chat: where to type, how to send, how to read the answer.

A ``WebChatConfig`` describes one chat site. Every element role takes ranked candidate CSS
selectors (a single string is accepted as a list of one); the first is tried first and the
others right after it. Selectors pierce open shadow roots (Playwright's CSS engine does), and
``frame`` names an iframe that holds the whole chat widget.

URL patterns (``conversation.url_pattern``, ``login.success_url_pattern``,
``trouble.logged_out_url_pattern``) are Python regular expressions. A pattern that starts with
``^/`` is matched against the URL's path and query (``^/c/[0-9a-f-]+$``); any other pattern is
searched for anywhere in the whole URL (``chat\\.example\\.com/c/``, ``/c/``).

Steps (login openers, new-conversation steps, per-conversation setup) share one small
language, see ``Step``: a bare selector (or list of candidates) means "click it".

A config may start from a preset (``{"preset": "zai", ...}``): the preset's JSON is loaded from
``providers/presets`` and the given keys override it, nested sections merged key by key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

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


def url_matches(pattern: str | None, url: str) -> bool:
    """``^/…`` patterns match the path and query; others are searched in the whole URL."""
    if not pattern:
        return False
    if pattern.startswith("^/"):
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return re.search(pattern, target) is not None
    return re.search(pattern, url) is not None


def _checked_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return value


UrlPattern = Annotated[str | None, BeforeValidator(_checked_pattern)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


ACTIONS = ("click", "fill", "select", "press", "wait_for", "wait_ms")


class Step(_Section):
    """One action on the page. Exactly one of the action keys is given.

    A bare selector or list of candidates is read as ``{"click": ...}``.
    """

    click: Candidates | None = Field(default=None, description="Click this element.")
    fill: Candidates | None = Field(
        default=None, description="Type `text`, a credential or a one-time code into this field."
    )
    text: str | None = Field(default=None, description="Literal text for `fill`.")
    credential: str | None = Field(
        default=None,
        description="Credential key whose value `fill` types (any key: email, username, ...).",
    )
    totp: str | None = Field(
        default=None,
        description="Credential key holding a base32 TOTP secret (otp_secret); `fill` types "
        "the current six-digit code.",
    )
    select: Candidates | None = Field(
        default=None, description="A <select> (or a custom dropdown's button) to choose from."
    )
    option: str | None = Field(
        default=None,
        description="For `select`: the option's label or value; for a custom dropdown, the "
        "visible text of the item to click after opening it.",
    )
    press: str | None = Field(
        default=None, description="Press this key (e.g. Escape) in the focused element."
    )
    wait_for: Candidates | None = Field(default=None, description="Wait until this shows.")
    wait_ms: int | None = Field(default=None, ge=0, le=60_000, description="Pause this long.")
    optional: bool = Field(
        default=False,
        description="Skip the step when its element does not show within `timeout_s`.",
    )
    timeout_s: float | None = Field(
        default=None, gt=0, le=300, description="Time to find the element; default: the page's."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_selector_is_a_click(cls, data: Any) -> Any:
        if isinstance(data, str | list):
            return {"click": data}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [name for name in ACTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a step takes exactly one of {', '.join(ACTIONS)} (got {given})")
        if self.fill is not None and [self.text, self.credential, self.totp].count(None) != 2:
            raise ValueError("a fill step takes exactly one of text, credential, totp")
        if self.select is not None and self.option is None:
            raise ValueError("a select step needs `option`")
        return self

    @property
    def action(self) -> str:
        return next(name for name in ACTIONS if getattr(self, name) is not None)


Steps = Annotated[
    list[Step], Field(default_factory=list, description="Steps run in order; see `Step`.")
]


class LoginField(_Section):
    selector: Candidates
    credential: str = Field(
        description="Key of the endpoint's credentials to type here; any key the site "
        "needs (username, email, password, ...)."
    )


class LoginConfig(_Section):
    """How to log in and how to recognise that it worked."""

    url: str | None = Field(
        default=None, description="Login page (absolute or relative to the endpoint URL)."
    )
    open: list[Step] = Field(
        default_factory=list,
        description="Steps before the form shows (a bare selector is clicked), in order.",
    )
    fields: list[LoginField] = Field(
        min_length=1, description="Form fields and the credential typed into each."
    )
    submit: Candidates | None = Field(
        default=None, description="Submit button; when absent Enter is pressed in the last field."
    )
    success: Candidates | None = Field(
        default=None, description="An element only a logged-in page shows."
    )
    after_submit: list[Step] = Field(
        default_factory=list,
        description="Steps after the submit, e.g. a one-time code page "
        '(`{"fill": "#otp", "totp": "otp_secret"}` then a click).',
    )
    success_url_pattern: UrlPattern = Field(
        default=None,
        description="Regular expression the URL matches once logged in (`^/...`: the path "
        "and query; otherwise searched in the whole URL).",
    )
    failure: Candidates | None = Field(
        default=None, description="An element a refused login shows (wrong password)."
    )
    timeout_s: float = Field(
        default=20.0, gt=0, le=300, description="Time allowed for each login step."
    )


class SendMethod(_Section):
    """One way to send: click a control, or press a key in the input."""

    button: Candidates | None = Field(default=None, description="Send control to click.")
    key: str | None = Field(default=None, description="Key to press in the input (Enter).")

    @model_validator(mode="after")
    def _one_way(self) -> SendMethod:
        if (self.button is None) == (self.key is None):
            raise ValueError("a send method takes exactly one of button, key")
        return self


class SendConfig(_Section):
    button: Candidates | None = Field(
        default=None, description="Send button to click; when absent `key` is pressed."
    )
    key: str = Field(default="Enter", description="Key pressed in the input to send.")
    methods: list[SendMethod] = Field(
        default_factory=list,
        description="Ranked ways to send, e.g. "
        '`[{"button": "#send"}, {"key": "Enter"}, {"key": "Control+Enter"}]`: a control '
        "that is missing or stays disabled, or a method after which the input still holds "
        "the prompt, passes to the next. Overrides `button` and `key`.",
    )
    wait_enabled_ms: int = Field(
        default=3000,
        ge=0,
        le=60_000,
        description="How long a send control may stay disabled after typing before the next "
        "method is tried.",
    )
    confirm_ms: int = Field(
        default=1000,
        ge=0,
        le=30_000,
        description="With several methods: how long to wait for the input to empty before "
        "the next method is tried.",
    )

    def ranked_methods(self) -> list[SendMethod]:
        if self.methods:
            return list(self.methods)
        if self.button:
            return [SendMethod(button=self.button)]
        return [SendMethod(key=self.key)]

    def first_button(self) -> list[str] | None:
        return next((m.button for m in self.ranked_methods() if m.button), None)


class AttributeSignal(_Section):
    """An element whose attribute returns to a value when the answer ends."""

    selector: Candidates
    attribute: str = Field(description="Attribute name, e.g. aria-disabled or disabled.")
    value: str | None = Field(
        default=None,
        description="The value that means done; null: the attribute being present means done.",
    )
    present: bool = Field(default=True, description="False: the attribute being absent means done.")


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
    attributes: list[AttributeSignal] = Field(
        default_factory=list,
        description="Signals on an element that exists throughout: each says done once its "
        "attribute left the done state after the prompt was typed and came back to it.",
    )
    stable_ms: int = Field(
        default=1200, ge=50, le=60_000, description="Text unchanged this long is a signal."
    )
    quorum: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Signals that must agree; default: two, or one when only one is available.",
    )
    poll_ms: int = Field(
        default=40,
        ge=10,
        le=1000,
        description="Fallback poll of the done signals; changes the page reports wake the "
        "reader at once.",
    )


class TroubleConfig(_Section):
    """Markers of pages that must not be read as answers."""

    logged_out: Candidates | None = Field(
        default=None, description="An element only a logged-out page shows (a login form)."
    )
    logged_out_url_pattern: UrlPattern = Field(
        default=None,
        description="Regular expression matched by the URL of a logged-out page (`^/...`: "
        "the path and query; otherwise searched in the whole URL).",
    )
    error_banner: Candidates | None = Field(
        default=None, description="An error message of the site; the turn fails with its text."
    )
    captcha: Candidates | None = Field(
        default=None, description="A captcha challenge; reported as trouble, never answered."
    )


class ConversationId(_Section):
    """Where a site that keeps the URL unchanged shows the conversation's id."""

    selector: Candidates
    attribute: str | None = Field(
        default=None,
        description="Attribute holding the id; null: the element's value (a hidden input).",
    )


class Overlay(_Section):
    """A dismissable overlay (what's new, cookie banner, upgrade prompt, login nag).

    A bare selector (or list of candidates) is read as ``{"close": ...}``.
    """

    close: Candidates = Field(description="The control that closes it ('Got it', 'x').")
    when: Candidates | None = Field(
        default=None, description="The overlay itself; default: the close control showing."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_selector_is_the_close_control(cls, data: Any) -> Any:
        if isinstance(data, str | list):
            return {"close": data}
        return data


class ConversationConfig(_Section):
    new_button: Candidates | None = Field(
        default=None, description="Starts a new conversation; when absent `new_url` is opened."
    )
    new_steps: list[Step] = Field(
        default_factory=list,
        description="Steps that start a new conversation, when one click is not enough "
        "(a button, then 'Create' in a confirm dialog). Overrides `new_button`.",
    )
    setup_steps: list[Step] = Field(
        default_factory=list,
        description="Steps run on every new conversation before its first message (choose "
        'a model: `{"select": "#model", "option": "Fast"}`, pick a mode).',
    )
    new_url: str | None = Field(
        default=None, description="Page of a new conversation; default: the endpoint URL."
    )
    url_pattern: UrlPattern = Field(
        default=None,
        description="Regular expression a conversation's URL matches (`^/...`: the path and "
        "query; otherwise searched in the whole URL); the URL is stored so the chat session "
        "continues there, also after a restart.",
    )
    id_from: ConversationId | None = Field(
        default=None,
        description="Read the conversation's id from an element (attribute or input value), "
        "for sites whose URL does not change.",
    )
    url_template: str | None = Field(
        default=None,
        description="URL of a conversation built from the id read by `id_from` ('{id}' is "
        "replaced; relative to the endpoint URL); used to reopen it, also after a restart.",
    )
    replay_history: bool = Field(
        default=True,
        description="On a new conversation, type earlier turns of the request as a transcript.",
    )


class WebChatConfig(BaseModel):
    """A chat web page described as data."""

    model_config = ConfigDict(extra="forbid")

    login: LoginConfig | None = Field(
        default=None, description="How to log in; absent for sites without a login."
    )
    frame: Candidates | None = Field(
        default=None, description="The iframe that holds the chat widget, when it is in one."
    )
    input: Candidates = Field(description="Where to type: textarea, input or contenteditable.")
    input_method: Literal["fill", "insert_text"] = Field(
        default="fill",
        description="`fill` sets the value; `insert_text` focuses and types it as one input "
        "event, for editors that ignore programmatic values.",
    )
    send: SendConfig = Field(default_factory=SendConfig, description="How a typed prompt is sent.")
    assistant_message: Candidates = Field(
        description="Each assistant message; the answer is the one this turn added after "
        "the sent message (by element identity and position, not by count)."
    )
    user_message: Candidates | None = Field(
        default=None,
        description="Each user message, when the site marks them; the answer is looked for "
        "after the newest one. Without it the sent text itself is looked for on the page.",
    )
    answer_format: Literal["markdown", "text", "html"] = Field(
        default="markdown",
        description="`markdown`: the answer's HTML converted to Markdown (code fences, "
        "lists, links); `text`: the page's plain text; `html`: the answer element's HTML.",
    )
    overlays: list[Overlay] = Field(
        default_factory=list,
        description="Dismissable overlays closed whenever one shows before typing or "
        "sending (a bare selector is the close control).",
    )
    completion: CompletionConfig = Field(
        default_factory=CompletionConfig, description="How to tell that an answer is done."
    )
    conversation: ConversationConfig = Field(
        default_factory=ConversationConfig,
        description="How conversations start, are named and continue.",
    )
    trouble: TroubleConfig = Field(
        default_factory=TroubleConfig,
        description="Markers of pages that are not answers (logged out, error, captcha).",
    )
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
    state_save_interval_s: float = Field(
        default=300.0,
        ge=5,
        le=86_400,
        description="How often the browser's storage state is saved besides after logins "
        "and turns (with a persistent session).",
    )

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
    width: int = Field(default=1280, ge=200, le=10_000, description="Width in CSS pixels.")
    height: int = Field(default=800, ge=200, le=10_000, description="Height in CSS pixels.")


class BrowserConfig(BaseModel):
    """The seed's ``browser_config``: how the endpoint's Chromium context looks."""

    model_config = ConfigDict(extra="forbid")

    headless: bool = Field(default=True, description="Run Chromium without a window.")
    user_agent: str | None = Field(default=None, description="User agent; default: Chromium's.")
    viewport: Viewport | None = Field(default=None, description="Window size of every page.")
    locale: str | None = Field(default=None, description="Locale, e.g. en-US.")
    timezone: str | None = Field(default=None, description="Time zone, e.g. Europe/Paris.")
    proxy_url: str | None = Field(
        default=None, description="Proxy (http://user:pass@host:port); never logged."
    )
    anti_detection: bool = Field(
        default=True,
        description="Look like a normal Chrome: navigator.webdriver false, no automation "
        "flags, no 'HeadlessChrome' in the user agent.",
    )
    fingerprint_rotation: bool = Field(
        default=False,
        description="Pick a coherent fingerprint (user agent, platform, screen, locale) per "
        "endpoint, kept with its cookies across restarts.",
    )
