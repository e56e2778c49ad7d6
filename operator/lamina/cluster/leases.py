"""Which gateway replica serves a function: one at a time, named by a Lease per function.

With two or more replicas behind the Service, each function is served by exactly one of them, the
holder of its Lease (``coordination.k8s.io/v1``, ``lamina-fn-<name>`` in the function's namespace).
The holder alone sends the function's invocations to its environments, counts its reserved
concurrency, scales its Deployment and claims and deletes its warm pool pods, so every promise a single
gateway keeps holds across replicas; the others forward the function's calls to the holder (its
address is on the Lease). A replica takes a Lease that is free or expired on the first call it gets for
the function (a create, or an update conditional on the Lease's resourceVersion: two replicas can never
both win it), renews what it holds every third of the duration, and stops serving a function as soon as
it has not renewed for the duration less a margin, before anybody else may take the Lease over. On a
clean shutdown it deletes its Leases (conditionally), so the next call anywhere takes them at once;
after a crash they expire.

Cost per invocation: none at the holder while the Lease is fresh (a dict lookup); at another replica,
one hop to the holder. The API server sees one write per held Lease every ``duration / 3`` and one read
per function and second at most from each replica that forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.api.common import GROUP, VERSION
from lamina.environments.base import FunctionConfig

log = logging.getLogger(__name__)

#: The annotation on a Lease that says where its holder takes forwarded calls (``host:port``).
ADDRESS = "lamina.dev/gateway-address"
COMPONENT, LEASE_COMPONENT = "app.kubernetes.io/component", "gateway-lease"
#: A holder stops serving this long before its Lease could expire (a renewal in flight, clock drift).
MARGIN_S = 2.0
#: How long another replica's holding is believed without reading the Lease again.
CACHE_S = 1.0
#: A Lease whose function got no call for this long is given back (longer than any call can run: 15
#: minutes of timeout plus a cold start), so the API server renews Leases of busy functions only and
#: functions spread over replicas added since.
IDLE_RELEASE_S = 20 * 60.0


class Stopping(Exception):
    """This replica is stopping and takes no Lease: the function is served nowhere at the moment."""


def lease_name(fn: FunctionConfig) -> str:
    return f"lamina-fn-{fn.name}"


def _micro_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Held:
    namespace: str
    name: str
    resource_version: str
    renewed: float  # time.monotonic() of the last write that succeeded
    called: float = 0.0  # time.monotonic() of the last call this replica took for the function


@dataclass
class _Seen:
    address: str
    until: float  # time.monotonic() until which the answer is believed


class FunctionLeases:
    """The Leases this replica holds, and where the others' functions are served."""

    def __init__(
        self,
        api: client.ApiClient,
        identity: str,
        address: str,
        duration: float = 15.0,
        idle_release: float = IDLE_RELEASE_S,
        namespace: str | Sequence[str] | None = None,
        on_replicas: Callable[[int, int], None] | None = None,
    ) -> None:
        self.coord: Any = client.CoordinationV1Api(api)  # plain dicts in, models out
        self.identity = identity
        self.address = address
        self.duration = duration
        self.idle_release = idle_release
        #: Where the Leases are counted (the namespaces the gateway watches, or all), and who is told how
        #: many replicas hold some and this one's place among them (each takes its share of the
        #: unreserved pool).
        self.namespaces = [namespace] if isinstance(namespace, str) else (list(namespace or ()) or None)
        self.on_replicas = on_replicas
        self._held: dict[str, _Held] = {}
        self._seen: dict[str, _Seen] = {}
        #: Functions whose Lease this replica has read or written at least once.
        self._known: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._renewer: asyncio.Task[None] | None = None
        #: Set when the gateway stops (:meth:`drain`): no Lease is taken any more.
        self.draining = False

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_forever())

    async def drain(self, busy: Callable[[str], bool]) -> None:
        """The gateway is stopping: take no Lease from now on, and give back at once those of the
        functions no call runs for here (``busy(key)``), so their calls move to another replica now
        rather than when the last call of this one ends. Called again as calls end."""
        self.draining = True
        idle = [key for key in self._held if not busy(key)]
        given = [self._held.pop(key) for key in idle]  # first: no call starts here while it is given back
        for key in idle:
            log.info("function %s: Lease given back (this replica is stopping)", key)
        if given:
            await asyncio.gather(*(asyncio.to_thread(self._release, h) for h in given))

    async def close(self) -> None:
        """Stop renewing and give every Lease back, so other replicas take the functions at once."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        held, self._held = self._held, {}
        await asyncio.gather(*(asyncio.to_thread(self._release, h) for h in held.values()))

    def holds(self, fn: FunctionConfig) -> bool:
        """Whether this replica serves ``fn`` now (no API call)."""
        held = self._held.get(fn.key)
        return held is not None and time.monotonic() - held.renewed < self.duration - MARGIN_S

    def take_call(self, fn: FunctionConfig) -> bool:
        """:meth:`holds`, for a call about to run here: the Lease is kept while calls come."""
        held = self._held.get(fn.key)
        now = time.monotonic()
        if held is None or now - held.renewed >= self.duration - MARGIN_S:
            return False
        held.called = now
        return True

    def forget(self, fn: FunctionConfig) -> None:
        """Read the Lease again next time (its holder did not answer, or said it holds it no more)."""
        self._seen.pop(fn.key, None)

    async def owner(self, fn: FunctionConfig) -> str | None:
        """None when this replica serves ``fn`` (taking its Lease if it is free or expired), else the
        address of the replica that does. Raises ApiException when the API server cannot say, and
        Stopping when the Lease is free but this replica, stopping, may not take it."""
        if self.holds(fn):
            return None
        seen = self._seen.get(fn.key)
        if seen is not None and time.monotonic() < seen.until:
            return seen.address
        lock = self._locks.setdefault(fn.key, asyncio.Lock())
        async with lock:
            if self.holds(fn):
                return None
            return await asyncio.to_thread(self._acquire_or_read, fn)

    def _acquire_or_read(self, fn: FunctionConfig) -> str | None:
        name, namespace = lease_name(fn), fn.namespace
        # A function this replica never saw a Lease of is usually new (its first call anywhere): try
        # to create the Lease straight away, one round trip to the API server on the cold start's path
        # instead of a read and then a create; a 409 says it exists, and it is read as usual.
        fresh = fn.key not in self._known and not self.draining
        for _ in range(4 if fresh else 3):
            lease = None
            if fresh:
                fresh = False
            else:
                try:
                    lease = self.coord.read_namespaced_lease(name, namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
            self._known.add(fn.key)
            started = time.monotonic()
            if lease is None and self.draining:
                raise Stopping(f"no gateway replica serves {fn.key}, and this one is stopping")
            if lease is None:
                try:
                    made = self.coord.create_namespaced_lease(namespace, self._body(fn, None, 0))
                except ApiException as exc:
                    if exc.status == 409:
                        continue  # another replica created it first: read whose it is
                    raise
                self._took(fn, made, started)
                return None
            spec = lease.spec
            renewed = spec.renew_time.timestamp() if spec.renew_time else 0.0
            expires = renewed + (spec.lease_duration_seconds or 0)
            holder = spec.holder_identity
            address = (lease.metadata.annotations or {}).get(ADDRESS)
            if holder and holder != self.identity and address and expires > time.time():
                believed = min(CACHE_S, max(expires - time.time(), 0.0))
                self._seen[fn.key] = _Seen(address, time.monotonic() + believed)
                return address
            if self.draining:
                raise Stopping(f"no gateway replica serves {fn.key}, and this one is stopping")
            transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
            try:
                taken = self.coord.replace_namespaced_lease(
                    name, namespace, self._body(fn, lease.metadata.resource_version, transitions)
                )
            except ApiException as exc:
                if exc.status in (404, 409):
                    continue  # changed (or deleted) since it was read: read it again
                raise
            if holder and holder != self.identity:
                log.info("function %s: took over the Lease %s of replica %s (expired)", fn.key, name, holder)
            self._took(fn, taken, started)
            return None
        raise ApiException(
            status=409, reason=f"the Lease {namespace}/{name} kept changing while it was taken"
        )

    def _took(self, fn: FunctionConfig, lease: Any, started: float) -> None:
        """Record a Lease just written as held since ``started`` (before the write: never later than
        the renewTime the others count from)."""
        meta = lease.metadata
        self._held[fn.key] = _Held(fn.namespace, meta.name, meta.resource_version, started, started)
        self._seen.pop(fn.key, None)
        log.info("function %s: served by this replica (%s)", fn.key, self.identity)

    def _body(self, fn: FunctionConfig, resource_version: str | None, transitions: int) -> dict[str, Any]:
        now = _micro_time(time.time())
        metadata: dict[str, Any] = {
            "name": lease_name(fn),
            "namespace": fn.namespace,
            "annotations": {ADDRESS: self.address},
            "labels": {
                "app.kubernetes.io/managed-by": "lamina",
                COMPONENT: LEASE_COMPONENT,
            },
        }
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        if fn.uid:  # deleted with its Function
            metadata["ownerReferences"] = [
                {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Function", "name": fn.name, "uid": fn.uid}
            ]
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(int(self.duration), 1),
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def replicas(self) -> tuple[int, int]:
        """How many replicas hold an unexpired Lease now, this one counted, in every namespace this
        gateway watches (one API list per namespace, or one for the cluster), and this one's place
        among them (identities sorted): every replica computes the same order from the same Leases."""
        selector = f"{COMPONENT}={LEASE_COMPONENT}"
        if self.namespaces:
            found = [
                lease
                for ns in self.namespaces
                for lease in self.coord.list_namespaced_lease(ns, label_selector=selector).items
            ]
        else:
            found = self.coord.list_lease_for_all_namespaces(label_selector=selector).items
        now = time.time()
        holders = {self.identity}
        for lease in found:
            spec = lease.spec
            if spec.holder_identity and spec.renew_time:
                if spec.renew_time.timestamp() + (spec.lease_duration_seconds or 0) > now:
                    holders.add(spec.holder_identity)
        return len(holders), sorted(holders).index(self.identity)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.duration / 3)
            if self.on_replicas is not None:
                try:
                    self.on_replicas(*await asyncio.to_thread(self.replicas))
                except Exception as exc:  # keep the last count; the renewals below matter more
                    log.warning("counting the gateway replicas failed: %s", exc)
            for key, held in list(self._held.items()):
                if time.monotonic() - held.called > self.idle_release:
                    del self._held[key]  # first: no call starts here while it is given back
                    log.info("function %s: no call for %.0f s: Lease given back", key, self.idle_release)
                    await asyncio.to_thread(self._release, held)
                    continue
                try:
                    await asyncio.to_thread(self._renew, held)
                except ApiException as exc:
                    if exc.status in (404, 409):
                        # Taken over (we had not renewed in time) or deleted: no longer ours.
                        log.warning("function %s: the Lease %s is no longer this replica's", key, held.name)
                        if self._held.get(key) is held:
                            del self._held[key]
                    else:
                        log.warning("function %s: renewing the Lease %s failed: %s", key, held.name, exc)
                except Exception as exc:  # the API server unreachable: holds() turns False in time
                    log.warning("function %s: renewing the Lease %s failed: %s", key, held.name, exc)

    def _renew(self, held: _Held) -> None:
        patch = {
            "metadata": {"resourceVersion": held.resource_version},
            "spec": {"renewTime": _micro_time(time.time()), "holderIdentity": self.identity},
        }
        started = time.monotonic()
        lease = self.coord.patch_namespaced_lease(held.name, held.namespace, patch)
        held.resource_version = lease.metadata.resource_version
        held.renewed = started

    def _release(self, held: _Held, again: bool = True) -> None:
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=held.resource_version)
        )
        try:
            self.coord.delete_namespaced_lease(held.name, held.namespace, body=options)
        except ApiException as exc:
            if exc.status == 409 and again:  # renewed meanwhile (a renewal in flight): still ours?
                with contextlib.suppress(ApiException):
                    lease = self.coord.read_namespaced_lease(held.name, held.namespace)
                    if lease.spec.holder_identity == self.identity:
                        held.resource_version = lease.metadata.resource_version
                        self._release(held, again=False)
            elif exc.status not in (404, 409):
                log.warning("releasing the Lease %s/%s failed: %s", held.namespace, held.name, exc)
