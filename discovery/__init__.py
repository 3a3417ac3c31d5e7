"""Discovery: give it a chat URL, get a drafted, probed ``web_chat`` config for review.

    result = await discover(url, analyze_interface=True, generate_config=True)
    result.config   # a web_chat config, or None when it failed (result.reason says why)

One module per step: crawl, reduce, draft_heuristic, draft_llm, validate, probe, refine;
safety checks the URLs. Nothing is registered here: approving a draft is the runtime's job.
"""

from discovery.pipeline import DiscoveryResult, discover

__all__ = ["DiscoveryResult", "discover"]
