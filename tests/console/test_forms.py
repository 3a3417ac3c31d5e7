"""The schema form generator against every registered provider's config schema.

The test loops over the registry, so a provider added later (built-in or plugin) is covered:
for each one a valid sample config is built from its schema, the form is rendered with it, and
what the form hands back must validate to the same config.
"""

from __future__ import annotations

from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from console.forms import MISSING, SchemaForm, label_of, resolve
from providers.registry import default_registry

PROVIDERS = default_registry().describe()


def sample(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A config with every required field filled and one optional field of each kind set."""
    result: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for name, node in schema.get("properties", {}).items():
        spec = resolve(node, defs)
        value = example(spec, defs)
        if name in required or (value is not MISSING and spec.kind in ("string_list", "enum")):
            result[name] = value
    return result


def example(spec, defs) -> Any:
    s = spec.schema
    if spec.kind == "enum":
        return s["enum"][-1]
    if spec.kind == "string_list":
        return ["#first", ".second"]
    if spec.kind == "object":
        return sample(s, defs)
    if spec.kind == "string":
        return "value"
    if spec.kind in ("integer", "number"):
        low = s.get("minimum", s.get("exclusiveMinimum", 0))
        return int(low) + 1 if spec.kind == "integer" else float(low) + 1.5
    if spec.kind == "boolean":
        return True
    if spec.kind == "string_map":
        return {"X-Test": "1"}
    if spec.kind == "list":
        return []
    return {"template": "{{prompt}}"}


def render_form(schema: dict, initial: dict) -> None:
    import streamlit as st

    from console.forms import SchemaForm

    form = SchemaForm(schema, "t", initial=initial)
    st.session_state["collected"] = form.render()
    st.session_state["form_errors"] = dict(form.errors)


@pytest.mark.parametrize("provider", PROVIDERS, ids=[p["endpoint_type"] for p in PROVIDERS])
def test_form_round_trips_a_valid_config(provider):
    cls = default_registry().get(provider["endpoint_type"])
    schema = provider["config_schema"]
    config = sample(schema, schema.get("$defs", {}))
    expected = cls.validate_config(config).model_dump(mode="json")

    at = AppTest.from_function(render_form, args=(schema, config), default_timeout=30).run()

    assert not at.exception, at.exception
    assert at.session_state["form_errors"] == {}
    collected = at.session_state["collected"]
    assert cls.validate_config(collected).model_dump(mode="json") == expected
    labels = [w.label for w in [*at.text_input, *at.text_area, *at.number_input, *at.selectbox,
                                *at.checkbox]]
    for name, node in schema.get("properties", {}).items():
        title = label_of(name, resolve(node, schema.get("$defs", {})), False)
        assert any(title in label for label in labels + [m.value for m in at.markdown]), name


@pytest.mark.parametrize("provider", PROVIDERS, ids=[p["endpoint_type"] for p in PROVIDERS])
def test_enums_are_select_boxes_and_descriptions_are_help(provider):
    schema = provider["config_schema"]
    at = AppTest.from_function(render_form, args=(schema, {}), default_timeout=30).run()
    defs = schema.get("$defs", {})
    for name, node in schema.get("properties", {}).items():
        spec = resolve(node, defs)
        if spec.kind == "enum":
            box = at.selectbox(key=f"t:{name}")
            assert [o for o in box.options if o != "—"] == [str(o) for o in spec.schema["enum"]]
        if spec.kind in ("string", "integer", "number") and spec.description:
            widget = {"string": at.text_input, "integer": at.number_input,
                      "number": at.number_input}[spec.kind](key=f"t:{name}")
            assert widget.help == spec.description


def test_bad_json_and_bad_header_lines_are_reported_by_field():
    schema = {"properties": {
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"description": "free JSON"},
    }}
    at = AppTest.from_function(render_form, args=(schema, {}), default_timeout=30).run()

    at.text_area(key="t:headers").set_value("no colon here").run()
    at.text_area(key="t:body").set_value("{not json").run()

    errors = at.session_state["form_errors"]
    assert errors["headers"] == "line 1 is not `Name: value`"
    assert errors["body"].startswith("not valid JSON")
    assert any("headers: line 1" in c.value for c in at.caption)


def test_secrets_are_password_inputs_never_prefilled():
    schema = {"properties": {"api_key": {"type": "string"}}}

    def render(schema: dict) -> None:
        import streamlit as st

        from console.forms import SchemaForm

        form = SchemaForm(schema, "t", initial={"api_key": "sk-stored"},
                          secrets=frozenset({"api_key"}))
        st.session_state["collected"] = form.render()

    at = AppTest.from_function(render, args=(schema,), default_timeout=30).run()

    box = at.text_input(key="t:api_key")
    assert box.value == "" and box.proto.type == box.proto.PASSWORD
    assert at.session_state["collected"] == {}  # empty: unchanged, not sent


def test_lists_of_objects_are_editable_lists():
    schema = {
        "$defs": {"Step": {"type": "object", "required": ["selector"], "properties": {
            "selector": {"type": "array", "items": {"type": "string"}},
            "credential": {"type": "string", "default": "password"},
        }}},
        "properties": {"steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}}},
    }
    initial = {"steps": [{"selector": ["#user"], "credential": "username"}]}
    at = AppTest.from_function(render_form, args=(schema, initial), default_timeout=30).run()
    assert at.session_state["collected"] == initial

    at.button(key="t:steps:count:add").click().run()
    at.text_area(key="t:steps.1.selector").set_value("#pass\n.fallback").run()

    assert at.session_state["collected"]["steps"][1] == {"selector": ["#pass", ".fallback"]}
    at.button(key="t:steps:count:remove").click().run()
    assert at.session_state["collected"] == initial


def test_server_errors_show_under_their_field():
    schema = {"properties": {"input": {"type": "array", "items": {"type": "string"}}}}

    def render(schema: dict) -> None:
        from console.forms import SchemaForm

        SchemaForm(schema, "t", server_errors={"config.input": "Field required"},
                   error_prefix="config.").render()

    at = AppTest.from_function(render, args=(schema,), default_timeout=30).run()

    assert [c.value for c in at.caption] == [":red[input: Field required]"]


def test_form_module_has_no_per_type_code():
    import inspect

    import console.forms as forms
    source = inspect.getsource(forms)
    for provider in PROVIDERS:
        assert provider["endpoint_type"] not in source
    assert SchemaForm  # the generator is the only form there is
