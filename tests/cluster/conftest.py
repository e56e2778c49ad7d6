"""Fixtures for tests that need a Kubernetes API (everything under tests/cluster is marked `cluster`).

Session fixture ``kubeconfig`` picks, in order:

1. ``$KUBECONFIG`` when set (any cluster, e.g. kind) -- nothing is started or stopped;
2. a cluster already started by ``scripts/test-cluster up`` (``$LAMINA_TEST_CLUSTER_DIR``) -- reused,
   left running;
3. otherwise a private control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
   kwok with node ``kwok-node-0``) in a temp dir, stopped at session end.

While the session runs, ``os.environ["KUBECONFIG"]`` points at that file, so kopf / KopfRunner /
subprocesses find the cluster. Binaries missing and not buildable => the tests ERROR with the reason
(set LAMINA_SKIP_CLUSTER=1 to skip them instead).

Tests under ``tests/cluster/pods`` (marker ``realnode``) run real pods: when they are collected, the
private control plane gets a real node (``realnode.py``) and the images are built first
(``scripts/build-images``). LAMINA_SKIP_REAL_NODE=1 skips them. Every other test's namespace sends its
pods to kwok's node (annotations, see ``controlplane.KWOK_NAMESPACE_ANNOTATIONS``), with or without
a real node.

Other fixtures: ``k8s_api`` (kubernetes.client.ApiClient), ``namespace`` (fresh per test, deleted
afterwards), ``apply_yaml`` (server-side apply of files / YAML text / dicts), ``wait_until``,
``control_plane`` (the ControlPlane object, or None on an external cluster), ``pinned_versions``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

_HERE = Path(__file__).resolve().parent


def _load_controlplane():
    name = "lamina_test_controlplane"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "controlplane.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


cp_mod = _load_controlplane()

FIELD_MANAGER = "lamina-tests"
REAL_POD_TESTS = _HERE / "pods"
_build_error = pytest.StashKey[str]()
_wants_real_node = pytest.StashKey[bool]()
_to_build = pytest.StashKey[set[str]]()


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def _skip_requested() -> bool:
    return _flag("LAMINA_SKIP_CLUSTER")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(str(item.path)).resolve().parents
        if _HERE in parents:
            item.add_marker(pytest.mark.cluster)
            if _skip_requested():
                item.add_marker(pytest.mark.skip(reason="LAMINA_SKIP_CLUSTER is set"))
        if REAL_POD_TESTS in parents:
            item.add_marker(pytest.mark.realnode)
            if _flag("LAMINA_SKIP_REAL_NODE"):
                item.add_marker(pytest.mark.skip(reason="LAMINA_SKIP_REAL_NODE is set"))


def wants_real_node(config: pytest.Config) -> bool:
    """Whether this session runs real-pod tests (so its private cluster gets a real node)."""
    return config.stash.get(_wants_real_node, False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Decide whether this session's cluster gets a real node; what it needs is built later, before
    the first test that needs it (``pytest_runtest_protocol``)."""
    config = session.config
    if config.option.collectonly or _skip_requested() or os.environ.get("KUBECONFIG"):
        return
    if not any("kubeconfig" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    config.stash[_wants_real_node] = not _flag("LAMINA_SKIP_REAL_NODE") and any(
        i.get_closest_marker("realnode") is not None for i in session.items
    )
    config.stash[_to_build] = {"control-plane", "images"} if wants_real_node(config) else {"control-plane"}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Build the binaries before the first cluster test, and the images before the first real-pod
    test, outside the per-test timeout: a first build is long, and scripts/test runs these builds in
    the background while the tests that need none run (a build already under way is waited for)."""
    _build_for(item)
    yield


def _build_for(item: pytest.Item) -> None:
    config = item.config
    pending: set[str] = config.stash.get(_to_build, set())
    if not pending or "kubeconfig" not in getattr(item, "fixturenames", ()):
        return
    try:
        if "control-plane" in pending:
            pending.discard("control-plane")
            if cp_mod.running() is None:
                cp_mod.bin_dir(build=True, node=wants_real_node(config))
        if "images" in pending and item.get_closest_marker("realnode") is not None:
            pending.discard("images")
            from tests.cluster.pods import images

            images.build()
    except (cp_mod.ControlPlaneError, RuntimeError) as e:
        config.stash[_build_error] = str(e)


# ----------------------------------------------------------------------------------------- session


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The local ControlPlane serving this session, or None when $KUBECONFIG names another cluster."""
    if _skip_requested():
        pytest.skip("LAMINA_SKIP_CLUSTER is set")
    if os.environ.get("KUBECONFIG"):
        yield None
        return
    existing = cp_mod.running()
    if existing is not None:
        yield existing
        return
    err = request.config.stash.get(_build_error, None)
    if err:
        pytest.fail(f"cannot build what the cluster tests need: {err}", pytrace=False)
    prefix = "lamina-pytest-cluster-"
    state = Path(tempfile.mkdtemp(prefix=prefix))
    owner = cp_mod.hold(state)  # held for the session: a cluster whose lock is free was abandoned
    try:
        cp_mod.reap_abandoned(state.parent, prefix)
        try:
            cp = cp_mod.start(state, real_node=wants_real_node(request.config))
        except cp_mod.ControlPlaneError as e:
            pytest.fail(f"cannot start the test control plane: {e}", pytrace=False)
        try:
            yield cp
        finally:
            cp.stop()
    finally:
        owner.close()
        state.with_name(state.name + ".lock").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def pinned_versions() -> dict[str, str]:
    """scripts/control-plane-versions as a dict (KUBERNETES_VERSION, ETCD_VERSION, ...)."""
    return cp_mod.pinned_versions()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: Any) -> Iterator[str]:
    """Path of the kubeconfig for this session's cluster; also exported as $KUBECONFIG meanwhile."""
    if control_plane is None:
        yield os.environ["KUBECONFIG"]
        return
    path = str(control_plane.kubeconfig)
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: str) -> Iterator[Any]:
    """A kubernetes.client.ApiClient for the session's cluster."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        yield api
    finally:
        api.close()


# ----------------------------------------------------------------------------------------- helpers


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, message: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that. API 404s count as falsy."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except ApiException as e:
            if e.status != 404:
                raise
            last = e
        if time.monotonic() >= deadline:
            detail = f" (last: {last.status} {last.reason})" if isinstance(last, ApiException) else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate!r}{detail}")
        time.sleep(interval)


def _documents(source: Any) -> list[dict]:
    if isinstance(source, dict):
        return [source]
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and Path(source).exists()):
        text = Path(source).read_text()
    elif isinstance(source, str):
        text = source
    elif isinstance(source, Iterable):
        return [d for s in source for d in _documents(s)]
    else:
        raise TypeError(f"cannot apply {type(source).__name__}")
    docs: list[dict] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
            docs.extend(doc.get("items") or [])
        else:
            docs.append(doc)
    return docs


def apply_objects(
    api_client: Any,
    source: Any,
    namespace: str | None = None,
    field_manager: str = FIELD_MANAGER,
    wait_crds: float = 30.0,
) -> list[dict]:
    """Server-side apply YAML file(s) / YAML text / dict(s); return the applied objects as dicts.

    Namespaced objects without ``metadata.namespace`` go to ``namespace`` (default ``default``).
    CRDs are waited for until Established, so later documents of the new kinds apply in the same call.
    """
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    dyn = DynamicClient(api_client)
    applied: list[dict] = []
    for doc in _documents(source):
        api_version, kind = doc["apiVersion"], doc["kind"]
        resource = None
        for _ in range(40):
            try:
                resource = dyn.resources.get(api_version=api_version, kind=kind)
                break
            except ResourceNotFoundError:
                dyn.resources.invalidate_cache()
                time.sleep(0.25)
        if resource is None:
            raise LookupError(f"the server does not serve {kind} in {api_version}")
        ns = None
        if resource.namespaced:
            ns = doc.get("metadata", {}).get("namespace") or namespace or "default"
        obj = resource.server_side_apply(
            body=doc, namespace=ns, field_manager=field_manager, force_conflicts=True
        ).to_dict()
        applied.append(obj)
        if kind == "CustomResourceDefinition" and wait_crds:
            name = obj["metadata"]["name"]

            def established(name: str = name, resource: Any = resource) -> bool:
                conds = (resource.get(name=name).to_dict().get("status") or {}).get("conditions") or []
                return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

            wait_for(established, timeout=wait_crds, message=f"CRD {name} Established")
            dyn.resources.invalidate_cache()
    return applied


# ----------------------------------------------------------------------------------------- per test


@contextlib.contextmanager
def fresh_namespace(k8s_api: Any) -> Iterator[str]:
    """A fresh namespace (with its `default` ServiceAccount ready) whose pods go to kwok's node;
    deleted afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(k8s_api)
    name = f"lamina-t-{secrets.token_hex(4)}"
    core.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {"lamina.dev/test": "true"},
                # Pods of these tests never run (kwok plays the kubelet), also when a real node exists.
                "annotations": cp_mod.KWOK_NAMESPACE_ANNOTATIONS,
            }
        }
    )
    try:
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=60,
            message=f"ServiceAccount {name}/default",
        )
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise


