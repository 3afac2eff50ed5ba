#!/usr/bin/env python3
"""Memory of the release gateway under two loads.

idle:   opens N connections (default 10,000) to the gateway from loopback,
        reads each greeting and leaves them open; then sends one message on
        a fresh connection to show it still serves, and reads the gateway's
        RSS (VmRSS) and peak (VmHWM) from /proc.
stream: relays M messages of 100 KB (default 1,000: 100 MB) with 20
        parallel smtp-source sessions into the gateway and on to smtp-sink,
        sampling RSS every 10 ms; "flat" means the RSS after the first 10%
        of the messages does not grow with the rest.
faults: F transactions (default 0; the issue's figure is 10,000) through a
        Python plugin (the external-tagger, built by componentize-py with
        its data hook changed to raise) that faults on every message, with
        on_error = "continue" so that the mail still flows; RSS sampled as
        for stream, and the fault count read from the gateway's metrics.

Usage: bench/memory.py [--idle N] [--stream M] [--faults F]   (after `cargo build --release -p mailgate`)
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay import free_port, start_mailgate, wait_port  # noqa: E402


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(key)


def start_gateway(work: Path, sink_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = start_mailgate(work, port, sink_port, max_connections=20000)
    wait_port(port)
    return proc, port


def send_one(port: int):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("a@bench.test", ["b@dest.test"], b"Subject: still serving\r\n\r\nyes\r\n")


def idle(count: int):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < count + 100:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below {count} connections")
    work = Path(tempfile.mkdtemp(prefix="mailgate-idle-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-4", f"127.0.0.1:{sink_port}", "1024"])
    proc, port = start_gateway(work, sink_port)
    try:
        time.sleep(0.5)
        base = rss_kib(proc.pid)
        socks = []
        sel = selectors.DefaultSelector()
        start = time.monotonic()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        greeted = 0
        deadline = time.monotonic() + 60
        while greeted < count and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(512)
                if data.startswith(b"220"):
                    greeted += 1
                sel.unregister(key.fileobj)
        elapsed = time.monotonic() - start
        time.sleep(1)
        held = rss_kib(proc.pid)
        send_one(port)
        ok = proc.poll() is None
        print(f"idle: {count} connections opened, {greeted} greeted in {elapsed:.1f} s; gateway still serving: {ok}")
        print(f"idle: RSS before {base / 1024:.1f} MiB, with the connections {held / 1024:.1f} MiB "
              f"({(held - base) / count:.1f} KiB per connection), peak {rss_kib(proc.pid, 'VmHWM') / 1024:.1f} MiB")
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait()
        sink.terminate()


def relay_sampled(pid: int, port: int, sink: subprocess.Popen, messages: int, size: int):
    """Relays `messages` of `size` octets with 20 smtp-source sessions until
    the sink has them all, sampling the gateway's RSS every 10 ms: (RSS
    before in KiB, the samples in KiB, seconds taken)."""
    samples: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(rss_kib(pid))
            done.wait(0.01)

    base = rss_kib(pid)
    sampler = threading.Thread(target=sample)
    start = time.monotonic()
    sampler.start()
    try:
        subprocess.run(["smtp-source", "-s", "20", "-m", str(messages), "-l", str(size),
                        "-f", "a@bench.test", "-t", "b@dest.test", f"127.0.0.1:{port}"], check=True)
        sink.wait(timeout=600)
    finally:
        done.set()
        sampler.join()
    return base, samples, time.monotonic() - start


def report_rss(label: str, base_kib: int, samples_kib: list[int]):
    """RSS over a run: the peak per tenth, and min/max after the first tenth
    (the warm-up); "flat" means the later tenths do not grow."""
    mib = [kib / 1024 for kib in samples_kib]
    tenth = max(1, len(mib) // 10)
    deciles = [max(mib[i: i + tenth]) for i in range(0, len(mib), tenth)]
    after_warmup = mib[tenth:] or mib
    print(f"{label}: RSS idle {base_kib / 1024:.1f} MiB; peak per tenth of the run (MiB): "
          + ", ".join(f"{d:.1f}" for d in deciles))
    print(f"{label}: after the first tenth: min {min(after_warmup):.1f}, max {max(after_warmup):.1f} MiB; "
          f"at the end {mib[-1]:.1f} MiB")


def stream(messages: int):
    work = Path(tempfile.mkdtemp(prefix="mailgate-stream-"))
    sink_port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-M", str(messages), "-4", f"127.0.0.1:{sink_port}", "1024"])
    proc, port = start_gateway(work, sink_port)
    try:
        base, samples, elapsed = relay_sampled(proc.pid, port, sink, messages, 102400)
        print(f"stream: {messages} x 100 KB = {messages * 100 / 1024:.0f} MiB relayed in {elapsed:.1f} s")
        report_rss("stream", base, samples)
    finally:
        proc.terminate()
        proc.wait()
        sink.kill()


def faulty_python_plugin(work: Path) -> Path:
    """The external-tagger with a data hook that raises: a trap per call."""
    source = (ROOT / "plugins/external-tagger/app.py").read_text()
    hook = "    def on_data(self, ctx, message):\n"
    assert hook in source
    source = source.replace(hook, hook + '        raise RuntimeError("faulting on purpose")\n')
    (work / "faulty").mkdir()
    (work / "faulty/app.py").write_text(source)
    wasm = work / "faulty.wasm"
    subprocess.run(["componentize-py", "-d", str(ROOT / "plugins/external-tagger/wit"), "-w", "tagger",
                    "componentize", "-p", str(work / "faulty"), "app", "-o", str(wasm)],
                   check=True, stdout=subprocess.DEVNULL)
    return wasm


def metric(admin_port: int, name: str) -> float:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def faults(transactions: int):
    work = Path(tempfile.mkdtemp(prefix="mailgate-faults-"))
    wasm = faulty_python_plugin(work)
    sink_port, admin_port, port = free_port(), free_port(), free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "postfix", "-M", str(transactions), "-4",
                             f"127.0.0.1:{sink_port}", "1024"])
    extra = f"""
[admin]
address = "127.0.0.1:{admin_port}"

[plugins]
cache_dir = "{work}/plugin-cache"

[[plugin]]
name = "faulty-python"
path = "{wasm}"
stages = ["data"]
capabilities = ["log"]
on_error = "continue"
memory_limit_bytes = 268435456
[plugin.settings]
internal_domains = ["example.com"]
"""
    proc = start_mailgate(work, port, sink_port, extra)
    wait_port(port, timeout=120)
    try:
        base, samples, elapsed = relay_sampled(proc.pid, port, sink, transactions, 1024)
        faulted = metric(admin_port, "mailgate_plugin_faults_total")
        print(f"faults: {transactions} transactions through a faulting Python plugin in {elapsed:.1f} s; "
              f"faults counted: {faulted:.0f}")
        report_rss("faults", base, samples)
    finally:
        proc.terminate()
        proc.wait()
        sink.kill()


def main():
    parser = argparse.ArgumentParser(description="gateway memory under idle connections and streaming")
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--stream", type=int, default=1000)
    parser.add_argument("--faults", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {os.uname().release}")
    if args.idle:
        idle(args.idle)
    if args.stream:
        stream(args.stream)
    if args.faults:
        faults(args.faults)


if __name__ == "__main__":
    main()
