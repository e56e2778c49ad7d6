"""CPU time per SigV4-signed SQS request: botocore's SigV4Auth against lamina's SqsSigner.

    .venv/bin/python benchmarks/sqs_signing.py [--requests 2000] [--rounds 3]

The SQS source signs every ReceiveMessage, DeleteMessageBatch and ChangeMessageVisibilityBatch (two
calls per ten messages at batch 100). Both sign the same ReceiveMessage body, alternately, and the
CPU time of this process (not wall time: the machine is shared) is divided by the requests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from lamina.eventsources.sqs import CONTENT_TYPE, SqsSigner

ENDPOINT = "http://127.0.0.1:9324/"
TARGET = "AmazonSQS.ReceiveMessage"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    credentials = Credentials("AKIDEXAMPLE", "secret")
    botocore_signer = SigV4Auth(credentials, "sqs", "us-east-1")
    ours = SqsSigner(credentials, "us-east-1", ENDPOINT)
    body = json.dumps({"QueueUrl": ENDPOINT + "000000000000/q", "MaxNumberOfMessages": 10}).encode()
    for _ in range(args.rounds):
        start = time.process_time()
        for _ in range(args.requests):
            request = AWSRequest(
                method="POST",
                url=ENDPOINT,
                data=body,
                headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET},
            )
            botocore_signer.add_auth(request)
            dict(request.headers)
        middle = time.process_time()
        for _ in range(args.requests):
            ours.headers(TARGET, body)
        end = time.process_time()
        print(
            f"botocore SigV4Auth {(middle - start) / args.requests * 1e6:6.1f} us   "
            f"SqsSigner {(end - middle) / args.requests * 1e6:6.1f} us   CPU per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
