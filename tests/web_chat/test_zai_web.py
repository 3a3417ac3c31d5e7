"""``zai_web`` against a local server that speaks Z.ai's chat web protocol."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from providers.base import (
    ChatRequest,
    EndpointSpec,
    MemoryStateStore,
    Message,
    ProviderContext,
)
from providers.errors import AuthError, RateLimited, Unavailable
from providers.registry import build_registry
from providers.zai_web import ZaiWebProvider, api_origin, clean_thinking
from tests.web_chat.zai_fixture import ZAI_EMAIL, ZAI_PASSWORD, ZaiServer

SEED_EXAMPLE = {
    "name": "zai_web_1",
    "display_name": "Z.ai Web Chat #1",
    "endpoint_type": "zai_web",
    "url": "https://z.ai/chat",
    "model_name": "z-ai-model",
    "credentials": {"username": "someone@example.org", "password": "pw-from-seed"},
    "browser_config": {"headless": True, "anti_detection": True, "fingerprint_rotation": True},
    "persistent_session": True,
}


@pytest.fixture(scope="module")
def zai() -> Iterator[ZaiServer]:
    server = ZaiServer().start()
    yield server
    server.stop()


def zai_spec(zai: ZaiServer, **fields) -> EndpointSpec:
    config = fields.pop("config", {})
    return EndpointSpec(
        name="zai_test",
        url=zai.base + "/",
        model_name="glm-test",
        config=ZaiWebProvider.validate_config(config),
        request_timeout=10,
        **fields,
    )


def ask(prompt: str, history: list[Message] | None = None, conversation=None) -> ChatRequest:
    messages = [*(history or []), Message("user", prompt)]
    return ChatRequest(messages=messages, session_id="s1", conversation=conversation)


async def started(spec: EndpointSpec, store=None) -> ZaiWebProvider:
    provider = ZaiWebProvider(spec, ProviderContext(state_store=store or MemoryStateStore()))
    await provider.start()
    return provider


async def test_guest_answer_keeps_thinking_apart(zai: ZaiServer) -> None:
    guests_before = zai.state.guest_tokens
    provider = await started(zai_spec(zai))
    try:
        response = await provider.chat(ask("hello"))
    finally:
        await provider.stop()
    assert response.content == "[zai] turn 1: you said 'hello'"
    assert response.reasoning == "Counting the turns."
    assert response.usage is not None and not response.usage.estimated
    assert response.usage.completion_tokens == 7
    assert zai.state.guest_tokens == guests_before + 1
    body = zai.state.bodies[-1]
    assert body["model"] == "glm-test" and body["stream"] is True
    assert body["features"]["enable_thinking"] is True
    assert body["chat_id"] == response.conversation["chat_id"]
    assert zai.state.headers[-1]["X-FE-Version"]


async def test_stream_gives_reasoning_then_answer_in_pieces(zai: ZaiServer) -> None:
    provider = await started(zai_spec(zai))
    try:
        chunks = [chunk async for chunk in provider.stream(ask("stream me"))]
    finally:
        await provider.stop()
    reasoning_at = [i for i, c in enumerate(chunks) if c.reasoning]
    content_at = [i for i, c in enumerate(chunks) if c.delta]
    assert reasoning_at and content_at and max(reasoning_at) < min(content_at)
    assert len(content_at) >= 4
    assert "".join(c.delta for c in chunks) == "[zai] turn 1: you said 'stream me'"
    assert all("<details" not in c.reasoning for c in chunks)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].conversation["turns"] == 1


async def test_turns_continue_the_same_chat(zai: ZaiServer) -> None:
    provider = await started(zai_spec(zai))
    try:
        first = await provider.chat(ask("one"))
        history = [Message("user", "one"), Message("assistant", first.content)]
        second = await provider.chat(ask("two", history, first.conversation))
    finally:
        await provider.stop()
    assert second.content == "[zai] turn 2: you said 'two'"
    assert second.conversation["chat_id"] == first.conversation["chat_id"]
    assert second.conversation["turns"] == 2
    assert zai.state.bodies[-1]["chat_id"] == first.conversation["chat_id"]


async def test_thinking_can_be_turned_off(zai: ZaiServer) -> None:
    provider = await started(zai_spec(zai, config={"enable_thinking": False}))
    try:
        response = await provider.chat(ask("quick"))
    finally:
        await provider.stop()
    assert response.reasoning is None
    assert response.content == "[zai] turn 1: you said 'quick'"


async def test_sign_in_once_and_token_survives_restart(zai: ZaiServer) -> None:
    store = MemoryStateStore()
    credentials = {"username": ZAI_EMAIL, "password": ZAI_PASSWORD}
    signins_before = zai.state.signins
    spec = zai_spec(zai, credentials=credentials, persistent_session=True)
    for _restart in range(2):
        provider = await started(spec, store)
        try:
            assert (await provider.chat(ask("hi"))).content.startswith("[zai] turn 1")
            assert (await provider.health()).ok
        finally:
            await provider.stop()
    assert zai.state.signins == signins_before + 1
    assert store.data and ZAI_PASSWORD.encode() not in store.data


async def test_wrong_password_is_an_auth_error_without_the_password(zai: ZaiServer) -> None:
    spec = zai_spec(zai, credentials={"username": ZAI_EMAIL, "password": "wrong-password-x"})
    with pytest.raises(AuthError) as caught:
        await started(spec)
    assert "wrong-password-x" not in str(caught.value)


async def test_expired_token_signs_in_again(zai: ZaiServer) -> None:
    credentials = {"username": ZAI_EMAIL, "password": ZAI_PASSWORD}
    provider = await started(zai_spec(zai, credentials=credentials))
    try:
        signins = zai.state.signins
        zai.state.tokens.clear()
        response = await provider.chat(ask("after expiry"))
    finally:
        await provider.stop()
    assert response.content == "[zai] turn 1: you said 'after expiry'"
    assert zai.state.signins == signins + 1


@pytest.mark.parametrize(
    ("prompt", "error", "words"),
    [
        ("FAIL:error", Unavailable, "model overloaded"),
        ("FAIL:busy", RateLimited, "429"),
        ("FAIL:cut", Unavailable, "before the answer was complete"),
    ],
)
async def test_trouble_is_raised(zai: ZaiServer, prompt: str, error: type, words: str) -> None:
    provider = await started(zai_spec(zai))
    try:
        with pytest.raises(error) as caught:
            await provider.chat(ask(prompt))
    finally:
        await provider.stop()
    assert words in str(caught.value)


def test_seed_example_is_a_valid_endpoint() -> None:
    registry = build_registry()
    cls = registry.get(SEED_EXAMPLE["endpoint_type"])
    assert cls is ZaiWebProvider and cls.needs_browser is False
    spec = EndpointSpec(
        name=SEED_EXAMPLE["name"],
        url=SEED_EXAMPLE["url"],
        model_name=SEED_EXAMPLE["model_name"],
        config=cls.validate_config(None),
        credentials=SEED_EXAMPLE["credentials"],
        browser_config=SEED_EXAMPLE["browser_config"],
        persistent_session=SEED_EXAMPLE["persistent_session"],
    )
    provider = cls(spec)
    assert provider.base_url == "https://chat.z.ai"
    assert "config_schema" in cls.describe()


def test_api_origin_and_thinking_markup() -> None:
    assert api_origin("https://z.ai/chat") == "https://chat.z.ai"
    assert api_origin("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"
    raw = '<details type="reasoning">\n<summary>Thinking…</summary>\n> a\n> b</details>'
    assert clean_thinking(raw) == "a\nb"
