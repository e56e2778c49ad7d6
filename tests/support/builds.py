"""What a test needs built before it runs, the order that follows from it, and the wait for it.

A test module declares what it needs with ``pytest.mark.builds("s3-server", ...)``; the cluster tiers
(``tests/cluster``, ``tests/cluster/pods``), the ``python312`` fixture and the folders that run
``lamina local`` imply theirs. Tests run in the order of what they wait for (modules kept whole), and
each build is waited for *before* the first test that needs it, outside its per-test timeout. After
``scripts/test``'s builds every script returns at once; when pytest runs alone on a fresh checkout the
script builds (or waits on the lock of a build already under way), so a first build never counts
against a test's timeout. The test's own fixture then calls the script as before and reports its
error if it failed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: name → the command that builds it (prints its result last; waits on its lock when already running).
SCRIPTS: dict[str, tuple[str, ...]] = {
    "jars": ("scripts/fetch-jars", "kafka", "elasticmq"),
    "python3.12": ("scripts/build-python", "3.12"),
    "s3-server": ("scripts/build-s3-server",),
    "rie": ("scripts/build-rie",),
    "kube-router": ("scripts/build-kube-router",),
}

#: When a test runs, by what it waits for: first what needs nothing, last what needs the longest
#: builds. "control-plane" and "real-node" are waited for by tests/cluster/conftest.py.
#: The S3 server, the RIE and kube-router come last: scripts/test builds them beside pytest.
RANK: dict[str, int] = {
    "jars": 1,
    "python3.12": 2,
    "control-plane": 3,
    "real-node": 4,
    "s3-server": 5,
    "rie": 5,
    "kube-router": 6,
}

_CLUSTER = REPO / "tests" / "cluster"
_REAL_POD_TESTS = _CLUSTER / "pods"
_UNIT = REPO / "tests" / "unit"
_BROKERS = REPO / "tests" / "brokers"  # Kafka and ElasticMQ run from the jars
#: Folders whose tests run `lamina local`, whose functions declare python3.12 (the default runtime).
_LOCAL_MODE = (REPO / "tests" / "integration", _BROKERS)
_waited: set[str] = set()


def needs(item: pytest.Item) -> set[str]:
    """The builds ``item`` waits for."""
    names = {str(n) for mark in item.iter_markers("builds") for n in mark.args}
    if "python312" in getattr(item, "fixturenames", ()):
        names.add("python3.12")
    parents = Path(str(item.path)).resolve().parents
    if _BROKERS in parents:
        names.add("jars")
    if any(folder in parents for folder in _LOCAL_MODE):
        names.add("python3.12")
    if _CLUSTER in parents:
        names.add("control-plane")
    if _REAL_POD_TESTS in parents:
        names.add("real-node")
    unknown = names - RANK.keys()
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: unknown build(s) {sorted(unknown)}; known: {sorted(RANK)}")
    return names


def rank(item: pytest.Item) -> int:
    """0 for unit tests, 1 + the longest wait for the rest."""
    if _UNIT in Path(str(item.path)).resolve().parents:
        return 0
    return 1 + max((RANK[n] for n in needs(item)), default=0)


def order(items: list[pytest.Item]) -> None:
    """Sort ``items`` in place by the rank of their module (stable: a module stays whole and in its
    own order, so module-scoped fixtures are set up once)."""
    by_module: dict[Path, int] = {}
    for item in items:
        key = Path(str(item.path))
        by_module[key] = max(by_module.get(key, 0), rank(item))
    items.sort(key=lambda item: by_module[Path(str(item.path))])


def wait_for(item: pytest.Item) -> None:
    """Run (or wait for) the scripted builds ``item`` needs, once per session each."""
    for name in sorted(needs(item) & SCRIPTS.keys(), key=RANK.__getitem__):
        if name in _waited:
            continue
        started = time.monotonic()
        subprocess.run(
            [str(REPO / SCRIPTS[name][0]), *SCRIPTS[name][1:]],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        _waited.add(name)  # a failure is the fixture's to report, with the script's output
        took = time.monotonic() - started
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if took > 5 and reporter is not None:
            reporter.write_line(f"[builds] {name}: waited {took:.0f}s before {item.nodeid}")
