"""Why a discovery stopped, as one small tree.

    DiscoveryError           a discovery cannot go on; ``reason`` is a short stable word
     ├── UnsafeUrl           not http(s), or a private / loopback / link-local address -> 422
     ├── Unreachable         the host does not resolve or the page does not load
     ├── LoginRequired       the page shows a login form and no credentials were given
     ├── NoChatFound         no element on the page looks like a chat input
     └── LLMFailed           the LLM gave no usable answer (the drafter falls back or fails)

A discovery that fails ends as a ``failed`` result with ``reason`` and the message, never as
an exception out of the job.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    reason = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnsafeUrl(DiscoveryError):
    reason = "unsafe_url"


class Unreachable(DiscoveryError):
    reason = "unreachable"


class LoginRequired(DiscoveryError):
    reason = "login_required"


class NoChatFound(DiscoveryError):
    reason = "no_chat"


class LLMFailed(DiscoveryError):
    reason = "llm_failed"
