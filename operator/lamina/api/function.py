"""The Function kind: a Python handler with Lambda's configuration knobs."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from lamina.api.common import (
    DNS_LABEL,
    DNS_SUBDOMAIN,
    ENV_NAME,
    HANDLER,
    PATTERN_RULES,
    SHA256,
    URL,
    Endpoint,
    FieldError,
    KeyRef,
    LaminaModel,
    LaminaObject,
    NameRef,
    Runtime,
    S3Location,
    StatusBase,
    cel_exactly_one,
    exactly_one,
)
from lamina.api.network import NetworkSpec

#: Memory at which a function gets one full vCPU, as on AWS Lambda.
MB_PER_VCPU = 1769
#: Floor of the CPU share: below it CFS throttling makes Python's imports dominate a cold start.
MIN_MILLICORES = 100
MAX_LAYERS = 5
#: Bounds the list so the apiserver's CEL cost estimate for its items passes.
MAX_ENV_FROM = 100

#: Variables the runtime sets itself; a Function may not override them.
RESERVED_ENV_PREFIXES = ("AWS_LAMBDA_", "LAMINA_")
RESERVED_ENV = frozenset({"_HANDLER", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR", "AWS_EXECUTION_ENV"})


def cpu_millicores(memory_mb: int) -> int:
    """CPU share that follows memory as on Lambda: 1769 MB is one vCPU (floored at 100m)."""
    return max(MIN_MILLICORES, math.ceil(memory_mb * 1000 / MB_PER_VCPU))


class CodeSource(LaminaModel):
    """Where the function's code comes from; exactly one of the four."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    **cel_exactly_one("inline", "configMap", "url", "s3"),
                    "message": "spec.code: exactly one of inline, configMap, url, s3 must be set",
                },
                {
                    "rule": "has(self.url) == has(self.sha256)",
                    "message": "spec.code: url and sha256 go together",
                },
            ]
        }
    )

    inline: str | None = Field(default=None, description="Source code; becomes index.py.")
    config_map: NameRef | None = Field(
        default=None, description="ConfigMap whose keys are file names and values file contents."
    )
    url: str | None = Field(default=None, pattern=URL, description="URL of a zip archive.")
    sha256: str | None = Field(default=None, pattern=SHA256, description="SHA-256 of the archive at url.")
    s3: S3Location | None = Field(default=None, description="A zip archive in S3-compatible storage.")

    @model_validator(mode="after")
    def _one_source(self) -> CodeSource:
        exactly_one(self, "inline", "config_map", "url", "s3")
        if self.url is not None and self.sha256 is None:
            raise FieldError("sha256", "is required with url")
        if self.url is None and self.sha256 is not None:
            raise FieldError("sha256", "only goes with url")
        return self

    @property
    def kind(self) -> Literal["inline", "configMap", "url", "s3"]:
        """Which source is set."""
        if self.inline is not None:
            return "inline"
        if self.s3 is not None:
            return "s3"
        return "configMap" if self.config_map is not None else "url"


class EnvFrom(LaminaModel):
    """An environment variable whose value is read from a Secret or ConfigMap key."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [cel_exactly_one("secretKeyRef", "configMapKeyRef")]}
    )

    name: str = Field(pattern=ENV_NAME, max_length=256)
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None

    @model_validator(mode="after")
    def _one_ref(self) -> EnvFrom:
        exactly_one(self, "secret_key_ref", "config_map_key_ref")
        return self


class AsyncConfig(LaminaModel):
    """How asynchronous (Event) invocations are retried and where their outcome goes."""

    maximum_retry_attempts: int = Field(default=2, ge=0, le=2, description="Retries after the first try.")
    maximum_event_age_seconds: int = Field(
        default=21600, ge=60, le=21600, description="Events older than this go to onFailure."
    )
    on_success: Endpoint | None = Field(default=None, description="Receives successful results.")
    on_failure: Endpoint | None = Field(default=None, description="Receives events that failed for good.")


class HttpConfig(LaminaModel):
    """The HTTP trigger's event shape (``/url/{function}/...``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.multiValueHeaders) || !self.multiValueHeaders || "
                    "(has(self.payloadFormat) && self.payloadFormat == 'alb')",
                    "message": "spec.http.multiValueHeaders: only goes with payloadFormat alb",
                    "fieldPath": ".multiValueHeaders",
                }
            ]
        }
    )

    payload_format: Literal["2.0", "1.0", "alb"] = Field(
        default="2.0",
        description='"2.0": API Gateway HTTP API payload 2.0 (function URLs); "1.0": API Gateway REST / '
        'HTTP API payload 1.0 (multiValueHeaders, multiValueQueryStringParameters); "alb": an '
        "Application Load Balancer target event.",
    )
    multi_value_headers: bool = Field(
        default=False,
        description="alb only: the target group's multi-value headers setting (multiValueHeaders and "
        "multiValueQueryStringParameters in the event and the response).",
    )

    @model_validator(mode="after")
    def _multi_value_for_alb(self) -> HttpConfig:
        if self.multi_value_headers and self.payload_format != "alb":
            raise FieldError("multiValueHeaders", "only goes with payloadFormat alb")
        return self


