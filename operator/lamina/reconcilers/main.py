"""The kopf wiring: which events call which reconcile, and how the operator is started.

Handlers are thin: they hand the object to :func:`dispatch.reconcile`, which writes the outcome to the
object's status and requeues what waits on something (see :mod:`requeue` for why blocked objects are
not kopf handler failures). Unexpected errors do propagate, and kopf retries those. Nothing here adds a
finalizer: children carry owner references and the API server's garbage collector removes them,
so deleting a Function never waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf

from lamina.kubeapi import load_configuration
from lamina.reconcilers.client import ApiError, Kube
from lamina.reconcilers.context import Context
from lamina.reconcilers.dispatch import RECONCILERS, reconcile, reconcile_key, reconcile_named
from lamina.reconcilers.eventsourcemapping import sync_mapping_status
from lamina.reconcilers.function import sync_function_status
from lamina.reconcilers.layer import artifact_changed
from lamina.reconcilers.pool import reconcile_pools
from lamina.reconcilers.requeue import Requeue
from lamina.reconcilers.settings import OperatorSettings, connection_info
from lamina.resources import labels
from lamina.resources.pod_state import pod_problem

log = logging.getLogger("lamina.operator")

GROUP, VERSION = "lamina.dev", "v1alpha1"
FUNCTIONS = (GROUP, VERSION, "functions")
LAYERS = (GROUP, VERSION, "layers")
MAPPINGS = (GROUP, VERSION, "eventsourcemappings")
DEPLOYMENTS = ("apps", "v1", "deployments")
PODS = ("", "v1", "pods")
#: Longest wait between retries of a blocked object (seconds).
MAX_DELAY = 300.0

registry = kopf.OperatorRegistry()


def plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's body views as plain JSON dicts."""
    doc: dict[str, Any] = json.loads(json.dumps(body, default=dict))
    return doc


def namespace_of(body: kopf.Body) -> str:
    """The object's namespace. kopf gives it as Optional (cluster-scoped kinds have none); every kind
    these handlers watch is namespaced, so a missing one is refused here, naming the object, rather
    than passed on as a namespace "None"."""
    namespace = body.metadata.namespace
    if namespace is None:
        raise kopf.PermanentError(f"{body.get('kind')} {body.metadata.name} has no namespace")
    return namespace


def index(kwargs: Mapping[str, Any], name: str) -> kopf.Index[tuple[str, str], str]:
    """The kopf index ``name`` from a handler's keyword arguments (kopf passes each index by its
    name; its handler protocols cannot declare such arguments, so handlers take them from kwargs)."""
    found: kopf.Index[tuple[str, str], str] = kwargs[name]
    return found


def ctx_of(memo: Any) -> Context:
    ctx: Context = memo.ctx
    return ctx


def post_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    # kopf.event reads only apiVersion, kind and metadata, which a plain dict has as a Body does.
    kopf.event(cast(kopf.Body, dict(obj)), type=type_, reason=reason, message=message)


# ------------------------------------------------------------------------------------- lifecycle


def operator_settings(memo: Any) -> OperatorSettings:
    """The settings ``run_operator`` read; from the environment when kopf was started another way."""
    if getattr(memo, "operator_settings", None) is None:
        memo.operator_settings = OperatorSettings.read([], os.environ)
    found: OperatorSettings = memo.operator_settings
    return found


@kopf.on.login(registry=registry)
def login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """The credentials every lamina process finds, in the same order (lamina.kubeapi)."""
    configuration = load_configuration(operator_settings(memo).kubeconfig)
    return connection_info(configuration, trust_env=settings.networking.trust_env)


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Own annotation keys, so another kopf operator on the same objects never strips ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lamina.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="lamina.dev", key="last-handled-configuration"
    )
    settings.persistence.finalizer = "lamina.dev/operator"
    ours = operator_settings(memo)
    settings.execution.max_workers = ours.workers
    settings.posting.loggers = False  # Events come from the reconcilers, on Ready transitions only
    if getattr(memo, "ctx", None) is None:
        memo.ctx = Context(
            Kube.from_environment(ours.kubeconfig), ours.builders, post=post_event, namespaces=ours.namespaces
        )
    ctx: Context = memo.ctx
    ctx.requeue = Requeue(lambda key: reconcile_key(ctx, key), max_delay=MAX_DELAY)
    ctx.requeue.start()
    if ours.resync_seconds > 0:
        memo.resync = asyncio.create_task(resync_loop(ctx, ours.resync_seconds))


