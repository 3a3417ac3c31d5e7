// Serialises the rendered document (open shadow roots inlined as <aiem-shadow>) with the
// facts BeautifulSoup cannot know: box, visibility, disabled, editable. Hidden subtrees are
// left out, so hidden text never reaches the drafters. Every element kept gets an index
// (data-aiem-i) and is remembered in window.__aiemEls for validation and outlining.
([maxElements, maxChars]) => {
  const SKIP = new Set(['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE', 'LINK', 'META', 'HEAD']);
  const VOID = new Set(['INPUT', 'IMG', 'BR', 'HR', 'AREA', 'BASE', 'COL', 'EMBED', 'SOURCE',
                        'TRACK', 'WBR']);
  const els = [];
  const out = [];
  let size = 0, truncated = false;
  const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')
    .replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  const push = (s) => { size += s.length; out.push(s); };
  const hidden = (style) => style.display === 'none' || style.visibility === 'hidden'
    || style.visibility === 'collapse' || parseFloat(style.opacity) < 0.05
    || parseFloat(style.fontSize) < 2 || style.color === 'transparent';
  function attrs(el, rect, style) {
    let s = '';
    for (const a of el.attributes) {
      if (a.name.startsWith('on') || a.name === 'style' || a.name === 'value') continue;
      s += ` ${a.name}="${esc(a.value.slice(0, 300))}"`;
    }
    const box = [rect.x, rect.y, rect.width, rect.height].map((v) => Math.round(v)).join(',');
    const tiny = rect.width * rect.height <= 4;
    s += ` data-aiem-i="${els.length}" data-aiem-box="${box}" data-aiem-vis="${tiny ? 0 : 1}"`;
    if (el.disabled || el.getAttribute('aria-disabled') === 'true') s += ' data-aiem-disabled="1"';
    if (el.isContentEditable) s += ' data-aiem-editable="1"';
    if (style.cursor === 'pointer') s += ' data-aiem-pointer="1"';
    return s;
  }
  function walk(node) {
    if (truncated) return;
    if (node.nodeType === 3) { if (node.data.trim()) push(esc(node.data.slice(0, 2000))); return; }
    if (node.nodeType !== 1 || SKIP.has(node.tagName)) return;
    if (els.length >= maxElements || size >= maxChars) { truncated = true; return; }
    const el = node;
    const style = getComputedStyle(el);
    if (hidden(style) && el.tagName !== 'BODY') return;
    const rect = el.getBoundingClientRect();
    const tag = el.tagName.toLowerCase();
    const open = `<${tag}${attrs(el, rect, style)}>`;
    els.push(el);
    push(open);
    if (VOID.has(el.tagName)) return;
    if (tag === 'svg') { push('</svg>'); return; }
    if (el.shadowRoot) {
      push('<aiem-shadow data-aiem-shadow-root="1">');
      for (const child of el.shadowRoot.childNodes) walk(child);
      push('</aiem-shadow>');
    }
    for (const child of el.childNodes) walk(child);
    push(`</${tag}>`);
  }
  walk(document.body || document.documentElement);
  window.__aiemEls = els;
  return {
    html: out.join(''), truncated, count: els.length,
    width: window.innerWidth, height: window.innerHeight, title: document.title,
  };
}
