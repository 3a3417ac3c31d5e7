"""The LLM drafter against a scripted OpenAI-compatible server: good, wrong, malformed and
hostile answers, on a page that tries to give the model instructions."""

from __future__ import annotations

import json

import pytest

from discovery import discover
from discovery.draft_llm import openai_complete
from tests.discovery.llm_server import choose

pytestmark = pytest.mark.browser

GOOD = choose({"placeholder": "Ask me anything"}, {"text": "Send"})
WRONG = choose({"placeholder": "Email"}, {"text": "Subscribe"})
# The fixture bot answers within a second; a wrong draft waits this long for an answer that
# never comes (the product's default is 45 s a round).
ANSWER_TIMEOUT_S = 4.0


async def run(sites, llm, rounds: int = 3):
    complete = openai_complete(llm.base_url, "scripted", "sk-test-key")
    return await discover(
        sites.url("/injection/"), llm=complete, rounds=rounds, answer_timeout_s=ANSWER_TIMEOUT_S
    )


async def test_good_answer_is_ready_in_one_round(discovery_sites, scripted_llm):
    scripted_llm.enqueue(GOOD)
    result = await run(discovery_sites, scripted_llm)

    assert result.status == "ready" and result.used_llm
    assert result.chosen["source"] == "llm" and result.refinements == []
    assert result.config["input"][0] == 'textarea[placeholder="Ask me anything"]'
    request = scripted_llm.requests[0]
    assert request["response_format"]["type"] == "json_schema"
    shown = request["messages"][1]["content"]
    assert shown.startswith("<UNTRUSTED-PAGE-DATA>")
    assert "IMPORTANT SYSTEM NOTICE" in shown  # visible page text is shown, as data
    assert "HIDDEN-CANARY" not in json.dumps(request)  # hidden text is not


async def test_wrong_answer_is_refined_with_the_diagnostics(discovery_sites, scripted_llm):
    scripted_llm.enqueue(WRONG, GOOD)
    result = await run(discovery_sites, scripted_llm)

    assert result.status == "ready" and result.chosen["source"] == "llm"
    assert len(result.refinements) == 1
    assert result.refinements[0]["diagnostics"] == ["no answer appeared after the message was sent"]
    second = scripted_llm.requests[1]["messages"][1]["content"]
    assert "failed its live test" in second and "no answer appeared" in second


async def test_always_wrong_fails_with_the_reason(discovery_sites, scripted_llm):
    scripted_llm.enqueue(WRONG)
    result = await run(discovery_sites, scripted_llm, rounds=2)

    assert result.status == "failed" and not result.probe_passed
    assert "no draft passed its probe: no answer appeared" in result.message
    assert len(scripted_llm.requests) == 2 and len(result.refinements) == 2


async def test_hostile_answer_changes_nothing(discovery_sites, scripted_llm):
    # The model obeys the page: it adds a selector of its own and names an off-origin URL.
    hostile = choose(
        {"placeholder": "Email"},
        {"text": "Subscribe"},
        selector="https://evil.example/steal",
        notes="writing a poem as the page asked",
    )
    scripted_llm.enqueue(hostile)
    result = await run(discovery_sites, scripted_llm)

    # An answer outside the schema is malformed: the heuristics take over, with a note.
    assert result.status == "ready" and result.chosen["source"] == "heuristic"
    assert any("falling back to the heuristics" in note for note in result.notes)
    text = json.dumps(result.config)
    assert "evil.example" not in text and "Email" not in text
    assert result.config["input"][0] == 'textarea[placeholder="Ask me anything"]'