#: Lambda's LoggingConfig.LogGroup pattern.
LOG_GROUP = r"^[\.\-_/#A-Za-z0-9]+$"


class LoggingConfig(LaminaModel):
    """Lambda's ``LoggingConfig``: the log format and, with JSON, the levels kept."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(!has(self.applicationLogLevel) && !has(self.systemLogLevel)) || "
                    "(has(self.logFormat) && self.logFormat == 'JSON')",
                    "message": "spec.logging: applicationLogLevel and systemLogLevel need logFormat JSON",
                }
            ]
        }
    )

    log_format: Literal["Text", "JSON"] = Field(
        default="Text",
        description="Text: Lambda's plain lines; JSON: application records and platform lines as JSON.",
    )
    application_log_level: Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"] | None = Field(
        default=None,
        description="JSON only: the function's logging level (AWS_LAMBDA_LOG_LEVEL); INFO when unset.",
    )
    system_log_level: Literal["DEBUG", "INFO", "WARN"] | None = Field(
        default=None,
        description="JSON only: the platform lines kept (START, END, REPORT... are INFO); INFO when unset.",
    )
    log_group: str | None = Field(
        default=None,
        pattern=LOG_GROUP,
        max_length=512,
        description="The log group the function reports (AWS_LAMBDA_LOG_GROUP_NAME); /aws/lambda/<name> "
        "when unset.",
    )

    @model_validator(mode="after")
    def _levels_need_json(self) -> LoggingConfig:
        levels = {"applicationLogLevel": self.application_log_level, "systemLogLevel": self.system_log_level}
        for name, value in levels.items():
            if value is not None and self.log_format != "JSON":
                raise FieldError(name, "needs logFormat JSON (as on Lambda)")
        return self

    @property
    def is_json(self) -> bool:
        return self.log_format == "JSON"


LayerName = Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]

#: A published version's number, as Lambda writes it (a string of digits).
VERSION_NUMBER = r"^[1-9][0-9]{0,9}$"
#: What an alias may point to: a version number, ``$LATEST``, or ``$LATEST.PUBLISHED`` (lamina: the
#: newest published version, so that an alias follows ``publishVersions`` as SAM's AutoPublishAlias).
ALIAS_TARGET = r"^([1-9][0-9]{0,9}|\$LATEST|\$LATEST\.PUBLISHED)$"
LATEST = "$LATEST"
LATEST_PUBLISHED = "$LATEST.PUBLISHED"
#: Lambda's alias names: letters, digits, '-' and '_', not only digits (that would read as a version).
ALIAS_NAME = r"^[a-zA-Z0-9_-]{1,128}$"
MAX_ALIASES = 16
#: Map keys that are version numbers (the apiserver refuses patternProperties, so CEL checks them).
VERSION_KEYS_RULE: JsonDict = {
    "rule": "self.all(v, v.matches('^[1-9][0-9]{0,9}$'))",
    "message": "keys must be published version numbers (1, 2, ...)",
}


def _version_keys(values: dict[str, Any]) -> dict[str, Any]:
    for key in values:
        if not re.fullmatch(VERSION_NUMBER, key):
            raise ValueError(f"keys must be published version numbers (1, 2, ...), got {key!r}")
    return values


class RolloutPolicy(LaminaModel):
    """How an alias moves to a new version (SAM's DeploymentPreference, Flagger's analysis):
    ``Canary`` sends ``percent`` for ``intervalSeconds`` then everything; ``Linear`` adds ``percent``
    every ``intervalSeconds``. Rolls back by itself when the new version's error rate over
    ``windowSeconds`` passes ``errorRateThreshold`` (after ``minimumInvocations``)."""

    type: Literal["Canary", "Linear"] = Field(description="Canary: one step; Linear: equal steps.")
    percent: int = Field(ge=1, le=99, description="Canary: the new version's share; Linear: added per step.")
    interval_seconds: int = Field(
        ge=1, le=86400, description="Canary: how long the canary runs; Linear: time between steps."
    )
    error_rate_threshold: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="The new version rolls back when its errors / invocations pass this (0: any error).",
    )
    window_seconds: int = Field(
        default=60, ge=1, le=3600, description="The window the error rate is taken over."
    )
    minimum_invocations: int = Field(
        default=5, ge=1, le=100000, description="Invocations needed in the window before it can roll back."
    )


class AliasSpec(LaminaModel):
    """A named pointer to a version, optionally splitting traffic with one other version."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.additionalVersionWeights) || self.additionalVersionWeights.size() == 0"
                    " || self.functionVersion.matches('^[0-9]+$')",
                    "message": "additionalVersionWeights: weighted routing needs functionVersion to be a "
                    "published version number (not $LATEST)",
                    "fieldPath": ".additionalVersionWeights",
                },
                {
                    "rule": "!has(self.additionalVersionWeights) || "
                    "!(self.functionVersion in self.additionalVersionWeights)",
                    "message": "additionalVersionWeights: must name another version than functionVersion",
                    "fieldPath": ".additionalVersionWeights",
                },
                {
                    "rule": "!has(self.rollout) || !has(self.additionalVersionWeights) || "
                    "self.additionalVersionWeights.size() == 0",
                    "message": "rollout: a rollout sets the weights itself; leave "
                    "additionalVersionWeights empty",
                    "fieldPath": ".rollout",
                },
                {
                    "rule": "!has(self.rollout) || self.functionVersion != '$LATEST'",
                    "message": "rollout: rolls out published versions, not $LATEST",
                    "fieldPath": ".rollout",
                },
                {
                    "rule": "!has(self.provisionedConcurrency) || self.provisionedConcurrency == 0"
                    " || self.functionVersion != '$LATEST'",
                    "message": "provisionedConcurrency: not on an alias of $LATEST (Lambda allows it on "
                    "published versions only)",
                    "fieldPath": ".provisionedConcurrency",
                },
            ]
        }
    )

    function_version: str = Field(
        pattern=ALIAS_TARGET,
        max_length=32,
        description="The version the alias points to: a number, $LATEST, or $LATEST.PUBLISHED (the newest "
        "published version).",
    )
    additional_version_weights: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        max_length=1,
        description="One other published version and the share of invocations (0 to 1) it gets; "
        "functionVersion gets the rest.",
        json_schema_extra={"maxProperties": 1, "x-kubernetes-validations": [VERSION_KEYS_RULE]},
    )
    provisioned_concurrency: int = Field(
        default=0, ge=0, description="Environments kept initialised for the versions this alias routes to."
    )
    description: str = Field(default="", max_length=256)
    rollout: RolloutPolicy | None = Field(
        default=None, description="Move to a new functionVersion progressively, rolling back on errors."
    )

    _weights_keys = field_validator("additional_version_weights")(
        classmethod(lambda cls, v: _version_keys(v))
    )

    @model_validator(mode="after")
    def _routing(self) -> AliasSpec:
        weights = self.additional_version_weights
        if weights and not re.fullmatch(VERSION_NUMBER, self.function_version):
            raise FieldError(
                "additionalVersionWeights",
                "weighted routing needs functionVersion to be a published version number (not "
                f"{self.function_version})",
            )
        if self.function_version in weights:
            raise FieldError(
                "additionalVersionWeights",
                f"must name another version than functionVersion {self.function_version}",
            )
        if self.rollout is not None and weights:
            raise FieldError(
                "rollout", "a rollout sets the weights itself; leave additionalVersionWeights empty"
            )
        if self.rollout is not None and self.function_version == LATEST:
            raise FieldError("rollout", "rolls out published versions, not $LATEST")
        if self.provisioned_concurrency and self.function_version == LATEST:
            raise FieldError(
                "provisionedConcurrency",
                "not on an alias of $LATEST (Lambda allows it on published versions only)",
            )
        return self

    def versions(self) -> list[str]:
        """Every version this alias names."""
        return [self.function_version, *self.additional_version_weights]


