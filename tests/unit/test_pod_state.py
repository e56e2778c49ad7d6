"""Pods as the kubelet reports them -> the problem a Function's status and the Invoke error name."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.resources import deployment_readiness
from lamina.resources.pod_state import Failure, PodProblem, function_problem, pod_problem
from lamina_runtime.protocol import INIT_FAILED_EXIT_CODE

IMAGE = "ghcr.io/lamina-dev/runtime:python3.12"


def pod(
    name: str = "fn-hello-7d9f-abcde",
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "function", "image": IMAGE}]}
    if init is not None:
        spec["initContainers"] = [{"name": c["name"], "image": IMAGE} for c in init]
        status["initContainerStatuses"] = init
    if containers is not None:
        status["containerStatuses"] = containers
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec, "status": status}


def waiting(name: str, reason: str, message: str = "", **more: Any) -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}, **more}


def running(name: str = "function") -> dict[str, Any]:
    return {"name": name, "state": {"running": {"startedAt": "2026-11-30T00:00:00Z"}}, "ready": False}


def test_a_starting_pod_has_no_problem() -> None:
    assert pod_problem(pod(phase="Pending")) is None
    assert pod_problem(pod(phase="Pending", containers=[waiting("function", "ContainerCreating")])) is None
    assert pod_problem(pod(phase="Pending", containers=[waiting("function", "PodInitializing")])) is None
    fetching = pod(init=[running("fetch-code")], containers=[waiting("function", "PodInitializing")])
    assert pod_problem(fetching) is None
    assert pod_problem(pod(phase="Running", containers=[running()])) is None


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_an_image_that_cannot_be_pulled_is_named(reason: str) -> None:
    message = f'Back-off pulling image "{IMAGE}"'
    problem = pod_problem(pod(phase="Pending", containers=[waiting("function", reason, message)]))
    assert problem == PodProblem(
        reason,
        f'pod fn-hello-7d9f-abcde: image "{IMAGE}" of container function cannot be pulled '
        f"({reason}): {message}",
        "fn-hello-7d9f-abcde",
    )


def test_a_failed_fetch_init_container_carries_its_termination_message() -> None:
    said = "lamina_runtime fetch: sha256 mismatch: expected 00, got ab"
    fetch = waiting(
        "fetch-code",
        "CrashLoopBackOff",
        "back-off 20s restarting failed container",
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": said + "\n"}},
        restartCount=2,
    )
    problem = pod_problem(pod(init=[fetch], containers=[waiting("function", "PodInitializing")]))
    assert problem is not None
    assert problem.reason == Failure.INIT_CONTAINER_FAILED
    assert problem.message == (
        f"pod fn-hello-7d9f-abcde: init container fetch-code exited with code 1 (Error): {said} "
        "(restarted 2 times)"
    )


def test_an_init_container_that_just_exited_is_a_problem_before_the_back_off() -> None:
    fetch = {"name": "fetch-code", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    problem = pod_problem(pod(init=[fetch]))
    assert problem is not None and problem.reason == "InitContainerFailed"
    assert "init container fetch-code exited with code 1 (Error)" in problem.message
    done = {"name": "fetch-code", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    assert pod_problem(pod(init=[done], containers=[running()])) is None


def test_a_runtime_server_that_crashes_at_start() -> None:
    crashed = waiting(
        "function",
        "CrashLoopBackOff",
        lastState={
            "terminated": {"exitCode": 1, "reason": "Error", "message": "SystemExit: set LAMINA_HANDLER"}
        },
        restartCount=3,
    )
    problem = pod_problem(pod(containers=[crashed]))
    assert problem is not None and problem.reason == "CrashLoopBackOff"
    assert "container function exited with code 1 (Error): SystemExit: set LAMINA_HANDLER" in problem.message
    first = {"name": "function", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
    problem = pod_problem(pod(containers=[first]))
    assert problem is not None and problem.reason == "ContainerFailed" and "(OOMKilled)" in problem.message


def test_a_provisioned_environment_whose_init_failed_names_the_functions_error() -> None:
    """The runtime server exits with INIT_FAILED_EXIT_CODE and the error as its termination message:
    FunctionInitFailed, just exited, backing off, and while the kubelet runs it again; once an attempt
    succeeds (the container is ready) there is no problem."""
    said = "INIT of a provisioned environment failed: RuntimeError: no config"
    last = {"terminated": {"exitCode": INIT_FAILED_EXIT_CODE, "reason": "Error", "message": said}}
    for container in (
        {"name": "function", "state": last, "ready": False},
        waiting("function", "CrashLoopBackOff", lastState=last, restartCount=2),
        {**running(), "lastState": last, "restartCount": 3},
    ):
        problem = pod_problem(pod(containers=[container]))
        assert problem is not None and problem.reason == Failure.FUNCTION_INIT_FAILED, container
        assert "RuntimeError: no config" in problem.message and "container function" in problem.message
    assert pod_problem(pod(containers=[{**running(), "lastState": last, "ready": True}])) is None


def test_config_errors_unschedulable_and_failed_pods() -> None:
    secret = waiting("function", "CreateContainerConfigError", 'secret "db" not found')
    problem = pod_problem(pod(containers=[secret]))
    assert problem is not None and problem.reason == "CreateContainerConfigError"
    assert 'secret "db" not found' in problem.message
    unschedulable = pod(
        phase="Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient memory.",
            }
        ],
    )
    problem = pod_problem(unschedulable)
    assert problem is not None and problem.reason == "Unschedulable"
    assert problem.message.endswith("0/2 nodes are available: 2 Insufficient memory.")
    evicted = pod_problem(pod(phase="Failed", reason="Evicted", message="low on ephemeral-storage"))
    assert evicted is not None and evicted.reason == "PodFailed" and "Evicted" in evicted.message


def test_a_terminating_pod_no_longer_matters() -> None:
    gone = pod(containers=[waiting("function", "ImagePullBackOff")])
    gone["metadata"]["deletionTimestamp"] = "2026-11-30T00:00:00Z"
    assert pod_problem(gone) is None


def test_long_termination_messages_are_clipped() -> None:
    noisy = {"name": "function", "state": {"terminated": {"exitCode": 1, "message": "x" * 5000}}}
    problem = pod_problem(pod(containers=[noisy]))
    assert problem is not None and len(problem.message) < 700 and problem.message.endswith("…")


def test_one_problem_per_function_whatever_the_order() -> None:
    a = PodProblem("ImagePullBackOff", "a", "fn-x-a")
    b = PodProblem("ImagePullBackOff", "b", "fn-x-b")
    assert function_problem([b, None, a]) == a == function_problem([a, b])
    assert function_problem([None]) is None


def test_a_problem_overrides_the_rollout_in_readiness() -> None:
    deployment = {
        "metadata": {"generation": 2},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1},
    }
    assert deployment_readiness(deployment, 0).reason == "RollingOut"
    problem = PodProblem("ImagePullBackOff", f'pod p: image "{IMAGE}" ...', "p")
    readiness = deployment_readiness(deployment, 0, problem)
    assert (readiness.ready, readiness.reason, readiness.message) == (
        False,
        "ImagePullBackOff",
        problem.message,
    )
    assert (readiness.ready_environments, readiness.desired_environments) == (0, 1)
