"""Amazon SQS (or an SQS-compatible server such as ElasticMQ): standard and FIFO queues.

Semantics follow Lambda's SQS event source mappings:

* long polling (``ReceiveMessage`` with ``WaitTimeSeconds``), up to 10 messages a call; a batch of
  more than 10 gathers several receives within the batching window;
* successful messages are deleted (``DeleteMessageBatch``); failed ones are left to the queue, which
  makes them visible again when their visibility timeout ends, counts the receive, and applies the
  queue's own redrive policy (``maxReceiveCount`` → its dead-letter queue);
* while the worker holds a message (the function runs, a throttle is waited out) it keeps the message
  invisible with ``ChangeMessageVisibility`` every third of the visibility timeout, so a slow function
  does not get its batch delivered twice; messages given back on stop are made visible at once;
* FIFO queues: the queue itself never hands out a message group's next messages while earlier ones are
  in flight, so one batch per group at a time and a failed message blocks its group, as on Lambda;
  the event carries ``SequenceNumber``, ``MessageGroupId`` and ``MessageDeduplicationId``.

The client speaks SQS's JSON protocol over aiohttp, signed with Signature Version 4 by
:class:`SqsSigner` (no blocking call on the event loop). Credentials come from a Secret (``accessKeyId``,
``secretAccessKey``, optional ``sessionToken``); without one the requests are signed with placeholder
keys, which servers like ElasticMQ accept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from botocore.credentials import Credentials

from lamina.eventsources.base import CredentialsError, Sink, Source, SourceError, SourceRecord
from lamina_runtime import sigv4

log = logging.getLogger(__name__)

MAX_RECEIVE = 10  # messages per ReceiveMessage / entries per *Batch call
MAX_LONG_POLL = 20
MAX_MESSAGE_BYTES = 262_144
MAX_PENDING_DELETES = 16
#: Receiving the next batch ahead only pays when messages may wait that long invisible (seconds).
PREFETCH_MIN_VISIBILITY = 10
#: Error codes that mean the credentials are wrong (or not allowed), not that the queue is down.
AUTH_ERRORS = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "AccessDenied",
        "AccessDeniedException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "InvalidSecurity",
    }
)


class SqsError(SourceError):
    """An error answer of the SQS API (``code`` is its type without the namespace)."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class SqsAccess:
    """Where a queue is and how to sign requests to it. ``secret`` names the credentials' Secret."""

    queue_url: str
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    secret: str | None = None

    @property
    def endpoint(self) -> str:
        parts = urlsplit(self.queue_url)
        return f"{parts.scheme}://{parts.netloc}/"

    @property
    def queue_name(self) -> str:
        return self.queue_url.rstrip("/").rsplit("/", 1)[-1]

    def credentials(self) -> Credentials:
        if self.secret is not None and (not self.access_key_id or not self.secret_access_key):
            missing = "accessKeyId" if not self.access_key_id else "secretAccessKey"
            raise CredentialsError(f"Secret {self.secret} is missing or has no key {missing!r}", self.secret)
        if not self.access_key_id:
            return Credentials("lamina", "lamina")
        return Credentials(self.access_key_id, self.secret_access_key, self.session_token)


CONTENT_TYPE = "application/x-amz-json-1.0"


