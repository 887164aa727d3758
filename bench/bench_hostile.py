"""Benchmark: a hostile or broken Redis, megacache's store against torch's RedisRemoteCache,
side by side in one run. Each client runs in a fresh child process against the same real TCP
server on 127.0.0.1; the row gives how long the lookup took and how much it raised the child's
peak RSS.

  trickle   a valid reply, one byte every 0.3 s: a per-read timeout never fires
  huge      a reply announcing 1 GiB, then streamed as fast as the socket takes it

megacache runs with `timeout_ms=500` (a total deadline per request); torch with
`socket_timeout=0.5` in TORCHINDUCTOR_REDIS_URL, the tightest bound redis-py offers (per read).
A child still running after CAP_SECONDS is killed and shown as ">CAP"; its peak RSS still
counts (os.wait4), less that of the same child doing no lookup. Targets (issue 9): no
request outlives its deadline by more than 100 ms; peak RSS within 64 MB for any input.

Usage: python bench/bench_hostile.py [--json OUT]  (needs the redis Python package for torch's
rows; `make bench` installs it).
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time

CAP_SECONDS = 10.0
DEADLINE_MS = 500


class Server:
    """Answers every request with `respond(send, closed)` until closed."""

    def __init__(self, respond):
        self.respond = respond
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(client,), daemon=True).start()

    def _answer(self, client):
        with client:
            try:
                while not self.closed.is_set() and client.recv(65536):
                    self.respond(client.sendall, self.closed)
            except OSError:
                return

    def close(self):
        self.closed.set()
        self.listener.close()


def trickle(send, closed):
    for byte in b"$1000\r\n" + b"x" * 1000:
        if closed.is_set():
            return
        send(bytes([byte]))
        time.sleep(0.3)


def huge(send, closed):
    send(b"$1073741824\r\n")
    sent = 0
    while not closed.is_set() and sent < (1 << 30):
        send(b"\0" * (1 << 20))
        sent += 1 << 20


CLIENTS = {
    "megacache": (
        "from megacache import _core\n"
        f"lookup = lambda: _core.Store('redis://127.0.0.1:%d/0?timeout_ms={DEADLINE_MS}').get('k')\n"
    ),
    "torch": (
        "import os\n"
        "os.environ['TORCHINDUCTOR_REDIS_URL'] = "
        f"'redis://127.0.0.1:%d/0?socket_timeout={DEADLINE_MS / 1000}'\n"
        "from torch._inductor.remote_cache import RedisRemoteCacheBackend\n"
        "backend = RedisRemoteCacheBackend('fx-graph-v1')\n"
        "def lookup():\n"
        "    try:\n"
        "        return backend._get('k')\n"
        "    except Exception as error:  # whatever torch lets through reaches its caller\n"
        "        return type(error).__name__\n"
    ),
}

MEASURE = (
    "import time\n"
    "start = time.monotonic()\n"
    "result = lookup()\n"
    "print(time.monotonic() - start, "
    "type(result).__name__ if not isinstance(result, str) else result)\n"
)


def peak_rss_kib(script):
    """Like run_child, with the child's peak RSS in KiB from its rusage."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    timer = threading.Timer(CAP_SECONDS, child.kill)
    timer.start()
    out = child.stdout.read().decode()
    err = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    timer.cancel()
    killed = os.WIFSIGNALED(status)
    return out, err, usage.ru_maxrss, killed, os.WEXITSTATUS(status) if not killed else None


def run_client(client, port):
    baseline_out, _, baseline_kib, _, _ = peak_rss_kib(
        CLIENTS[client] % port + "lookup = lambda: None\n" + MEASURE
    )
    out, err, kib, killed, code = peak_rss_kib(CLIENTS[client] % port + MEASURE)
    growth_mb = max(0, kib - baseline_kib) / 1024
    if killed:
        return {
            "seconds": None,
            "rss_growth_mb": growth_mb,
            "result": f"killed after {CAP_SECONDS:.0f} s",
        }
    if code != 0:
        return {
            "seconds": None,
            "rss_growth_mb": growth_mb,
            "result": "crashed: " + err.strip().splitlines()[-1],
        }
    seconds, result = out.split()
    return {"seconds": float(seconds), "rss_growth_mb": growth_mb, "result": result}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        import redis  # noqa: F401

        clients = ["megacache", "torch"]
    except ImportError:
        print("the redis package is missing: torch's rows are skipped (make bench installs it)")
        clients = ["megacache"]
    rows = {}
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}; deadline {DEADLINE_MS} ms"
    )
    print(
        f"{'server':8} {'client':10} {'seconds':>8} "
        f"{'over deadline':>14} {'peak RSS +MB':>13}  result"
    )
    for name, respond in (("trickle", trickle), ("huge", huge)):
        for client in clients:
            server = Server(respond)
            try:
                row = run_client(client, server.port)
            finally:
                server.close()
            rows[f"{name}/{client}"] = row
            seconds = (
                f"{row['seconds']:.3f}" if row["seconds"] is not None else f">{CAP_SECONDS:.0f}"
            )
            over = (
                f"{(row['seconds'] - DEADLINE_MS / 1000) * 1000:+.0f} ms"
                if row["seconds"] is not None
                else "-"
            )
            rss = f"{row['rss_growth_mb']:.1f}" if row["rss_growth_mb"] is not None else "-"
            print(f"{name:8} {client:10} {seconds:>8} {over:>14} {rss:>13}  {row['result']}")
        if "torch" in clients and rows[f"{name}/torch"]["seconds"] is not None:
            ratio = rows[f"{name}/torch"]["seconds"] / rows[f"{name}/megacache"]["seconds"]
            print(f"{'':8} torch/megacache time ratio: {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
