"""What a provider can do with an OpenAI request beyond plain text.

Every OpenAI request field is either passed to the upstream, translated into its dialect, or
refused with a 400 that names the field and the endpoint type; nothing is dropped silently.
A provider declares which of those it handles in one ``Capabilities`` value, shown in
``GET /providers`` and ``GET /v1/models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Request fields that need a capability flag rather than a plain entry in ``params``.
# (The deprecated ``functions`` / ``function_call`` are plain params: only pass-through has them.)
FLAG_OF_FIELD: dict[str, str] = {
    "tools": "tools",
    "tool_choice": "tool_choice",
    "parallel_tool_calls": "parallel_tool_calls",
    "n": "n",
    "logprobs": "logprobs",
    "top_logprobs": "logprobs",
}

# What a message feature is called in a refusal ("... is not supported by endpoint type x").
FEATURE_LABELS: dict[str, str] = {
    "vision": "`image_url` content",
    "audio": "`input_audio` content",
    "tools": "a tool-call history (`tool_calls` / role `tool`)",
}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Flags for the features that change a request's shape, plus the plain fields passed."""

    tools: bool = False  # tools, tool calls in answers and in the history
    tool_choice: bool = False
    parallel_tool_calls: bool = False
    vision: bool = False  # image content parts
    audio: bool = False  # input_audio content parts
    json_object: bool = False  # response_format {"type": "json_object"}
    json_schema: bool = False  # response_format {"type": "json_schema", ...}
    json_with_tools: bool = False  # response_format and tools in one request
    logprobs: bool = False
    n: bool = False  # more than one choice per request
    embeddings: bool = False  # /v1/embeddings
    completions: bool = False  # /v1/completions (legacy text completions)
    # Other Chat Completions fields the provider passes or translates (stop, seed, ...).
    params: frozenset[str] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        return {
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "vision": self.vision,
            "audio": self.audio,
            "json_object": self.json_object,
            "json_schema": self.json_schema,
            "json_with_tools": self.json_with_tools,
            "logprobs": self.logprobs,
            "n": self.n,
            "embeddings": self.embeddings,
            "completions": self.completions,
            "params": sorted(self.params),
        }

    def refusal(self, extra: dict[str, Any], features: dict[str, str] | None) -> tuple[str, str]:
        """The first field (label, param) this provider cannot honour; ("", "") when none."""
        for name, value in extra.items():
            if not self.honours(name, value):
                return f"`{name}`", name
        if "response_format" in extra and "tools" in extra and not self.json_with_tools:
            return "`response_format` together with `tools`", "response_format"
        for feature, param in (features or {}).items():
            if not getattr(self, feature):
                return FEATURE_LABELS[feature], param
        return "", ""

    def honours(self, name: str, value: Any) -> bool:
        flag = FLAG_OF_FIELD.get(name)
        if flag is not None:
            return bool(getattr(self, flag))
        if name == "response_format":
            kind = value.get("type") if isinstance(value, dict) else None
            return (kind == "json_object" and self.json_object) or (
                kind == "json_schema" and self.json_schema
            )
        return name in self.params


TEXT_ONLY = Capabilities()
