"""The reconcilers, table-driven over an in-memory ``Kube`` (tests/support/memory_kube.py).

Each row states the objects before, the object reconciled, and what must follow: the children applied,
the Ready condition written, the Events posted and the blocked reason (Knative's table tests:
``Objects``, ``Key``, ``WantCreates``/``WantUpdates``, ``WantStatusUpdates``, ``WantEvents``;
``InduceFailure`` is ``MemoryKube.fail``). These are the fast middle layer; tests/cluster runs the same
reconcilers against a real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lamina.reconcilers.client import ApiError, Conflict
from lamina.reconcilers.context import Context
from lamina.reconcilers.dispatch import reconcile
from lamina.reconcilers.function import DEPLOYING_RECHECK_SECONDS, function_ref, sync_function_status
from lamina.reconcilers.requeue import Requeue
from lamina.reconcilers.status import BLOCKING_REASONS, BlockReason
from lamina.resources import Settings, labels
from tests.support.memory_kube import MemoryKube

NS = "team"
SETTINGS = Settings(gateway_url="http://gw:8080")
AUTH_SETTINGS = Settings(gateway_url="http://gw:8080", auth_key=b"k" * 32)  # authentication on
INLINE = {"inline": "def handler(event, context):\n    return event\n"}


def function(name: str = "fn", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"handler": "index.handler", "code": INLINE, **spec},
    }


def layer(
    name: str, *, ready: bool | None = True, runtimes: list[str] | None = None, **spec: Any
) -> dict[str, Any]:
    """A Layer; ``ready`` True: reconciled and available, False: not available, None: never reconciled."""
    status: dict[str, Any] = {}
    if ready is not None:
        reason = "Available" if ready else "ConfigMapNotFound"
        status["conditions"] = [{"type": "Ready", "status": str(ready), "reason": reason, "message": ""}]
    if ready:
        status.update(revision=1, digest="d" * 64, artifact=f"configmap://{NS}/layer-{name}-1")
    spec = spec or {"url": "https://example.com/layer.zip", "sha256": "a" * 64}
    if runtimes:
        spec["compatibleRuntimes"] = runtimes
    return {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "Layer",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
        "status": status,
    }


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": data,
    }


def mapping(name: str = "orders", function_name: str = "fn", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "EventSourceMapping",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "functionName": function_name,
            "source": {"redis": {"url": "redis://r:6379", "stream": "orders"}},
            **spec,
        },
    }


WATCH = {"kubernetes": {"apiVersion": "apps/v1", "kind": "Deployment", "serviceAccountName": "watcher"}}


def account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}}


@dataclass
class Row:
    """One behaviour: ``objects`` before, ``subject`` reconciled, and what must follow."""

    name: str
    objects: list[dict[str, Any]]
    subject: dict[str, Any]
    applies: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) applied or created
    ready: tuple[str, str] = ("False", "Deploying")  # the Ready condition written (status, reason)
    events: list[tuple[str, str]] = field(default_factory=list)  # (type, reason) posted
    blocked: BlockReason | None = None
    message: str = ""  # a part of Ready's message
    induce: Callable[[MemoryKube], None] | None = None
    status: dict[str, Any] = field(default_factory=dict)  # fields the status must have
    settings: Settings = SETTINGS


FUNCTION_CHILDREN = {("ConfigMap", "fn-code"), ("Service", "fn-fn"), ("Deployment", "fn-fn")}

ROWS = [
    Row(
        "a new function gets its code, Service and Deployment; not ready until the rollout",
        [],
        function(),
        applies=FUNCTION_CHILDREN,
        status={"url": "http://gw:8080/url/team.fn", "layerRevisions": {}, "desiredEnvironments": 0},
    ),
    Row(
        "a function with its layer ready mounts the layer's revision",
        [layer("deps")],
        function(layers=["deps"]),
        applies=FUNCTION_CHILDREN,
        status={"layerRevisions": {"deps": 1}},
    ),
    Row(
        "an invalid spec is blocked until it is edited",
        [],
        function(timeoutSeconds=0),
        ready=("False", "InvalidSpec"),
        events=[("Warning", "InvalidSpec")],
        blocked=BlockReason.INVALID_SPEC,
        message="timeoutSeconds",
    ),
    Row(
        "a missing layer blocks",
        [],
        function(layers=["deps"]),
        ready=("False", "LayerNotFound"),
        events=[("Warning", "LayerNotFound")],
        blocked=BlockReason.LAYER_NOT_FOUND,
        message="Layer deps does not exist",
    ),
    Row(
        "a layer that is not ready blocks",
        [layer("deps", ready=False)],
        function(layers=["deps"]),
        ready=("False", "LayerNotReady"),
        events=[("Warning", "LayerNotReady")],
        blocked=BlockReason.LAYER_NOT_READY,
    ),
    Row(
        "a layer for another runtime blocks",
        [layer("deps", runtimes=["python3.11"])],
        function(layers=["deps"], runtime="python3.12"),
        ready=("False", "LayerIncompatible"),
        events=[("Warning", "LayerIncompatible")],
        blocked=BlockReason.LAYER_INCOMPATIBLE,
        message="supports python3.11, not python3.12",
    ),
    Row(
        "a missing Secret blocks",
        [],
        function(environmentFrom=[{"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}]),
        ready=("False", "SecretNotFound"),
        events=[("Warning", "SecretNotFound")],
        blocked=BlockReason.SECRET_NOT_FOUND,
        message="Secret creds (for TOKEN) does not exist",
    ),
    Row(
        # The operator reads a Secret's metadata only: a missing key is the kubelet's to report.
        "a Secret without the key is not read into",
        [secret("creds", other="eA==")],
        function(environmentFrom=[{"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}]),
        applies=FUNCTION_CHILDREN,
    ),
    Row(
        "a Secret with the key lets it through",
        [secret("creds", token="eA==")],
        function(environmentFrom=[{"name": "TOKEN", "secretKeyRef": {"name": "creds", "key": "token"}}]),
        applies=FUNCTION_CHILDREN,
    ),
    Row(
        "a missing code ConfigMap blocks",
        [],
        function(code={"configMap": {"name": "src"}}),
        ready=("False", "ConfigMapNotFound"),
        events=[("Warning", "ConfigMapNotFound")],
        blocked=BlockReason.CONFIG_MAP_NOT_FOUND,
        message="ConfigMap src (the code) does not exist",
    ),
    Row(
        "code in S3 that cannot be read blocks, naming bucket and key",
        [],
        function(code={"s3": {"bucket": "code", "key": "fn.zip", "endpoint": "http://127.0.0.1:1"}}),
        ready=("False", "S3ObjectUnreadable"),
        events=[("Warning", "S3ObjectUnreadable")],
        blocked=BlockReason.S3_OBJECT_UNREADABLE,
        message="fn.zip",
    ),
    Row(
        "an alias naming a version that does not exist blocks",
        [],
        function(aliases={"live": {"functionVersion": "3"}}),
        applies=FUNCTION_CHILDREN,  # $LATEST's children come first
        ready=("False", "AliasVersionNotFound"),
        events=[("Warning", "AliasVersionNotFound")],
        blocked=BlockReason.ALIAS_VERSION_NOT_FOUND,
    ),
    Row(
        "a child the API server refuses blocks with its message",
        [],
        function(),
        applies=FUNCTION_CHILDREN,  # applied side by side: the others went through
        ready=("False", "ApplyFailed"),
        events=[("Warning", "ApplyFailed")],
        blocked=BlockReason.APPLY_FAILED,
        message="spec.template: Invalid value",
        induce=lambda kube: kube.fail(
            "apply", "Deployment", lambda: ApiError(422, "Invalid", "spec.template: Invalid value")
        ),
    ),
    Row(
        "a status write that conflicts is computed again from a fresh read",
        [],
        function(),
        applies=FUNCTION_CHILDREN,
        # Another writer (the Deployment watcher) changed the status after the handler's copy was read.
        induce=lambda kube: kube.merge_patch(
            function_ref(NS, "fn"), {"status": {"readyEnvironments": 0}}, "watcher", subresource="status"
        ),
    ),
    Row(
        "a 409 from the API server is retried the same way",
        [],
        function(),
        applies=FUNCTION_CHILDREN,
        induce=lambda kube: kube.fail(
            "merge-patch", "Function", lambda: Conflict(409, "Conflict", "modified"), subresource="status"
        ),
    ),
    # -- Layers ------------------------------------------------------------------------------
    Row(
        "a layer from a URL is available at once",
        [],
        layer("deps", ready=None),
        ready=("True", "Available"),
        events=[("Normal", "Available")],
        status={"revision": 1, "digest": "a" * 64},
    ),
    Row(
        "a layer whose content ConfigMap is missing blocks",
        [],
        layer("deps", ready=None, configMap={"name": "deps-src"}),
        ready=("False", "ConfigMapNotFound"),
        events=[("Warning", "ConfigMapNotFound")],
        blocked=BlockReason.CONFIG_MAP_NOT_FOUND,
    ),
    Row(
        "a requirements layer is not supported yet",
        [],
        layer("deps", ready=None, requirements=["requests==2.32.3"]),
        ready=("False", "NotSupportedYet"),
        events=[("Warning", "NotSupportedYet")],
        blocked=BlockReason.NOT_SUPPORTED_YET,
    ),
    # -- EventSourceMappings -----------------------------------------------------------------
    Row(
        "a mapping whose function is missing waits for it",
        [],
        mapping(),
        ready=("False", "FunctionNotFound"),
        events=[("Warning", "FunctionNotFound")],
        blocked=BlockReason.FUNCTION_NOT_FOUND,
        message="Function fn does not exist",
        status={"state": "Creating", "source": "redis orders"},
    ),
    Row(
        "a mapping gets its worker, identity first",
        [function()],
        mapping(),
        applies={
            ("ServiceAccount", "esm-orders"),
            ("Role", "esm-orders"),
            ("RoleBinding", "esm-orders"),
            ("Deployment", "esm-orders"),
        },
        ready=("False", "Updating"),  # the worker Deployment has no status yet
        status={"source": "redis orders"},
    ),
    # -- Kubernetes sources: the named ServiceAccount, checked with SubjectAccessReviews ----------------
    Row(
        "a kubernetes source whose ServiceAccount is missing waits for it",
        [function()],
        mapping(source=WATCH),
        ready=("False", "ServiceAccountNotFound"),
        events=[("Warning", "ServiceAccountNotFound")],
        blocked=BlockReason.SERVICE_ACCOUNT_NOT_FOUND,
        message="ServiceAccount watcher (spec.source.kubernetes.serviceAccountName) does not exist",
    ),
    Row(
        "with auth on, a kubernetes source whose ServiceAccount may not invoke its function is blocked",
        [function(), account("watcher")],
        mapping(source=WATCH),
        ready=("False", "ServiceAccountCannotInvoke"),
        events=[("Warning", "ServiceAccountCannotInvoke")],
        blocked=BlockReason.SERVICE_ACCOUNT_CANNOT_INVOKE,
        message="ServiceAccount watcher may not invoke function fn in namespace team "
        "(missing permission: invoke on functions.lamina.dev)",
        induce=lambda kube: kube.allow(
            "system:serviceaccount:team:watcher", ("list", "watch"), "apps", "deployments", "team"
        ),
        settings=AUTH_SETTINGS,
    ),
    Row(
        "a kubernetes source whose ServiceAccount may not list and watch is blocked, naming the permission",
        [function(), account("watcher")],
        mapping(source=WATCH),
        ready=("False", "ServiceAccountCannotWatch"),
        events=[("Warning", "ServiceAccountCannotWatch")],
        blocked=BlockReason.SERVICE_ACCOUNT_CANNOT_WATCH,
        message="ServiceAccount watcher may not list and watch deployments.apps in namespace team "
        "(missing permission: list, watch)",
    ),
    Row(
        "a kubernetes source of a kind the API server does not serve is blocked",
        [function(), account("watcher")],
        mapping(source={"kubernetes": {**WATCH["kubernetes"], "kind": "Gadget"}}),
        ready=("False", "KindNotFound"),
        events=[("Warning", "KindNotFound")],
        blocked=BlockReason.KIND_NOT_FOUND,
        message="the API server serves no kind Gadget in apps/v1",
    ),
    Row(
        "a kubernetes source allowed to watch runs as its ServiceAccount, granted nothing",
        [function(), account("watcher")],
        mapping(source=WATCH),
        applies={
            ("ServiceAccount", "esm-orders"),
            ("Role", "esm-orders"),
            ("RoleBinding", "esm-orders"),
            ("Secret", "esm-orders-status-token"),
            ("Deployment", "esm-orders"),
        },
        ready=("False", "Updating"),
        induce=lambda kube: kube.allow(
            "system:serviceaccount:team:watcher", ("list", "watch"), "apps", "deployments", "team"
        ),
        status={"source": "kubernetes Deployment.apps in its namespace"},
    ),
]


def run(row: Row) -> tuple[MemoryKube, list[tuple[str, str, str]], Any]:
    kube = MemoryKube(*row.objects)
    subject = kube.put(row.subject)
    events: list[tuple[str, str, str]] = []
    ctx = Context(
        kube, row.settings, post=lambda obj, type_, reason, message: events.append((type_, reason, message))
    )
    if row.induce is not None:
        row.induce(kube)
    result = reconcile(ctx, subject)
    return kube, events, (ctx, subject, result)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_reconcile(row: Row) -> None:
    kube, events, (ctx, subject, result) = run(row)
    kind, name = subject["kind"], subject["metadata"]["name"]
    # Secrets the operator writes are created once (it may neither read nor patch them).
    created = [w for w in kube.writes_of("create") if w.kind != "SubjectAccessReview"]  # questions
    applied = {(w.kind, w.name) for w in kube.writes_of("apply") + created}
    assert applied == row.applies, "children applied (or created once)"
    after = kube.object(kind, name, NS)
    assert after is not None
    status = after.get("status") or {}
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == row.ready, ready
    assert row.message in ready["message"]
    assert status["observedGeneration"] == after["metadata"]["generation"]
    for key, value in row.status.items():
        assert status.get(key) == value, key
    assert [(t, r) for t, r, _ in events] == row.events
    # What the operator's metric of blocked objects says (lamina_operator_blocked_objects).
    blocked = {
        (s.labels["kind"], s.labels["reason"]): s.value
        for f in ctx.metrics.blocked.collect()
        for s in f.samples
    }
    if row.blocked is None:
        assert result is not None and blocked == {}
    else:
        assert result is None, "a blocked reconcile returns nothing"
        assert blocked == {(kind, row.blocked): 1} and row.blocked in BLOCKING_REASONS


def test_every_block_reason_has_a_row() -> None:
    assert {r.blocked for r in ROWS if r.blocked is not None} == set(BlockReason)


@pytest.mark.parametrize("which", ["conflicts", "409"])
def test_a_conflicting_status_write_is_retried_not_lost(which: str) -> None:
    [row] = [r for r in ROWS if which in r.name]
    kube, _, _ = run(row)
    writes = [w for w in kube.writes_of("merge-patch", "Function") if w.manager == "lamina-operator"]
    assert len(writes) == 2  # the refused write, then one computed from a fresh read
    assert ("get", "Function", "fn") in kube.reads
    stored = kube.object("Function", "fn", NS) or {}
    assert (
        writes[1].body["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"]
    )  # it went in
    if which == "conflicts":  # the first carried the handler's stale copy's version
        assert writes[0].body["metadata"]["resourceVersion"] != writes[1].body["metadata"]["resourceVersion"]


def test_the_gateway_keeps_replicas_the_operator_does_not_fight_it() -> None:
    """The replicas hand-off of reconcilers/apply.py: a second reconcile leaves a scaled Deployment alone."""
    kube, _, (ctx, subject, _) = run(ROWS[0])
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None and deployment["spec"]["replicas"] == 0
    scaled = copy.deepcopy(deployment)
    scaled["spec"]["replicas"] = 3
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": scaled["metadata"],
            "spec": {"replicas": 3},
        },
        "lamina-gateway",
    )
    reconcile(ctx, kube.object("Function", "fn", NS) or subject)
    assert (kube.object("Deployment", "fn-fn", NS) or {})["spec"]["replicas"] == 3


# -- sync_function_status: the Deployment watcher's path -------------------------------------------


def ready_deployment(deployment: dict[str, Any], replicas: int) -> dict[str, Any]:
    rolled = copy.deepcopy(deployment)
    rolled["spec"]["replicas"] = replicas
    rolled["status"] = {
        "observedGeneration": rolled["metadata"]["generation"],
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }
    return rolled


def reconciled(**spec: Any) -> tuple[MemoryKube, Context, list[tuple[str, str, str]]]:
    kube = MemoryKube()
    events: list[tuple[str, str, str]] = []
    ctx = Context(kube, SETTINGS, post=lambda obj, t, r, m: events.append((t, r, m)))
    reconcile(ctx, kube.put(function(**spec)))
    return kube, ctx, events


def test_a_rolled_out_deployment_makes_the_function_ready_with_one_event() -> None:
    kube, ctx, events = reconciled(provisionedConcurrency=1)
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    kube.writes.clear()
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 1))
    status = (kube.object("Function", "fn", NS) or {})["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], status["readyEnvironments"]) == ("True", "EnvironmentsReady", 1)
    assert [(t, r) for t, r, _ in events] == [("Normal", "EnvironmentsReady")]
    assert len(kube.writes_of("merge-patch", "Function")) == 1


def test_a_deployment_event_that_changes_nothing_reads_and_writes_nothing() -> None:
    """The fast path: most Deployment events (a resync, a field the Function does not report) are
    answered from the readiness last written, without reading the Function."""
    kube, ctx, _ = reconciled(provisionedConcurrency=1)
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 1))
    kube.writes.clear()
    kube.reads.clear()
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 1))  # the same readiness again
    assert kube.reads == [] and kube.writes == []


def test_a_blocked_function_keeps_its_reason_while_the_counts_follow_the_deployment() -> None:
    kube = MemoryKube(layer("deps", ready=False))
    ctx = Context(kube, SETTINGS)
    fn = kube.put(function(layers=["deps"]))
    reconcile(ctx, fn)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "fn-fn",
            "namespace": NS,
            "generation": 1,
            "annotations": {labels.PROVISIONED: "0"},
        },
        "spec": {"replicas": 2},
    }
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 2))
    status = (kube.object("Function", "fn", NS) or {})["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "LayerNotReady")
    assert status["readyEnvironments"] == 2


def test_nothing_is_written_for_a_generation_not_yet_reconciled() -> None:
    kube, ctx, _ = reconciled()
    # An edit the reconcile has not seen yet: generation 2, observedGeneration still 1.
    kube.merge_patch(function_ref(NS, "fn"), {"spec": {"memoryMB": 256}}, "test")
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    kube.writes.clear()
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 1))
    assert kube.writes_of("merge-patch", "Function") == []


def ready_of(kube: MemoryKube) -> tuple[str, str]:
    status = (kube.object("Function", "fn", NS) or {})["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    return ready["status"], ready["reason"]


def test_a_readiness_that_was_not_written_does_not_hide_the_event_that_writes_it() -> None:
    """What made a cluster test wait a minute for Ready under load: a Deployment event's readiness was
    remembered as reported before its status write went through. The write failed (the API server
    did not answer in time); the kopf event handler is not retried; the Deployment controller's
    next event carried the same readiness and was skipped as 'unchanged'. The Function kept saying
    the Deployment controller had not seen the change. Now only a written readiness is remembered."""
    kube, ctx, _ = reconciled()  # Deploying: the controller has not observed generation 1 yet
    assert ready_of(kube) == ("False", "Deploying")
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    observed = ready_deployment(deployment, 0)
    kube.fail("merge-patch", "Function", subresource="status")
    with pytest.raises(ApiError):
        sync_function_status(ctx, NS, "fn", observed)
    assert ready_of(kube) == ("False", "Deploying")
    sync_function_status(ctx, NS, "fn", observed)  # the next event with the same readiness
    assert ready_of(kube) == ("True", "OnDemand")


def test_a_readiness_of_a_generation_not_yet_reported_is_not_remembered() -> None:
    """The watcher computes readiness for an edit its reconcile has not written yet and writes
    nothing; the same readiness must be written when it comes again after that reconcile."""
    kube, ctx, _ = reconciled()
    kube.merge_patch(function_ref(NS, "fn"), {"spec": {"memoryMB": 256}}, "test")
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 0))  # generation 2 unreported
    reconcile(ctx, kube.object("Function", "fn", NS) or {})  # writes generation 2: Deploying again
    assert ready_of(kube) == ("False", "Deploying")
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    sync_function_status(ctx, NS, "fn", ready_deployment(deployment, 0))
    assert ready_of(kube) == ("True", "OnDemand")


def test_the_operator_reads_no_secret_data() -> None:
    """The Secrets a Function's environmentFrom names are asked for their metadata only (issue 9): no row
    reads one with a plain get (S3 credentials, the one Secret value the operator reads, are not in
    these rows)."""
    for row in ROWS:
        kube, _, _ = run(row)
        assert not [r for r in kube.reads if r[0] == "get" and r[1] == "Secret"], row.name
    kube, _, _ = run(next(r for r in ROWS if r.name == "a Secret without the key is not read into"))
    assert ("get_metadata", "Secret", "creds") in kube.reads


def test_published_versions_get_the_invoke_secret_of_the_function_as_the_version_is() -> None:
    """A version's pods refuse /invoke without the function's invoke secret as $LATEST's do (the
    gateway sends the same one), and carry the execution credentials of the version's ServiceAccount
    (issue 9): each version's Deployment reads them from a Secret the operator created."""
    kube = MemoryKube()
    subject = kube.put(function(publishVersions=True, serviceAccountName="old"))
    ctx = Context(kube, AUTH_SETTINGS, post=lambda *_: None)
    reconcile(ctx, subject)
    kube.merge_patch(function_ref(NS, "fn"), {"spec": {"serviceAccountName": "new"}}, "test")
    reconcile(ctx, kube.object("Function", "fn", NS) or {})

    def secret_ref(deployment: str) -> dict[str, Any]:
        obj = kube.object("Deployment", deployment, NS)
        assert obj is not None, deployment
        env = {e["name"]: e for e in obj["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env["LAMINA_INVOKE_SECRET"]["valueFrom"]["secretKeyRef"]

    created = {w.name: w.body for w in kube.writes_of("create", "Secret")}
    latest, v1, v2 = secret_ref("fn-fn"), secret_ref("fn-fn-v1"), secret_ref("fn-fn-v2")
    assert latest == v2 and v1 != v2  # version 1 runs as "old", with that account's credentials
    for ref in (v1, v2):
        values = created[ref["name"]]["stringData"]
        assert values["invoke-secret"] == created[latest["name"]]["stringData"]["invoke-secret"]
    assert created[v1["name"]]["stringData"] != created[v2["name"]]["stringData"]


def test_with_auth_a_kubernetes_source_runs_once_its_account_may_invoke() -> None:
    """A Kubernetes source's worker invokes through the gateway as the ServiceAccount the mapping names
    (the pod's projected token), which lamina grants nothing: with authentication on, a missing
    ``invoke`` blocks the mapping naming the permission (rather than every record failing with 403),
    and a RoleBinding that grants it unblocks it."""
    kube = MemoryKube(function(), account("watcher"))
    subject = kube.put(mapping(source=WATCH))
    watcher = "system:serviceaccount:team:watcher"
    kube.allow(watcher, ("list", "watch"), "apps", "deployments", "team")
    ctx = Context(kube, AUTH_SETTINGS, post=lambda *_: None)
    reconcile(ctx, subject)
    ready = next(
        c
        for c in (kube.object("EventSourceMapping", "orders", NS) or {})["status"]["conditions"]
        if c["type"] == "Ready"
    )
    assert ready["reason"] == "ServiceAccountCannotInvoke"
    kube.allow(watcher, ("invoke",), "lamina.dev", "functions", "team")
    reconcile(ctx, kube.object("EventSourceMapping", "orders", NS) or {})
    assert kube.object("Deployment", "esm-orders", NS) is not None


def test_a_deployment_the_controller_has_not_observed_is_looked_at_again() -> None:
    """Level-triggered: the Deployment event that carries the controller's first observation may
    never come, so a reconcile that leaves the Function "Deploying" schedules another one."""
    kube, ctx, _ = reconciled(provisionedConcurrency=1)
    assert ctx.take_revisit(("Function", NS, "fn")) == DEPLOYING_RECHECK_SECONDS
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    kube.put(ready_deployment(deployment, 1))  # the controller caught up; no event was delivered
    reconcile(ctx, kube.object("Function", "fn", NS) or {})
    status = (kube.object("Function", "fn", NS) or {})["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "EnvironmentsReady")
    assert ctx.take_revisit(("Function", NS, "fn")) is None


def test_a_reconcile_does_not_drop_the_look_again_another_reconcile_scheduled() -> None:
    """Two reconciles of one Function may overlap (a kopf handler and the requeue's thread): the one
    that finishes last, having nothing to wait on, must not cancel the other's look at a Deployment
    the controller has not observed, or that Function stays "Deploying"."""
    kube, ctx, _ = reconciled(provisionedConcurrency=1)
    key = ("Function", NS, "fn")
    assert ctx.take_revisit(key) == DEPLOYING_RECHECK_SECONDS  # scheduled below, as the other one did
    ctx.requeue = Requeue(lambda key: None)  # not started: only what is pending is looked at
    ctx.requeue.add(key, DEPLOYING_RECHECK_SECONDS)  # the other reconcile's look again
    deployment = kube.object("Deployment", "fn-fn", NS)
    assert deployment is not None
    kube.put(ready_deployment(deployment, 1))
    reconcile(ctx, kube.object("Function", "fn", NS) or {})
    assert key in ctx.requeue.pending()


def test_reservations_are_counted_in_the_namespaces_the_operator_watches() -> None:
    """Limit 10, at least 4 unreserved: another namespace's older reservation of 5 would leave room for
    1 more. An operator that watches ``team`` alone counts as its gateway does, and grants 4."""
    settings = Settings(gateway_url="http://gw:8080", concurrency_limit=10, min_unreserved=4)
    elsewhere = function("big", reservedConcurrency=5)
    elsewhere["metadata"].update(namespace="other", creationTimestamp="2026-01-01T00:00:00Z")
    for namespaces, expected in (((NS,), "Granted"), ((), "Refused")):
        kube = MemoryKube(elsewhere)
        ctx = Context(kube, settings, namespaces=namespaces)
        fn = function(reservedConcurrency=4)
        fn["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
        reconcile(ctx, kube.put(fn))
        status = (kube.object("Function", "fn", NS) or {})["status"]
        assert status["reservation"] == expected, (namespaces, status)


class OneNamespaceKube(MemoryKube):
    """RBAC that lets the operator list Functions in a namespace but not across the cluster."""

    refused = True

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        if kind == "Function" and namespace is None and self.refused:
            raise ApiError(403, "Forbidden", "functions.lamina.dev is forbidden at the cluster scope")
        return super().list(api_version, kind, namespace, label_selector)


def test_an_operator_of_the_whole_cluster_refused_the_list_of_functions_grants_no_reservation() -> None:
    """An operator that watches every namespace counts every namespace's reservations. Refused that
    list (RBAC bound to one namespace only, against the chart), it must not count its own namespace
    alone: there, the other namespace's older reservation of 5 is unseen and 4 more would be granted
    past the unreserved pool's floor. The reconcile fails with the API's error instead (kopf retries)."""
    settings = Settings(gateway_url="http://gw:8080", concurrency_limit=10, min_unreserved=4)
    elsewhere = function("big", reservedConcurrency=5)
    elsewhere["metadata"].update(namespace="other", creationTimestamp="2026-01-01T00:00:00Z")
    kube = OneNamespaceKube(elsewhere)
    ctx = Context(kube, settings)
    fn = function(reservedConcurrency=4)
    fn["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    with pytest.raises(ApiError) as refused:
        reconcile(ctx, kube.put(fn))
    assert refused.value.status == 403
    assert ((kube.object("Function", "fn", NS) or {}).get("status") or {}).get("reservation") != "Granted"
    kube.refused = False  # the cluster-wide binding restored: every namespace counts
    reconcile(ctx, kube.object("Function", "fn", NS) or {})
    assert (kube.object("Function", "fn", NS) or {})["status"]["reservation"] == "Refused"