@kopf.on.cleanup(registry=registry)
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = getattr(memo, "resync", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ctx: Context | None = getattr(memo, "ctx", None)
    if ctx is not None and ctx.requeue is not None:
        await asyncio.to_thread(ctx.requeue.stop)
    if ctx is not None:
        ctx.fanout.shutdown(wait=False, cancel_futures=True)


async def resync_loop(ctx: Context, interval: float) -> None:
    """Re-reconcile everything now and then: picks up edits nothing watches (a ConfigMap a Function
    or Layer reads its content from) and repairs children changed behind the operator's back."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(resync_all, ctx)
        except Exception:
            log.exception("resync failed; trying again in %ss", interval)


def resync_all(ctx: Context) -> None:
    for kind in RECONCILERS:  # layers first: functions then see their newest artifacts
        for body in ctx.kube.list(f"{GROUP}/{VERSION}", kind):
            reconcile(ctx, body)


# ---------------------------------------------------------------------------------------- indexes


@kopf.index(*FUNCTIONS, registry=registry)
def functions_by_layer(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str | None, str], str]:
    return {(namespace, layer): name for layer in spec.get("layers") or []}


@kopf.index(*MAPPINGS, registry=registry)
def mappings_by_function(
    namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str | None, str], str]:
    return {(namespace, str(spec.get("functionName") or "").partition(":")[0]): name}


def _each(ctx: Context, kind: str, namespace: str, names: Iterable[str]) -> None:
    for name in sorted(set(names)):
        reconcile_named(ctx, kind, namespace, name)


# -------------------------------------------------------------------------------------- functions


@kopf.on.resume(*FUNCTIONS, registry=registry)
@kopf.on.create(*FUNCTIONS, registry=registry)
@kopf.on.update(*FUNCTIONS, field="spec", registry=registry)
def function_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    ctx = ctx_of(memo)
    if reconcile(ctx, plain(body)) is None:
        return
    # Mappings created before their function waited for it; let them go now.
    ns, name = namespace_of(body), body.metadata.name
    _each(ctx, "EventSourceMapping", ns, index(kwargs, "mappings_by_function").get((ns, name), []))


@kopf.on.event(*DEPLOYMENTS, labels={labels.NAME: labels.FUNCTION_APP}, registry=registry)
def function_deployment_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    function = body.metadata.labels.get(labels.FUNCTION)
    if not function:
        return
    ctx, ns = ctx_of(memo), namespace_of(body)
    ctx.note_child_event((ns, function))
    if event.get("type") == "DELETED":
        # Deleted behind the operator's back (or with its Function, which is then gone too).
        ctx.forget_readiness((ns, function))
        reconcile_named(ctx, "Function", ns, function)
    else:
        try:
            sync_function_status(ctx, ns, function, plain(body))
        except Exception:
            # kopf does not retry an event handler: without this the readiness this event carries
            # (say, the Deployment controller's first observation) would be lost until the next
            # Deployment event, which may never come. A full reconcile will write it.
            log.warning("Function %s/%s: status not refreshed; reconciling", ns, function, exc_info=True)
            if ctx.requeue is not None:
                ctx.requeue.add(("Function", ns, function), 1.0)


@kopf.on.event(*PODS, labels={labels.NAME: labels.FUNCTION_APP}, registry=registry)
def function_pod_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pod that cannot start (image, init container, crash, scheduling) changes nothing in its
    Deployment's status: the Function's readiness learns it from the pod itself."""
    function = body.metadata.labels.get(labels.FUNCTION)
    if not function:
        return
    ctx, ns = ctx_of(memo), namespace_of(body)
    problem = None if event.get("type") == "DELETED" else pod_problem(plain(body))
    if ctx.note_pod((ns, function), body.metadata.name, problem):
        sync_function_status(ctx, ns, function)


# ----------------------------------------------------------------------------------------- layers


@kopf.on.resume(*LAYERS, registry=registry)
@kopf.on.create(*LAYERS, registry=registry)
@kopf.on.update(*LAYERS, field="spec", registry=registry)
def layer_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    ctx = ctx_of(memo)
    if artifact_changed(reconcile(ctx, plain(body))):
        ns, name = namespace_of(body), body.metadata.name
        _each(ctx, "Function", ns, index(kwargs, "functions_by_layer").get((ns, name), []))


@kopf.on.event(*LAYERS, registry=registry)
def layer_deleted(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    if event.get("type") == "DELETED":
        ns, name = namespace_of(body), body.metadata.name
        ctx = ctx_of(memo)
        ctx.metrics.blocked.clear(("Layer", ns, name))
        _each(ctx, "Function", ns, index(kwargs, "functions_by_layer").get((ns, name), []))


@kopf.on.event(*FUNCTIONS, registry=registry)
@kopf.on.event(*MAPPINGS, registry=registry)
async def object_deleted(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A deleted object is no longer blocked (nothing else would tell the metrics: no finalizers);
    a deleted Function may leave a warm pool nobody uses."""
    if event.get("type") == "DELETED":
        ctx = ctx_of(memo)
        ctx.metrics.blocked.clear((body["kind"], namespace_of(body), body.metadata.name))
        if body["kind"] == "Function":
            await asyncio.to_thread(reconcile_pools, ctx, namespace_of(body))


_POOL_SIZES: dict[str, str | None] = {}


@kopf.on.event("", "v1", "namespaces", registry=registry)
def namespace_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A namespace's ``lamina.dev/pool-size`` annotation changed: resize (or remove) its pools, and
    reconcile its Functions (their status says which path their cold starts take). An event handler,
    not a kopf field handler: nothing is written to users' namespaces."""
    name = body.metadata.name
    if event.get("type") == "DELETED":
        _POOL_SIZES.pop(name, None)
        return
    watched = operator_settings(memo).namespaces
    if watched and name not in watched:
        return  # another operator's namespace (RBAC may not stop this one where it is cluster-admin)
    value = (body.metadata.annotations or {}).get(labels.POOL_SIZE)
    seen = name in _POOL_SIZES
    if _POOL_SIZES.get(name) == value and seen:
        return
    _POOL_SIZES[name] = value
    if seen or value is not None:  # at start-up, only namespaces that set a size need a look now
        ctx = ctx_of(memo)
        try:
            reconcile_pools(ctx, name)
            functions = ctx.kube.list(f"{GROUP}/{VERSION}", "Function", name)
        except ApiError as e:  # a namespace this operator may not manage: not its pools
            log.debug("namespace %s: pools not reconciled: %s", name, e)
            return
        _each(ctx, "Function", name, (f["metadata"]["name"] for f in functions))


# ------------------------------------------------------------------------------- event sources


@kopf.on.resume(*MAPPINGS, registry=registry)
@kopf.on.create(*MAPPINGS, registry=registry)
@kopf.on.update(*MAPPINGS, field="spec", registry=registry)
def mapping_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconcile(ctx_of(memo), plain(body))


@kopf.on.event(*DEPLOYMENTS, labels={labels.NAME: labels.WORKER_APP}, registry=registry)
def mapping_deployment_event(event: Mapping[str, Any], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    mapping = body.metadata.labels.get(labels.MAPPING)
    if not mapping:
        return
    ctx, ns = ctx_of(memo), namespace_of(body)
    if event.get("type") == "DELETED":
        reconcile_named(ctx, "EventSourceMapping", ns, mapping)
    else:
        sync_mapping_status(ctx, ns, mapping)


# ------------------------------------------------------------------------------------------ main


class QuietWatchHandlers(logging.Filter):
    """Drop kopf's "Handler 'x' succeeded." lines of the handlers that only watch (Deployment and
    Layer events): several per rollout, they would drown what the reconcilers log."""

    WATCHERS = (
        "function_deployment_event",
        "function_pod_event",
        "mapping_deployment_event",
        "layer_deleted",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.endswith("succeeded.") and any(f"'{w}'" in message for w in self.WATCHERS))


def run_operator(argv: list[str] | None = None) -> int:
    """``lamina operator``: run the handlers until SIGINT/SIGTERM; returns the exit status."""
    ours = OperatorSettings.read(argv or [], os.environ)
    kopf.configure(verbose=ours.verbose, quiet=ours.quiet, log_format=kopf.LogFormat[ours.log_format.upper()])
    if not ours.verbose:
        logging.getLogger("kopf.objects").addFilter(QuietWatchHandlers())
    ctx = Context(
        Kube.from_environment(ours.kubeconfig), ours.builders, post=post_event, namespaces=ours.namespaces
    )
    ctx.kube.on_response = ctx.metrics.count_api_request
    if ours.metrics_port is not None:
        ctx.metrics.serve(ours.metrics_port, ours.metrics_address)
    kopf_settings = kopf.OperatorSettings()
    # Watching named namespaces, kopf needs no cluster-wide watch of CRDs or namespaces (the CRDs exist
    # before the operator starts): the chart then binds the operator in those namespaces only. Set
    # before kopf starts its observers (a startup handler would race them).
    kopf_settings.scanning.disabled = bool(ours.namespaces)
    kopf.run(
        settings=kopf_settings,
        registry=registry,
        clusterwide=not ours.namespaces,
        namespaces=list(ours.namespaces),
        standalone=ours.peering is None,
        peering_name=ours.peering,
        priority=ours.priority,
        liveness_endpoint=ours.liveness,
        memo=kopf.Memo(ctx=ctx, operator_settings=ours),
    )
    return 0
