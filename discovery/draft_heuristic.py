"""Step 3a, the heuristic drafter: score inputs, send controls and answer containers.

Scores come from what chat composers have in common across sites and languages: a textarea
or rich editor near the bottom of the page, placeholder and label words such as "message" or
"ask", a send control beside it (labelled "send", or an icon-only button in the same
composer). Search boxes, newsletter and feedback forms say what they are in their words and
surroundings, and lose points for it. The drafter returns every viable combination, best
first, so refinement can try the next one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from discovery.reduce import Candidate, Reduced

CHAT_WORDS = re.compile(
    r"message|ask|chat|prompt|question|talk|reply|type here|write|anything|assistant|"
    r"nachricht|frag|schreib|mensaje|pregunta|escrib|envoyer un|écri|ecri|demande|posez|"
    r"messaggio|chiedi|scrivi|mensagem|pergunt|digite|bericht|vraag|wiadomo|"
    r"сообщ|вопрос|спрос|напиш|消息|提问|问|输入|發送|訊息|メッセージ|質問|入力|메시지|질문|"
    r"mesaj|soru|پیام|رسالة|اسأل|संदेश|पूछ",
    re.I,
)
DECOY_WORDS = re.compile(
    r"search|suche|buscar|recherch|cerca|pesquis|zoek|поиск|搜索|検索|검색|"
    r"newsletter|subscri|abonn|e-?mail|mail address|feedback|comment|review|rating|"
    r"coupon|promo|phone|zip|postal|address|city|first name|last name|username|login|"
    r"password|filter|find",
    re.I,
)
SEND_WORDS = re.compile(
    r"\bsend|submit|\bask\b|\bgo\b|senden|absenden|enviar|envoyer|envoi|invia|"
    r"отправ|发送|送出|送信|전송|보내기|gönder|wyślij|verstuur|arrow-up|paper-?plane",
    re.I,
)
NOT_SEND_WORDS = re.compile(
    r"subscri|search|attach|upload|file|voice|mic|record|stop|cancel|new chat|new conv|"
    r"login|log in|sign|menu|settings|share|copy|like|dislike|regenerate|close|clear|"
    r"emoji|image|camera|plus|more|option|model|theme|feedback",
    re.I,
)
NEW_CHAT_WORDS = re.compile(
    r"new chat|new conversation|start over|neuer chat|neue unterhaltung|nuevo chat|"
    r"nueva conversaci|nouvelle discussion|nouveau chat|nuova chat|novo chat|новый чат|"
    r"新对话|新聊天|新しいチャット|새 채팅|새 대화",
    re.I,
)
STRUCTURE_DECOY = re.compile(r"\b(nav|footer|header|aside|search|newsletter|subscribe)\b", re.I)


@dataclass(slots=True)
class Scored:
    candidate: Candidate
    score: float
    why: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"index": self.candidate.idx, "score": round(self.score, 2), "why": self.why}


@dataclass(slots=True)
class Choice:
    """One drafted combination: the input, the send control (None: press Enter)."""

    input: Candidate
    send: Candidate | None
    new_chat: Candidate | None = None
    score: float = 0.0
    source: str = "heuristic"
    notes: list[str] = field(default_factory=list)


def words_of(c: Candidate) -> str:
    keys = ("placeholder", "aria-label", "aria-placeholder", "title", "name", "id", "data-testid")
    return " ".join([c.attrs.get(k, "") for k in keys] + c.classes + [c.text]).lower()


def score_input(c: Candidate, page_height: int) -> Scored:
    s = Scored(c, 0.0)
    add = _adder(s)
    kind = c.attrs.get("type", "").lower()
    if c.tag == "textarea":
        add(3, "textarea")
    elif c.editable or c.attrs.get("contenteditable") is not None:
        add(3, "contenteditable")
    elif c.attrs.get("role") == "textbox":
        add(2, "role=textbox")
    if kind == "search" or c.attrs.get("role") in ("searchbox", "combobox"):
        add(-4, "search field")
    if kind in ("email", "tel", "url"):
        add(-4, f"type={kind}")
    words = words_of(c)
    if CHAT_WORDS.search(words):
        add(3, "chat words")
    if DECOY_WORDS.search(words):
        add(-4, "search/form words")
    if STRUCTURE_DECOY.search(c.context) or DECOY_WORDS.search(c.context):
        add(-2, "inside nav/footer/search/newsletter")
    if c.disabled:
        add(-2, "disabled")
    _position(s, c, page_height)
    if c.attrs.get("autofocus") is not None:
        add(1, "autofocus")
    return s


def _position(s: Scored, c: Candidate, page_height: int) -> None:
    x, y, w, h = c.box
    if page_height and y + h / 2 > page_height * 0.5:
        s.score += 1.5
        s.why.append("lower half")
    if w >= 300:
        s.score += 1
        s.why.append("wide")
    if page_height and y > page_height * 1.5:
        s.score -= 1
        s.why.append("far below the fold")


def score_send(c: Candidate, field_: Candidate) -> Scored:
    s = Scored(c, 0.0)
    add = _adder(s)
    words = words_of(c)
    if SEND_WORDS.search(words):
        add(4, "send words")
    if NOT_SEND_WORDS.search(words):
        add(-5, "other control's words")
    if c.group is not None and c.group == field_.group:
        add(3, "same composer")
    if c.attrs.get("type") == "submit":
        add(1, "type=submit")
    if c.has_icon and not c.text:
        add(1, "icon-only")
    if c.frame != field_.frame:
        add(-10, "other frame")
    distance = _distance(c, field_)
    if distance < 150:
        add(2, "next to the input")
    elif distance < 400:
        add(1, "near the input")
    else:
        add(-2, "far from the input")
    if c.box[0] >= field_.box[0] + field_.box[2] * 0.5:
        add(0.5, "right of the input")
    return s


def _distance(a: Candidate, b: Candidate) -> float:
    ax, ay = a.box[0] + a.box[2] / 2, a.box[1] + a.box[3] / 2
    bx = min(max(ax, b.box[0]), b.box[0] + b.box[2])
    by = min(max(ay, b.box[1]), b.box[1] + b.box[3])
    return float(((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5)


def _adder(s: Scored):
    def add(points: float, why: str) -> None:
        s.score += points
        s.why.append(f"{'+' if points >= 0 else ''}{points:g} {why}")

    return add


INPUT_THRESHOLD = 1.0
SEND_THRESHOLD = 4.0


def rank_inputs(reduced: Reduced) -> list[Scored]:
    scored = [score_input(c, reduced.height) for c in reduced.of_kind("input") if c.selectors]
    return sorted((s for s in scored if s.score >= INPUT_THRESHOLD), key=lambda s: -s.score)


def rank_sends(reduced: Reduced, field_: Candidate) -> list[Scored]:
    buttons = [c for c in reduced.of_kind("button") if c.selectors]
    scored = [score_send(c, field_) for c in buttons]
    return sorted((s for s in scored if s.score >= SEND_THRESHOLD), key=lambda s: -s.score)


def find_new_chat(reduced: Reduced, frame: int) -> Candidate | None:
    for c in reduced.of_kind("button", "link"):
        if c.frame == frame and c.selectors and NEW_CHAT_WORDS.search(words_of(c)):
            return c
    return None


def draft_choices(reduced: Reduced, limit: int = 6) -> list[Choice]:
    """Combinations to try, best first: each input with its best send control, then Enter."""
    choices: list[Choice] = []
    for scored_input in rank_inputs(reduced)[:3]:
        field_ = scored_input.candidate
        sends = rank_sends(reduced, field_)[:2]
        new_chat = find_new_chat(reduced, field_.frame)
        for send in sends:
            notes = [f"input: {', '.join(scored_input.why)}", f"send: {', '.join(send.why)}"]
            total = scored_input.score + send.score / 2
            choices.append(Choice(field_, send.candidate, new_chat, total, notes=notes))
        notes = [f"input: {', '.join(scored_input.why)}", "send: Enter"]
        choices.append(Choice(field_, None, new_chat, scored_input.score, notes=notes))
    return choices[:limit]
