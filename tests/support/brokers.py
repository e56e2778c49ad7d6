"""Real Redis, NATS (JetStream) and RabbitMQ servers for tests and benchmarks.

Each server runs as a child process of the test run, listens on loopback only, keeps its data in its
own directory, and can be stopped, killed and started again on the same port with its data intact
(Redis with an append-only file, NATS with JetStream file storage, RabbitMQ with its Mnesia
directory), so tests can restart a broker in the middle of a stream.

    with RedisServer(tmp_path / "redis") as redis:
        client = redis_py.Redis.from_url(redis.url)
        ...
        redis.restart()          # or: await redis.arestart()

``available("redis")`` tells whether the server binary exists (tests skip otherwise). Nothing here
touches a system-wide service: RabbitMQ gets its own node name, ports, epmd, cookie and directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

from lamina_runtime.host import kill_group

BINARIES = {
    "redis": "redis-server",
    "nats": "nats-server",
    "rabbitmq": "/usr/lib/rabbitmq/bin/rabbitmq-server",
}


def available(kind: str) -> bool:
    """True when the server binary for ``kind`` ("redis", "nats", "rabbitmq") is installed."""
    binary = BINARIES[kind]
    if os.path.isabs(binary):
        return os.access(binary, os.X_OK) and shutil.which("epmd") is not None
    return shutil.which(binary) is not None


def free_port() -> int:
    """A TCP port that nothing listens on right now (loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BrokerServer:
    """One broker process. Subclasses say how to start it and how to tell that it is ready."""

    kind = ""
    boot_timeout = 30.0

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self.starts = 0

    # -- what subclasses provide -------------------------------------------------------------

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self._before_start()
        self._log_handle = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}; log:\n{self.tail()}")
            if self.ready():
                return self
            time.sleep(0.1)
        self.stop(kill=True)
        raise RuntimeError(f"{self.kind} did not become ready in {self.boot_timeout}s; log:\n{self.tail()}")

    def stop(self, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop the server: SIGTERM (a clean shutdown that flushes data) or SIGKILL with ``kill``."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        # Helpers the server left in its session (Erlang port programs...); never a group that now
        # merely has the same id (see kill_group).
        if proc is not None:
            kill_group(proc.pid, signal.SIGKILL, leader_reaped=True)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self._after_stop()

    def restart(self, kill: bool = False) -> Self:
        self.stop(kill=kill)
        return self.start()

    def close(self) -> None:
        """Stop for good (and whatever helper processes the server needed)."""
        self.stop()

    def _before_start(self) -> None:
        pass

    def _after_stop(self) -> None:
        pass

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- async wrappers, so that an event loop keeps running while a broker restarts ---------

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self, kill: bool = False) -> None:
        await asyncio.to_thread(self.stop, kill)

    async def arestart(self, kill: bool = False) -> Self:
        return await asyncio.to_thread(self.restart, kill)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tcp_exchange(port: int, send: bytes | None, timeout: float = 1.0) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if send:
                sock.sendall(send)
            return sock.recv(64)
    except OSError:
        return b""


class RedisServer(BrokerServer):
    """redis-server with an append-only file: a restart (even a SIGKILL, within a second) keeps data."""

    kind = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            BINARIES["redis"],
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def ready(self) -> bool:
        return _tcp_exchange(self.port, b"PING\r\n").startswith(b"+PONG")


class NatsServer(BrokerServer):
    """nats-server with JetStream file storage in its work directory."""

    kind = "nats"

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.monitor_port = free_port()
        self.store_dir = self.workdir / "jetstream"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            BINARIES["nats"],
            "-js",
            "-sd", str(self.store_dir),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-l", str(self.log_path.with_suffix(".server.log")),
        ]  # fmt: skip

    def ready(self) -> bool:
        if not _tcp_exchange(self.port, None).startswith(b"INFO"):
            return False
        try:
            url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled=true"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False


