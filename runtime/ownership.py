"""Which instance runs each browser endpoint: the runtime's side of the leases.

On PostgreSQL a browser endpoint runs only on the holder of its lease (runtime/leases.py):
``may_adopt`` takes the lease before the manager starts one, ``sync`` renews them with every
heartbeat and closes a copy whose lease another instance took, and ``elsewhere`` tells a
request for an endpoint that does not run here where it runs (the HTTP surface forwards it
there) or why nobody serves it right now. REST endpoints run on every instance and never
touch a lease. On SQLite (one instance) every endpoint is this instance's own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runtime.cluster import Cluster
from runtime.errors import Conflict, EndpointUnavailable, InvalidConfig, OwnedElsewhere
from runtime.leases import LEASE_S, Renewal
from runtime.manager import EndpointManager, LiveEndpoint
from runtime.repository import EndpointRepository
from store.models import DesiredState, Endpoint, EndpointState

# How long a caller is told to wait while an endpoint changes hands (a lease to expire or be
# taken, a browser to start).
HANDOVER_RETRY_S = 5.0
STARTING_RETRY_S = 2.0
# How long a found owner is trusted without asking the store again: requests for an endpoint
# that runs elsewhere come in bursts, and a failover takes far longer than this anyway.
OWNER_MEMORY_S = 1.0


class Ownership:
    def __init__(
        self, cluster: Cluster, repo: EndpointRepository, manager: EndpointManager
    ) -> None:
        self.cluster = cluster
        self.repo = repo
        self.manager = manager
        # Endpoint id or name -> (until, where it runs), written off the loop, read on it.
        self._known: dict[str, tuple[float, OwnedElsewhere]] = {}

    def needs_browser(self, endpoint_type: str) -> bool:
        try:
            return self.repo.provider_class(endpoint_type).needs_browser
        except InvalidConfig:  # a type whose plugin is gone never starts anywhere
            return False

    def _leased(self, row: Endpoint) -> bool:
        return self.cluster.postgres and self.needs_browser(row.endpoint_type)

    # ---- the manager's side (off the loop) -------------------------------------------------

    def may_adopt(self, row: Endpoint) -> bool:
        """Whether this instance may run ``row``: for a leased endpoint, take its lease."""
        return not self._leased(row) or self.cluster.leases.take(row.id)

    # ---- heartbeats ------------------------------------------------------------------------

    async def sync(self) -> None:
        """Renew the leases of what runs here, release the rest, and let go of an endpoint
        whose lease another instance holds now (after a store outage longer than a lease)."""
        if not self.cluster.postgres:
            return
        live = self.manager.live
        running = {i for i, ep in live.items() if ep.provider.needs_browser}
        renewal = await asyncio.to_thread(self._renew, running, self.manager.in_use())
        for endpoint_id in renewal.lost:
            await self.manager.let_go(endpoint_id)
        if renewal.orphaned:
            self.manager.reconcile_soon()  # its owner died: adopt it now, not at the interval

    def _renew(self, running: set[str], in_use: set[str]) -> Renewal:
        renewal = self.cluster.leases.renew(running, in_use)
        for endpoint_id in renewal.released:
            # Whoever may run it next hears at once (one still wanted: a stopping process).
            self.cluster.notify(endpoint_id)
        return renewal

    # ---- requests for an endpoint that does not run here (off the loop) --------------------

    def elsewhere(self, row: Endpoint) -> Exception | None:
        """Why ``row``, not running here, cannot be served here: OwnedElsewhere (forward the
        request to its owner) or an error saying who owns it and when to retry; None when
        it is simply not running (the caller's own 409)."""
        if not self._leased(row):
            return None
        owner = self.cluster.leases.owner(row.id)
        wanted = row.desired_state == DesiredState.running and row.state != EndpointState.failed
        if owner is not None and owner.live and owner.holder != self.cluster.id:
            if not owner.holder_url:
                return Conflict(
                    f"endpoint {row.name!r} runs on instance {owner.holder}, which advertises "
                    "no URL to forward its chats to; set AIEM_ADVERTISE_URL on every instance"
                )
            if owner.holder_url.rstrip("/") == self.cluster.url.rstrip("/"):
                # Forwarding would come back here: the holder is an earlier run of this
                # process (killed; its lease runs out) or shares this instance's URL.
                return EndpointUnavailable(
                    f"endpoint {row.name!r} is held by instance {owner.holder}, which "
                    f"advertises this instance's own URL ({owner.holder_url}): an earlier run "
                    f"of this process, whose lease runs out within {LEASE_S:.0f} s, or "
                    "instances sharing one AIEM_ADVERTISE_URL (give each its own)",
                    retry_after=HANDOVER_RETRY_S,
                )
            found = OwnedElsewhere(row.name, owner.holder, owner.holder_url, row.request_timeout)
            until = time.monotonic() + OWNER_MEMORY_S
            self._known[row.id] = self._known[row.name] = (until, found)
            return found
        if not wanted:
            return None
        if owner is not None and owner.holder == self.cluster.id:
            return EndpointUnavailable(
                f"endpoint {row.name!r} is starting on this instance; retry shortly",
                retry_after=STARTING_RETRY_S,
            )
        previous = f" (its owner {owner.holder} stopped renewing its lease)" if owner else ""
        return EndpointUnavailable(
            f"endpoint {row.name!r} has no live owner right now{previous}; another instance "
            f"takes it over within {LEASE_S + 2 * HANDOVER_RETRY_S:.0f} s, retry then",
            retry_after=HANDOVER_RETRY_S,
        )

    def known_elsewhere(self, ref: str) -> OwnedElsewhere | None:
        """The owner ``elsewhere`` found for ``ref`` within the last second, if any (on the
        loop, no store): a fresh error to raise for a request to forward."""
        known = self._known.get(ref)
        if known is None or known[0] < time.monotonic():
            return None
        found = known[1]
        return OwnedElsewhere(found.endpoint, found.owner, found.owner_url, found.timeout_s)

    # ---- what the API shows ----------------------------------------------------------------

    def owners(self) -> dict[str, dict[str, Any]]:
        """Endpoint id -> the holder of its lease as the API shows it (PostgreSQL; off the
        loop). On SQLite there are no leases: see ``local_owner``."""
        if not self.cluster.postgres:
            return {}
        return {o.endpoint_id: o.as_dict() for o in self.cluster.leases.owners()}

    def local_owner(self, live: LiveEndpoint | None) -> dict[str, Any] | None:
        """On SQLite (one instance) a browser endpoint running here is trivially its own."""
        if live is None or not live.provider.needs_browser:
            return None
        return {
            "instance": self.cluster.id,
            "name": self.cluster.name or None,
            "url": self.cluster.url or None,
            "since": None,
            "expires_at": None,  # nothing to expire: no other instance could take it
            "expired": False,
        }

    def local_leases(self) -> list[dict[str, Any]]:
        """/cluster's lease list on SQLite: the browser endpoints this one instance runs."""
        return [
            {"endpoint_id": live.id, "endpoint": live.name, **owner}
            for live in sorted(self.manager.live.values(), key=lambda ep: ep.name)
            if (owner := self.local_owner(live)) is not None
        ]
