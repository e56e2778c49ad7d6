"""What a function's pods say about why an environment is not coming up.

Pure: a pod as the API returns it (a plain dict) in, a :class:`PodProblem` (or None) out. The operator
puts the problem into the Function's status (Ready=False, the reason, the cause in the message) and the
gateway fails a request that waits for an environment with it, instead of holding the caller until the
cold-start limit. Both read pods through these same functions, so the status and the Invoke error name
the same cause.

Only states that do not fix themselves within a cold start count: an image that cannot be pulled, a
container that cannot be created, an init container or the runtime server that exited with an error,
a pod the scheduler cannot place or that failed outright. A pod that is pulling, initialising or
starting normally has no problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lamina_runtime.protocol import INIT_FAILED_EXIT_CODE


class Failure(StrEnum):
    """Reasons (the kubelet's own where it has one) that a Function's Ready condition may carry."""

    ERR_IMAGE_PULL = "ErrImagePull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    RUN_CONTAINER_ERROR = "RunContainerError"
    INIT_CONTAINER_FAILED = "InitContainerFailed"
    CONTAINER_FAILED = "ContainerFailed"
    #: A provisioned environment's INIT failed (the runtime server exits with INIT_FAILED_EXIT_CODE and
    #: the function's error as its termination message); Lambda fails the allocation in that case.
    FUNCTION_INIT_FAILED = "FunctionInitFailed"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    UNSCHEDULABLE = "Unschedulable"
    POD_FAILED = "PodFailed"


IMAGE_FAILURES = frozenset(
    {
        Failure.ERR_IMAGE_PULL,
        Failure.IMAGE_PULL_BACK_OFF,
        Failure.INVALID_IMAGE_NAME,
        Failure.ERR_IMAGE_NEVER_PULL,
    }
)
#: Waiting reasons of a container that will not start without a change (the kubelet retries pulls
#: with a back-off of up to five minutes: far past any caller's patience).
WAITING_FAILURES = IMAGE_FAILURES | {
    Failure.CREATE_CONTAINER_CONFIG_ERROR,
    Failure.CREATE_CONTAINER_ERROR,
    Failure.RUN_CONTAINER_ERROR,
}
FAILURE_REASONS = frozenset(str(f) for f in Failure)
MESSAGE_LIMIT = 600  # characters of a container's termination message kept in the status


@dataclass(frozen=True)
class PodProblem:
    """Why one pod's environment is not starting: ``reason`` is a :class:`Failure` value, ``message``
    names the pod, the container, the image or the exit code, and the container's own last words."""

    reason: str
    message: str
    pod: str


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _terminated_text(name: str, terminated: Mapping[str, Any], kind: str) -> str:
    code = terminated.get("exitCode")
    why = terminated.get("reason") or "Error"
    said = (terminated.get("message") or "").strip()
    text = f"{kind} {name} exited with code {code} ({why})"
    return _clip(f"{text}: {said}") if said else text


def _container_problem(
    status: Mapping[str, Any], images: Mapping[str, str], init: bool
) -> tuple[str, str] | None:
    name = status.get("name", "?")
    kind = "init container" if init else "container"
    state = status.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    reason = waiting.get("reason") or ""
    if reason in IMAGE_FAILURES:
        image = images.get(name) or status.get("image") or "?"
        detail = _clip(waiting.get("message") or reason)
        return reason, f'image "{image}" of {kind} {name} cannot be pulled ({reason}): {detail}'
    if reason in WAITING_FAILURES:
        return reason, _clip(f"{kind} {name} cannot start ({reason}): {waiting.get('message') or reason}")
    if not init and (terminated or last).get("exitCode") == INIT_FAILED_EXIT_CODE and not status.get("ready"):
        # The function's INIT failed in a provisioned environment; also while the kubelet restarts it
        # (the next attempt may succeed: then the container is ready and this no longer applies).
        said = ((terminated or last).get("message") or "").strip() or "its INIT failed"
        restarts = status.get("restartCount", 0)
        again = f" (restarted {restarts} times)" if restarts else ""
        return Failure.FUNCTION_INIT_FAILED, _clip(f"{kind} {name}: {said}{again}")
    if reason == Failure.CRASH_LOOP_BACK_OFF:
        restarts = status.get("restartCount", 0)
        said = _terminated_text(name, last, kind) if last else f"{kind} {name} keeps exiting"
        failure = Failure.INIT_CONTAINER_FAILED if init else Failure.CRASH_LOOP_BACK_OFF
        return failure, f"{said} (restarted {restarts} times)"
    if terminated and terminated.get("exitCode", 0) != 0:
        failure = Failure.INIT_CONTAINER_FAILED if init else Failure.CONTAINER_FAILED
        return failure, _terminated_text(name, terminated, kind)
    return None


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """The first thing stopping this pod's environment from starting, or None (also for a pod on its
    way out: it no longer matters)."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    name = meta.get("name", "?")
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        why = status.get("reason") or "Failed"
        return PodProblem(
            Failure.POD_FAILED, _clip(f"pod {name} failed ({why}): {status.get('message', '')}"), name
        )
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            if cond.get("reason") == Failure.UNSCHEDULABLE:
                message = _clip(f"pod {name} cannot be scheduled: {cond.get('message', '')}")
                return PodProblem(Failure.UNSCHEDULABLE, message, name)
    init_images = {c.get("name", ""): c.get("image", "") for c in spec.get("initContainers") or []}
    for cs in status.get("initContainerStatuses") or []:
        found = _container_problem(cs, init_images, init=True)
        if found is not None:
            return PodProblem(found[0], f"pod {name}: {found[1]}", name)
    images = {c.get("name", ""): c.get("image", "") for c in spec.get("containers") or []}
    for cs in status.get("containerStatuses") or []:
        found = _container_problem(cs, images, init=False)
        if found is not None:
            return PodProblem(found[0], f"pod {name}: {found[1]}", name)
    return None


def function_problem(problems: Iterable[PodProblem | None]) -> PodProblem | None:
    """One problem to report for a function: the same one whatever order the pods came in (the first
    by pod name), so a status does not flap between two failing pods saying the same thing."""
    found = [p for p in problems if p is not None]
    return min(found, key=lambda p: p.pod) if found else None
