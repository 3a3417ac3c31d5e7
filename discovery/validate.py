"""Step 4, validate: each drafted selector matches exactly one visible, enabled element, the
one that was chosen, in the right frame. Ranked alternatives that fail are dropped; a role
with no selector left is a problem the refinement step gets to see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from discovery.safety import same_origin

Scope = Page | Frame

IDENTITY_SCRIPT = "(el) => (window.__aiemEls || []).indexOf(el)"


@dataclass(slots=True)
class Validation:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "dropped": self.dropped}


async def matches_one(
    scope: Scope, selector: str, element: int | None, *, need_visible: bool = True
) -> str | None:
    """None when the selector matches exactly the chosen element; else why not."""
    try:
        locator = scope.locator(selector)
        count = await locator.count()
        if count != 1:
            return f"{selector!r} matches {count} elements"
        if need_visible and not await locator.is_visible():
            return f"{selector!r} matches a hidden element"
        if element is not None and element >= 0:
            found = await locator.evaluate(IDENTITY_SCRIPT)
            if found >= 0 and found != element:
                return f"{selector!r} matches another element than the chosen one"
    except PlaywrightError as exc:
        return f"{selector!r} is not usable: {str(exc).splitlines()[0][:120]}"
    return None


async def keep_matching(
    scope: Scope, role: str, selectors: list[str], element: int | None, report: Validation
) -> list[str]:
    kept = []
    for selector in selectors:
        problem = await matches_one(scope, selector, element)
        if problem is None:
            kept.append(selector)
        else:
            report.dropped.append(f"{role}: {problem}")
    if not kept:
        report.fail(f"no {role} selector matches exactly one visible element")
    return kept


async def resolve_scope(page: Page, config: dict[str, Any], origin: str, report: Validation):
    """The page, or the document of the configured iframe (same origin only)."""
    if not config.get("frame"):
        return page
    kept = await keep_matching(page, "frame", config["frame"], None, report)
    if not kept:
        return None
    config["frame"] = kept
    handle = await page.locator(kept[0]).element_handle()
    frame = await handle.content_frame() if handle else None
    if frame is None or not same_origin(frame.url, origin):
        report.fail("the chat frame holds no same-origin document")
        return None
    return frame


async def validate_config(
    page: Page,
    config: dict[str, Any],
    origin: str,
    elements: dict[str, int | None],
) -> tuple[Validation, Scope | None]:
    """Check and prune ``config`` in place; ``elements`` are the chosen element indices."""
    report = Validation()
    scope = await resolve_scope(page, config, origin, report)
    if scope is None:
        return report, None
    config["input"] = await keep_matching(
        scope, "input", config["input"], elements.get("input"), report
    )
    button = (config.get("send") or {}).get("button")
    if button:
        config["send"]["button"] = await keep_matching(
            scope, "send button", button, elements.get("send"), report
        )
    new_button = (config.get("conversation") or {}).get("new_button")
    if new_button:
        kept = await keep_matching(scope, "new chat", new_button, None, Validation())
        if kept:
            config["conversation"]["new_button"] = kept
        else:
            del config["conversation"]["new_button"]
    return report, scope