class RabbitMQServer(BrokerServer):
    """A private RabbitMQ node: own node name, AMQP/distribution/epmd ports, cookie and directories.

    It takes several seconds to boot. Its epmd runs as a separate child for the server's lifetime
    (across restarts) and is ended by :meth:`close`.
    """

    kind = "rabbitmq"
    boot_timeout = 120.0

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"lamina{self.port}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None
        for sub in ("mnesia", "log", "home"):
            (self.workdir / sub).mkdir(exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 1MB\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        return [BINARIES["rabbitmq"]]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        w = self.workdir
        env.update(
            HOME=str(w / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_ENABLED_PLUGINS="",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _before_start(self) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def ready(self) -> bool:
        # An AMQP 0-9-1 protocol header is answered with a Connection.Start method frame (type 1).
        return _tcp_exchange(self.port, b"AMQP\x00\x00\x09\x01", timeout=2).startswith(b"\x01")

    def close(self) -> None:
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(10)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait(10)


SERVERS: dict[str, type[BrokerServer]] = {
    "redis": RedisServer,
    "nats": NatsServer,
    "rabbitmq": RabbitMQServer,
}


def server_for(kind: str, workdir: str | os.PathLike[str], port: int | None = None) -> BrokerServer:
    """A (not yet started) server of ``kind`` with its data in ``workdir``."""
    return SERVERS[kind](workdir, port)


# -- plain clients: put records in and read them back, independently of lamina's adapters --------


async def publish(kind: str, url: str, name: str, bodies: list[bytes], headers: dict[str, str] | None = None):
    """Append ``bodies`` to a Redis stream / NATS subject (JetStream) / RabbitMQ queue named ``name``.

    For NATS a file-backed stream covering the subject is created first when none exists (named as
    lamina names streams it creates: the subject with ``.``, ``*`` and ``>`` replaced by ``_``).
    """
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                pipe.xadd(name, {"body": body, **(headers or {})})
            await pipe.execute()
        finally:
            await client.aclose()
    elif kind == "nats":
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await _nats_stream(js, name)
            for body in bodies:
                await js.publish(name, body, headers=headers)
        finally:
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel(publisher_confirms=True)
            await channel.declare_queue(name, durable=True)
            for body in bodies:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body, headers=dict(headers or {}), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=name,
                )
        finally:
            await conn.close()
    else:
        raise ValueError(kind)


def _nats_stream_name(subject: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in subject)


async def _nats_stream(js, subject: str) -> str:
    import nats.js.errors
    from nats.js import api

    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        name = _nats_stream_name(subject)
        await js.add_stream(api.StreamConfig(name=name, subjects=[subject], storage=api.StorageType.FILE))
        return name


async def read_all(kind: str, url: str, name: str) -> list[tuple[bytes, dict[str, str]]]:
    """Every message in a Redis stream / NATS subject's stream / RabbitMQ queue, as (body, headers).

    Redis and NATS are read without consuming; a RabbitMQ queue is drained (messages are removed).
    """
    out: list[tuple[bytes, dict[str, str]]] = []
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            for _id, fields in await client.xrange(name):
                fields = {k.decode(): v for k, v in fields.items()}
                body = fields.pop("body", b"")
                out.append((body, {k: v.decode() for k, v in fields.items()}))
        finally:
            await client.aclose()
    elif kind == "nats":
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                stream = await js.find_stream_name_by_subject(name)
            except nats.js.errors.NotFoundError:
                return []
            info = await js.stream_info(stream)
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(stream, seq)
                except nats.js.errors.NotFoundError:
                    continue
                if msg.subject == name:
                    out.append((msg.data or b"", dict(msg.headers or {})))
        finally:
            await nc.close()
    elif kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(name, durable=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                headers = {
                    k: v.decode() if isinstance(v, bytes) else str(v) for k, v in message.headers.items()
                }
                out.append((message.body, headers))
        finally:
            await conn.close()
    else:
        raise ValueError(kind)
    return out


async def unacknowledged(kind: str, url: str, name: str, consumer: str) -> int:
    """How many records of ``name`` are not yet acknowledged by ``consumer`` (group / durable).

    Redis: pending entries plus entries the group has not read; NATS: the durable's pending plus
    ack-pending; RabbitMQ: messages ready in the queue (``consumer`` unused; messages a live consumer
    holds unacknowledged are not counted, so ask once the consumer is closed).
    """
    if kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url)
        try:
            groups = {g["name"].decode(): g for g in await client.xinfo_groups(name)}
            group = groups.get(consumer)
            if group is None:
                return await client.xlen(name)
            lag = group.get("lag")
            return int(group["pending"]) + int(lag or 0)
        finally:
            await client.aclose()
    if kind == "nats":
        import nats

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            stream = await js.find_stream_name_by_subject(name)
            info = await js.consumer_info(stream, consumer)
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        finally:
            await nc.close()
    if kind == "rabbitmq":
        import aio_pika

        conn = await aio_pika.connect(url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await conn.close()
    raise ValueError(kind)
