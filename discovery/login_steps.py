"""Login steps drafted from the page, run once during the crawl, kept as the config's `login`.

A visible password field marks a login form. The user name field is the text or e-mail
field before it in the same form; the submit control is the form's submit button. Values
typed are the given credentials and go nowhere else (not into evidence, not into errors).
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from discovery.crawl import CrawlSession
from discovery.errors import DiscoveryError, LoginRequired
from discovery.selectors import ElementFacts, own_selectors, text_selector

FORM_SCRIPT = """
() => {
  const visible = (e) => { const r = e.getBoundingClientRect(); return r.width > 2 && r.height > 2
    && getComputedStyle(e).visibility !== 'hidden'; };
  const password = [...document.querySelectorAll('input[type=password]')].find(visible);
  if (!password) return null;
  const form = password.form || password.closest('form, [role=form], div') || document.body;
  const fields = [...form.querySelectorAll('input')].filter((e) => visible(e)
    && ['', 'text', 'email', 'tel'].includes((e.getAttribute('type') || '').toLowerCase()));
  const user = fields.filter((e) => e.compareDocumentPosition(password)
    & Node.DOCUMENT_POSITION_FOLLOWING).pop() || null;
  const submit = [...form.querySelectorAll('button, input[type=submit], [role=button]')]
    .filter(visible).find((e) => (e.type || '').toLowerCase() === 'submit'
      || /log ?in|sign ?in|anmelden|connexion|entrar|iniciar|войти|登录|ログイン|로그인|continue/i
        .test(e.innerText || e.value || e.getAttribute('aria-label') || '')) || null;
  const facts = (e) => e && ({tag: e.tagName.toLowerCase(), classes: [...e.classList],
    attrs: Object.fromEntries([...e.attributes].filter((a) => a.name !== 'value')
      .map((a) => [a.name, a.value])), text: (e.innerText || '').trim().slice(0, 60)});
  return {password: facts(password), user: facts(user), submit: facts(submit)};
}
"""


async def unique(page: Page, facts: dict[str, Any] | None) -> list[str]:
    if not facts:
        return []
    element = ElementFacts.from_dict(facts)
    candidates = own_selectors(element)
    text = text_selector(element)
    if text:
        candidates.append(text)
    kept = []
    for selector in candidates:
        try:
            if await page.locator(selector).count() == 1:
                kept.append(selector)
        except PlaywrightError:
            continue
        if len(kept) == 3:
            break
    return kept


async def login_form(page: Page) -> dict[str, Any] | None:
    try:
        return await page.evaluate(FORM_SCRIPT)  # type: ignore[no-any-return]
    except PlaywrightError:
        return None


async def draft_login(page: Page, form: dict[str, Any]) -> dict[str, Any]:
    password = await unique(page, form["password"])
    user = await unique(page, form["user"])
    submit = await unique(page, form["submit"])
    if not password:
        raise DiscoveryError("the login form's password field has no usable selector")
    fields = [{"selector": password, "credential": "password"}]
    if user:
        fields.insert(0, {"selector": user, "credential": "username"})
    login: dict[str, Any] = {"url": page.url, "fields": fields, "timeout_s": 20.0}
    if submit:
        login["submit"] = submit
    return login


async def submit(page: Page, login: dict[str, Any], credentials: dict[str, str]) -> None:
    for field in login["fields"]:
        await page.locator(field["selector"][0]).fill(credentials.get(field["credential"], ""))
    if login.get("submit"):
        await page.locator(login["submit"][0]).click()
    else:
        await page.locator(login["fields"][-1]["selector"][0]).press("Enter")
    await page.wait_for_load_state("domcontentloaded")


async def log_in_if_asked(crawl: CrawlSession, credentials: dict[str, str] | None):
    """Drafted login steps after running them, or None when the page shows no login form."""
    assert crawl.page is not None
    page = crawl.page
    form = await login_form(page)
    if form is None:
        return None
    if not credentials or not credentials.get("password"):
        raise LoginRequired("login required: the page shows a login form; give credentials")
    login = await draft_login(page, form)
    try:
        await submit(page, login, credentials)
    except PlaywrightError:
        # Playwright's message may quote what was typed: it is not passed on.
        raise DiscoveryError("the login form could not be filled and submitted") from None
    await crawl.check_final_url()
    await crawl.settle()
    if await login_form(page) is not None:
        raise DiscoveryError("login was refused: the login form is still shown")
    return login
