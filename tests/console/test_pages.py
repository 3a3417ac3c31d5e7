"""Every console page run by AppTest against the real management API (render, empty state,
error state, actions). The Portfolio has its own file (test_portfolio.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

CONSOLE_APP = Path(__file__).resolve().parents[2] / "console" / "app.py"
TIMEOUT_S = 30


def run_page(name: str, query: dict[str, str] | None = None) -> AppTest:
    """The console's entry script (its navigation) switched to one page, with ``?query``."""
    at = AppTest.from_file(str(CONSOLE_APP), default_timeout=TIMEOUT_S)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page(f"pages/{name}.py")
    return at.run()


def shown(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    parts += [e.value for e in at.error] + [i.value for i in at.info]
    parts += [s.value for s in at.success]
    parts += [w.value for w in at.warning] + [s.value for s in at.subheader]
    return "\n".join(str(p) for p in parts)


# The column each page's table is recognised by (AppTest keeps no key for a plain dataframe).
TABLE_COLUMNS = {"settings-table": "setting", "events-table": "kind", "sessions-table": "session",
                 "settings-env": "variable", "efficiency-table": "cost per 1k ok"}


def frame(at: AppTest, key: str):
    column = TABLE_COLUMNS[key]
    for element in at.dataframe:
        if column in element.value.columns:
            return element.value
    raise AssertionError(f"no table with a {column!r} column")


def started(api, make_endpoint, **extra) -> dict:
    endpoint = make_endpoint(**extra)
    api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
    return endpoint


@pytest.mark.parametrize(
    "page", ["endpoint", "edit", "playground", "sessions", "reports", "settings"]
)
def test_every_page_says_when_the_api_is_unreachable(monkeypatch, closed_port_url, page):
    monkeypatch.setenv("AIEM_API_URL", closed_port_url)

    at = run_page(page)

    assert not at.exception
    assert any("Cannot reach the management API" in e.value for e in at.error), shown(at)


# -- Endpoint detail -------------------------------------------------------------------------------
def test_endpoint_detail_shows_settings_events_and_charts(console_env, api, make_endpoint,
                                                          send_chat):
    endpoint = started(api, make_endpoint, display_name="Detail model", api_key="sk-hidden-91")
    for _ in range(2):
        send_chat(endpoint["id"])
    time.sleep(1.5)  # the metrics writer flushes every second

    at = run_page("endpoint", {"id": endpoint["id"]})

    assert not at.exception, at.exception
    text = shown(at)
    assert "Detail model" in text and ":green-badge[healthy]" in text
    assert "Requests=2" in text and "Success=100.0%" in text
    settings = frame(at, "settings-table")
    values = dict(zip(settings["setting"], settings["value"], strict=True))
    assert values["credentials"] == "api_key"
    assert "sk-hidden-91" not in text + json.dumps(values)
    features = next(line for line in text.splitlines() if line.startswith("**OpenAI features:**"))
    assert "tools, tool_choice, parallel tool calls, images" in features and "`seed`" in features
    events = frame(at, "events-table")
    assert "created" in list(events["kind"]) and "→ healthy" in " ".join(events["change"])
    assert len(at.get("plotly_chart")) >= 6  # state timeline + the endpoint's charts
    health = api.get(f"/endpoints/{endpoint['id']}/health").json()
    shown_json = [j.value for j in at.json]
    readings = {k: v for k, v in health.items() if k not in (
        "endpoint_id", "name", "desired_state", "state", "reason", "since", "until", "history",
        "restarts")}
    assert not readings or any(set(readings) <= set(json.loads(v)) for v in shown_json)


def test_endpoint_detail_actions_and_delete_with_confirmation(console_env, api, make_endpoint):
    endpoint = make_endpoint(display_name="Doomed")
    at = run_page("endpoint", {"id": endpoint["id"]})

    at.button(key="detail-start").click().run()
    assert api.get(f"/endpoints/{endpoint['id']}").json()["state"] == "healthy"
    assert any("start sent" in s.value for s in at.success)

    at.button(key="detail-delete").click().run()
    assert api.get(f"/endpoints/{endpoint['id']}").status_code == 200  # not before confirming
    at.button(key="confirm-delete").click().run()

    assert api.get(f"/endpoints/{endpoint['id']}").status_code == 404
    assert not at.exception


def test_endpoint_detail_with_no_endpoints(monkeypatch, gateway):
    monkeypatch.setenv("AIEM_API_URL", gateway.url)

    at = run_page("endpoint")

    assert not at.exception and "No endpoints yet" in shown(at)


# -- Sessions --------------------------------------------------------------------------------------
def test_sessions_lists_filters_exports_and_deletes(console_env, api, make_endpoint):
    endpoint = started(api, make_endpoint)
    session_id = f"s-{endpoint['id'][:8]}"
    for prompt in ("first question", "second question"):
        body = {"prompt": prompt, "session_id": session_id}
        api.post(f"/endpoints/{endpoint['id']}/chat", json=body).raise_for_status()

    at = run_page("sessions", {"endpoint": endpoint["id"]})

    assert not at.exception
    table = frame(at, "sessions-table")
    assert list(table["session"]) == [session_id] and list(table["messages"]) == [4]
    transcript = [m.value for m in at.markdown]
    assert "first question" in transcript and "turn 2: second question" in transcript
    exports = {b.label: b for b in at.get("download_button")}
    assert {"Export JSON", "Export Markdown"} <= set(exports)

    at.number_input(key="sessions-min").set_value(5).run()
    assert "No sessions match" in shown(at)
    at.number_input(key="sessions-min").set_value(0).run()
    at.button(key="delete-session").click().run()

    assert api.get(f"/sessions/{session_id}").status_code == 404
    assert any(session_id in s.value for s in at.success)


def test_sessions_markdown_export_holds_the_transcript():
    from console.ui import session_markdown

    text = session_markdown({"id": "s1", "title": "Hello", "created_at": "2026-12-01T10:00:00",
                             "messages": [{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": "hello!"}]})
    assert text.startswith("# Hello") and "## user\n\nhi" in text and "## assistant" in text


# -- Settings --------------------------------------------------------------------------------------
def test_settings_shows_the_configuration_in_force(console_env, shared_gateway):
    at = run_page("settings")

    assert not at.exception
    rows = frame(at, "settings-env")
    values = dict(zip(rows["variable"], rows["value"], strict=True))
    assert values["AIEM_DATA_DIR"] == str(shared_gateway.data_dir)
    assert values["AIEM_SECRET_KEY"] == "set"  # never the key itself
    assert shared_gateway.secret_key not in shown(at) + json.dumps(values)
    assert values["AIEM_ADMIN_TOKEN"] == "not set"
    assert "Store=sqlite" in shown(at)


# -- Playground ------------------------------------------------------------------------------------
def test_playground_streams_an_answer_and_continues_the_session(console_env, api, make_endpoint):
    endpoint = started(api, make_endpoint, display_name="Chatty")
    at = run_page("playground", {"id": endpoint["id"]})
    assert not at.exception

    at.chat_input[0].set_value("hello there").run()

    assert not at.exception, at.exception
    answer = [m.value for m in at.markdown if "turn 1: hello there" in str(m.value)]
    assert answer, shown(at)
    assert any("latency" in c.value and "TTFT" in c.value and "tokens" in c.value
               for c in at.caption)
    sessions = api.get("/sessions", params={"endpoint_id": endpoint["id"]}).json()
    assert len(sessions) == 1 and sessions[0]["message_count"] == 2

    at.chat_input[0].set_value("and again").run()  # the same session continues

    assert any("turn 2: and again" in str(m.value) for m in at.markdown), shown(at)
    sessions = api.get("/sessions", params={"endpoint_id": endpoint["id"]}).json()
    assert len(sessions) == 1 and sessions[0]["message_count"] == 4


def test_playground_shows_a_failing_answer(console_env, api, make_endpoint, closed_port_url):
    endpoint = started(api, make_endpoint, url=closed_port_url + "/v1")
    at = run_page("playground", {"id": endpoint["id"]})

    at.chat_input[0].set_value("anyone?").run()

    assert not at.exception
    assert at.error and "HTTP 5" in at.error[0].value or "failed" in at.error[0].value


# -- Reports ---------------------------------------------------------------------------------------
def test_reports_draw_the_series_and_name_the_cheapest_endpoint(console_env, api, make_endpoint,
                                                               send_chat):
    group = f"g{make_endpoint.__hash__() % 10_000}"
    cheap = started(api, make_endpoint, display_name="Cheap", group_name=group,
                    input_cost_per_1k=0.01, output_cost_per_1k=0.01)
    dear = started(api, make_endpoint, display_name="Dear", group_name=group,
                   input_cost_per_1k=5.0, output_cost_per_1k=5.0)
    for endpoint in (cheap, dear, cheap):
        send_chat(endpoint["id"])
    time.sleep(1.5)  # the metrics writer flushes every second

    at = run_page("reports")
    at.text_input(key="reports-group").set_value(group).run()

    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 9
    figure = json.loads(charts[0].proto.spec)
    names = {trace["name"] for trace in figure["data"]}
    assert names == {"Cheap", "Dear"}
    assert any("Cheapest endpoint meeting the target: **Cheap**" in s.value for s in at.success)
    table = frame(at, "efficiency-table")
    assert list(table["endpoint"]) == ["Cheap", "Dear"]
    assert list(table["requests"]) == [2, 1]
    name = api.get("/cluster").json()["instance_name"]
    assert any(f"instance: {name}" in c.value for c in at.caption)
    at.text_input(key="reports-instance").set_value("elsewhere:1").run()
    assert not at.exception and "No traffic in this range" in shown(at)


def test_reports_with_no_traffic(monkeypatch, gateway):
    monkeypatch.setenv("AIEM_API_URL", gateway.url)

    at = run_page("reports")

    assert not at.exception and "No traffic in this range" in shown(at)


# -- Add / edit ------------------------------------------------------------------------------------
def fill_openai_form(at: AppTest, name: str, url: str, api_key: str = "sk-form-secret") -> None:
    prefix = "form-new-openai_api"
    at.selectbox(key="edit-type").select("openai_api").run()
    at.text_input(key=f"{prefix}:common:name").input(name)
    at.text_input(key=f"{prefix}:common:url").input(url)
    at.text_input(key=f"{prefix}:common:model_name").input("fixture-model")
    at.text_input(key=f"{prefix}:cred:api_key").input(api_key)
    at.selectbox(key=f"{prefix}:config:max_tokens_field").select("max_completion_tokens")
    at.run()


def test_add_endpoint_through_the_generated_form(console_env, api, shared_upstream):
    name = f"form-{time.time_ns() % 10**9}"
    at = run_page("edit")
    fill_openai_form(at, name, shared_upstream.url)
    at.checkbox(key="edit-start").check().run()

    at.button(key="edit-save").click().run()

    assert not at.exception, at.exception
    created = next(e for e in api.get("/endpoints").json() if e["name"] == name)
    assert created["url"] == shared_upstream.url and created["credential_keys"] == ["api_key"]
    assert created["config"] == {"max_tokens_field": "max_completion_tokens"}
    assert created["desired_state"] == "running"


def test_server_validation_errors_show_next_to_their_field(console_env, api, shared_upstream):
    at = run_page("edit")
    fill_openai_form(at, "bad name with spaces", shared_upstream.url)

    at.button(key="edit-save").click().run()

    assert any("Not saved" in e.value and "name" in e.value for e in at.error)
    assert any(c.value.startswith(":red[name:") for c in at.caption), shown(at)


def test_test_button_sends_one_message_and_leaves_nothing_behind(console_env, api,
                                                                shared_upstream):
    before = {e["id"] for e in api.get("/endpoints").json()}
    at = run_page("edit")
    fill_openai_form(at, f"probe-{time.time_ns() % 10**9}", shared_upstream.url)

    at.button(key="edit-test").click().run()

    assert not at.exception, at.exception
    assert any("Test answer in" in s.value and "turn 1:" in s.value for s in at.success), shown(at)
    assert {e["id"] for e in api.get("/endpoints").json()} == before


def test_edit_prefills_the_form_but_never_secrets(console_env, api, make_endpoint):
    endpoint = make_endpoint(display_name="Before", api_key="sk-never-shown-77",
                             config={"organization": "org-1"})
    at = run_page("edit", {"id": endpoint["id"]})
    prefix = f"form-{endpoint['id']}-openai_api"
    assert at.text_input(key=f"{prefix}:common:display_name").value == "Before"
    assert at.text_input(key=f"{prefix}:config:organization").value == "org-1"
    assert at.text_input(key=f"{prefix}:cred:api_key").value == ""
    assert "sk-never-shown-77" not in shown(at)

    at.text_input(key=f"{prefix}:common:display_name").input("After").run()
    at.button(key="edit-save").click().run()

    stored = api.get(f"/endpoints/{endpoint['id']}").json()
    assert stored["display_name"] == "After" and stored["config"] == {"organization": "org-1"}
    assert stored["credential_keys"] == ["api_key"]  # blank password boxes keep the secret


def test_json_view_saves_the_same_request(console_env, api, shared_upstream):
    name = f"json-{time.time_ns() % 10**9}"
    at = run_page("edit")
    at.selectbox(key="edit-type").select("openai_api").run()
    at.toggle(key="edit-raw").set_value(True).run()
    body = {"name": name, "endpoint_type": "openai_api", "url": shared_upstream.url,
            "model_name": "m", "config": {"stream_usage": False}, "credentials": {}}
    at.text_area(key="json-openai_api").input(json.dumps(body)).run()

    at.button(key="edit-save").click().run()

    created = next(e for e in api.get("/endpoints").json() if e["name"] == name)
    assert created["config"] == {"stream_usage": False}
