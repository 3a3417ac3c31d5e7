// The fixture sites' bot: deterministic replies written out a few words at a time.
window.Bot = {
  turn: 0,
  reply(prompt) {
    this.turn += 1;
    const words = prompt.trim().split(/\s+/).length;
    return `Reply ${this.turn}: your message had ${words} words, thank you for asking.`;
  },
  async typeOut(element, text, stepMs = 25) {
    for (const word of text.split(/(?<= )/)) {
      element.textContent += word;
      await new Promise((resolve) => setTimeout(resolve, stepMs));
    }
  },
  wait(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); },
};
