"""Build the adapter for an Endpoint (``{"redis": {...}}``, ``{"nats": {...}}``, ``{"rabbitmq": {...}}``).

The broker URL is passed in already resolved (a ``urlFrom`` Secret is read by the caller), so that
this module never talks to Kubernetes.
"""

from __future__ import annotations

from typing import Any

from lamina.eventsources.base import Sink, Source

BROKER_KINDS = ("redis", "nats", "rabbitmq")


def consumer_name(esm_name: str) -> str:
    """The consumer group / durable consumer of a mapping: ``lamina-<esm>``."""
    return f"lamina-{esm_name}"


def endpoint_parts(endpoint: Any) -> tuple[str, dict[str, Any]]:
    """(kind, settings) of an Endpoint given as a pydantic model or as its camelCase dict."""
    if isinstance(endpoint, dict):
        kinds = [k for k in (*BROKER_KINDS, "function", "schedule") if endpoint.get(k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"endpoint must name exactly one of {', '.join(BROKER_KINDS)} (got {kinds})")
        settings = endpoint[kinds[0]]
        return kinds[0], dict(settings)
    kind = endpoint.kind
    target = endpoint.target
    settings = target.model_dump(by_alias=True) if hasattr(target, "model_dump") else dict(vars(target))
    return kind, settings


def make_source(
    endpoint: Any,
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
    kind, settings = endpoint_parts(endpoint)
    group = consumer_name(esm_name)
    if kind == "redis":
        from lamina.eventsources.redis_streams import RedisStreamSource

        return RedisStreamSource(
            url, settings["stream"], group, starting_position=starting_position, **options
        )
    if kind == "nats":
        from lamina.eventsources.nats_jetstream import NatsJetStreamSource

        return NatsJetStreamSource(
            url,
            settings["subject"],
            group,
            stream=settings.get("stream"),
            starting_position=starting_position,
            max_ack_pending=batch_size,
            **options,
        )
    if kind == "rabbitmq":
        from lamina.eventsources.rabbitmq import RabbitMQSource

        return RabbitMQSource(url, settings["queue"], prefetch=batch_size, **options)
    raise ValueError(f"{kind} is not a broker an EventSourceMapping can consume")


def make_sink(endpoint: Any, url: str) -> Sink:
    """The sink adapter of a destination (not yet connected)."""
    kind, settings = endpoint_parts(endpoint)
    if kind == "redis":
        from lamina.eventsources.redis_streams import RedisStreamSink

        return RedisStreamSink(url, settings["stream"])
    if kind == "nats":
        from lamina.eventsources.nats_jetstream import NatsJetStreamSink

        return NatsJetStreamSink(url, settings["subject"], stream=settings.get("stream"))
    if kind == "rabbitmq":
        from lamina.eventsources.rabbitmq import RabbitMQSink

        return RabbitMQSink(url, settings["queue"])
    raise ValueError(f"a {kind} destination is not a broker; it has no sink adapter")
