"""WebChatConfig validation, presets, registration and the page pool's queue (no browser)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from providers.base import EndpointSpec
from providers.errors import InvalidRequest, ProviderTimeout
from providers.presets import list_presets, load_preset
from providers.registry import build_registry
from providers.web_chat.config import WebChatConfig
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
