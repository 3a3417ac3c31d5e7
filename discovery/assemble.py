"""From a chosen combination of elements to a ``web_chat`` config (a dict the provider reads).

Only code writes selectors and URLs here: the drafters name elements by index, never by
selector, so nothing a page or an LLM says can become a selector or point off the origin.
"""

from __future__ import annotations

import re
from typing import Any

from discovery.draft_heuristic import Choice
from discovery.reduce import Reduced, count_matches
from discovery.safety import same_origin
from discovery.selectors import ElementFacts, ranked_unique_selectors
from providers.web_chat.config import WebChatConfig

# Before the probe has seen an answer, the config still needs a value here.
UNKNOWN_ANSWER = "[data-aiem-answer-unknown]"


def frame_selectors(reduced: Reduced, frame: int) -> list[str]:
    doc = reduced.frames.get(frame)
    if doc is None or doc.holder is None:
        return []
    facts = ElementFacts.from_dict(doc.holder)
    soup = reduced.soups[0]
    found = ranked_unique_selectors(facts, lambda s: count_matches(soup, s))
    src = doc.holder.get("attrs", {}).get("src", "")
    path = re.sub(r"^[a-z]+://[^/]+", "", src).split("?")[0]
    if path and path != "/" and '"' not in path:
        selector = f'iframe[src*="{path}"]'
        if count_matches(soup, selector) == 1:
            found.append(selector)
    return found


def draft_config(
    choice: Choice,
    reduced: Reduced,
    *,
    login: dict[str, Any] | None = None,
    learned: dict[str, Any] | None = None,
) -> dict[str, Any]:
    field_ = choice.input
    config: dict[str, Any] = {
        "input": list(field_.selectors),
        "input_method": "insert_text" if field_.tag not in ("textarea", "input") else "fill",
        "send": {"button": list(choice.send.selectors)} if choice.send else {"key": "Enter"},
        "assistant_message": [UNKNOWN_ANSWER],
    }
    if field_.frame:
        config["frame"] = frame_selectors(reduced, field_.frame)
    if choice.new_chat is not None:
        config["conversation"] = {"new_button": list(choice.new_chat.selectors)}
    if login:
        config["login"] = {**login, "success": list(field_.selectors)}
        config["trouble"] = {"logged_out": ['input[type="password"]']}
    if learned:
        merge_learned(config, learned)
    return config


def merge_learned(config: dict[str, Any], learned: dict[str, Any]) -> None:
    """What the probe observed: the answer selector, completion signals, conversation URL."""
    if learned.get("assistant_message"):
        config["assistant_message"] = learned["assistant_message"]
    if learned.get("completion"):
        config["completion"] = learned["completion"]
    conversation = {**config.get("conversation", {}), **learned.get("conversation", {})}
    if conversation:
        config["conversation"] = conversation


def off_origin_problems(config: dict[str, Any], origin: str) -> list[str]:
    """URLs anywhere in a config (selectors, login page, new-chat page) off the origin."""
    problems = []
    for text in _strings(config):
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"')\]]+", text, re.I):
            if not same_origin(url, origin):
                problems.append(f"{url!r} is off the page's origin")
    return problems


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def checked(config: dict[str, Any]) -> WebChatConfig:
    """The config as the provider will read it (raises pydantic.ValidationError)."""
    return WebChatConfig.model_validate(config)
