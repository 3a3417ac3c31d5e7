"""Web chat configs for known sites, stored as JSON data next to this module.

A preset is a partial or complete ``WebChatConfig`` dict; endpoints name it with
``{"preset": "<name>"}`` and override any key. Selectors of real sites drift: a preset is a
starting point that discovery and the console can refine, not a promise.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).parent


class UnknownPreset(ValueError):
    pass


def list_presets() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.json"))


@cache
def _read_preset(name: str) -> str:
    return (PRESET_DIR / f"{name}.json").read_text(encoding="utf-8")


def load_preset(name: Any) -> dict[str, Any]:
    """The preset's config dict (a fresh copy the caller may change)."""
    if not isinstance(name, str) or name not in list_presets():
        raise UnknownPreset(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    data = json.loads(_read_preset(name))
    data.pop("description", None)
    return data
