"""Build the adapter of a broker endpoint (an :class:`~lamina.api.EventSource` or an
:class:`~lamina.api.Endpoint`: ``redis``, ``nats`` or ``rabbitmq``).

The broker URL is passed in already resolved (a ``urlFrom`` Secret is read by the caller), so that
this module never talks to Kubernetes.
"""

from __future__ import annotations

from typing import Any

from lamina.api.common import BrokerChoice, NatsEndpoint, RabbitMQEndpoint, RedisEndpoint
from lamina.eventsources.base import Sink, Source


def consumer_name(esm_name: str) -> str:
    """The consumer group / durable consumer of a mapping: ``lamina-<esm>``."""
    return f"lamina-{esm_name}"


def make_source(
    endpoint: BrokerChoice,
    url: str,
    *,
    esm_name: str,
    batch_size: int = 10,
    starting_position: str = "TRIM_HORIZON",
    **options: Any,
) -> Source:
    """The source adapter of a mapping (not yet connected).

    ``options`` go to the adapter: ``claim_idle_seconds`` (redis), ``ack_wait_seconds`` (nats).
    """
    target = endpoint.target
    group = consumer_name(esm_name)
    if isinstance(target, RedisEndpoint):
        from lamina.eventsources.redis_streams import RedisStreamSource

        return RedisStreamSource(url, target.stream, group, starting_position=starting_position, **options)
    if isinstance(target, NatsEndpoint):
        from lamina.eventsources.nats_jetstream import NatsJetStreamSource

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

        return RabbitMQSource(url, target.queue, prefetch=batch_size, **options)
    raise ValueError(f"{endpoint.kind} is not a broker an EventSourceMapping can consume")


def make_sink(endpoint: BrokerChoice, url: str) -> Sink:
    """The sink adapter of a destination (not yet connected)."""
    target = endpoint.target
    if isinstance(target, RedisEndpoint):
        from lamina.eventsources.redis_streams import RedisStreamSink

        return RedisStreamSink(url, target.stream)
    if isinstance(target, NatsEndpoint):
        from lamina.eventsources.nats_jetstream import NatsJetStreamSink

        return NatsJetStreamSink(url, target.subject, stream=target.stream)
    if isinstance(target, RabbitMQEndpoint):
        from lamina.eventsources.rabbitmq import RabbitMQSink

        return RabbitMQSink(url, target.queue)
    raise ValueError(f"a {endpoint.kind} destination is not a broker; it has no sink adapter")
