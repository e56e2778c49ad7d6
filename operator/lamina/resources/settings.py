"""What the builders need to know about the installation (images, addresses), read from the
environment the Helm chart gives the operator."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from lamina_runtime.environment import DEFAULT_REGION
from lamina_runtime.factory import is_custom_runtime

try:
    VERSION = version("lamina")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.1.0"

#: One runtime image per Lambda runtime, as `scripts/build-images` tags and `docs/images.md` publishes them.
DEFAULT_RUNTIME_IMAGE = f"ghcr.io/lamina-dev/runtime:{VERSION}-{{runtime}}"
DEFAULT_WORKER_IMAGE = f"ghcr.io/lamina-dev/lamina:{VERSION}"
#: The port ``lamina gateway`` listens on and the chart's gateway Service serves (``gateway.port``).
DEFAULT_GATEWAY_PORT = 8080
#: The one default address of the gateway, for Function URLs and the mapping workers: the chart's
#: Service in the chart's default namespace. Installations elsewhere set ``LAMINA_GATEWAY_URL``.
DEFAULT_GATEWAY_URL = f"http://lamina-gateway.lamina-system.svc:{DEFAULT_GATEWAY_PORT}"
#: Custom runtimes (provided.*) need no language, only lamina_runtime, which hosts their Runtime API:
#: they run in the image of the default Python runtime.
CUSTOM_RUNTIME_IMAGE_RUNTIME = "python3.12"


@dataclass(frozen=True)
class Settings:
    """Installation-wide inputs of the builders.

    ``runtime_image`` may contain ``{runtime}`` (``python3.12``...) to pick one image per runtime;
    ``provided.*`` functions get the ``python3.12`` image.
    """

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    worker_image: str = DEFAULT_WORKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    region: str = DEFAULT_REGION
    gateway_url: str = DEFAULT_GATEWAY_URL
    redis_url: str | None = None
    #: Warm generic pods kept per runtime and memory size in use in a namespace (0: no pools; a
    #: namespace's ``lamina.dev/pool-size`` annotation overrides it).
    pool_size: int = 0
    #: Memory sizes that get pools (empty: every size in use); other sizes start on the Deployment path.
    pool_memory_sizes: tuple[int, ...] = ()
    #: Installation key: each function's invoke secret and execution credentials derive from it (the
    #: operator writes them into the function's own Secret). None: pods take /invoke from anyone.
    auth_key: bytes | None = field(default=None, repr=False)
    #: Audience of the token a mapping's worker presents to the gateway.
    token_audience: str = "lamina"
    #: Write a NetworkPolicy per Function; egress of a function without spec.network: allow or deny.
    network_policies: bool = False
    default_egress: str = "allow"
    #: Where the gateway's pods are (the only ingress a function's pods take).
    gateway_namespace: str = "lamina-system"
    gateway_pod_labels: tuple[tuple[str, str], ...] = (("app.kubernetes.io/component", "gateway"),)
    #: The password of Redis's "ticks" user (schedule tick claims only), for mapping workers.
    redis_ticks_password: str | None = field(default=None, repr=False)
    #: Where the operator reads the gateway's per-version counts to judge rollouts: every gateway
    #: replica's ``/metrics`` (the counts of all of them are added). Default: ``{gateway_url}/metrics``.
    gateway_metrics_urls: tuple[str, ...] = ()
    #: How often a Function whose code (or a Layer whose content) is in S3 is looked at again (seconds):
    #: uploads are not watched, so a new object version is found by this poll.
    s3_poll_seconds: float = 30.0
    #: The account's concurrency and the smallest unreserved pool (the gateway's ``--concurrency-limit``
    #: and ``--min-unreserved``): which reservations a Function's status says are refused.
    concurrency_limit: int = 1000
    min_unreserved: int = 100

    @property
    def metrics_urls(self) -> tuple[str, ...]:
        return self.gateway_metrics_urls or (f"{self.gateway_url}/metrics",)

    def image_for(self, runtime: str) -> str:
        tag = CUSTOM_RUNTIME_IMAGE_RUNTIME if is_custom_runtime(runtime) else runtime
        return self.runtime_image.replace("{runtime}", tag)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``LAMINA_RUNTIME_IMAGE``, ``LAMINA_WORKER_IMAGE``, ``LAMINA_IMAGE_PULL_POLICY``,
        ``LAMINA_REGION``, ``LAMINA_GATEWAY_URL``, ``LAMINA_REDIS_URL``, ``LAMINA_POOL_SIZE``,
        ``LAMINA_POOL_MEMORY_SIZES`` (comma-separated MB), ``LAMINA_GATEWAY_METRICS_URLS``
        (comma-separated), ``LAMINA_S3_POLL_SECONDS``, ``LAMINA_CONCURRENCY_LIMIT``,
        ``LAMINA_MIN_UNRESERVED``, ``LAMINA_AUTH_KEY``, ``LAMINA_TOKEN_AUDIENCE``,
        ``LAMINA_NETWORK_POLICIES``, ``LAMINA_DEFAULT_EGRESS``, ``LAMINA_GATEWAY_NAMESPACE``,
        ``LAMINA_GATEWAY_POD_LABELS`` (JSON) and ``LAMINA_REDIS_TICKS_PASSWORD`` (unset = default)."""
        env = os.environ if env is None else env
        default = cls()
        try:
            pool_size = int(env.get("LAMINA_POOL_SIZE") or default.pool_size)
            sizes = tuple(int(x) for x in (env.get("LAMINA_POOL_MEMORY_SIZES") or "").split(",") if x.strip())
        except ValueError as exc:
            raise ValueError(f"LAMINA_POOL_SIZE / LAMINA_POOL_MEMORY_SIZES: {exc}") from None
        if pool_size < 0:
            raise ValueError(f"LAMINA_POOL_SIZE must not be negative (got {pool_size})")
        labels = env.get("LAMINA_GATEWAY_POD_LABELS")
        return cls(
            runtime_image=env.get("LAMINA_RUNTIME_IMAGE") or default.runtime_image,
            worker_image=env.get("LAMINA_WORKER_IMAGE") or default.worker_image,
            image_pull_policy=env.get("LAMINA_IMAGE_PULL_POLICY") or default.image_pull_policy,
            region=env.get("LAMINA_REGION") or default.region,
            gateway_url=(env.get("LAMINA_GATEWAY_URL") or default.gateway_url).rstrip("/"),
            redis_url=env.get("LAMINA_REDIS_URL") or None,
            pool_size=pool_size,
            pool_memory_sizes=sizes,
            s3_poll_seconds=float(env.get("LAMINA_S3_POLL_SECONDS") or default.s3_poll_seconds),
            concurrency_limit=int(env.get("LAMINA_CONCURRENCY_LIMIT") or default.concurrency_limit),
            min_unreserved=int(env.get("LAMINA_MIN_UNRESERVED") or default.min_unreserved),
            gateway_metrics_urls=tuple(
                u.strip() for u in (env.get("LAMINA_GATEWAY_METRICS_URLS") or "").split(",") if u.strip()
            ),
            auth_key=env["LAMINA_AUTH_KEY"].encode() if env.get("LAMINA_AUTH_KEY") else None,
            token_audience=env.get("LAMINA_TOKEN_AUDIENCE") or default.token_audience,
            network_policies=env.get("LAMINA_NETWORK_POLICIES", "") in ("1", "true"),
            default_egress=env.get("LAMINA_DEFAULT_EGRESS") or default.default_egress,
            gateway_namespace=env.get("LAMINA_GATEWAY_NAMESPACE") or default.gateway_namespace,
            gateway_pod_labels=tuple(sorted(json.loads(labels).items()))
            if labels
            else default.gateway_pod_labels,
            redis_ticks_password=env.get("LAMINA_REDIS_TICKS_PASSWORD") or None,
        )
