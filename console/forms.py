"""Forms generated from JSON schemas (a provider's ``config_schema``, the endpoint fields).

No form is written per endpoint type: a provider registered by a plugin gets its form from the
schema its pydantic ``Config`` publishes. The mapping:

- ``enum`` -> select box; ``boolean`` -> checkbox; ``integer`` / ``number`` -> number input;
  ``string`` -> text input (password input for secrets, never pre-filled)
- object with ``properties`` -> a bordered section; an optional one (``anyOf [obj, null]``) gets a
  checkbox that turns it on
- array of strings -> a text area, one item per line (ranked selectors: first line first)
- array of anything else -> an editable list: one section per item, with Add / Remove
- object of strings (``additionalProperties: string``) -> ``Name: value`` lines
- anything else (free JSON) -> a JSON text area

``SchemaForm.render`` returns the value the schema describes; input that cannot be read (bad
JSON, a line without ``:``) is reported in ``errors`` by dotted path, as are the server's
validation errors passed in, and each is shown under its field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

MISSING: Any = object()


@dataclass
class FieldSpec:
    """One schema node, its ``$ref`` resolved and ``anyOf [X, null]`` unwrapped."""

    schema: dict[str, Any]
    nullable: bool = False
    title: str = ""
    description: str = ""
    default: Any = MISSING

    @property
    def kind(self) -> str:
        s = self.schema
        if "enum" in s:
            return "enum"
        kind = s.get("type")
        if kind == "object":
            if s.get("properties"):
                return "object"
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and extra.get("type") == "string":
                return "string_map"
            return "json"
        if kind == "array":
            return "string_list" if _item_type(s) == "string" else "list"
        return kind if kind in ("boolean", "integer", "number", "string") else "json"


def _item_type(schema: dict[str, Any]) -> str | None:
    items = schema.get("items")
    return items.get("type") if isinstance(items, dict) else None


def resolve(node: dict[str, Any], defs: dict[str, Any]) -> FieldSpec:
    """Resolve one property node against the schema's ``$defs``."""
    title, description = node.get("title", ""), node.get("description", "")
    default = node.get("default", MISSING)
    nullable = False
    inner = node
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        inner = options[0] if len(options) == 1 else {}
    inner = _deref(inner, defs)
    description = description or inner.get("description", "")
    spec_schema = {k: v for k, v in inner.items() if k not in ("title", "description")}
    return FieldSpec(spec_schema, nullable, title or inner.get("title", ""), description, default)


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in node and seen < 20:  # bounded: a self-referencing schema cannot loop
        name = node["$ref"].rsplit("/", 1)[-1]
        node = {**defs.get(name, {}), **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node


def label_of(name: str, spec: FieldSpec, required: bool) -> str:
    text = spec.title or name.replace("_", " ").capitalize()
    return f"{text} *" if required else text


def is_default(spec: FieldSpec, value: Any) -> bool:
    """True when sending ``value`` would change nothing (so the form leaves it out)."""
    if spec.default is not MISSING:
        return bool(value == spec.default)
    return value is None or value == {} or value == []


@dataclass
class SchemaForm:
    """Renders a schema's properties as widgets under ``key`` and collects the value."""

    schema: dict[str, Any]
    key: str
    initial: dict[str, Any] = field(default_factory=dict)
    server_errors: dict[str, str] = field(default_factory=dict)
    error_prefix: str = ""
    secrets: frozenset[str] = frozenset()
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def defs(self) -> dict[str, Any]:
        return self.schema.get("$defs", {})

    def render(self, *, exclude: frozenset[str] = frozenset(), keep_defaults: bool = False):
        return self._object(self.schema, self.initial, (), exclude, keep_defaults)

    # -- nodes --------------------------------------------------------------------------------
    def _object(
        self,
        schema: dict[str, Any],
        initial: dict[str, Any] | None,
        path: tuple[str, ...],
        exclude: frozenset[str] = frozenset(),
        keep_defaults: bool = False,
    ) -> dict[str, Any]:
        initial = initial if isinstance(initial, dict) else {}
        required = set(schema.get("required", []))
        result: dict[str, Any] = {}
        for name, node in schema.get("properties", {}).items():
            if name in exclude:
                continue
            spec = resolve(node, self.defs)
            value = self._field(name, spec, initial.get(name, MISSING), path + (name,),
                                name in required)
            if value is MISSING:
                continue
            if keep_defaults or name in required or not is_default(spec, value):
                result[name] = value
        return result

    def _field(
        self, name: str, spec: FieldSpec, current: Any, path: tuple[str, ...], required: bool
    ) -> Any:
        label = label_of(name, spec, required)
        start = spec.default if current is MISSING else current
        start = None if start is MISSING else start
        value = self._widget(spec)(label, spec, start, path)
        self._show_error(path)
        return value

    def _widget(self, spec: FieldSpec) -> Any:
        # "object" is a section; every other kind has a method of its own name.
        name = "_object_section" if spec.kind == "object" else f"_{spec.kind}"
        return getattr(self, name)

    def _key(self, path: tuple[str, ...]) -> str:
        return f"{self.key}:{'.'.join(path)}"

    def _show_error(self, path: tuple[str, ...]) -> None:
        dotted = ".".join(path)
        message = self.errors.get(dotted) or self.server_errors.get(self.error_prefix + dotted)
        if message:
            st.caption(f":red[{dotted}: {message}]")

    # -- scalars ------------------------------------------------------------------------------
    def _enum(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> Any:
        options = list(spec.schema["enum"])
        if spec.nullable or start is None:
            options = [None, *options]
        index = options.index(start) if start in options else 0
        return st.selectbox(
            label, options, index=index, key=self._key(path), help=spec.description or None,
            format_func=lambda o: "—" if o is None else str(o),
        )

    def _boolean(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> bool:
        return st.checkbox(
            label, value=bool(start), key=self._key(path), help=spec.description or None
        )

    def _integer(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> Any:
        return self._number(label, spec, start, path, integer=True)

    def _number(
        self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...],
        integer: bool = False,
    ) -> Any:
        s = spec.schema
        cast: Any = int if integer else float
        low = s.get("minimum", s.get("exclusiveMinimum"))
        high = s.get("maximum", s.get("exclusiveMaximum"))
        value = st.number_input(
            label,
            min_value=None if low is None else cast(low),
            max_value=None if high is None else cast(high),
            value=None if start is None else cast(start),
            step=1 if integer else None,
            format=None if integer else "%g",
            key=self._key(path),
            help=spec.description or None,
            placeholder="not set" if spec.nullable else None,
        )
        return None if value is None else cast(value)

    def _string(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> Any:
        secret = ".".join(path) in self.secrets
        text = st.text_input(
            label,
            value="" if secret or start is None else str(start),
            type="password" if secret else "default",
            key=self._key(path),
            help=spec.description or None,
            placeholder="unchanged" if secret else None,
        )
        if not text and (spec.nullable or secret):
            return None
        return text

    # -- containers ---------------------------------------------------------------------------
    def _object_section(
        self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]
    ) -> Any:
        with st.container(border=True, key=self._key(path).replace(":", "-").replace(".", "-")):
            st.markdown(f"**{label}**")
            if spec.description:
                st.caption(spec.description)
            if spec.nullable:
                enabled = st.checkbox(
                    f"Use {label.rstrip(' *').lower()}", value=start is not None,
                    key=self._key(path) + ":on",
                )
                if not enabled:
                    return None
            return self._object(spec.schema, start, path)

    def _string_list(
        self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]
    ) -> Any:
        lines = "\n".join(str(x) for x in start) if isinstance(start, list) else ""
        text = st.text_area(
            label + " (one per line)", value=lines, key=self._key(path),
            help=spec.description or None, height=80,
        )
        items = [line.strip() for line in text.splitlines() if line.strip()]
        if not items and spec.nullable:
            return None
        return items

    def _list(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> Any:
        count_key = self._key(path) + ":count"
        items = start if isinstance(start, list) else []
        if count_key not in st.session_state:
            st.session_state[count_key] = len(items)
        item_spec = resolve(spec.schema.get("items", {}), self.defs)
        st.markdown(f"**{label}**")
        if spec.description:
            st.caption(spec.description)
        values = []
        for index in range(st.session_state[count_key]):
            current = items[index] if index < len(items) else None
            with st.container(border=True):
                value = self._widget(item_spec)(
                    f"{label.rstrip(' *')} #{index + 1}", item_spec, current, path + (str(index),)
                )
            values.append(value)
        add, remove = st.columns(2)
        add.button("Add", key=count_key + ":add", on_click=_bump, args=(count_key, 1))
        remove.button(
            "Remove last", key=count_key + ":remove", on_click=_bump, args=(count_key, -1),
            disabled=st.session_state[count_key] == 0,
        )
        values = [v for v in values if v not in (None, {}, [])]
        return None if not values and spec.nullable else values

    def _string_map(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]):
        lines = "\n".join(f"{k}: {v}" for k, v in (start or {}).items())
        text = st.text_area(
            label + " (Name: value per line)", value=lines, key=self._key(path),
            help=spec.description or None, height=80,
        )
        result: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                self.errors[".".join(path)] = f"line {number} is not `Name: value`"
                continue
            result[name.strip()] = value.strip()
        return result

    def _json(self, label: str, spec: FieldSpec, start: Any, path: tuple[str, ...]) -> Any:
        text = st.text_area(
            label + " (JSON)",
            value="" if start is None else json.dumps(start, indent=2),
            key=self._key(path),
            help=spec.description or None,
            height=100,
        )
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            self.errors[".".join(path)] = f"not valid JSON ({exc})"
            return MISSING


def _bump(count_key: str, delta: int) -> None:
    st.session_state[count_key] = max(0, st.session_state.get(count_key, 0) + delta)
