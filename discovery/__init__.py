"""Discovery: give it a chat URL, get a drafted, probed ``web_chat`` config for review.

    result = await discover(url, analyze_interface=True, generate_config=True)
    result.config   # a web_chat config, or None when it failed (result.reason says why)

One module per step: crawl, reduce, draft_heuristic, draft_llm, validate, probe, refine;
safety checks the URLs. Nothing is registered here: approving a draft is the runtime's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discovery.pipeline import DiscoveryResult, discover

__all__ = ["DiscoveryResult", "discover"]


def __getattr__(name: str) -> Any:
    # The pipeline loads when first asked for: importing one step (errors, safety) must not
    # bring in the browser driver and the HTML parser with it.
    if name in __all__:
        from discovery import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'discovery' has no attribute {name!r}")
