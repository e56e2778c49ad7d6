"""Build the adapter of a broker endpoint (an :class:`~lamina.api.EventSource` or an
:class:`~lamina.api.Endpoint`: ``redis``, ``nats``, ``rabbitmq``, ``kafka``, ``sqs``; sources also
``kubernetes``).

The broker URL is passed in already resolved (a ``urlFrom`` Secret is read by the caller), and so are
credentials, through ``secret(name, key)`` (a Secret of the mapping's namespace), so that this module
never talks to Kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lamina.api.common import (
    BrokerChoice,
    KafkaEndpoint,
    NatsEndpoint,
    RabbitMQEndpoint,
    RedisEndpoint,
    SqsEndpoint,
)
from lamina.api.eventsourcemapping import KubernetesSource as KubernetesSpec
from lamina.eventsources.base import Sink, Source

#: Reads one key of a Secret of the mapping's namespace: (name, key) -> value, None when missing.
SecretLookup = Callable[[str, str], str | None]


def _no_secrets(name: str, key: str) -> str | None:
    return None


def consumer_name(esm_name: str) -> str:
    """The consumer group / durable consumer of a mapping: ``lamina-<esm>``."""
    return f"lamina-{esm_name}"


def kafka_access(target: KafkaEndpoint, secret: SecretLookup) -> Any:
    """The connection settings of a ``kafka`` endpoint, with its credentials read from Secrets."""
    from lamina.eventsources.kafka import KafkaAccess

    ca = ca_secret = None
    if target.tls is not None and target.tls.ca_certificate is not None:
        ref = target.tls.ca_certificate.secret_key_ref
        ca_secret, ca = ref.name, secret(ref.name, ref.key)
    username = password = mechanism = sasl_secret = None
    if target.sasl is not None:
        sasl_secret = target.sasl.secret_ref.name
        mechanism = target.sasl.mechanism
        username, password = secret(sasl_secret, "username"), secret(sasl_secret, "password")
    return KafkaAccess(
        bootstrap_servers=tuple(target.bootstrap_servers),
        tls=target.tls is not None,
        ca=ca,
        mechanism=mechanism,
        username=username,
        password=password,
        sasl_secret=sasl_secret,
        ca_secret=ca_secret,
    )


def sqs_access(target: SqsEndpoint, secret: SecretLookup) -> Any:
    """The queue and credentials of an ``sqs`` endpoint (keys read from the Secret it names)."""
    from lamina.eventsources.sqs import SqsAccess

    name = target.credentials.secret_ref.name if target.credentials is not None else None
    return SqsAccess(
        queue_url=target.queue_url,
        region=target.region,
        access_key_id=secret(name, "accessKeyId") if name else None,
        secret_access_key=secret(name, "secretAccessKey") if name else None,
        session_token=secret(name, "sessionToken") if name else None,
        secret=name,
    )


def make_source(
    endpoint: BrokerChoice,
    url: str | None,
    *,
    esm_name: str,
    batch_size: int = 10,
    starting_position: str = "TRIM_HORIZON",
    starting_timestamp: float | None = None,
    secret: SecretLookup = _no_secrets,
    **options: Any,
) -> Source:
    """The source adapter of a mapping (not yet connected).

    ``options`` go to the adapter: ``claim_idle_seconds`` (redis), ``ack_wait_seconds`` (nats);
    ``namespace``, ``api_client`` and ``checkpoint`` (kubernetes).
    """
    target = endpoint.target
    group = consumer_name(esm_name)
    if isinstance(target, RedisEndpoint):
        from lamina.eventsources.redis_streams import RedisStreamSource

        assert url is not None
        return RedisStreamSource(url, target.stream, group, starting_position=starting_position, **options)
    if isinstance(target, NatsEndpoint):
        from lamina.eventsources.nats_jetstream import NatsJetStreamSource

        assert url is not None
        return NatsJetStreamSource(
            url,
            target.subject,
            group,
            stream=target.stream,
            starting_position=starting_position,
            max_ack_pending=batch_size,
            **options,
        )
    if isinstance(target, RabbitMQEndpoint):
        from lamina.eventsources.rabbitmq import RabbitMQSource

        assert url is not None
        # Two batches: the next one arrives while this one is processed (see the module's doc).
        return RabbitMQSource(url, target.queue, prefetch=batch_size * 2, **options)
    if isinstance(target, KafkaEndpoint):
        from lamina.eventsources.kafka import KafkaSource

        return KafkaSource(
            kafka_access(target, secret),
            target.topic,
            target.consumer_group_id or group,
            starting_position=starting_position,
            starting_timestamp=starting_timestamp,
            **options,
        )
    if isinstance(target, SqsEndpoint):
        from lamina.eventsources.sqs import SqsSource

        return SqsSource(sqs_access(target, secret))
    if isinstance(target, KubernetesSpec):
        from lamina.eventsources.kubernetes import KubernetesSource, Watched

        namespace = options.pop("namespace", None)
        watched = Watched(
            api_version=target.api_version,
            kind=target.kind,
            namespace=None if target.all_namespaces else (target.namespace or namespace),
            label_selector=target.label_selector or None,
            event_types=frozenset(target.event_types),
            service_account=target.service_account_name,
        )
        return KubernetesSource(watched, starting_position=starting_position, **options)
    raise ValueError(f"{endpoint.kind} is not a broker an EventSourceMapping can consume")


def make_sink(endpoint: BrokerChoice, url: str | None, secret: SecretLookup = _no_secrets) -> Sink:
    """The sink adapter of a destination (not yet connected)."""
    target = endpoint.target
    if isinstance(target, RedisEndpoint):
        from lamina.eventsources.redis_streams import RedisStreamSink

        assert url is not None
        return RedisStreamSink(url, target.stream)
    if isinstance(target, NatsEndpoint):
        from lamina.eventsources.nats_jetstream import NatsJetStreamSink

        assert url is not None
        return NatsJetStreamSink(url, target.subject, stream=target.stream)
    if isinstance(target, RabbitMQEndpoint):
        from lamina.eventsources.rabbitmq import RabbitMQSink

        assert url is not None
        return RabbitMQSink(url, target.queue)
    if isinstance(target, KafkaEndpoint):
        from lamina.eventsources.kafka import KafkaSink

        return KafkaSink(kafka_access(target, secret), target.topic)
    if isinstance(target, SqsEndpoint):
        from lamina.eventsources.sqs import SqsSink

        return SqsSink(sqs_access(target, secret))
    raise ValueError(f"a {endpoint.kind} destination is not a broker; it has no sink adapter")
