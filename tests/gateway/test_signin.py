"""The admin token: strength rules, the sign-in page, signed expiring sessions, the throttle."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import httpx
import pytest

from gateway.settings import SettingsError, load_settings
from gateway.signin import FailureThrottle, SessionSigner
from tests.gateway.test_cli import aiem
from tests.gateway_proc import GatewayProcess

TOKEN = "signin-token-0123456789abcdef"
# Same length as TOKEN, one character different: a comparison that only checks lengths (or a
# prefix) lets it through.
SAME_LENGTH = TOKEN[:-1] + "0"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "token", ["x", "   ", "fifteen-chars-x", "sixteen chars ok", "a\tbcdefghijklmnopq"]
)
def test_weak_or_spaced_tokens_are_refused(token):
    with pytest.raises(SettingsError) as caught:
        load_settings(AIEM_ADMIN_TOKEN=token)
    assert "AIEM_ADMIN_TOKEN" in str(caught.value) and "16 characters" in str(caught.value)


def test_a_good_token_is_kept_and_an_empty_one_means_none():
    assert load_settings(AIEM_ADMIN_TOKEN=TOKEN).admin_token_value() == TOKEN
    assert load_settings(AIEM_ADMIN_TOKEN="").admin_token_value() is None


def test_a_weak_token_stops_start_up_in_one_line(tmp_path):
    result = aiem(
        "serve", "--port", "9", env={"AIEM_DATA_DIR": str(tmp_path), "AIEM_ADMIN_TOKEN": "x"}
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "AIEM_ADMIN_TOKEN" in result.stderr and "16 characters" in result.stderr


def test_sessions_are_signed_expire_and_can_be_revoked():
    clock = Clock()
    signer = SessionSigner(TOKEN.encode(), ttl_s=60, clock=clock)
    cookie = signer.issue()
    assert signer.valid(cookie) and TOKEN.encode() not in cookie
    assert signer.issue() != cookie  # a fresh nonce per sign-in
    expires, nonce, signature = cookie.split(b".")
    assert not signer.valid(b"%d.%s.%s" % (int(expires) + 3600, nonce, signature))
    assert not signer.valid(cookie[:-1] + (b"0" if cookie[-1:] != b"0" else b"1"))
    assert not SessionSigner(SAME_LENGTH.encode(), ttl_s=60, clock=clock).valid(cookie)
    clock.now += 59
    assert signer.valid(cookie)
    clock.now += 2
    assert not signer.valid(cookie)
    other = signer.issue()
    signer.revoke(other)
    assert not signer.valid(other)


def test_the_throttle_counts_failures_per_client_in_a_window():
    clock = Clock()
    throttle = FailureThrottle(limit=3, window_s=10, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.fail("a")
    assert throttle.retry_after("a") == pytest.approx(10)
    assert throttle.retry_after("b") is None
    clock.now += 4
    assert throttle.retry_after("a") == pytest.approx(6)
    clock.now += 6
    assert throttle.retry_after("a") is None


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[GatewayProcess]:
    from cryptography.fernet import Fernet

    gateway = GatewayProcess(
        tmp_path_factory.mktemp("signin"),
        secret_key=Fernet.generate_key().decode(),
        env={"AIEM_ADMIN_TOKEN": TOKEN},
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_wrong_token_of_the_right_length_is_refused(guarded):
    wrong = httpx.get(
        guarded.url + "/endpoints", headers={"Authorization": f"Bearer {SAME_LENGTH}"}
    )
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    right = httpx.get(guarded.url + "/endpoints", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.json() == []
    with httpx.Client(base_url=guarded.url, follow_redirects=False) as browser:
        form = browser.post("/login", data={"token": SAME_LENGTH})
        assert form.status_code == 401 and "set-cookie" not in form.headers
        assert "Wrong admin token" in form.text
        assert browser.get("/endpoints").status_code == 401


def test_the_sign_in_page_looks_like_the_console(guarded):
    page = httpx.get(guarded.url + "/login")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "#2563eb" in page.text and "#f3f5f9" in page.text  # the console theme's colours
    assert 'type="password"' in page.text and 'action="/login"' in page.text
    assert httpx.get(guarded.url + "/", follow_redirects=False).headers["location"] == "/login"


def test_the_session_cookie_expires_and_sign_out_ends_it(guarded):
    with httpx.Client(base_url=guarded.url, follow_redirects=False) as browser:
        signed_in = browser.post("/login", data={"token": TOKEN})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
        cookie = signed_in.headers["set-cookie"]
        assert "Max-Age=43200" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie and TOKEN not in cookie
        assert browser.get("/endpoints").status_code == 200
        stolen = browser.cookies["aiem_console"]
        out = browser.post("/logout", headers={"Origin": guarded.url})
        assert out.status_code == 303 and out.headers["location"] == "/login?signed_out=1"
        assert "Max-Age=0" in out.headers["set-cookie"]
        assert "Signed out" in browser.get(out.headers["location"]).text
    # The cookie taken before sign-out no longer opens anything.
    replayed = httpx.get(guarded.url + "/endpoints", cookies={"aiem_console": stolen})
    assert replayed.status_code == 401


def test_the_old_fixed_cookie_no_longer_works(guarded):
    fixed = hmac.new(TOKEN.encode(), b"aiem-console", hashlib.sha256).hexdigest()
    response = httpx.get(guarded.url + "/endpoints", cookies={"aiem_console": fixed})
    assert response.status_code == 401


def test_the_cookie_is_secure_behind_an_https_proxy(guarded):
    response = httpx.post(
        guarded.url + "/login", data={"token": TOKEN}, headers={"X-Forwarded-Proto": "https"}
    )
    assert response.status_code == 303 and "; Secure" in response.headers["set-cookie"]


def test_wrong_tokens_are_throttled_per_client(gateway_factory):
    gateway = gateway_factory(env={"AIEM_ADMIN_TOKEN": TOKEN})
    wrong = {"Authorization": f"Bearer {SAME_LENGTH}"}
    statuses = [httpx.get(gateway.url + "/endpoints", headers=wrong).status_code for _ in range(10)]
    assert statuses == [401] * 10
    blocked = httpx.get(gateway.url + "/endpoints", headers=wrong)
    assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
    # While blocked even the right token is not checked, so guessing gains nothing.
    right = httpx.get(gateway.url + "/endpoints", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 429
    form = httpx.post(gateway.url + "/login", data={"token": TOKEN})
    assert form.status_code == 429 and "Try again in" in form.text
    # Health probes are never throttled.
    assert httpx.get(gateway.url + "/healthz").status_code == 200
