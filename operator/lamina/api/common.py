"""Building blocks shared by every lamina kind: base model, metadata, conditions, endpoints.

All models speak camelCase on the wire (``alias_generator=to_camel``) and refuse unknown fields,
so that a typo in a manifest is an error instead of a silently ignored setting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP = "lamina.dev"
VERSION = "v1alpha1"
#: ``f"{GROUP}/{VERSION}"``, spelled out so that it is the Literal the models declare.
API_VERSION: Literal["lamina.dev/v1alpha1"] = "lamina.dev/v1alpha1"

#: ``provided.*`` are custom runtimes: the code (or a layer) ships a ``bootstrap`` that speaks the Lambda
#: Runtime API; they run in the Python runtime image, which carries the host of that API.
Runtime = Literal["python3.11", "python3.12", "python3.13", "provided.al2023", "provided.al2"]
RUNTIMES: tuple[str, ...] = ("python3.11", "python3.12", "python3.13", "provided.al2023", "provided.al2")

# Regular expressions are written in the subset shared by Python, Rust (pydantic) and Go (apiserver).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SHA256 = r"^[0-9a-fA-F]{64}$"
URL = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]+$"
HANDLER = r"^[A-Za-z_][A-Za-z0-9_]*([./][A-Za-z_][A-Za-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
SCHEDULE = r"^(rate|cron|at)\(.+\)$"
HOST_PORT = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):[0-9]{1,5}$"
KAFKA_NAME = r"^[A-Za-z0-9._-]+$"
AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
#: A function name with an optional qualifier (``orders``, ``orders:prod``, ``orders:7``): what an event
#: source mapping, a schedule or an async destination invokes.
QUALIFIED_FUNCTION = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(:(\$LATEST|[a-zA-Z0-9_-]{1,128}))?$"

#: What each pattern means, so that a mismatch is reported as a rule and not as a regex.
PATTERN_RULES: dict[str, str] = {
    DNS_LABEL: "must be a DNS label: lowercase letters, digits and '-', starting and ending "
    "with a letter or digit, at most 63 characters",
    DNS_SUBDOMAIN: "must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
    SHA256: "must be 64 hexadecimal characters (a SHA-256 digest)",
    URL: "must be an absolute URL such as https://host/path.zip",
    HANDLER: "must be module.function, e.g. index.handler or src/app.main",
    ENV_NAME: "must be an environment variable name (letters, digits and '_', not starting with a digit)",
    SCHEDULE: "must be rate(...), cron(...) or at(...)",
    HOST_PORT: "must be host:port, e.g. kafka-0.kafka:9092",
    KAFKA_NAME: "may contain only letters, digits, '.', '_' and '-'",
    AWS_REGION: "must be an AWS region name such as us-east-1",
    QUALIFIED_FUNCTION: "must be a Function's name, optionally with :version or :alias (orders:prod)",
}


class LaminaModel(BaseModel):
    """Base of every wire model: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The wire form (camelCase, JSON types, unset optionals left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def secret_env_name(name: str, key: str) -> str:
    """The environment variable a mapping worker finds one Secret key in (``LAMINA_SECRET_<hash>``).

    The operator sets it from a ``secretKeyRef`` and the worker reads it by the same name, so that
    neither needs to spell Secret names as variable names (they may hold '.' and '-')."""
    import hashlib

    return "LAMINA_SECRET_" + hashlib.sha256(f"{name}/{key}".encode()).hexdigest()[:16].upper()


class FieldError(ValueError):
    """A cross-field rule broken by one field: the error is reported at ``<model>.<field>``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def exactly_one(model: BaseModel, *fields: str) -> str:
    """Return the single field (python name) of ``fields`` that is set, or raise naming the aliases."""
    chosen = [f for f in fields if getattr(model, f) is not None]
    if len(chosen) == 1:
        return chosen[0]
    names = [type(model).model_fields[f].alias or f for f in fields]
    got = ", ".join(type(model).model_fields[f].alias or f for f in chosen) or "none"
    raise ValueError(f"exactly one of {', '.join(names)} must be set (got {got})")


# Words CEL reserves; the apiserver exposes such properties as ``self.__word__``.
CEL_RESERVED = frozenset(
    "true false null in as break const continue else for function if import let loop package "
    "namespace return var void while".split()
)


def cel_field(name: str) -> str:
    """How a property is addressed in a CRD's CEL rule (``function`` -> ``__function__``)."""
    return f"__{name}__" if name in CEL_RESERVED else name


def cel_exactly_one(*fields: str) -> JsonDict:
    """The CEL rule that mirrors :func:`exactly_one` for the CRD (aliases expected)."""
    has = ", ".join(f"has(self.{cel_field(f)})" for f in fields)
    return {
        "rule": f"[{has}].filter(x, x).size() == 1",
        "message": f"exactly one of {', '.join(fields)} must be set",
    }


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata lamina reads; the rest (resourceVersion, ...) is ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    namespace: str = Field(default="default", pattern=DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


class Condition(LaminaModel):
    """A standard ``metav1.Condition``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    type: str = Field(max_length=316, description="CamelCase condition name, e.g. Ready.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=1024, description="CamelCase reason for the status.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(default=None, ge=0)


class StatusBase(LaminaModel):
    """Fields every lamina status has; operator-written, so unknown fields are tolerated."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if the operator has written it."""
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> bool:
        """True when the Ready condition is True."""
        cond = self.condition("Ready")
        return cond is not None and cond.status == "True"


class NameRef(LaminaModel):
    """A reference to an object in the same namespace (ConfigMap, Function)."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)


class KeyRef(LaminaModel):
    """One key of a Secret or ConfigMap in the same namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    key: str = Field(min_length=1, max_length=253)


#: S3's bucket naming rules (3 to 63 lowercase letters, digits, '.' and '-').
S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PATTERN_RULES[S3_BUCKET] = "must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-'"


class S3Location(LaminaModel):
    """A zip archive in S3-compatible storage (Lambda's S3Bucket, S3Key, S3ObjectVersion)."""

    bucket: str = Field(pattern=S3_BUCKET, description="Bucket name.")
    key: str = Field(min_length=1, max_length=1024, description="Object key of the zip archive.")
    object_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Object version to use; unset means the current one, whose digest is recorded so "
        "that a new upload is a new code digest (and a new version with publishVersions).",
    )
    endpoint: str | None = Field(
        default=None,
        pattern=URL,
        description="URL of an S3-compatible server (path-style addressing); default AWS S3 of the region.",
    )
    region: str = Field(default="us-east-1", min_length=1, max_length=64, description="Signing region.")
    credentials_secret: NameRef | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_SESSION_TOKEN); unset means anonymous reads.",
    )

    def describe(self) -> str:
        version = f" (version {self.object_version})" if self.object_version else ""
        return f"s3://{self.bucket}/{self.key}{version}"


