"""The auth benchmark's TLS client: N token lookups over one keep-alive HTTPS connection (Python's
http.client on OpenSSL). Prints {"ns_per_op": mean ns per request, "timed": N, "warmup": W}."""
import http.client
import json
import ssl
import sys
import time

port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
warmup = max(1, min(n // 20, 1000))
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)


def lookups(count):
    for _ in range(count):
        conn.request("GET", "/v1/auth/token/lookup-self", headers={"X-Vault-Token": "bench"})
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}")


lookups(warmup)
t = time.perf_counter_ns()
lookups(n)
print(json.dumps({"ns_per_op": (time.perf_counter_ns() - t) / n, "timed": n, "warmup": warmup}))
