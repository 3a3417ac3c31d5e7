"""WebChatConfig validation, presets, registration and the page pool's queue (no browser)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from pydantic import ValidationError

from providers.base import EndpointSpec
from providers.errors import InvalidRequest, ProtocolError, ProviderTimeout
from providers.presets import list_presets, load_preset
from providers.registry import build_registry
from providers.web_chat.actions import fill_value, totp_code
from providers.web_chat.answer import StreamTracker, formatter, html_to_markdown
from providers.web_chat.config import SendMethod, Step, WebChatConfig, url_matches
from providers.web_chat.pool import FifoLimiter, PagePool
from providers.web_chat.provider import CustomWebProvider, WebChatProvider

MINIMAL = {"input": "textarea", "assistant_message": ".answer"}


def test_single_selectors_become_ranked_lists() -> None:
    config = WebChatConfig.model_validate(
        {**MINIMAL, "send": {"button": ["#send", "button[type=submit]"]}}
    )
    assert config.input == ["textarea"]
    assert config.send.button == ["#send", "button[type=submit]"]
    assert config.send.key == "Enter"


def test_unknown_keys_and_empty_selectors_are_refused() -> None:
    with pytest.raises(ValidationError, match="inptu"):
        WebChatConfig.model_validate({**MINIMAL, "inptu": "x"})
    with pytest.raises(ValidationError):
        WebChatConfig.model_validate({**MINIMAL, "input": []})


def test_answer_timeout_grows_with_the_prompt_and_is_capped() -> None:
    config = WebChatConfig.model_validate(
        {**MINIMAL, "answer_timeout_s": 10, "timeout_per_1k_prompt_chars_s": 5}
    )
    assert config.answer_timeout("x" * 2000, ceiling=100) == 20
    assert config.answer_timeout("x" * 100_000, ceiling=100) == 100


@pytest.mark.parametrize("name", list_presets())
def test_presets_are_valid_configs(name: str) -> None:
    config = WebChatConfig.model_validate({"preset": name})
    assert config.input and config.assistant_message


def test_preset_overrides_merge_key_by_key() -> None:
    config = WebChatConfig.model_validate(
        {"preset": "zai", "completion": {"stable_ms": 500}, "answer_timeout_s": 30}
    )
    zai = load_preset("zai")
    assert config.completion.stable_ms == 500
    assert config.completion.stop_button == zai["completion"]["stop_button"]
    assert config.answer_timeout_s == 30
    with pytest.raises(ValidationError, match="unknown preset"):
        WebChatConfig.model_validate({"preset": "nope"})


def test_both_types_are_registered_with_a_schema() -> None:
    registry = build_registry()
    assert registry.get("web_chat") is WebChatProvider
    assert registry.get("custom_web") is CustomWebProvider
    described = WebChatProvider.describe()
    assert described["capabilities"]["needs_browser"] is True
    schema = described["config_schema"]
    assert "assistant_message" in schema["required"] and "login" in schema["properties"]


def test_bad_browser_config_names_the_field_not_the_value() -> None:
    spec = EndpointSpec(
        name="x",
        url="http://127.0.0.1/",
        model_name="m",
        config=WebChatConfig.model_validate(MINIMAL),
        browser_config={"headless": "sometimes", "proxy_pasword": "hunter22"},
    )
    with pytest.raises(InvalidRequest) as caught:
        WebChatProvider(spec)
    message = str(caught.value)
    assert "headless" in message and "proxy_pasword" in message
    assert "hunter22" not in message and "sometimes" not in message


async def test_fifo_limiter_serves_in_arrival_order() -> None:
    limiter = FifoLimiter(1)
    await limiter.acquire(1)
    order: list[int] = []

    async def waiter(index: int) -> None:
        await limiter.acquire(5)
        order.append(index)
        await asyncio.sleep(0.01)
        limiter.release()

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0.05)
    assert limiter.waiting == 5
    limiter.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert limiter.in_use == 0


async def test_fifo_limiter_timeout_leaves_no_slot_behind() -> None:
    limiter = FifoLimiter(1)
    await limiter.acquire(1)
    with pytest.raises(TimeoutError):
        await limiter.acquire(0.05)
    limiter.release()
    await limiter.acquire(0.05)
    assert limiter.in_use == 1 and limiter.waiting == 0


class _StandInPage:
    """Only what the pool reads of a page: whether it is closed."""

    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    async def close(self) -> None:
        self.closed = True


async def test_pool_keeps_a_page_per_session_and_closes_surplus_idle_pages() -> None:
    from providers.web_chat.pool import ChatPage

    made: list[ChatPage] = []

    async def new_page() -> ChatPage:
        made.append(ChatPage(_StandInPage()))  # type: ignore[arg-type]
        return made[-1]

    pool = PagePool(cap=2, idle_cap=1, new_page=new_page)
    async with pool.lease("a", 1) as first:
        pass
    async with pool.lease("a", 1) as again:
        assert again is first
    async with pool.lease("b", 1) as other:
        assert other is not first
    assert len(pool.pages) == 1 and made[0].page.closed  # the least recently used went
    async with pool.lease("b", 1):
        with pytest.raises(ProviderTimeout, match="previous turn"):
            async with pool.lease("b", 0.05):
                pass


def test_url_patterns_match_the_path_when_anchored_and_the_whole_url_otherwise() -> None:
    url = "https://chat.example.com/app/c/42?model=fast"
    assert url_matches("^/app/c/[0-9]+", url)
    assert not url_matches("^/c/", url)  # anchored: the path starts with /app
    assert url_matches("/c/[0-9]+", url)
    assert url_matches(r"^https://chat\.example\.com/app/", url)
    assert url_matches(r"^/app/c/42\?model=fast$", url)
    assert not url_matches(None, url)
    with pytest.raises(ValidationError, match="not a regular expression"):
        WebChatConfig.model_validate({**MINIMAL, "conversation": {"url_pattern": "(unclosed"}})


def test_steps_take_one_action_and_a_bare_selector_is_a_click() -> None:
    config = WebChatConfig.model_validate(
        {
            **MINIMAL,
            "conversation": {
                "new_steps": ["#new", ["dialog .ok", "dialog button"]],
                "setup_steps": [{"select": "#model", "option": "Fast"}, {"wait_ms": 50}],
            },
        }
    )
    new_steps = config.conversation.new_steps
    assert [s.action for s in new_steps] == ["click", "click"]
    assert new_steps[1].click == ["dialog .ok", "dialog button"]
    assert [s.action for s in config.conversation.setup_steps] == ["select", "wait_ms"]
    for bad in ({"click": "#a", "press": "Enter"}, {"fill": "#a"}, {"select": "#m"}, {}):
        with pytest.raises(ValidationError):
            Step.model_validate(bad)


def test_send_methods_rank_and_default_to_the_old_shorthand() -> None:
    assert WebChatConfig.model_validate(MINIMAL).send.ranked_methods() == [SendMethod(key="Enter")]
    clicked = WebChatConfig.model_validate({**MINIMAL, "send": {"button": "#go"}}).send
    assert clicked.ranked_methods() == [SendMethod(button=["#go"])]
    ranked = WebChatConfig.model_validate(
        {**MINIMAL, "send": {"methods": [{"key": "Control+Enter"}, {"button": "#go"}]}}
    ).send
    assert [m.key or m.button for m in ranked.ranked_methods()] == ["Control+Enter", ["#go"]]
    assert ranked.first_button() == ["#go"]
    with pytest.raises(ValidationError, match="exactly one of button, key"):
        SendMethod.model_validate({"button": "#go", "key": "Enter"})


def test_totp_codes_follow_rfc_6238() -> None:
    secret = base64.b32encode(b"12345678901234567890").decode()
    assert totp_code(secret, at=59) == "287082"
    assert totp_code(secret, at=1111111109) == "081804"
    step = Step.model_validate({"fill": "#otp", "totp": "otp_secret"})
    assert fill_value(step, {"otp_secret": secret.lower()}).isdigit()
    with pytest.raises(ProtocolError, match="otp_secret"):
        fill_value(step, {})


def test_stream_tracker_holds_back_the_last_word_and_survives_a_rewrite() -> None:
    sent: list[str] = []
    tracker = StreamTracker(sent.append)
    for snapshot in ["Hel", "Hello wor", "Hello world and"]:
        tracker.feed(snapshot)
    assert sent == ["Hello ", "world "]
    tracker.feed("Hello world and more", final=True)
    assert "".join(sent) == "Hello world and more" and not tracker.rewritten

    sent.clear()
    tracker = StreamTracker(sent.append)
    tracker.feed("ECHOtwenty one two")
    tracker.feed("ECHO[twenty one two] three four")  # the renderer showed the "[" late
    tracker.feed("ECHO[twenty one two] three four five")
    tracker.feed("ECHO[twenty one two] three four five", final=True)
    assert tracker.rewritten
    assert sent[0] == "ECHOtwenty one " and sent[-1] == "five"


def test_a_code_block_streams_without_rewrites() -> None:
    sent: list[str] = []
    tracker = StreamTracker(sent.append)
    # The line being written grows ("x = 1" becomes "x = 10") under a fence that moves down.
    snapshots = ["<pre><code>x = 1</code></pre>", "<pre><code>x = 10\ny = 2</code></pre>"]
    for html in snapshots:
        tracker.feed(html_to_markdown(html))
    final = html_to_markdown("<pre><code>x = 10\ny = 2\n</code></pre><p>Done.</p>")
    tracker.feed(final, final=True)
    assert not tracker.rewritten
    assert "".join(sent) == final


def test_html_becomes_markdown_with_fenced_code_and_no_escapes() -> None:
    html = (
        "<h2>Title</h2><p>Use <code>snake_case</code> and a*b.</p>"
        '<pre><code class="language-js">let x = 1;\n</code></pre>'
        '<ol><li>first</li><li>second</li></ol><p><a href="https://e.com/x">link</a></p>'
    )
    assert html_to_markdown(html) == (
        "## Title\n\nUse `snake_case` and a*b.\n\n```js\nlet x = 1;\n```\n\n"
        "1. first\n2. second\n\n[link](https://e.com/x)"
    )


def test_text_and_html_answers_are_the_page_s_own_content_trimmed() -> None:
    assert formatter("text")("  plain *text*\n") == "plain *text*"
    assert formatter("html")(" <p>x</p> ") == "<p>x</p>"
    assert formatter("markdown")("<p><b>x</b></p>") == "**x**"


def test_every_new_config_field_shows_in_the_schema() -> None:
    schema = WebChatProvider.describe()["config_schema"]
    defs = schema["$defs"]
    for name in ("answer_format", "overlays", "user_message", "state_save_interval_s"):
        assert schema["properties"][name]["description"]
    assert {"methods", "wait_enabled_ms", "confirm_ms"} <= set(defs["SendConfig"]["properties"])
    assert "attributes" in defs["CompletionConfig"]["properties"]
    conversation = defs["ConversationConfig"]["properties"]
    assert {"new_steps", "setup_steps", "id_from", "url_template"} <= set(conversation)
    assert "after_submit" in defs["LoginConfig"]["properties"]
    assert "email" in WebChatProvider.credential_fields
