"""CPU time per SigV4 verification (lamina.auth.sigv4.verify), in a loop, without the gateway around it.

Requests signed by botocore's SigV4Auth beforehand (each its own signature; botocore's headers plus
those aiohttp's client adds), verified as the gateway verifies them. Rows: the usual case, a client
whose requests differ only in their signature (the parse of the Authorization header is remembered),
and every request parsed anew (the remembered parses dropped before each call).

Usage: python benchmarks/sigv4_verify.py [--requests 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict, CIMultiDictProxy

from lamina.auth import sigv4
from lamina.auth.identity import Identity
from lamina.auth.keys import AccessKey, KeyTable

PATH = "/2015-03-31/functions/noop/invocations"
KEY_ID, SECRET = "AKIDBENCHMARK0000001", "benchmark-secret"


def signed_requests(count: int) -> list[CIMultiDictProxy[str]]:
    out = []
    for _ in range(count):
        request = AWSRequest(method="POST", url=f"http://127.0.0.1:9000{PATH}", data=b"{}")
        SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", "us-east-1").add_auth(request)
        headers = CIMultiDict(request.prepare().headers.items())
        headers.update({"Host": "127.0.0.1:9000", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"})
        headers["User-Agent"] = "Python/3.11 aiohttp/3.14"
        out.append(CIMultiDictProxy(headers))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keys = KeyTable([AccessKey(KEY_ID, SECRET, Identity(user="benchmark"))])
    requests = signed_requests(args.requests)
    now = time.time()
    for _ in range(args.rounds):
        start = time.process_time()
        for headers in requests:
            sigv4.verify("POST", PATH, headers, b"{}", keys.lookup, region="us-east-1", now=now)
        middle = time.process_time()
        for headers in requests:
            sigv4._PARSED.clear()
            sigv4.verify("POST", PATH, headers, b"{}", keys.lookup, region="us-east-1", now=now)
        end = time.process_time()
        print(
            f"verify, parse remembered {(middle - start) / args.requests * 1e6:6.1f} us   "
            f"parsed anew {(end - middle) / args.requests * 1e6:6.1f} us   CPU per request"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
