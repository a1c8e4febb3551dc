#!/usr/bin/env python3
"""Helpers of scripts/profile.sh: drive transitions over HTTP, and sum callgrind's counts.

  profile.py setup NODES WORKFLOWS [WORKLOAD]          define and create WORKFLOWS workflows
  profile.py run NODES N CLIENTS WORKFLOWS [WORKLOAD]  exactly N transitions from CLIENTS
                                                       closed-loop clients
  profile.py summary N FILE...                         instructions per transition, by node
                                                       and by library

WORKLOAD is `transitions` (the default: each client ticks its own `counter` workflow, with
`expected_revision`) or `events` (as the bench's events workload: an `update` event with a
200-byte payload on a workflow picked at random among WORKFLOWS `bench-order` workflows, each
with a 1 KiB context).
"""
import collections
import http.client
import json
import random
import re
import subprocess
import sys
import threading
import time


def padded(value, pad, size):
    """`value` with its `pad` field filled so that it serializes to `size` bytes."""
    length = len(json.dumps(value, separators=(",", ":")))
    value[pad] = "x" * max(0, size - (length + len(pad) + 6))
    return value


def order_context(i):
    """Order `i`'s context, 1 KiB of JSON, as the bench's `order_context`."""
    items = [{"sku": f"SKU-{(i * 31 + k * 7) % 100000:05}", "name": f"Item {k} of order {i}",
              "qty": 1 + (i + k) % 4, "unit_price": 9.99 + k} for k in range(5)]
    return padded({"order_id": f"ord-{i:08}",
                   "customer": {"id": f"cus-{(i * 7919) % 1000000:06}", "name": "Ada Lovelace",
                                "email": "ada.lovelace@example.com",
                                "address": {"street": "12 Analytical Engine Road",
                                            "city": "London", "postcode": "NW1 6XE",
                                            "country": "GB"}},
                   "items": items, "currency": "EUR", "total": 123.45}, "notes", 1024)


def update_payload(n):
    """An update's payload: a payment, 200 bytes of JSON."""
    return padded({"payment": {"method": "card", "amount": 10 + n % 500, "currency": "EUR",
                               "reference": f"pay-{n:012}"}}, "note", 200)


def connect(nodes, i):
    host, port = nodes[i % len(nodes)].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=120)


def call(conn, method, path, body=None):
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, (json.loads(data) if data else None)


def setup(nodes, workflows, workload="transitions"):
    conn = connect(nodes, 0)
    if workload == "events":
        definition = {"name": "bench-order", "initial": "open",
                      "states": {"open": {"on": {"update": "open", "close": "closed"}},
                                 "closed": {"terminal": "succeeded"}}}
        workflow = lambda w: {"id": f"o{w}", "definition": "bench-order",
                              "context": order_context(w)}
    else:
        definition = {"name": "counter", "initial": "on",
                      "states": {"on": {"on": {"tick": "on", "stop": "off"}},
                                 "off": {"terminal": "succeeded"}}}
        workflow = lambda w: {"id": f"p{w}", "definition": "counter"}
    status, body = call(conn, "PUT", f"/v1/definitions/{definition['name']}", definition)
    assert status in (200, 201), (status, body)
    for w in range(workflows):
        status, body = call(conn, "POST", "/v1/workflows", workflow(w))
        assert status in (200, 201), (status, body)


def run(nodes, n, clients, workflows, workload="transitions"):
    """Each client owns one workflow and sends `tick` with `expected_revision`, as the bench's
    transitions workload does (or, for `events`, updates random orders); clients are spread
    over the nodes."""
    left, lock, errors = [n], threading.Lock(), []

    def take_one():
        """Whether one of the N requests is left to send (and takes it)."""
        with lock:
            if left[0] == 0:
                return False
            left[0] -= 1
            return True

    def events_client(k):
        conn = connect(nodes, k)
        rng = random.Random(k)
        sent = 0
        while take_one():
            sent += 1
            status, body = call(conn, "POST", f"/v1/workflows/o{rng.randrange(workflows)}/events",
                                {"event": "update", "payload": update_payload(k * 1000003 + sent)})
            if status != 200:
                errors.append((status, body))

    def client(k):
        conn = connect(nodes, k)
        wf = f"p{k % workflows}"
        revision = call(conn, "GET", f"/v1/workflows/{wf}")[1]["revision"]
        while take_one():
            status, body = call(conn, "POST", f"/v1/workflows/{wf}/events",
                                {"event": "tick", "expected_revision": revision})
            if status != 200:
                errors.append((status, body))
                body = call(conn, "GET", f"/v1/workflows/{wf}")[1]
            revision = body["revision"]

    start = time.time()
    target = events_client if workload == "events" else client
    threads = [threading.Thread(target=target, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{n} transitions from {clients} clients in {time.time() - start:.1f} s, "
          f"{len(errors)} errors {errors[:3]}")
    if errors:
        sys.exit(1)


def library(name):
    """The library a callgrind function entry belongs to."""
    if name.startswith("???:"):
        return "rocksdb (C++)" if ("rocksdb" in name or "std::" in name) else "unknown"
    m = re.search(r"index\.crates\.io-[0-9a-f]+/([A-Za-z0-9_\-]+?)-\d", name)
    if m:
        return m.group(1)
    # std's own sources, and the crates std vendors (hashbrown), inlined into their callers.
    if name.startswith("/rustc/") or name.startswith("/rust/deps/"):
        return "Rust std/core/alloc (inlined)"
    if "libc.so" in name or name.startswith("./"):
        return "libc memcpy" if "memmove" in name or "memcpy" in name else "libc other"
    # Our sources are absolute, or relative when callgrind_annotate runs in the checkout the
    # binary was built in (as `make profile` does).
    m = re.match(r"(?:/\S*?/)?(api|raft|storage|workflow)/src/", name)
    if m:
        return f"raftflow {m.group(1)}"
    return "raftflow binary" if re.match(r"(?:/\S*?/)?src/", name) else "other"


def summary(n, files):
    per_node = []
    libs = collections.Counter()
    for f in files:
        out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", f],
                             capture_output=True, text=True, check=True).stdout
        total = 0
        for line in out.splitlines():
            m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
            if not m or "PROGRAM TOTALS" in line:
                continue
            ir = int(m.group(1).replace(",", ""))
            libs[library(m.group(2))] += ir
            total += ir
        per_node.append(total)
    grand = sum(per_node)
    print("user-space instructions per transition (callgrind; the kernel is not counted):")
    for i, t in enumerate(per_node, 1):
        print(f"  node {i}: {t / n:9,.0f}")
    print(f"  3 nodes: {grand / n:9,.0f}")
    print("by library, 3 nodes:")
    for lib, ir in libs.most_common(14):
        print(f"  {ir / n:9,.0f}  {100 * ir / grand:5.1f}%  {lib}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        setup(args[0].split(","), int(args[1]), *args[2:3])
    elif cmd == "run":
        run(args[0].split(","), int(args[1]), int(args[2]), int(args[3]), *args[4:5])
    elif cmd == "summary":
        summary(int(args[0]), args[1:])
    else:
        sys.exit(__doc__)
