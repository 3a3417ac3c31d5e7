"""Which element is this turn's answer, what it says, and how its text is streamed.

The answer is not "the newest assistant message once their number grows": sites re-render
their message list (after a reconnect), show only the latest messages (windowed lists) or
clear an old conversation a moment after a new one was asked for, and the count stays the
same or shrinks. Before a prompt is sent every assistant message on screen is remembered
by identity (a WeakSet on the page); the answer is the newest assistant element that is
not one of them and, when the sent message can be found on the page (``user_message``, or
the prompt's own text), comes after it. When known elements were replaced and the sent
message cannot be found, elements repeating an earlier answer's text are taken for the
re-rendered history they are.

Answers are read as Markdown by default: the answer element's HTML, without controls
(copy buttons) and code-block headers, converted with ``markdownify``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from markdownify import markdownify

# Shared by the scripts below (each evaluate is a separate function, so they embed it).
ANSWER_LIB = r"""
const excluded = (element, answers) => {
  for (let e = element; e; e = e.parentElement) {
    if (answers.has(e) || e.isContentEditable) return true;
    if (['TEXTAREA', 'INPUT', 'TITLE', 'SCRIPT', 'STYLE', 'NAV', 'ASIDE'].includes(e.tagName))
      return true;
  }
  return false;
};
const findSent = (root, probe, answers, userSelectors) => {
  if (userSelectors.length) {
    let found = [];
    try { found = root.querySelectorAll(userSelectors.join(', ')); } catch (e) {}
    if (found.length) return found[found.length - 1];
  }
  const cached = window.__aiemSentAt;
  if (cached && cached.isConnected && cached.getRootNode() === root) return cached;
  if (!probe) return null;
  const inside = new Set(answers);
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let found = null;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.data.replace(/\s+/g, ' ').trim();
    if (text !== probe && !(probe.length >= 40 && text.startsWith(probe))) continue;
    if (!excluded(node.parentElement, inside)) found = node;
  }
  window.__aiemSentAt = found;
  return found;
};
const pick = (elements, probe, userSelectors) => {
  const known = window.__aiemKnown || new WeakSet();
  const fresh = elements.filter((e) => !known.has(e));
  if (!fresh.length) return null;
  const root = fresh[fresh.length - 1].getRootNode();
  const sentAt = findSent(root, probe, elements, userSelectors);
  let pool = fresh;
  if (sentAt) {
    const after = Node.DOCUMENT_POSITION_FOLLOWING;
    pool = fresh.filter((e) => sentAt.compareDocumentPosition(e) & after);
  } else if ((window.__aiemKnownList || []).some((e) => !e.isConnected)) {
    const texts = window.__aiemKnownTexts || new Set();
    pool = fresh.filter((e) => !texts.has(e.innerText.trim()));
  }
  return pool.length ? pool[pool.length - 1] : null;
};
const content = (element, format) => {
  if (format === 'text') return element.innerText;
  const copy = element.cloneNode(true);
  const drop = 'button, [role=button], [hidden], [aria-hidden=true], script, style, svg, template';
  copy.querySelectorAll(drop).forEach((node) => node.remove());
  copy.querySelectorAll('pre').forEach((pre) => {
    const code = pre.querySelector('code');
    if (!code) return;
    // A header inside the block (language label, copy button) is not the code.
    if (code.parentElement !== pre) pre.replaceChildren(code);
    const label = pre.previousElementSibling;
    const word = label ? label.textContent.trim() : '';
    if (label && /^[\w+#.-]{1,20}$/.test(word) && !label.querySelector('pre, p, li')) {
      if (!code.className.match(/lang/)) code.setAttribute('data-language', word);
      label.remove();
    }
  });
  return copy.innerHTML;
};
"""

# Before sending: remember every assistant message on screen, by identity and by text.
MARK_KNOWN_SCRIPT = """
(elements) => {
  window.__aiemKnown = new WeakSet(elements);
  window.__aiemKnownList = elements;
  window.__aiemKnownTexts = new Set(elements.map((e) => e.innerText.trim()).filter(Boolean));
  window.__aiemAnswer = null;
  window.__aiemSentAt = null;
  return elements.length;
}
"""

# Finds this turn's answer among the assistant elements (Playwright's engine matched them,
# shadow roots included) and observes it: its content goes to the binding on every change,
# mutations of one task coalesced into one message. 0: none yet, 1: same one, 2: new one.
FIND_SCRIPT = """
(elements, [probe, userSelectors, format, token]) => {
  LIB
  const answer = pick(elements, probe, userSelectors);
  if (answer === null) return 0;
  if (answer === window.__aiemAnswer && answer.__aiemObserver) return 1;
  if (window.__aiemAnswer && window.__aiemAnswer.__aiemObserver)
    window.__aiemAnswer.__aiemObserver.disconnect();
  window.__aiemAnswer = answer;
  let queued = false;
  const send = () => { queued = false; window.BINDING(token, content(answer, format)); };
  const observer = new MutationObserver(() => {
    if (!queued) { queued = true; queueMicrotask(send); }
  });
  observer.observe(answer, {childList: true, subtree: true, characterData: true});
  answer.__aiemObserver = observer;
  send();
  return 2;
}
"""

READ_SCRIPT = """
(format) => {
  LIB
  const answer = window.__aiemAnswer;
  return answer && answer.isConnected ? content(answer, format) : null;
}
"""

# Installed on the chat's document before sending, so the first words of an answer are
# seen the moment its element appears, and every change wakes the reader at once. Selectors
# the browser's own querySelectorAll cannot read, and answers inside shadow roots, are left
# to the element observer of FIND_SCRIPT.
DOCUMENT_WATCH_SCRIPT = """
([selectors, probe, userSelectors, format, token]) => {
  LIB
  if (window.__aiemDocWatch) window.__aiemDocWatch.disconnect();
  let queued = false;
  // Selectors the browser cannot parse (Playwright's own syntax) are skipped one by one.
  const matching = () => {
    try { return Array.from(document.querySelectorAll(selectors.join(', '))); } catch (e) {}
    const found = [];
    for (const selector of selectors) {
      try { found.push(...document.querySelectorAll(selector)); } catch (e) {}
    }
    return found;
  };
  const newest = () => pick(matching(), probe, userSelectors);
  const send = () => {
    queued = false;
    const element = newest();
    window.BINDING(token, element === null ? null : content(element, format));
  };
  const observer = new MutationObserver(() => {
    if (!queued) { queued = true; queueMicrotask(send); }
  });
  observer.observe(document.documentElement, {
    childList: true, subtree: true, characterData: true, attributes: true,
  });
  window.__aiemDocWatch = observer;
}
"""

STOP_WATCHING_SCRIPT = """
() => {
  if (window.__aiemDocWatch) { window.__aiemDocWatch.disconnect(); window.__aiemDocWatch = null; }
  if (window.__aiemAnswer && window.__aiemAnswer.__aiemObserver)
    window.__aiemAnswer.__aiemObserver.disconnect();
}
"""


def with_lib(script: str, binding: str) -> str:
    return script.replace("LIB", ANSWER_LIB).replace("BINDING", binding)


def sent_probe(text: str) -> str:
    """What the page shows of the sent message: its first line, whitespace collapsed."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return " ".join(first.split())[:40]


def _code_language(pre) -> str:  # type: ignore[no-untyped-def]
    """The language of a <pre> block, from its or its <code>'s class or data-language."""
    code = pre.find("code")
    for element in (pre, code) if code is not None else (pre,):
        for name in element.get("class") or []:
            match = re.match(r"(?:language|lang)-([\w+#.-]+)", name)
            if match:
                return match.group(1)
        if element.get("data-language"):
            return str(element.get("data-language"))
    return ""


def html_to_markdown(html: str) -> str:
    text = markdownify(
        html,
        heading_style="ATX",
        bullets="-",
        code_language_callback=_code_language,
        escape_underscores=False,
        escape_asterisks=False,
        escape_misc=False,
    )
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_TAG = re.compile(r"<[^>]*>")


def visible_text(raw: str) -> str:
    """A cheap stand-in for what an HTML snapshot shows: tags dropped, spaces collapsed.

    Used to tell whether the answer changed or is empty without converting every snapshot
    to Markdown (which the reader only needs when it streams, and once at the end).
    """
    return " ".join(_TAG.sub(" ", raw).split())


def formatter(answer_format: str) -> Callable[[str], str]:
    """Raw page content (text or HTML) to the answer's text in the configured format."""
    if answer_format == "markdown":
        return html_to_markdown
    return lambda raw: raw.strip()


class StreamTracker:
    """Turns successive snapshots of an answer into the pieces added.

    The word still being written is held back: renderers rewrite it (a Markdown ``[``
    hidden until its ``]`` arrives), and text once sent cannot be taken back. Deltas add
    up to the final answer whenever the page only appends; when it rewrites text already
    sent, ``rewritten`` is set, later growth is sent from the rewritten text on, and the
    final chunk carries the whole answer.
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emitted = ""
        self.rewritten = False
        self._base = ""  # the snapshot prefix the next delta continues
        self._emit = emit

    @staticmethod
    def settled(text: str) -> str:
        """The text without its last, possibly unfinished, word.

        A code block still being written converts with a closing fence that moves down
        as lines arrive, so a trailing fence is held back too.
        """
        if text.endswith("\n```") and text.count("```") % 2 == 0:
            text = text[: -len("\n```")]
        cut = max(text.rfind(" "), text.rfind("\n"))
        return text[: cut + 1] if cut >= 0 else ""

    def feed(self, text: str, *, final: bool = False) -> None:
        stable = text if final else self.settled(text)
        if not stable.startswith(self._base):
            self.rewritten = True
            self._base = stable
            return
        delta = stable[len(self._base) :]
        if delta:
            self._base = stable
            self.emitted += delta
            self._emit(delta)
