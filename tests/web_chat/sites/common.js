// Shared client of the fixture chat sites: talks to the deterministic bot on the server.
const Bot = {
  site: document.documentElement.dataset.site,
  conv: null,
  firstAt: null,
  async ask(prompt, model = null) {
    // ?variant=NAME in the page's URL (a project, an option) reaches the bot with the prompt.
    const variant = new URLSearchParams(location.search).get('variant');
    const response = await fetch(`/api/${this.site}/reply`, {
      method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({conv: this.conv, prompt, model, variant}),
    });
    if (response.status === 401) { location.href = `/${this.site}/signin`; return null; }
    const body = await response.json();
    if (body.conv) this.conv = body.conv;
    return body;
  },
  async history(conv) {
    const response = await fetch(`/api/${this.site}/history?conv=${encodeURIComponent(conv)}`);
    if (response.status === 401) { location.href = `/${this.site}/signin`; return []; }
    return (await response.json()).messages;
  },
  // Writes the reply a few words at a time, as chat sites do.
  async typeOut(element, text, stepMs = 15) {
    for (const word of text.split(/(?<= )/)) {
      element.textContent += word;
      if (this.firstAt === null) this.firstAt = Date.now();
      await new Promise((resolve) => setTimeout(resolve, stepMs));
    }
  },
  // Tells the server when this answer's first word and last word appeared (benchmarks).
  mark(prompt) {
    const body = JSON.stringify({prompt, first_at: this.firstAt, done_at: Date.now()});
    this.firstAt = null;
    fetch('/api/mark', {method: 'POST', headers: {'content-type': 'application/json'}, body});
  },
  showTrouble(kind, root = document) {
    const id = kind === 'captcha' ? 'captcha' : 'error-banner';
    root.getElementById ? root.getElementById(id).hidden = false
                        : root.querySelector('#' + id).hidden = false;
  },
};
