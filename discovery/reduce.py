"""Step 2, reduce: the captured documents become a short, indexed list of candidates.

BeautifulSoup reads each captured document (hidden subtrees were already left out by the
capture). Kept are the elements a chat is made of: text inputs, textareas, contenteditable
and role=textbox elements, buttons and role=button controls, links, and message-like
repeated containers. Each gets an index and a short description (tag, role, ARIA, placeholder,
data-* attributes, visible text, position, frame and shadow path) plus selectors that match it
alone in its document.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bs4 import BeautifulSoup, Tag

from discovery.crawl import FrameDoc, Snapshot
from discovery.selectors import ElementFacts, collection_selectors, ranked_unique_selectors

TEXT_INPUT_TYPES = {"", "text", "search", "email", "url", "tel"}
BUTTON_INPUT_TYPES = {"submit", "button", "image"}
CONTEXT_TAGS = {"form", "nav", "header", "footer", "aside", "dialog", "section", "main"}
MAX_TEXT = 100
MAX_PAGE_TEXT = 4000
MAX_CANDIDATES = 150
_HAS_TEXT = re.compile(r'^(\w+):has-text\("(.*)"\)$')


@dataclass(slots=True)
class Candidate:
    idx: int
    kind: str  # input | button | link | message
    frame: int
    element: int  # data-aiem-i in its document
    tag: str
    attrs: dict[str, str]
    classes: list[str]
    text: str
    box: tuple[int, int, int, int]
    disabled: bool = False
    editable: bool = False
    in_shadow: bool = False
    has_icon: bool = False
    context: str = ""
    group: int | None = None  # element index of the enclosing form or composer
    selectors: list[str] = field(default_factory=list)
    facts: ElementFacts | None = None

    def describe(self) -> dict[str, Any]:
        """The short description the LLM and the evidence show."""
        keep = {k: v for k, v in self.attrs.items() if not k.startswith("data-aiem-")}
        return {
            "index": self.idx,
            "kind": self.kind,
            "tag": self.tag,
            "attributes": keep,
            "text": self.text,
            "position": {"x": self.box[0], "y": self.box[1], "w": self.box[2], "h": self.box[3]},
            "frame": self.frame,
            "in_shadow_root": self.in_shadow,
            "icon": self.has_icon,
            "disabled": self.disabled,
        }


@dataclass(slots=True)
class Reduced:
    url: str
    width: int
    height: int
    candidates: list[Candidate]
    page_text: str
    frames: dict[int, FrameDoc]
    soups: dict[int, BeautifulSoup]

    def of_kind(self, *kinds: str) -> list[Candidate]:
        return [c for c in self.candidates if c.kind in kinds]

    def by_idx(self, idx: int) -> Candidate | None:
        if 0 <= idx < len(self.candidates):
            return self.candidates[idx]
        return None

    def count(self, frame: int, selector: str) -> int:
        return count_matches(self.soups[frame], selector)


def reduce_snapshot(snapshot: Snapshot) -> Reduced:
    candidates: list[Candidate] = []
    soups: dict[int, BeautifulSoup] = {}
    texts: list[str] = []
    for doc in snapshot.docs:
        soup = BeautifulSoup(doc.html, "html.parser")
        soups[doc.index] = soup
        candidates.extend(doc_candidates(soup, doc.index))
        texts.append(visible_text(soup))
    candidates = candidates[:MAX_CANDIDATES]
    for idx, candidate in enumerate(candidates):
        candidate.idx = idx
    page_text = "\n".join(t for t in texts if t)[:MAX_PAGE_TEXT]
    frames = {doc.index: doc for doc in snapshot.docs}
    return Reduced(
        snapshot.url, snapshot.width, snapshot.height, candidates, page_text, frames, soups
    )


def doc_candidates(soup: BeautifulSoup, frame: int) -> list[Candidate]:
    found: list[Candidate] = []
    for tag in soup.find_all(True):
        if tag.get("data-aiem-vis") != "1":
            continue
        kind = element_kind(tag)
        if kind is None:
            continue
        candidate = make_candidate(tag, kind, frame)
        assert candidate.facts is not None
        candidate.selectors = ranked_unique_selectors(
            candidate.facts, lambda s: count_matches(soup, s)
        )
        found.append(candidate)
    found.extend(message_candidates(soup, frame))
    return found


def element_kind(tag: Tag) -> str | None:
    name, role = tag.name, str(tag.get("role", "")).lower()
    if name == "textarea" or role in ("textbox", "searchbox", "combobox"):
        return "input"
    if name == "input":
        kind = str(tag.get("type", "")).lower()
        if kind in TEXT_INPUT_TYPES:
            return "input"
        return "button" if kind in BUTTON_INPUT_TYPES else None
    if tag.has_attr("contenteditable") and tag.get("contenteditable") != "false":
        return "input"
    if name == "button" or role in ("button", "menuitem", "tab"):
        return "button"
    if name == "a" and tag.has_attr("href"):
        return "link"
    if tag.get("data-aiem-pointer") == "1" and clickable_icon(tag):
        return "button"
    return None


def clickable_icon(tag: Tag) -> bool:
    """A small element with a pointer cursor showing an icon or a label: a div-made button."""
    parent = tag.parent
    if isinstance(parent, Tag) and parent.get("data-aiem-pointer") == "1":
        return False  # the outermost clickable element stands for the control
    w, h = box_of(tag)[2:]
    labelled = bool(tag.get("aria-label") or tag.get("title"))
    return w <= 160 and h <= 80 and (labelled or tag.find("svg") is not None or bool(text_of(tag)))


def make_candidate(tag: Tag, kind: str, frame: int) -> Candidate:
    attrs = {k: " ".join(v) if isinstance(v, list) else str(v) for k, v in tag.attrs.items()}
    classes = attrs.pop("class", "").split()
    return Candidate(
        idx=-1,
        kind=kind,
        frame=frame,
        element=int(str(tag.get("data-aiem-i", "-1"))),
        tag=tag.name,
        attrs=attrs,
        classes=classes,
        text=text_of(tag)[:MAX_TEXT],
        box=box_of(tag),
        disabled=tag.get("data-aiem-disabled") == "1",
        editable=tag.get("data-aiem-editable") == "1",
        in_shadow=tag.find_parent("aiem-shadow") is not None,
        has_icon=tag.find(["svg", "img", "i"]) is not None,
        context=context_of(tag),
        group=group_of(tag),
        facts=facts_of(tag),
    )


def message_candidates(soup: BeautifulSoup, frame: int) -> list[Candidate]:
    """Repeated siblings carrying text, or elements whose attributes name an author."""
    found: list[Candidate] = []
    for parent in soup.find_all(True):
        children = [c for c in parent.find_all(True, recursive=False) if text_of(c)]
        shapes = Counter(signature(c) for c in children)
        for child in children:
            if shapes[signature(child)] >= 2 or authored(child):
                candidate = make_candidate(child, "message", frame)
                candidate.selectors = collection_selectors(candidate.facts)  # type: ignore[arg-type]
                found.append(candidate)
    return found[:30]


def signature(tag: Tag) -> tuple[str, str]:
    classes = " ".join(sorted(tag.get("class") or []))
    return tag.name, classes


AUTHOR_HINT = re.compile(r"assistant|bot|user|author|message|answer|response|reply", re.I)


def authored(tag: Tag) -> bool:
    return any(
        str(k).startswith("data-")
        and not str(k).startswith("data-aiem-")
        and AUTHOR_HINT.search(f"{k} {v}")
        for k, v in tag.attrs.items()
    )


def text_of(tag: Tag) -> str:
    """The element's visible text: text inside elements marked not visible is left out."""
    parts = []
    for node in tag.find_all(string=True):
        parent = node.parent
        if isinstance(parent, Tag) and parent.get("data-aiem-vis") == "0":
            continue
        parts.append(str(node))
    return " ".join(" ".join(parts).split())


