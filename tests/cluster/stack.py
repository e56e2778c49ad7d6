"""The processes a kwok cluster test runs beside the control plane, in one place.

kwok runs no containers, so :class:`PodRunner` plays the kubelet: for each pod it starts the pod's own
container command (`python -m lamina_runtime serve`) at the pod's loopback IP, with the container's
environment and the code of its ConfigMap (or its init container's `fetch`), on the interpreter of the
pod's runtime. :class:`Gateway` is `lamina gateway` as a subprocess, the operator is
tests/cluster/test_operator_reconcile.py's :class:`Operator`, and :class:`LaminaStack` starts any of
them for a test (through the ``lamina_stack`` fixture of tests/cluster/conftest.py) and stops them
together, with their logs' tails in the test's output.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

from lamina.local.sdk import sdk_dir
from lamina.resources import labels
from tests.cluster.test_operator_reconcile import Operator, container
from tests.support import brokers
from tests.support.local_mode import REPO, free_port, lambda_client


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class PodRunner:
    """The kubelet's part for kwok's pods: run each pod's init containers (the `fetch` of url code)
    and then its container command at the pod's IP. Where the kubelet would fail (an image it cannot
    pull, an init container that exits with an error) it writes the pod status the kubelet writes."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        workdir: Path,
        unpullable: frozenset[str] = frozenset(),
        interpreters: dict[str, str] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.workdir = workdir
        self.unpullable = unpullable  # images "not found" in this kubelet's registry
        # What each runtime's image would run: "python3.12" -> an interpreter of that version.
        here = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        self.interpreters = {here: sys.executable, **(interpreters or {})}
        self.servers: dict[str, subprocess.Popen[bytes]] = {}  # pod uid -> the pod's server
        self.failed: set[str] = set()  # pod uids whose start failed (status written)
        self.exited: set[str] = set()  # pod uids whose server exited while the pod lives (reported)
        self.foreign: set[str] = set()  # pod uids of pods that are not lamina's (left alone)
        self.endpoints: dict[str, str] = {}  # pod uid -> ip:port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []
        self.sdk = str(sdk_dir())  # the runtime image's boto3 (LAMINA_RUNTIME_PACKAGES)

    def __enter__(self) -> PodRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for proc in self.servers.values():
            proc.terminate()
        for proc in self.servers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def server_pids(self) -> set[int]:
        return {p.pid for p in self.servers.values() if p.poll() is None}

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except Exception as e:  # the API server is busy: the next round sees the pods
                self.errors.append(str(e))
                continue
            live = set()
            for pod in pods:
                uid = pod.metadata.uid
                live.add(uid)
                known = uid in self.servers or uid in self.failed or uid in self.foreign
                if not known and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                    self._start(pod)
            for uid in set(self.servers) - live:
                self.servers.pop(uid).terminate()
            self._report_exits()

    def _report_exits(self) -> None:
        """Say (in the test's output) which pod's server ended while its pod lives: one that could not
        bind its IP (taken by another process) leaves the pod Ready with nobody of its own behind it."""
        for uid, proc in self.servers.items():
            if uid in self.exited or proc.poll() is None:
                continue
            self.exited.add(uid)
            log = self.workdir / f"{uid}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            message = f"pod server of {self.endpoints.get(uid)} (uid {uid}) exited with {proc.returncode}"
            self.errors.append(message)
            sys.stderr.write(f"PodRunner: {message}:\n{tail}\n")

    def _fail(self, pod: Any, field: str, status: dict[str, Any]) -> None:
        """Write what the kubelet reports for a pod that cannot start (kwok had marked it Ready)."""
        self.failed.add(pod.metadata.uid)
        not_ready = {
            "status": "False",
            "reason": "ContainersNotReady" if field == "containerStatuses" else "PodInitializing",
        }
        body = {
            "status": {
                "phase": "Pending",
                "conditions": [{"type": t, **not_ready} for t in ("Ready", "ContainersReady")],
                field: [status],
            }
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, body)

    def _start(self, pod: Any) -> None:
        ip = pod.status.pod_ip
        assert ip.startswith("127."), f"pod IP {ip} is not loopback"
        spec = client.ApiClient().sanitize_for_serialization(pod.spec)
        main = container({"spec": {"template": {"spec": spec}}})
        if main["image"] in self.unpullable:
            message = f'Back-off pulling image "{main["image"]}"'
            waiting = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
            status = {"name": main["name"], "image": main["image"], "imageID": "", "ready": False,
                      "restartCount": 0, "state": waiting}  # fmt: skip
            self._fail(pod, "containerStatuses", status)
            return
        env = {e["name"]: e["value"] for e in main.get("env") or [] if "value" in e}
        for e in main.get("env") or []:  # what the kubelet resolves from Secrets
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                env[e["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
        task_root = self.workdir / pod.metadata.name
        task_root.mkdir(parents=True, exist_ok=True)
        pooled = (pod.metadata.labels or {}).get(labels.NAME) == labels.POOL_APP
        if pooled:  # a warm pool pod: its writable code and layer volumes are directories here
            for var, sub in (("LAMINA_POOL_TASK_ROOT", "task"), ("LAMINA_POOL_LAYERS_ROOT", "layers")):
                (task_root / sub).mkdir(exist_ok=True)
                env[var] = str(task_root / sub)
            env["LAMINA_FETCH_ALLOW_LOCAL"] = "1"  # url code is served on loopback in these tests
            self._serve(pod, main, env)
            return
        code = next((v for v in spec.get("volumes") or [] if v["name"] == "code"), None)
        if code is None:  # not a function's pod (another Deployment of the test): no kubelet here runs it
            self.foreign.add(pod.metadata.uid)
            return
        if "configMap" in code:
            cm = self.core.read_namespaced_config_map(code["configMap"]["name"], self.namespace)
            # As the kubelet mounts it: the listed items at their paths, else every key.
            paths = {i["key"]: i["path"] for i in code["configMap"].get("items") or []}
            for key, text in (cm.data or {}).items():
                if not paths or key in paths:
                    (task_root / paths.get(key, key)).write_text(text)
        for init in spec.get("initContainers") or []:
            command = list(init["command"])
            assert command[:4] == ["python", "-m", "lamina_runtime", "fetch"], command
            if command[-1] != env["LAMBDA_TASK_ROOT"]:
                continue  # layers: not used by these tests
            # Here the archives are served on loopback, as every "pod" address is: allow it.
            run = subprocess.run(
                [sys.executable, *command[1:-1], str(task_root)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "LAMINA_FETCH_ALLOW_LOCAL": "1"},
            )
            if run.returncode != 0:  # terminationMessagePolicy FallbackToLogsOnError: the log's tail
                terminated = {"exitCode": run.returncode, "reason": "Error", "message": run.stderr[-2048:]}
                status = {"name": init["name"], "image": init["image"], "imageID": "", "ready": False,
                          "restartCount": 0, "state": {"terminated": terminated}}  # fmt: skip
                self._fail(pod, "initContainerStatuses", status)
                return
        env["LAMBDA_TASK_ROOT"] = str(task_root)
        self._serve(pod, main, env)

    def _serve(self, pod: Any, main: dict[str, Any], env: dict[str, str]) -> None:
        """Run the pod's container command at the pod's IP, with the interpreter of its runtime."""
        ip = pod.status.pod_ip
        command = list(main["command"])
        assert command[:5] == ["python", "-S", "-m", "lamina_runtime", "serve"], command
        port = command[command.index("--port") + 1]
        python = self.interpreters[env.get("LAMINA_RUNTIME", "python3.12")]
        env["LAMINA_RUNTIME_PACKAGES"] = self.sdk  # the image's ENV: the runtime's boto3
        flags = [f for f in command[command.index("--port") + 2 :] if f.startswith("--")]  # --pool
        command = [python, *command[1 : command.index("--host")], "--host", ip, "--port", port, *flags]
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "VIRTUAL_ENV")}
        # The runtime image holds lamina_runtime (stdlib only) for whichever interpreter runs it.
        base["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "runtime-image"), os.environ.get("PYTHONPATH")) if p
        )
        with (self.workdir / f"{pod.metadata.uid}.log").open("wb") as err:  # why it ended, if it does
            self.servers[pod.metadata.uid] = subprocess.Popen(
                command, env={**base, **env}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
            )
        self.endpoints[pod.metadata.uid] = f"{ip}:{port}"