class FunctionSpec(LaminaModel):
    """The desired configuration of a Function."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.reservedConcurrency) || !has(self.provisionedConcurrency)"
                    " || self.provisionedConcurrency <= self.reservedConcurrency",
                    "message": "spec.provisionedConcurrency must not exceed spec.reservedConcurrency",
                    "fieldPath": ".provisionedConcurrency",
                }
            ]
        }
    )

    runtime: Runtime = Field(
        default="python3.12",
        description="Python version of the runtime image, or provided.al2023 / provided.al2 for a custom "
        "runtime whose bootstrap (in the code or a layer) speaks the Lambda Runtime API.",
    )
    handler: str = Field(
        pattern=HANDLER,
        max_length=128,
        description="module.function to call; a custom runtime reads it from _HANDLER.",
    )
    code: CodeSource
    memory_mb: int = Field(
        default=128, ge=128, le=10240, alias="memoryMB", description="Memory in MB; CPU follows it."
    )
    timeout_seconds: int = Field(default=3, ge=1, le=900, description="Hard limit of one invocation.")
    environment: dict[str, str] = Field(default_factory=dict, description="Plain environment variables.")
    environment_from: list[EnvFrom] = Field(
        default_factory=list,
        max_length=MAX_ENV_FROM,
        description="Environment variables read from Secrets or ConfigMaps.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    layers: list[LayerName] = Field(
        default_factory=list,
        max_length=MAX_LAYERS,
        description="Layer names in order; a later layer overrides an earlier one.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    reserved_concurrency: int | None = Field(
        default=None, ge=0, description="Hard cap on concurrent environments; unset means unreserved."
    )
    provisioned_concurrency: int = Field(
        default=0, ge=0, description="Environments kept initialised at all times."
    )
    idle_timeout_seconds: int = Field(
        default=300, ge=1, le=3600, description="Keep-alive of an idle on-demand environment."
    )
    async_: AsyncConfig = Field(
        default_factory=AsyncConfig, alias="async", description="Asynchronous invocation settings."
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="The HTTP trigger's payload format.")
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="Log format and levels, as Lambda's LoggingConfig."
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="ServiceAccount the environments run as (Lambda's execution role): its token is "
        "mounted, and calls signed with the function's credentials act as it. Unset: no token, and the "
        "function acts as the namespace's default ServiceAccount.",
    )
    network: NetworkSpec | None = Field(
        default=None, description="Egress of the environments (unset: the installation's default)."
    )
    publish_versions: bool = Field(
        default=False,
        description="Publish an immutable, numbered version on every change of code or configuration (as "
        "SAM's AutoPublishAlias does).",
    )
    retain_versions: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Published versions kept; older ones are deleted unless an alias names them.",
    )
    aliases: dict[str, AliasSpec] = Field(
        default_factory=dict,
        max_length=MAX_ALIASES,
        description="Alias name -> the version it points to (and optional weighted routing).",
        json_schema_extra={
            "maxProperties": MAX_ALIASES,
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(name, name.matches('^[a-zA-Z0-9_-]{1,128}$') && "
                    "!name.matches('^[0-9]+$'))",
                    "message": "spec.aliases: an alias name is letters, digits, '-' and '_' (at most 128), "
                    "and not only digits",
                }
            ],
        },
    )
    provisioned_concurrency_by_version: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=MAX_ALIASES,
        description="Provisioned concurrency of published versions, by number (aliases carry their own).",
        json_schema_extra={"maxProperties": MAX_ALIASES, "x-kubernetes-validations": [VERSION_KEYS_RULE]},
    )

    @field_validator("environment")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not re.fullmatch(ENV_NAME, name):
                raise FieldError(name, PATTERN_RULES[ENV_NAME])
            if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
                raise FieldError(name, "is reserved by the runtime")
        return env

    _pc_keys = field_validator("provisioned_concurrency_by_version")(
        classmethod(lambda cls, v: _version_keys(v))
    )

    @field_validator("layers")
    @classmethod
    def _unique_layers(cls, layers: list[str]) -> list[str]:
        dupes = sorted({x for x in layers if layers.count(x) > 1})
        if dupes:
            raise ValueError(f"must not repeat a layer (got {', '.join(dupes)} twice)")
        return layers

    @field_validator("environment_from")
    @classmethod
    def _unique_env_from(cls, items: list[EnvFrom]) -> list[EnvFrom]:
        names = [e.name for e in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"must not repeat a name (got {', '.join(dupes)} twice)")
        return items

    @model_validator(mode="after")
    def _provisioned_within_reserved(self) -> FunctionSpec:
        reserved = self.reserved_concurrency
        if reserved is not None and self.provisioned_concurrency > reserved:
            raise FieldError(
                "provisionedConcurrency",
                f"must not exceed reservedConcurrency ({self.provisioned_concurrency} > {reserved})",
            )
        for name in self.aliases:
            if not re.fullmatch(ALIAS_NAME, name) or name.isdigit():
                raise FieldError(
                    "aliases",
                    f"an alias name is letters, digits, '-' and '_' (at most 128), and not only digits "
                    f"(got {name!r})",
                )
        if self.provisioned_concurrency and (self.publish_versions or self.aliases):
            raise FieldError(
                "provisionedConcurrency",
                "not on $LATEST once the function publishes versions or has aliases: set it on an alias "
                "(spec.aliases.NAME.provisionedConcurrency) or a version "
                "(spec.provisionedConcurrencyByVersion), as Lambda does",
            )
        total = self.total_provisioned
        if reserved is not None and total > reserved:
            raise FieldError(
                "aliases",
                f"provisioned concurrency of aliases and versions ({total}) must not exceed "
                f"reservedConcurrency ({reserved})",
            )
        clash = set(self.environment) & {e.name for e in self.environment_from}
        if clash:
            raise FieldError("environmentFrom", f"{', '.join(sorted(clash))} also set in environment")
        return self

    @property
    def cpu_millicores(self) -> int:
        """CPU share that follows memory as on Lambda: 1769 MB is one vCPU (floored at 100m)."""
        return cpu_millicores(self.memory_mb)

    @property
    def total_provisioned(self) -> int:
        """Provisioned environments over $LATEST, every alias and every version."""
        return (
            self.provisioned_concurrency
            + sum(a.provisioned_concurrency for a in self.aliases.values())
            + sum(self.provisioned_concurrency_by_version.values())
        )

    def named_versions(self) -> set[str]:
        """Version numbers that an alias or a provisioned-concurrency setting names."""
        named = {v for a in self.aliases.values() for v in a.versions() if v.isdigit()}
        return named | set(self.provisioned_concurrency_by_version)

    @property
    def max_environments(self) -> int | None:
        """Upper bound on environments: the reserved concurrency, or None when unreserved."""
        return self.reserved_concurrency


class PublishedVersion(LaminaModel):
    """A published version as the status lists it (its full snapshot is in an immutable ConfigMap)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    version: str = Field(pattern=VERSION_NUMBER, description="The version's number.")
    code_sha256: str = Field(description="Digest of the version's code.")
    digest: str = Field(description="Digest of the whole snapshot (code, layers, configuration).")
    runtime: str = ""
    handler: str = ""
    memory_mb: int = Field(default=128, alias="memoryMB")
    timeout_seconds: int = 3
    layer_revisions: dict[str, int] = Field(default_factory=dict)
    payload_format: str = Field(default="2.0", description="spec.http.payloadFormat of the version.")
    multi_value_headers: bool = False
    created: str = Field(default="", description="When it was published (RFC 3339).")