class SqsSigner:
    """Signature Version 4 of SQS's JSON requests (``POST /``, four or five signed headers), as
    botocore's ``SigV4Auth`` signs them, with :mod:`lamina_runtime.sigv4`'s parts. botocore builds
    request and header objects and derives the signing key anew for every request: ~0.5 ms each on the
    loaded test machine, most of the worker's CPU per record at batch 100 (two calls per ten
    messages). Here the headers are known in advance and the key is derived once a day.
    """

    def __init__(self, credentials: Credentials, region: str, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"  # an IPv6 literal keeps its brackets
        if parts.port is not None and parts.port != {"http": 80, "https": 443}.get(parts.scheme):
            host = f"{host}:{parts.port}"
        self.host = host  # as aiohttp sends it, and botocore signs it
        self.region = region
        self.access_key = credentials.access_key
        self.token = credentials.token
        self._secret = credentials.secret_key

    def headers(self, target: str, body: bytes, now: float | None = None) -> dict[str, str]:
        """The request's headers, ``Authorization`` included, for ``X-Amz-Target: target``."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        signed = {
            "content-type": CONTENT_TYPE,
            "host": self.host,
            "x-amz-date": amz_date,
            "x-amz-target": target,
        }
        if self.token:
            signed["x-amz-security-token"] = self.token
        ordered = sorted(signed)
        names = ";".join(ordered)
        canonical = sigv4.canonical_request(
            "POST",
            "/",
            "",
            "".join(f"{name}:{signed[name]}\n" for name in ordered),
            names,
            sigv4.sha256_hex(body),
        )
        scope = sigv4.credential_scope(day, self.region, "sqs")
        key = sigv4.SIGNING_KEYS.get(self._secret, day, self.region, "sqs")
        signature = key.sign(sigv4.string_to_sign(amz_date, scope, canonical))
        out = {
            "Content-Type": CONTENT_TYPE,
            "X-Amz-Target": target,
            "X-Amz-Date": amz_date,
            "Authorization": sigv4.authorization(self.access_key, scope, names, signature),
        }
        if self.token:
            out["X-Amz-Security-Token"] = self.token
        return out


class SqsClient:
    """The few SQS calls lamina makes, over one aiohttp session (JSON protocol, SigV4)."""

    def __init__(self, access: SqsAccess) -> None:
        self.access = access
        self._signer = SqsSigner(access.credentials(), access.region, access.endpoint)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=MAX_LONG_POLL + 15, connect=10),
                connector=aiohttp.TCPConnector(limit=32),
            )
        return self._session

    async def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        headers = self._signer.headers(f"AmazonSQS.{action}", body)
        try:
            async with self._http().post(self.access.endpoint, data=body, headers=headers) as r:
                data = await r.read()
                status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SourceError(f"SQS {action} at {self.access.endpoint}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            code, message = _error_of(data, status)
            error = SqsError(code, message, status)
            if code in AUTH_ERRORS or status == 403:
                where = f"Secret {self.access.secret}" if self.access.secret else "placeholder credentials"
                raise CredentialsError(
                    f"SQS refused the credentials from {where} ({code})", self.access.secret
                )
            raise error
        try:
            doc: dict[str, Any] = json.loads(data) if data.strip() else {}
        except ValueError as exc:
            raise SourceError(
                f"SQS {action} at {self.access.endpoint}: not a JSON answer: {data[:80]!r}"
            ) from exc
        return doc

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _error_of(data: bytes, status: int) -> tuple[str, str]:
    """(code, message) of an error answer: SQS's JSON protocol, or the XML that the query protocol, a
    proxy in front of the queue or an SQS-compatible server may send instead; else the HTTP status."""
    try:
        doc = json.loads(data) if data.strip() else {}
    except ValueError:
        text = data.decode("utf-8", "replace")
        found_code = re.search(r"<Code>([^<]*)</Code>", text)
        found_message = re.search(r"<Message>([^<]*)</Message>", text)
        return (
            found_code.group(1) if found_code else f"HTTP {status}",
            found_message.group(1) if found_message else "",
        )
    if not isinstance(doc, dict):
        return f"HTTP {status}", ""
    code = str(doc.get("__type") or doc.get("code") or f"HTTP {status}").rsplit("#", 1)[-1]
    return code, str(doc.get("message") or doc.get("Message") or "")


def _attributes(message: dict[str, Any]) -> dict[str, Any]:
    """SQS message attributes in the event's shape (Lambda writes them in camelCase)."""
    out: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        entry: dict[str, Any] = {
            "stringListValues": value.get("StringListValues") or [],
            "binaryListValues": value.get("BinaryListValues") or [],
            "dataType": value.get("DataType", "String"),
        }
        if "StringValue" in value:
            entry["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            entry["binaryValue"] = value["BinaryValue"]
        out[name] = entry
    return out


class SqsSource(Source):
    kind = "sqs"
    redelivers = True
    heartbeat_interval: float | None = 10.0

    def __init__(self, access: SqsAccess) -> None:
        super().__init__(access.queue_name)
        self.access = access
        self.fifo = access.queue_name.endswith(".fifo")
        self.ordered = self.fifo
        self.queue_arn = f"arn:aws:sqs:{access.region}:000000000000:{access.queue_name}"
        self.visibility_timeout = 30
        self._client: SqsClient | None = None
        self._deleting: set[asyncio.Task[None]] = set()
        self._ahead: tuple[float, asyncio.Task[list[dict[str, Any]]]] | None = None

    @property
    def arn(self) -> str:
        return self.queue_arn

    async def connect(self) -> None:
        client = SqsClient(self.access)
        try:
            attrs = (
                await client.call(
                    "GetQueueAttributes", {"QueueUrl": self.access.queue_url, "AttributeNames": ["All"]}
                )
            ).get("Attributes", {})
        except SqsError as exc:
            await client.close()
            if "NonExistentQueue" in exc.code or "QueueDoesNotExist" in exc.code:
                raise SourceError(f"queue {self.access.queue_url} does not exist") from exc
            raise
        except BaseException:
            await client.close()
            raise
        self._client = client
        self.queue_arn = attrs.get("QueueArn", self.queue_arn)
        self.fifo = attrs.get("FifoQueue") == "true" or self.fifo
        self.ordered = self.fifo
        self.visibility_timeout = max(1, int(attrs.get("VisibilityTimeout", "30")))
        self.heartbeat_interval = max(0.5, self.visibility_timeout / 3)

    def _live(self) -> SqsClient:
        if self._client is None:
            raise SourceError(f"not connected to SQS queue {self.access.queue_url}")
        return self._client

    async def _receive(self, count: int, wait: int) -> list[dict[str, Any]]:
        reply = await self._live().call(
            "ReceiveMessage",
            {
                "QueueUrl": self.access.queue_url,
                "MaxNumberOfMessages": max(1, min(MAX_RECEIVE, count)),
                "WaitTimeSeconds": max(0, min(MAX_LONG_POLL, wait)),
                "AttributeNames": ["All"],
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            },
        )
        return reply.get("Messages") or []

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        started = time.monotonic()
        messages = await self._ahead_messages()
        if not messages:
            messages = await self._receive(max_records, int(wait_seconds))
        if not messages and wait_seconds < 1:
            # A short poll found nothing: wait out the rest rather than asking again at once.
            await asyncio.sleep(max(0.0, wait_seconds - (time.monotonic() - started)))
            return []
        if messages and len(messages) < max_records and len(messages) % MAX_RECEIVE == 0:
            # More may be there: fill the batch with short polls side by side.
            messages += await self._receive_many(max_records - len(messages))
        if messages and self.visibility_timeout >= PREFETCH_MIN_VISIBILITY:
            self._receive_ahead(max_records)
        return [self._record(m) for m in messages[:max_records]] + await self._spill(messages[max_records:])

    async def _receive_many(self, count: int) -> list[dict[str, Any]]:
        calls = math.ceil(count / MAX_RECEIVE)
        more = await asyncio.gather(*(self._receive(count - i * MAX_RECEIVE, 0) for i in range(calls)))
        return [m for batch in more for m in batch]

    def _receive_ahead(self, count: int) -> None:
        """Receive the next batch while this one is processed (what Lambda's pollers do beside its
        invokers). Only where the visibility timeout leaves room: messages waiting here are invisible
        to others but not yet kept alive by the mapping's heartbeat."""
        if self._ahead is None:
            self._ahead = (time.monotonic(), asyncio.create_task(self._receive_many(count)))

    async def _ahead_messages(self) -> list[dict[str, Any]]:
        if self._ahead is None:
            return []
        since, task = self._ahead
        self._ahead = None
        try:
            messages = await task
        except Exception as exc:  # the next receive tells the mapping what is wrong
            log.debug("sqs %s: receiving ahead failed: %s", self.name, exc)
            return []
        if time.monotonic() - since > self.visibility_timeout / 2:
            # Waited too long to be handed out safely: give them back to the queue at once.
            await self._visibility([m["ReceiptHandle"] for m in messages], 0)
            return []
        return messages

    async def _spill(self, extra: list[dict[str, Any]]) -> list[SourceRecord]:
        if extra:  # never happens with the counts above; give any extra back rather than hold it
            await self._visibility([m["ReceiptHandle"] for m in extra], 0)
        return []

    def _record(self, message: dict[str, Any]) -> SourceRecord:
        attrs = dict(message.get("Attributes") or {})
        sent = int(attrs.get("SentTimestamp", "0") or 0) / 1000 or time.time()
        first = int(attrs.get("ApproximateFirstReceiveTimestamp", "0") or 0) / 1000 or time.time()
        return SourceRecord(
            id=message["MessageId"],
            body=message.get("Body", "").encode(),
            arrival_time=sent,
            ordering_key=attrs.get("MessageGroupId"),
            receive_count=int(attrs.get("ApproximateReceiveCount", "1") or 1),
            received_time=first,
            source_fields={
                "attributes": attrs,
                "messageAttributes": _attributes(message),
                "md5OfBody": message.get("MD5OfBody"),
                "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
                "body": message.get("Body", ""),
            },
            handle=message["ReceiptHandle"],
        )

    def entry(self, record: SourceRecord) -> dict[str, Any]:
        """Lambda's SQS record."""
        fields = record.source_fields
        entry: dict[str, Any] = {
            "messageId": record.id,
            "receiptHandle": record.handle,
            "body": fields["body"],
            "attributes": fields["attributes"],
            "messageAttributes": fields["messageAttributes"],
            "md5OfBody": fields["md5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": self.queue_arn,
            "awsRegion": self.access.region,
        }
        if fields.get("md5OfMessageAttributes"):
            entry["md5OfMessageAttributes"] = fields["md5OfMessageAttributes"]
        return entry

    async def _batched(self, action: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a *Batch action over entries (10 per call, side by side); the failed entries."""
        chunks = [entries[i : i + MAX_RECEIVE] for i in range(0, len(entries), MAX_RECEIVE)]
        replies = await asyncio.gather(
            *(self._live().call(action, {"QueueUrl": self.access.queue_url, "Entries": c}) for c in chunks)
        )
        return [f for reply in replies for f in reply.get("Failed") or []]

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        """Delete them, in the background: the next batch is received meanwhile. A delete that does
        not land (the worker dies first, the server is away) only means the message comes back after
        its visibility timeout (at least once); a FIFO group's next messages wait for it anyway."""
        entries = [{"Id": str(i), "ReceiptHandle": r.handle} for i, r in enumerate(records)]
        if not entries:
            return
        self._live()
        while len(self._deleting) >= MAX_PENDING_DELETES:
            await asyncio.wait(self._deleting, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._delete(entries), name=f"sqs-delete-{self.name}")
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete(self, entries: list[dict[str, Any]]) -> None:
        try:
            failures = await self._batched("DeleteMessageBatch", entries)
        except Exception as exc:
            log.warning(
                "sqs %s: delete failed (the messages come back after their visibility): %s", self.name, exc
            )
            return
        for failure in failures:
            # A receipt handle goes stale when the message was received again elsewhere (its
            # visibility ran out): that receiver now owns it and deletes it when it is done.
            log.warning("sqs %s: delete failed: %s", self.name, failure)

    async def flush(self) -> None:
        """Wait for the deletes under way."""
        if self._deleting:
            await asyncio.wait(set(self._deleting), timeout=30)

    async def _visibility(self, handles: list[str], seconds: int) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": seconds} for i, h in enumerate(handles)
        ]
        if entries:
            for failure in await self._batched("ChangeMessageVisibilityBatch", entries):
                log.debug("sqs %s: visibility change failed: %s", self.name, failure)

    async def touch(self, records: Sequence[SourceRecord]) -> None:
        await self._visibility([r.handle for r in records], self.visibility_timeout)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        """Visible again now (the worker stops or is disabled)."""
        await self._visibility([r.handle for r in records], 0)

    async def fail(self, records: Sequence[SourceRecord]) -> None:
        """Left to the queue: visible again once their visibility timeout ends, as on Lambda."""

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        with contextlib.suppress(Exception):
            ahead = await self._ahead_messages()  # received for a batch that will not come
            await self._visibility([m["ReceiptHandle"] for m in ahead], 0)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()


class SqsSink(Sink):
    """Sends each failure record as one message; on a FIFO queue the group is the mapping's name.

    SQS refuses messages over 256 KiB: a failure record that large is sent without the record itself
    (``record`` is replaced by ``recordOmitted`` saying why), as Lambda drops oversize payloads."""

    kind = "sqs"

    def __init__(self, access: SqsAccess) -> None:
        super().__init__(access.queue_name)
        self.access = access
        self._client: SqsClient | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{self.access.region}:000000000000:{self.access.queue_name}"

    async def connect(self) -> None:
        self._client = SqsClient(self.access)

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        headers = dict(headers or {})
        attributes = {k: {"DataType": "String", "StringValue": v} for k, v in headers.items() if v}
        message = _fit(body, MAX_MESSAGE_BYTES - sum(len(k) + len(v) + 16 for k, v in headers.items()))
        params: dict[str, Any] = {
            "QueueUrl": self.access.queue_url,
            "MessageBody": message,
            "MessageAttributes": attributes,
        }
        if self.access.queue_name.endswith(".fifo"):
            params["MessageGroupId"] = headers.get("lamina-esm") or "lamina"
            params["MessageDeduplicationId"] = str(uuid.uuid4())
        await self._client.call("SendMessage", params)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _fit(body: bytes, limit: int) -> str:
    """The message body: the failure record, without the record itself when it would not fit."""
    text = body.decode("utf-8", "replace")
    if len(body) <= limit:
        return text
    try:
        doc = json.loads(body)
    except ValueError:
        return base64.b64encode(body[: limit * 3 // 4 - 16]).decode()
    doc.pop("record", None)
    doc["recordOmitted"] = f"the failure record was {len(body)} bytes; SQS messages hold at most {limit}"
    if isinstance(doc.get("responsePayload"), (dict, list, str)) and len(json.dumps(doc)) > limit:
        doc["responsePayload"] = None
    return json.dumps(doc, separators=(",", ":"), default=str)
