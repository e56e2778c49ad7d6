"""Whether the ServiceAccount a Kubernetes source names may list and watch what the source watches.

The operator grants that account nothing: a mapping shows its function only what the account could
read anyway. So before running the worker it asks the API server, with SubjectAccessReviews, whether
the account holds ``list`` and ``watch`` on the resource in the scope the source watches, and blocks
the mapping (Ready=False) naming the missing permission when it does not.

The worker also invokes through the gateway as that account (its pod's projected token), so with
authentication on (an installation key) the account must hold ``invoke`` on the functions the worker
calls; a missing one blocks the mapping the same way (``ServiceAccountCannotInvoke``).
"""

from __future__ import annotations

from lamina.api import EventSourceMapping
from lamina.api.common import GROUP
from lamina.reconcilers.client import ApiError, KubeApi, Ref
from lamina.reconcilers.context import Blocked
from lamina.reconcilers.status import BlockReason
from lamina.resources.eventsourcemapping import invoked_functions

VERBS = ("list", "watch")


def _resource(kube: KubeApi, api_version: str, kind: str) -> tuple[str, bool]:
    """(plural, namespaced) of ``kind`` as the API server's discovery documents it."""
    try:
        served = kube.resources(api_version)
    except ApiError as e:
        if e.status == 404:
            raise Blocked(
                BlockReason.KIND_NOT_FOUND, f"the API server does not serve {api_version}", 30.0
            ) from None
        raise
    for resource in served:
        if resource.get("kind") == kind and "/" not in resource.get("name", ""):
            return resource["name"], bool(resource.get("namespaced"))
    raise Blocked(BlockReason.KIND_NOT_FOUND, f"the API server serves no kind {kind} in {api_version}", 30.0)


def _allowed(kube: KubeApi, ns: str, account: str, attributes: dict[str, str]) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{ns}:{account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "resourceAttributes": attributes,
        },
    }
    return bool(kube.review(review).get("allowed"))


def check_watch_access(kube: KubeApi, esm: EventSourceMapping, retry: float, invoke: bool = False) -> None:
    """Raise :class:`Blocked` unless the source's ServiceAccount may list and watch its objects (and,
    with ``invoke``, invoke the functions its worker calls)."""
    watched = esm.spec.source.kubernetes
    if watched is None:
        return
    ns = esm.metadata.namespace
    account = watched.service_account_name
    if kube.get(Ref("v1", "ServiceAccount", ns, account)) is None:
        raise Blocked(
            BlockReason.SERVICE_ACCOUNT_NOT_FOUND,
            f"ServiceAccount {account} (spec.source.kubernetes.serviceAccountName) does not exist in "
            f"namespace {ns}",
            retry,
        )
    plural, namespaced = _resource(kube, watched.api_version, watched.kind)
    scope = None if watched.all_namespaces or not namespaced else (watched.namespace or ns)
    missing = [
        verb
        for verb in VERBS
        if not _allowed(
            kube,
            ns,
            account,
            {
                "namespace": scope or "",
                "verb": verb,
                "group": watched.group,
                "version": watched.version,
                "resource": plural,
            },
        )
    ]
    if missing:
        resource = f"{plural}.{watched.group}" if watched.group else plural
        where = f"in namespace {scope}" if scope else "cluster-wide"
        raise Blocked(
            BlockReason.SERVICE_ACCOUNT_CANNOT_WATCH,
            f"ServiceAccount {account} may not {' and '.join(missing)} {resource} {where} "
            f"(missing permission: {', '.join(missing)}); lamina grants it nothing: bind it a Role or "
            "ClusterRole that allows list and watch",
            retry,
        )
    if not invoke:
        return
    refused = [
        fn
        for fn in invoked_functions(esm)
        if not _allowed(
            kube,
            ns,
            account,
            {"namespace": ns, "verb": "invoke", "group": GROUP, "resource": "functions", "name": fn},
        )
    ]
    if refused:
        raise Blocked(
            BlockReason.SERVICE_ACCOUNT_CANNOT_INVOKE,
            f"ServiceAccount {account} may not invoke function {', '.join(refused)} in namespace {ns} "
            "(missing permission: invoke on functions.lamina.dev); the worker invokes as that account: "
            "bind it a Role that allows invoke",
            retry,
        )
