"""Pieces of pod specs shared by the function, pool and worker builders: the hardened security
context, and what every runtime container (a function's or a pool's) is given."""

from __future__ import annotations

from typing import Any

RUN_AS = 1000


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def runtime_container(millicores: int, memory: str) -> dict[str, Any]:
    """What a container of the runtime image gets whoever runs it: its CPU share, a memory limit
    equal to its request, a readiness probe on ``/healthz`` (200 only after INIT, or while a pool pod
    waits to be claimed) every second, and the hardened security context."""
    return {
        "resources": {
            "requests": {"cpu": f"{millicores}m", "memory": memory},
            "limits": {"memory": memory},
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def hardened_pod(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with no API token, no service-link variables and the restricted pod security context.

    One process namespace for the pod, so the pause container is PID 1 and lamina's Python is not: the
    kernel drops a signal whose action is the default for PID 1, so a SIGTERM that came before the
    server's own handler (a pod deleted while it starts, or while Python loads) was lost, and the pod
    lingered for its whole grace period (905 s for a warm pool pod) holding its CPU request."""
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "shareProcessNamespace": True,
        "securityContext": pod_security_context(),
        **spec,
    }
