"""Sequential keep-alive POSTs to several targets, in alternating batches; prints JSON latencies (ms).

    python _hop_client.py CALLS '[{"label": ..., "url": "http://host:port/path", "headers": {...}}, ...]'

Run by benchmarks/real_pods.py inside the test cluster's network namespace (where pod IPs are
reachable) and on the host, so each hop of the warm path is timed with the same client: the function
pod's server alone, the gateway pod alone, the gateway through kube-proxy's NodePort. Batches alternate
between the targets so that load from others on a shared machine falls on all of them alike.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit

BATCH = 50
WARMUP = 20


def main() -> None:
    calls = int(sys.argv[1])
    targets = json.loads(sys.argv[2])
    conns = []
    for t in targets:
        u = urlsplit(t["url"])
        conns.append((http.client.HTTPConnection(u.hostname, u.port, timeout=30), u.path, t["headers"]))
    out: dict[str, list[float]] = {t["label"]: [] for t in targets}

    def call(i: int) -> float:
        conn, path, headers = conns[i]
        t0 = time.perf_counter()
        conn.request("POST", path, body=b"{}", headers=headers)
        r = conn.getresponse()
        r.read()
        elapsed = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            raise SystemExit(f"{targets[i]['label']}: HTTP {r.status}")
        return elapsed

    for i in range(len(targets)):
        for _ in range(WARMUP):
            call(i)
    done = 0
    while done < calls:
        n = min(BATCH, calls - done)
        for i, t in enumerate(targets):
            out[t["label"]].extend(call(i) for _ in range(n))
        done += n
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