def box_of(tag: Tag) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in str(tag.get("data-aiem-box", "0,0,0,0")).split(","))
    except ValueError:
        return (0, 0, 0, 0)
    return (x, y, w, h)


def context_of(tag: Tag) -> str:
    """Words from the element's surroundings (form, nav, footer...) that say what it is for."""
    words: list[str] = []
    for depth, parent in enumerate(tag.parents):
        if depth > 6 or not isinstance(parent, Tag) or parent.name == "[document]":
            break
        hints = [
            parent.get("id", ""),
            " ".join(parent.get("class") or []),
            parent.get("aria-label", ""),
            parent.get("role", ""),
            parent.get("name", ""),
        ]
        if parent.name in CONTEXT_TAGS:
            hints.append(parent.name)
            if parent.name == "form":
                hints.append(text_of(parent)[:120])
        words.extend(str(h) for h in hints if h)
    return " ".join(words).lower()[:400]


def group_of(tag: Tag) -> int | None:
    """The enclosing form, else the nearest ancestor holding both a field and a button."""
    form = tag.find_parent("form")
    if form is not None:
        return int(str(form.get("data-aiem-i", "-1")))
    for depth, parent in enumerate(tag.parents):
        if depth > 5 or not isinstance(parent, Tag) or parent.name in ("body", "[document]"):
            break
        fields = parent.select_one("textarea, input, [contenteditable]")
        button = parent.select_one("button, [role=button], [data-aiem-pointer]")
        if fields is not None and button is not None:
            return int(str(parent.get("data-aiem-i", "-1")))
    return None


def facts_of(tag: Tag, depth: int = 0) -> ElementFacts:
    attrs = {k: " ".join(v) if isinstance(v, list) else str(v) for k, v in tag.attrs.items()}
    classes = attrs.pop("class", "").split()
    parent = tag.parent
    parent_facts = None
    if depth < 2 and isinstance(parent, Tag) and parent.name != "[document]":
        parent_facts = facts_of(parent, depth + 1)
    return ElementFacts(tag.name, attrs, classes, text_of(tag)[:200], parent_facts)


def count_matches(soup: BeautifulSoup, selector: str) -> int:
    """How many elements of the captured document match (open shadow roots pierced)."""
    match = _HAS_TEXT.match(selector)
    if match:
        name, text = match.group(1), match.group(2).replace('\\"', '"')
        return sum(1 for t in soup.find_all(name) if text in text_of(t))
    try:
        return len(soup.select(selector))
    except Exception:  # noqa: BLE001 - soupsieve rejects some valid CSS; treat as unusable
        return 0


def visible_text(soup: BeautifulSoup) -> str:
    parts = []
    for node in soup.find_all(string=True):
        parent = node.parent
        if isinstance(parent, Tag) and parent.get("data-aiem-vis") == "1":
            text = " ".join(str(node).split())
            if text:
                parts.append(text)
    return " ".join(parts)