class RolloutStatus(LaminaModel):
    """Where an alias's rollout is: every step and a rollback are also Kubernetes Events."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Literal["Progressing", "Succeeded", "RolledBack"]
    from_version: str = Field(description="The version the alias routed to before.")
    to_version: str = Field(description="The version being rolled out.")
    weight: float = Field(default=0, ge=0, le=1, description="The new version's share now.")
    step: int = Field(default=0, ge=0)
    started_at: str = ""
    step_started_at: str = ""
    observed_invocations: int | None = Field(default=None, description="New version, in the window.")
    observed_errors: int | None = Field(default=None, description="New version's errors, in the window.")
    message: str = ""


class AliasStatus(LaminaModel):
    """The routing of an alias in effect (during a rollout, the current step's weights)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    rollout: RolloutStatus | None = Field(default=None, description="The last rollout of this alias.")

    function_version: str = Field(description="The version that gets the remaining traffic.")
    # None: how a merge patch removes the weight of a version no longer split to.
    additional_version_weights: dict[str, float | None] = Field(
        default_factory=dict, description="The other version and its share of invocations."
    )


class FunctionStatus(StatusBase):
    """What the operator observed about a Function."""

    latest_version: int | None = Field(
        default=None, ge=0, description="Number of the newest version ever published (never reused)."
    )
    versions: list[PublishedVersion] = Field(
        default_factory=list,
        max_length=200,
        description="Published versions that are kept, oldest first.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]},
    )
    # None: how a merge patch removes an alias that is gone (the status writer validates the patch).
    aliases: dict[str, AliasStatus | None] = Field(
        default_factory=dict,
        description="Each alias's routing in effect.",
        json_schema_extra={"maxProperties": MAX_ALIASES},
    )

    ready_environments: int | None = Field(default=None, ge=0, description="Environments ready to serve.")
    desired_environments: int | None = Field(default=None, ge=0, description="Environments wanted now.")
    layer_revisions: dict[str, int] = Field(
        default_factory=dict, description="Revision of each layer the environments run with."
    )
    code_digest: str | None = Field(default=None, description="Digest of the code the environments run.")
    code_s3: dict[str, str] | None = Field(
        default=None,
        alias="codeS3",
        description="The S3 object the code comes from as last read: bucket, key, versionId, etag, sha256.",
    )
    url: str | None = Field(default=None, description="In-cluster URL of the function's HTTP trigger.")
    cold_start_path: Literal["Pool", "Deployment"] | None = Field(
        default=None,
        description="How environments above provisioned concurrency start: claimed from a warm "
        "generic pool, or as new pods of the function's own Deployment.",
    )
    cold_start_path_reason: str | None = Field(default=None, description="Why that path.")
    reservation: Literal["Granted", "Refused"] | None = Field(
        default=None,
        description="Whether spec.reservedConcurrency is granted, or refused because it would leave the "
        "unreserved pool below its minimum (the function is then served as unreserved).",
    )
    reservation_reason: str | None = Field(default=None, description="Why it is granted or refused.")


#: The root of a Function's CRD: an alias may only name a version that is published (status.versions)
#: or that this change publishes (the next number, with publishVersions).
ALIAS_VERSIONS_EXIST = {
    "rule": "!has(self.spec.aliases) || self.spec.aliases.all(a, "
    "([self.spec.aliases[a].functionVersion] + (has(self.spec.aliases[a].additionalVersionWeights) ? "
    "self.spec.aliases[a].additionalVersionWeights.map(v, v) : [])).all(v, !v.matches('^[0-9]+$') || "
    "(has(self.status) && has(self.status.versions) && self.status.versions.exists(p, p.version == v)) || "
    "(has(self.spec.publishVersions) && self.spec.publishVersions && int(v) == "
    "(has(self.status) && has(self.status.latestVersion) ? self.status.latestVersion : 0) + 1)))",
    "message": "spec.aliases: an alias names a version that does not exist (published versions are in "
    "status.versions; with publishVersions the next number is allowed too)",
    "fieldPath": ".spec.aliases",
}


class Function(LaminaObject):
    """A serverless Python function."""

    kind: Literal["Function"] = "Function"
    spec: FunctionSpec
    status: FunctionStatus | None = None

    @model_validator(mode="after")
    def _aliases_name_published_versions(self) -> Function:
        """The model's copy of :data:`ALIAS_VERSIONS_EXIST` (checked when a status is known)."""
        status = self.status
        if status is None or not self.spec.aliases:
            return self
        published = {v.version for v in status.versions}
        upcoming = str((status.latest_version or 0) + 1) if self.spec.publish_versions else None
        for name, alias in self.spec.aliases.items():
            for version in alias.versions():
                if version.isdigit() and version not in published and version != upcoming:
                    shown = ", ".join(sorted(published, key=int)) or "none"
                    raise FieldError(
                        f"spec.aliases.{name}",
                        f"version {version} does not exist (published: {shown})",
                    )
        return self
