"""Real Redis, NATS (JetStream), RabbitMQ, Kafka (KRaft) and SQS (ElasticMQ) servers for tests and benchmarks.

Each server runs as a child process of the test run, listens on loopback only, keeps its data in its
own directory, and can be stopped, killed and started again on the same port with its data intact
(Redis with an append-only file, NATS with JetStream file storage, RabbitMQ with its Mnesia
directory, Kafka with its log directory, ElasticMQ with its H2 message store), so tests can restart a
broker in the middle of a stream. Kafka and ElasticMQ are Java servers whose jars
``scripts/fetch-jars`` brings from Maven Central into ``~/.cache/lamina/jars`` (once).

    with RedisServer(tmp_path / "redis") as redis:
        client = redis_py.Redis.from_url(redis.url)
        ...
        redis.restart()          # or: await redis.arestart()

``available("redis")`` tells whether the server binary exists (tests skip otherwise). Nothing here
touches a system-wide service: RabbitMQ gets its own node name, ports, epmd, cookie and directories.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Self

from lamina_runtime.host import kill_group

BINARIES = {
    "redis": "redis-server",
    "nats": "nats-server",
    "rabbitmq": "/usr/lib/rabbitmq/bin/rabbitmq-server",
    "kafka": "java",
    "sqs": "java",
}
#: The Java servers and what scripts/fetch-jars calls their jar sets.
JARS = {"kafka": "kafka", "sqs": "elasticmq"}
FETCH_JARS = Path(__file__).resolve().parents[2] / "scripts" / "fetch-jars"


def jar_dir(name: str) -> Path:
    """The directory of a Java server's jars (fetched from Maven Central on first use, then cached)."""
    out = subprocess.run([str(FETCH_JARS), name], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def available(kind: str) -> bool:
    """True when the server for ``kind`` can run here: its binary is installed (Java servers: a JVM,
    and their jars are cached or Maven is there to fetch them)."""
    binary = BINARIES[kind]
    if kind in JARS:
        cached = any((Path.home() / ".cache/lamina/jars").glob(f"{JARS[kind]}-*/.complete"))
        return shutil.which("java") is not None and (cached or shutil.which("mvn") is not None)
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


class JavaServer(BrokerServer):
    """A server run from a jar set of scripts/fetch-jars, with a bounded heap."""

    jars = ""
    main_class = ""
    heap = "512m"
    boot_timeout = 180.0  # a JVM on two busy cores takes its time

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.classpath = str(jar_dir(self.jars) / "*")

    def java(self, main_class: str, *args: str, properties: dict[str, str] | None = None) -> list[str]:
        props = [f"-D{k}={v}" for k, v in (properties or {}).items()]
        return [
            "java", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-Djava.awt.headless=true", *props,
            "-cp", self.classpath, main_class, *args,
        ]  # fmt: skip


class KafkaServer(JavaServer):
    """One Apache Kafka node in KRaft mode (broker and controller in one process).

    Two client listeners: ``PLAINTEXT`` on :attr:`port` (``url``), and ``SASL_SSL`` on
    :attr:`secure_port` with SCRAM-SHA-512 user :attr:`USER` / :attr:`PASSWORD` and a certificate
    signed by a throwaway CA (:attr:`tls`.ca). Topics are created with ``partitions`` partitions unless
    asked otherwise; records up to 10 MiB are accepted (the payload-limit tests send 7 MB ones).
    """

    kind = "kafka"
    jars = "kafka"
    heap = "768m"
    USER = "lamina"
    PASSWORD = "lamina-scram-secret"
    MAX_MESSAGE_BYTES = 10 * 1024 * 1024

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None, partitions: int = 1) -> None:
        super().__init__(workdir, port)
        from tests.support.tls import server_cert

        self.controller_port = free_port()
        self.secure_port = free_port()
        self.partitions = partitions
        self.data_dir = self.workdir / "data"
        self.tls = server_cert(self.workdir / "tls")
        self.properties = self.workdir / "server.properties"
        self.properties.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.secure_port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"SASL_SSL://127.0.0.1:{self.secure_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    "ssl.keystore.type=PEM",
                    f"ssl.keystore.location={self.tls.keystore}",
                    f"log.dirs={self.data_dir}",
                    f"num.partitions={partitions}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "group.initial.rebalance.delay.ms=0",
                    f"message.max.bytes={self.MAX_MESSAGE_BYTES}",
                    f"replica.fetch.max.bytes={self.MAX_MESSAGE_BYTES}",
                    "",
                ]
            )
        )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_url(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def _before_start(self) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        scram = f"SCRAM-SHA-512=[name={self.USER},password={self.PASSWORD}]"
        args = ["format", "-t", cluster_id, "-c", str(self.properties), "--add-scram", scram]
        with open(self.workdir / "format.log", "wb") as log:
            subprocess.run(self.java("kafka.tools.StorageTool", *args), check=True, stdout=log, stderr=log)

    def command(self) -> list[str]:
        return self.java("kafka.Kafka", str(self.properties))

    def ready(self) -> bool:
        # An ApiVersions request (key 18, v0) is answered once the broker serves clients.
        request = struct.pack(">hhih", 18, 0, 7, 6) + b"lamina"
        reply = _tcp_exchange(self.port, struct.pack(">i", len(request)) + request, timeout=2)
        return len(reply) >= 8 and struct.unpack(">i", reply[4:8])[0] == 7


class ElasticMQServer(JavaServer):
    """ElasticMQ, an SQS-compatible server (query and JSON protocols), with queues and messages kept
    in its work directory (H2), so a restart loses nothing that was sent (``persistent=False``: in
    memory only, ElasticMQ's default).

    Its account is ``000000000000`` and its region ``us-east-1``; it accepts any credentials.
    """

    kind = "sqs"
    jars = "elasticmq"
    heap = "384m"
    REGION = "us-east-1"
    ACCOUNT = "000000000000"

    def __init__(
        self, workdir: str | os.PathLike[str], port: int | None = None, *, persistent: bool = True
    ) -> None:
        super().__init__(workdir, port)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self.persistent = persistent
        self.config = self.workdir / "elasticmq.conf"
        storage = "true" if persistent else "false"
        self.config.write_text(
            f"""include classpath("application.conf")
node-address {{ protocol = http, host = "127.0.0.1", port = {self.port}, context-path = "" }}
rest-sqs {{ enabled = true, bind-port = {self.port}, bind-hostname = "127.0.0.1", sqs-limits = strict }}
rest-stats {{ enabled = false }}
generate-node-address = false
messages-storage {{ enabled = {storage}, uri = "jdbc:h2:{data / "messages"}" }}
queues-storage {{ enabled = {storage}, path = "{data / "queues.conf"}" }}
aws {{ region = "{self.REGION}", accountId = "{self.ACCOUNT}" }}
"""
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue_url(self, name: str) -> str:
        return f"{self.url}/{self.ACCOUNT}/{name}"

    def command(self) -> list[str]:
        return self.java("org.elasticmq.server.Main", properties={"config.file": str(self.config)})

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/?Action=ListQueues", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def client(self) -> Any:
        """A boto3 SQS client for this server (tests use it as the producer)."""
        import boto3

        return boto3.client(
            "sqs",
            endpoint_url=self.url,
            region_name=self.REGION,
            aws_access_key_id="lamina",
            aws_secret_access_key="lamina",
        )


class IamSqsServer(BrokerServer):
    """An SQS-compatible server that checks what ElasticMQ cannot: SigV4 signatures and IAM (moto's
    server mode, from PyPI). Anyone may call it until :meth:`enforce_auth`; from then on every request
    must be signed by an access key of one of its IAM users, whose policy allows the action, and a
    wrong key is refused as SQS refuses it (``InvalidClientTokenId``, ``SignatureDoesNotMatch``)."""

    kind = "sqs-iam"
    REGION = "us-east-1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(self.port),
        ]

    def ready(self) -> bool:
        try:  # its own API: an SQS request would count against the requests allowed unsigned
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def client(self, service: str = "sqs", key: tuple[str, str] = ("setup", "setup")) -> Any:
        import boto3

        return boto3.client(
            service, endpoint_url=self.url, region_name=self.REGION,
            aws_access_key_id=key[0], aws_secret_access_key=key[1],
        )  # fmt: skip

    def user_with_sqs_access(self, name: str) -> tuple[str, str]:
        """An IAM user allowed every SQS action; its (access key id, secret access key)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sqs:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="sqs", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def enforce_auth(self) -> None:
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )  # a form content type (urllib's default) would leave the body unread
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200


SERVERS: dict[str, type[BrokerServer]] = {
    "redis": RedisServer,
    "nats": NatsServer,
    "rabbitmq": RabbitMQServer,
    "kafka": KafkaServer,
    "sqs": ElasticMQServer,
}


def server_for(kind: str, workdir: str | os.PathLike[str], port: int | None = None) -> BrokerServer:
    """A (not yet started) server of ``kind`` with its data in ``workdir``."""
    return SERVERS[kind](workdir, port)


# -- plain clients: put records in and read them back, independently of lamina's adapters --------

#: What a kind calls the name of its stream / subject / queue / topic in an endpoint.
NAME_KEY = {"redis": "stream", "nats": "subject", "rabbitmq": "queue", "kafka": "topic"}


def endpoint_of(kind: str, url: str, name: str) -> Any:
    """The endpoint (the model a spec's is read into) of a stream, subject, queue or topic on a test
    broker."""
    from lamina.api import Endpoint

    if kind == "kafka":
        return Endpoint.model_validate({"kafka": {"bootstrapServers": [url], "topic": name}})
    if kind == "sqs":  # name is the queue's URL
        return Endpoint.model_validate({"sqs": {"queueUrl": name, "region": "us-east-1"}})
    return Endpoint.model_validate({kind: {"url": url, NAME_KEY[kind]: name}})


def normalized_records(payload: bytes) -> list[dict[str, Any]]:
    """The records of an event; a Kafka event's are flattened to look like the others to tests:
    ``body`` is the decoded value, ``messageId`` the record id, ``attributes`` a receive count of 1."""
    event = json.loads(payload)
    if "Records" in event:
        return event["Records"]
    out = []
    for records in event["records"].values():
        for r in records:
            value = base64.b64decode(r["value"]) if r["value"] is not None else b""
            out.append(
                {
                    **r,
                    "body": value.decode("utf-8", "replace"),
                    "messageId": f"{r['topic']}-{r['partition']}:{r['offset']}",
                    "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(r["timestamp"])},
                    "eventSource": event["eventSource"],
                    "eventSourceARN": event["eventSourceArn"],
                }
            )
    return out


@contextlib.asynccontextmanager
async def _redis(url: str) -> AsyncIterator[Any]:
    """An asyncio Redis client for ``url``, closed at the end of the block."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _jetstream(url: str) -> AsyncIterator[Any]:
    """JetStream over a NATS connection to ``url``, closed at the end of the block."""
    import nats

    nc = await nats.connect(url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def _rabbitmq(url: str) -> AsyncIterator[Any]:
    """An AMQP connection to ``url`` (each caller opens the channel it needs), closed at the end."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def publish(kind: str, url: str, name: str, bodies: list[bytes], headers: dict[str, str] | None = None):
    """Append ``bodies`` to a Redis stream / NATS subject (JetStream) / RabbitMQ queue named ``name``.

    For NATS a file-backed stream covering the subject is created first when none exists (named as
    lamina names streams it creates: the subject with ``.``, ``*`` and ``>`` replaced by ``_``).
    """
    if kind == "redis":
        async with _redis(url) as client:
            pipe = client.pipeline(transaction=False)
            for body in bodies:
                pipe.xadd(name, {"body": body, **(headers or {})})
            await pipe.execute()
    elif kind == "nats":
        async with _jetstream(url) as js:
            await _nats_stream(js, name)
            for body in bodies:
                await js.publish(name, body, headers=headers)
    elif kind == "rabbitmq":
        import aio_pika

        async with _rabbitmq(url) as conn:
            channel = await conn.channel(publisher_confirms=True)
            await channel.declare_queue(name, durable=True)
            for body in bodies:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body, headers=dict(headers or {}), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                    ),
                    routing_key=name,
                )
    elif kind == "kafka":
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=url, acks="all", linger_ms=5, max_request_size=16 << 20)
        await producer.start()
        try:
            header_list = [(k, v.encode()) for k, v in (headers or {}).items()]
            futures = [await producer.send(name, body, headers=header_list) for body in bodies]
            for future in futures:
                await future
        finally:
            await producer.stop()
    else:
        raise ValueError(kind)


async def kafka_topic(url: str, name: str, partitions: int = 1) -> None:
    """Create a topic (if it does not exist) with that many partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=url)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def kafka_group_members(url: str, group: str) -> tuple[str, int]:
    """(state, number of members) of a consumer group, as its coordinator describes it."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=url)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    _error, _group, state, _protocol_type, _protocol, members, *_ = response.groups[0]
    return str(state), len(members)


async def _kafka_partitions(consumer: Any, name: str) -> list[Any]:
    """The partitions of a topic, asked of the cluster (a consumer that subscribed to nothing knows
    no topics yet)."""
    from aiokafka import TopicPartition

    metadata = await consumer._client.fetch_all_metadata()
    return [TopicPartition(name, p) for p in sorted(metadata.partitions_for_topic(name) or ())]


async def _kafka_records(url: str, name: str) -> list[Any]:
    """Every record of a topic, partition by partition, without joining a group."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=url,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    try:
        tps = await _kafka_partitions(consumer, name)
        if not tps:
            return []
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        out: list[Any] = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            for batch in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(batch)
        return out
    finally:
        await consumer.stop()


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
        async with _redis(url) as client:
            for _id, fields in await client.xrange(name):
                fields = {k.decode(): v for k, v in fields.items()}
                body = fields.pop("body", b"")
                out.append((body, {k: v.decode() for k, v in fields.items()}))
    elif kind == "nats":
        import nats.js.errors

        async with _jetstream(url) as js:
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
    elif kind == "rabbitmq":
        async with _rabbitmq(url) as conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(name, durable=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                headers = {
                    k: v.decode() if isinstance(v, bytes) else str(v) for k, v in message.headers.items()
                }
                out.append((message.body, headers))
    elif kind == "kafka":
        for m in await _kafka_records(url, name):
            out.append((m.value or b"", {k: v.decode() for k, v in m.headers or ()}))
    else:
        raise ValueError(kind)
    return out


async def unacknowledged(kind: str, url: str, name: str, consumer: str) -> int:
    """How many records of ``name`` are not yet acknowledged by ``consumer`` (group / durable).

    Redis: pending entries plus entries the group has not read; NATS: the durable's pending plus
    ack-pending; Kafka: records after the group's committed offsets; RabbitMQ: messages ready in the
    queue (``consumer`` unused; messages a live consumer holds unacknowledged are not counted, so ask
    once the consumer is closed).
    """
    if kind == "redis":
        async with _redis(url) as client:
            groups = {g["name"].decode(): g for g in await client.xinfo_groups(name)}
            group = groups.get(consumer)
            if group is None:
                return await client.xlen(name)
            lag = group.get("lag")
            return int(group["pending"]) + int(lag or 0)
    if kind == "nats":
        async with _jetstream(url) as js:
            stream = await js.find_stream_name_by_subject(name)
            info = await js.consumer_info(stream, consumer)
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if kind == "rabbitmq":
        async with _rabbitmq(url) as conn:
            channel = await conn.channel()
            queue = await channel.declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)
    if kind == "kafka":
        from aiokafka import AIOKafkaConsumer

        client = AIOKafkaConsumer(bootstrap_servers=url, group_id=consumer, enable_auto_commit=False)
        await client.start()
        try:
            tps = await _kafka_partitions(client, name)
            end = await client.end_offsets(tps) if tps else {}
            begin = await client.beginning_offsets(tps) if tps else {}
            left = 0
            for tp in tps:
                committed = await client.committed(tp)
                left += end[tp] - (begin[tp] if committed is None else committed)
            return left
        finally:
            await client.stop()
    raise ValueError(kind)