class Gateway:
    """`lamina gateway` for one namespace, on a loopback port (``args``: more of its arguments;
    ``port``: one picked before, ``env``: more of its environment)."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str,
        log: Path,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "lamina.cli", "gateway",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--namespace", namespace, "--default-namespace", namespace,
                    "--kubeconfig", kubeconfig, "--cold-start-timeout", "60", *args,
                ],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lambda_client(self) -> Any:
        return lambda_client(self.url, read_timeout=90)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def invoke(lam: Any, name: str, event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


def wait_invocable(lam: Any, name: str, within: float = 90) -> dict[str, Any]:
    """First successful invocation once the gateway knows the Function and one pod serves it."""
    deadline = time.monotonic() + within
    while True:
        try:
            response, body = invoke(lam, name, {"name": "first"})
            if response["StatusCode"] == 200 and "FunctionError" not in response:
                return body
        except (lam.exceptions.ResourceNotFoundException, EndpointConnectionError):
            pass  # the gateway is starting, or has not seen the Function yet
        assert time.monotonic() < deadline, f"{name} never became invocable"
        time.sleep(0.5)


class LaminaStack:
    """Starts, for one test, what it asks for: the operator, `lamina gateway` processes, a Redis (the
    gateways' queue of Event invocations), the kubelet's stand-in for a namespace; and stops them all
    when the test ends (the pods' servers first, then the gateways, the operator, Redis), writing
    the tails of the gateways' and the operator's logs to the test's output. Each serves
    ``namespace`` unless told another."""

    def __init__(
        self, api: client.ApiClient, kubeconfig: str, namespace: str, workdir: Path, python312: str
    ) -> None:
        self.api, self.kubeconfig, self.namespace, self.workdir = api, kubeconfig, namespace, workdir
        self.interpreters = {"python3.12": python312}  # what the python3.12 runtime image would run
        self.gateways: list[Gateway] = []
        self.op: Operator | None = None
        self._redis: brokers.RedisServer | None = None
        self._kubelets = contextlib.ExitStack()

    def __enter__(self) -> LaminaStack:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._kubelets.close()
        finally:
            for gw in self.gateways:
                gw.stop()
            if self.op is not None:
                self.op.stop()
            if self._redis is not None:
                self._redis.close()
            for gw in self.gateways:
                sys.stderr.write(f"\n--- {gw.log.name} ---\n{gw.log.read_text(errors='replace')[-4000:]}\n")
            if self.op is not None:
                sys.stderr.write(f"\n--- operator log ---\n{self.op.tail(120)}\n")
                self.op.log.unlink(missing_ok=True)  # a temporary file of its own

    def redis(self) -> brokers.RedisServer:
        """The stack's redis-server (started on first use)."""
        if self._redis is None:
            if not brokers.available("redis"):
                pytest.fail("redis-server is not installed: run scripts/test, which installs it")
            self._redis = brokers.RedisServer(self.workdir / "redis").start()
        return self._redis

    def gateway(
        self,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        namespace: str | None = None,
        kubeconfig: str | None = None,
    ) -> Gateway:
        """One more `lamina gateway` (:class:`Gateway`'s arguments; ``kubeconfig``: its own identity,
        else the test's)."""
        log = self.workdir / f"gateway-{len(self.gateways)}.log"
        config = kubeconfig or self.kubeconfig
        gw = Gateway(config, namespace or self.namespace, log, *args, port=port, env=env)
        self.gateways.append(gw)
        return gw

    def operator(
        self, *args: str, env: dict[str, str] | None = None, kubeconfig: str | None = None
    ) -> Operator:
        """The operator (``args``: more of its arguments, such as more ``--namespace``s; ``kubeconfig``:
        its own identity, else the test's), started."""
        assert self.op is None, "one operator a stack"
        self.op = Operator(kubeconfig or self.kubeconfig, self.namespace, *args, env=env).start()
        return self.op

    def kubelet(self, namespace: str | None = None, unpullable: frozenset[str] = frozenset()) -> PodRunner:
        """The kubelet's stand-in for the pods of ``namespace``, running until the stack stops."""
        namespace = namespace or self.namespace
        runner = PodRunner(
            self.api, namespace, self.workdir / f"pods-{namespace}", unpullable, self.interpreters
        )
        return self._kubelets.enter_context(runner)
