"""The Portfolio page run by Streamlit's AppTest against the real management API."""

from __future__ import annotations


def texts(at) -> str:
    """All text the page shows, in one string, for 'the operator can read X' assertions."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [f"{m.label}={m.value}" for m in at.metric]
    parts += [e.value for e in at.error] + [i.value for i in at.info]
    return "\n".join(parts)


def test_shows_every_endpoint_with_state_and_metrics(
    console_env, api, make_endpoint, send_chat, run_console
):
    busy = make_endpoint(display_name="Busy model")
    idle = make_endpoint(display_name="Idle model")
    api.post(f"/endpoints/{busy['id']}/start").raise_for_status()
    for _ in range(3):
        send_chat(busy["id"])

    at = run_console()

    assert not at.exception
    shown = texts(at)
    assert "**Busy model**" in shown and "**Idle model**" in shown
    assert f"`{busy['name']}`" in shown and "openai_api" in shown
    assert ":green-badge[healthy]" in shown and ":gray-badge[stopped]" in shown
    busy_row = row_texts(at, busy["id"])
    assert "**3**" in busy_row  # requests
    assert "**100.0%**" in busy_row  # success rate
    assert "**—**" in row_texts(at, idle["id"])  # no traffic: no latency yet
    metrics = {m.label: m.value for m in at.metric}
    running, total = (int(x) for x in metrics["Running endpoints"].split(" / "))
    assert running >= 1 and total >= 2
    assert "Since this instance started, this instance: " in shown  # one instance, no cluster


def test_start_button_starts_a_stopped_endpoint(console_env, api, make_endpoint, run_console):
    endpoint = make_endpoint()
    at = run_console()
    assert at.button(key=f"stop-{endpoint['id']}").disabled

    at.button(key=f"start-{endpoint['id']}").click().run()

    assert not at.exception
    live = api.get(f"/endpoints/{endpoint['id']}").json()
    assert (live["desired_state"], live["state"]) == ("running", "healthy")
    assert any(endpoint["name"] in s.value and "start" in s.value for s in at.success)
    assert at.button(key=f"start-{endpoint['id']}").disabled
    assert ":green-badge[healthy]" in row_texts(at, endpoint["id"])


def test_stop_button_stops_a_running_endpoint(console_env, api, make_endpoint, run_console):
    endpoint = make_endpoint()
    api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
    at = run_console()

    at.button(key=f"stop-{endpoint['id']}").click().run()

    live = api.get(f"/endpoints/{endpoint['id']}").json()
    assert (live["desired_state"], live["state"]) == ("stopped", "stopped")
    assert ":gray-badge[stopped]" in row_texts(at, endpoint["id"])


def test_restart_button_keeps_the_endpoint_running(console_env, api, make_endpoint, run_console):
    endpoint = make_endpoint()
    api.post(f"/endpoints/{endpoint['id']}/start").raise_for_status()
    at = run_console()

    at.button(key=f"restart-{endpoint['id']}").click().run()

    assert not at.error
    live = api.get(f"/endpoints/{endpoint['id']}").json()
    assert (live["desired_state"], live["state"]) == ("running", "healthy")
    events = api.get(f"/endpoints/{endpoint['id']}/events").json()
    assert any(e["kind"] == "restart" for e in events), events


def test_failed_action_shows_the_api_message(console_env, api, make_endpoint, run_console):
    endpoint = make_endpoint()
    at = run_console()
    api.delete(f"/endpoints/{endpoint['id']}").raise_for_status()

    at.button(key=f"start-{endpoint['id']}").click().run()

    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(f"Could not start **{endpoint['name']}**: HTTP 404" in e for e in errors), errors


def test_unreachable_api_gives_a_clear_error(monkeypatch, closed_port_url, run_console):
    monkeypatch.setenv("AIEM_API_URL", closed_port_url)

    at = run_console()

    assert not at.exception
    assert len(at.error) == 1
    assert "Cannot reach the management API" in at.error[0].value
    assert closed_port_url in at.error[0].value


def test_turning_auto_refresh_off_keeps_the_page_working(console_env, make_endpoint, run_console):
    endpoint = make_endpoint(display_name="Still listed")
    at = run_console()

    at.toggle(key="auto_refresh").set_value(False).run()

    assert not at.exception and not at.error
    assert "**Still listed**" in row_texts(at, endpoint["id"])


def test_state_filter_hides_other_states(console_env, api, make_endpoint, run_console):
    stopped = make_endpoint(display_name="Filtered out")
    at = run_console()

    at.selectbox(key="portfolio_state").select("healthy").run()

    assert f"`{stopped['name']}`" not in texts(at)


def row_texts(at, endpoint_id: str) -> str:
    """Text inside one endpoint's bordered container (st.container key ``endpoint-<id>``)."""
    row = find_row(at, endpoint_id)
    assert row is not None, f"no row for endpoint {endpoint_id}"
    return "\n".join([m.value for m in row.markdown] + [c.value for c in row.caption])


def find_row(at, endpoint_id: str):
    # Streamlit stores a keyed container's key at the end of its block id.
    suffix = f"-endpoint-{endpoint_id}"
    stack = [at._tree]
    while stack:
        node = stack.pop()
        if getattr(node, "type", None) == "flex_container" and node.proto.id.endswith(suffix):
            return node
        stack.extend(getattr(node, "children", {}).values())
    return None


def test_empty_gateway_tells_how_to_add_an_endpoint(monkeypatch, gateway, run_console):
    monkeypatch.setenv("AIEM_API_URL", gateway.url)

    at = run_console()

    assert not at.exception and not at.error
    help_text = "\n".join(i.value for i in at.info)
    assert "No endpoints yet" in help_text
    assert "aiem endpoints add" in help_text
    assert f"curl -X POST {gateway.url}/endpoints" in help_text
    assert {m.label: m.value for m in at.metric}["Running endpoints"] == "0 / 0"


def test_admin_token_is_sent_and_a_refusal_is_shown(monkeypatch, gateway_factory, run_console):
    token = "console-admin-token-4f1e"
    protected = gateway_factory(env={"AIEM_ADMIN_TOKEN": token})
    monkeypatch.setenv("AIEM_API_URL", protected.url)

    monkeypatch.delenv("AIEM_ADMIN_TOKEN", raising=False)
    refused = run_console()
    monkeypatch.setenv("AIEM_ADMIN_TOKEN", token)
    allowed = run_console()

    assert not refused.exception
    assert len(refused.error) == 1
    refusal = refused.error[0].value
    assert refusal.startswith("The management API could not be read. HTTP 401: ")
    assert "admin token" in refusal  # the API's own message
    assert not allowed.error
    assert any('href="/logout"' in m.value for m in allowed.sidebar.markdown)
    assert not any("/logout" in m.value for m in refused.sidebar.markdown)
    assert "No endpoints yet" in "\n".join(i.value for i in allowed.info)
    assert token not in texts(refused) + texts(allowed)