@pytest.fixture
def namespace(k8s_api: Any) -> Iterator[str]:
    """A fresh namespace whose pods go to kwok's node (:func:`fresh_namespace`)."""
    with fresh_namespace(k8s_api) as name:
        yield name


@pytest.fixture
def second_namespace(k8s_api: Any) -> Iterator[str]:
    """Another fresh namespace, for tests of what spans namespaces."""
    with fresh_namespace(k8s_api) as name:
        yield name


@pytest.fixture
def apply_yaml(k8s_api: Any) -> Callable[..., list[dict]]:
    """``apply_yaml(source, namespace=None)``: server-side apply (see :func:`apply_objects`)."""

    def apply(source: Any, namespace: str | None = None, **kw: Any) -> list[dict]:
        return apply_objects(k8s_api, source, namespace=namespace, **kw)

    return apply


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(predicate, timeout=60, message="")``: poll until truthy, else AssertionError."""
    return wait_for


@pytest.fixture
def lamina_stack(
    k8s_api: Any,
    kubeconfig: str,
    namespace: str,
    apply_yaml: Callable[..., list[dict]],
    tmp_path: Path,
    python312: str,
) -> Iterator[Any]:
    """lamina's CRDs applied and a :class:`tests.cluster.stack.LaminaStack` of ``namespace``, empty: the
    test starts the operator, gateways, Redis and the kubelet's stand-in it needs; all are stopped when
    it ends, before its namespace is deleted."""
    from tests.cluster.stack import LaminaStack

    apply_yaml(sorted((_HERE.parents[1] / "crds").glob("*.yaml")))
    with LaminaStack(k8s_api, kubeconfig, namespace, tmp_path, python312) as stack:
        yield stack
