#!/usr/bin/env python3
"""Helpers of scripts/profile.sh: drive transitions over HTTP, and sum callgrind's counts.

  profile.py setup NODES WORKFLOWS          define `counter` and create WORKFLOWS workflows
  profile.py run NODES N CLIENTS WORKFLOWS  exactly N transitions from CLIENTS closed-loop clients
  profile.py summary N FILE...              instructions per transition, by node and by library
"""
import collections
import http.client
import json
import re
import subprocess
import sys
import threading
import time


def connect(nodes, i):
    host, port = nodes[i % len(nodes)].split(":")
    return http.client.HTTPConnection(host, int(port), timeout=120)


def call(conn, method, path, body=None):
    conn.request(method, path, body=None if body is None else json.dumps(body),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, (json.loads(data) if data else None)


def setup(nodes, workflows):
    conn = connect(nodes, 0)
    definition = {"name": "counter", "initial": "on",
                  "states": {"on": {"on": {"tick": "on", "stop": "off"}},
                             "off": {"terminal": "succeeded"}}}
    status, body = call(conn, "PUT", "/v1/definitions/counter", definition)
    assert status in (200, 201), (status, body)
    for w in range(workflows):
        status, body = call(conn, "POST", "/v1/workflows", {"id": f"p{w}", "definition": "counter"})
        assert status in (200, 201), (status, body)


def run(nodes, n, clients, workflows):
    """Each client owns one workflow and sends `tick` with `expected_revision`, as the bench's
    transitions workload does; clients are spread over the nodes."""
    left, lock, errors = [n], threading.Lock(), []

    def client(k):
        conn = connect(nodes, k)
        wf = f"p{k % workflows}"
        revision = call(conn, "GET", f"/v1/workflows/{wf}")[1]["revision"]
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            status, body = call(conn, "POST", f"/v1/workflows/{wf}/events",
                                {"event": "tick", "expected_revision": revision})
            if status != 200:
                errors.append((status, body))
                body = call(conn, "GET", f"/v1/workflows/{wf}")[1]
            revision = body["revision"]

    start = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
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
        setup(args[0].split(","), int(args[1]))
    elif cmd == "run":
        run(args[0].split(","), int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "summary":
        summary(int(args[0]), args[1:])
    else:
        sys.exit(__doc__)
