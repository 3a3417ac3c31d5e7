// The probe's eyes. `mark` remembers what is on screen before the message is sent;
// `look` finds what this turn added: the echo of the sent message and the answer after it,
// the controls that appeared (a stop button) and the send control's state.
({op, prompt, send}) => {
  const W = window;
  const deep = (root, out = []) => {
    for (const el of root.querySelectorAll('*')) {
      out.push(el);
      if (el.shadowRoot) deep(el.shadowRoot, out);
    }
    return out;
  };
  const shown = (el) => {
    const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) return false;
    const s = getComputedStyle(el);
    return s.visibility !== 'hidden' && s.display !== 'none' && parseFloat(s.opacity) > 0.05;
  };
  const norm = (s) => (s || '').replace(/\s+/g, ' ').trim();
  const isControl = (el) => el.matches('button, input, textarea, select, [role=button], '
    + '[contenteditable=""], [contenteditable=true], [role=textbox]');
  const parentOf = (el) => el.parentNode && el.parentNode.host ? el.parentNode.host : el.parentElement;
  const within = (inner, outer) => { for (let e = inner; e; e = parentOf(e)) if (e === outer) return true; return false; };
  const sendEl = () => {
    if (!send) return null;
    for (const sel of send) { try { const e = document.querySelector(sel); if (e) return e; } catch (x) {} }
    return null;
  };
  if (op === 'mark') {
    const all = deep(document);
    W.__aiemSeen = new WeakSet(all);
    W.__aiemShownControls = new WeakSet(all.filter((e) => isControl(e) && shown(e)));
    W.__aiemAppeared = [];
    return all.length;
  }
  const all = deep(document);
  const order = new Map(all.map((e, i) => [e, i]));
  const p = norm(prompt);
  const fresh = all.filter((e) => !W.__aiemSeen.has(e) && shown(e) && norm(e.innerText));
  let user = null;
  for (const e of fresh) if (norm(e.innerText) === p) user = e;  // deepest in document order
  for (const e of all) {
    if (isControl(e) && shown(e) && !W.__aiemShownControls.has(e) && !W.__aiemAppeared.includes(e)) {
      W.__aiemAppeared.push(e);
    }
  }
  const after = (e) => !user || order.get(e) > order.get(user);
  const answers = fresh.filter((e) => !isControl(e) && (!user || (!within(user, e) && !within(e, user)))
    && after(e) && norm(e.innerText) !== p && !W.__aiemAppeared.some((c) => within(e, c)));
  const outer = answers.filter((e) => !answers.some((o) => o !== e && within(e, o)));
  outer.sort((a, b) => norm(b.innerText).length - norm(a.innerText).length);
  const answer = outer[0] || null;
  W.__aiemAnswer = answer; W.__aiemUser = user;
  const button = sendEl();
  return {
    text: answer ? norm(answer.innerText) : '',
    user: !!user,
    appeared: W.__aiemAppeared.filter(shown).length,
    appearedTotal: W.__aiemAppeared.length,
    sendDisabled: button ? (button.disabled || button.getAttribute('aria-disabled') === 'true') : null,
    url: location.href,
  };
}