class SecretValueFrom(LaminaModel):
    """Where a secret value (a broker URL with credentials) comes from."""

    secret_key_ref: KeyRef


_URL_RULE = cel_exactly_one("url", "urlFrom")


class BrokerEndpoint(LaminaModel):
    """A broker address: a literal ``url`` or one read from a Secret (``urlFrom``)."""

    url: str | None = Field(default=None, pattern=URL, description="Broker URL.")
    url_from: SecretValueFrom | None = Field(default=None, description="Broker URL read from a Secret.")

    @model_validator(mode="after")
    def _one_url(self) -> BrokerEndpoint:
        exactly_one(self, "url", "url_from")
        return self


class RedisEndpoint(BrokerEndpoint):
    """A Redis Stream."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_URL_RULE]})

    stream: str = Field(min_length=1, max_length=256)


class NatsEndpoint(BrokerEndpoint):
    """A NATS subject; with ``stream`` it is consumed through JetStream."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_URL_RULE]})

    subject: str = Field(min_length=1, max_length=256)
    stream: str | None = Field(default=None, min_length=1, max_length=256)


class RabbitMQEndpoint(BrokerEndpoint):
    """A RabbitMQ queue."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_URL_RULE]})

    queue: str = Field(min_length=1, max_length=256)


class KafkaTls(LaminaModel):
    """TLS to the brokers. Their certificates are checked against ``caCertificate`` (a PEM bundle in a
    Secret) or, without it, the system's CAs."""

    ca_certificate: SecretValueFrom | None = Field(default=None, description="PEM CA bundle from a Secret.")


class KafkaSasl(LaminaModel):
    """SASL login (Lambda's SASL_SCRAM_512_AUTH / SASL_SCRAM_256_AUTH / BASIC_AUTH)."""

    mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    secret_ref: NameRef = Field(description="A Secret with the keys username and password.")


class KafkaEndpoint(LaminaModel):
    """A Kafka topic on a self-managed (or MSK-like) cluster."""

    bootstrap_servers: list[Annotated[str, Field(pattern=HOST_PORT, max_length=261)]] = Field(
        min_length=1,
        max_length=16,
        description="host:port of one or more brokers.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    topic: str = Field(min_length=1, max_length=249, pattern=KAFKA_NAME)
    consumer_group_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=KAFKA_NAME,
        description="Consumer group of the mapping (default lamina-<mapping name>).",
    )
    tls: KafkaTls | None = Field(default=None, description="Connect over TLS.")
    sasl: KafkaSasl | None = Field(default=None, description="Log in with SASL.")

    def describe(self) -> str:
        return f"kafka {self.topic}"


class SqsCredentials(LaminaModel):
    """Static AWS credentials from a Secret."""

    secret_ref: NameRef = Field(
        description="A Secret with the keys accessKeyId and secretAccessKey (and optionally sessionToken)."
    )


class SqsEndpoint(LaminaModel):
    """An SQS queue (standard or FIFO, by its ``.fifo`` name), on AWS or an SQS-compatible server."""

    queue_url: str = Field(
        pattern=URL,
        max_length=1024,
        description="The queue's URL, e.g. http://elasticmq:9324/000000000000/orders.",
    )
    region: str = Field(default="us-east-1", pattern=AWS_REGION, max_length=32)
    credentials: SqsCredentials | None = Field(
        default=None, description="Signing keys; without them requests are signed with placeholder keys."
    )

    @property
    def fifo(self) -> bool:
        return self.queue_url.rstrip("/").endswith(".fifo")

    def describe(self) -> str:
        return f"sqs {self.queue_url.rstrip('/').rsplit('/', 1)[-1]}"


def split_qualifier(name: str) -> tuple[str, str | None]:
    """``orders:prod`` -> (``orders``, ``prod``); ``orders`` -> (``orders``, None)."""
    base, _, qualifier = name.partition(":")
    return base, qualifier or None


class FunctionTarget(LaminaModel):
    """Another Function, invoked asynchronously (``name:alias`` or ``name:version`` targets an alias
    or a version). In another namespace when ``namespace`` is set: the sending function's identity
    (its ServiceAccount) must then be allowed ``invoke`` on it there."""

    name: str = Field(pattern=QUALIFIED_FUNCTION, max_length=192)
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace of the function (default: this one).",
    )


class BrokerChoice(LaminaModel):
    """Exactly one broker kind; shared by destinations and event sources."""

    redis: RedisEndpoint | None = None
    nats: NatsEndpoint | None = None
    rabbitmq: RabbitMQEndpoint | None = None
    kafka: KafkaEndpoint | None = None
    sqs: SqsEndpoint | None = None

    CHOICES: ClassVar[tuple[str, ...]] = ("redis", "nats", "rabbitmq", "kafka", "sqs")

    @model_validator(mode="after")
    def _one_kind(self) -> BrokerChoice:
        exactly_one(self, *self.CHOICES)
        return self

    @property
    def kind(self) -> str:
        """Which kind is set: "redis", "nats", "rabbitmq", ..."""
        return next(f for f in self.CHOICES if getattr(self, f) is not None)

    @property
    def target(self) -> LaminaModel:
        """The settings of the chosen kind."""
        chosen: LaminaModel = getattr(self, self.kind)
        return chosen

    def secret_keys(self) -> list[tuple[str, str, bool]]:
        """Every (Secret name, key, required) this endpoint reads: a ``urlFrom`` URL, Kafka's TLS CA and
        SASL login, SQS keys."""
        target = self.target
        keys: list[tuple[str, str, bool]] = []
        url_from = getattr(target, "url_from", None)
        if url_from is not None:
            keys.append((url_from.secret_key_ref.name, url_from.secret_key_ref.key, True))
        if isinstance(target, KafkaEndpoint):
            if target.tls is not None and target.tls.ca_certificate is not None:
                ref = target.tls.ca_certificate.secret_key_ref
                keys.append((ref.name, ref.key, True))
            if target.sasl is not None:
                name = target.sasl.secret_ref.name
                keys += [(name, "username", True), (name, "password", True)]
        if isinstance(target, SqsEndpoint) and target.credentials is not None:
            name = target.credentials.secret_ref.name
            keys += [
                (name, "accessKeyId", True),
                (name, "secretAccessKey", True),
                (name, "sessionToken", False),
            ]
        return keys


class Endpoint(BrokerChoice):
    """Where results or failed records go: a broker or another Function."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel_exactly_one("redis", "nats", "rabbitmq", "kafka", "sqs", "function")
            ]
        }
    )

    function: FunctionTarget | None = None

    CHOICES: ClassVar[tuple[str, ...]] = ("redis", "nats", "rabbitmq", "kafka", "sqs", "function")


class LaminaObject(LaminaModel):
    """Fields every lamina custom resource has; subclasses add ``kind``, ``spec`` and ``status``."""

    api_version: Literal["lamina.dev/v1alpha1"] = API_VERSION
    kind: str
    metadata: ObjectMeta

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name): how objects are indexed everywhere in lamina."""
        return (self.metadata.namespace, self.metadata.name)

    @property
    def name(self) -> str:
        """Shortcut for ``metadata.name``."""
        return self.metadata.name
