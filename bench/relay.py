#!/usr/bin/env python3
"""End-to-end relay benchmark: mailgate against Postfix and Haraka, side by side.

    smtp-source --(N sessions)--> relay --> smtp-sink

For every workload, each relay in turn gets the same load from Postfix's
`smtp-source`, and forwards it to a fresh `smtp-sink`. The sink dumps every
message it receives to its own file on tmpfs (`-d`); the time a message
arrived is when the sink closes that file, seen through inotify. Two figures
per relay and workload:

* throughput: messages arrived at the sink, divided by the time from the
  start of `smtp-source` to the arrival of the last one; only mail that
  crossed the relay counts.
* injection-to-arrival latency (p50, p99): while `smtp-source` runs, this
  script injects probe messages of the same size (20 per second, each on
  its own connection, like `smtp-source` does); a probe's sender address
  carries the time its connection was opened, and the sink records it in
  the dump (`X-Mail-Args`). Latency = arrival - that time.

The paced workload (`1k-100ps`) has no `smtp-source`: its messages are all
probes, 100 per second, so p50 and p99 there are the latency of a relay
that is not saturated.

The direct `smtp-source` -> `smtp-sink` run (relay `direct`) is the ceiling:
what the load generator and the sink manage on this machine with no relay
in between. It is measured with the same dumping sink, and once more with a
sink that does not dump (`direct-nodump`, timed by `smtp-source` alone),
the ceiling without our instrumentation.

Relays (all started once, all configured as an open relay for 127.0.0.0/8
forwarding every domain to the sink):

* mailgate: release build, defaults (fsync before 250, info logging).
* mailgate-noreuse (not run by default): outbound connection reuse off.
* mailgate-plugins-reused (not run by default): the plugin chain below
  with `instances = "reused"` (warm instances across connections).
* mailgate-plugins: plus smarthost-router, header-rewrite and spam-score,
  each at all five stages, fresh instance per connection (the default).
* postfix: a private Postfix instance, relayhost = the sink.
* haraka: Haraka from npm, `relay` (ACL) plus `queue/smtp_forward` with
  `enable_outbound = false`, so relayed mail goes through Haraka's
  outbound queue on disk, like the other two spool it. `nodes = cpus`.
* haraka-forward: Haraka forwarding inside the client's DATA
  (`enable_outbound = true`: no queue at all), its fastest relaying mode.

Usage (as root):  bench/relay.py [--relays a,b] [--workloads a,b] [--runs N]
(MAILGATE_BIN=PATH runs that mailgate binary instead of the release build,
for comparing two builds with --no-setup.)
Writes a Markdown table of figures and ratios to stdout and to --out.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import signal
import smtplib
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARAKA_DIR = ROOT / "target" / "bench" / "haraka"
HARAKA_VERSION = "3.3.4"
PLUGIN_DIR = ROOT / "target" / "wasm-plugins" / "wasm32-wasip2" / "release"

WORKLOADS = {
    # name: (message size, sessions, recipients per message, messages)
    "1k-1s": (1024, 1, 1, 2000),
    "1k-20s": (1024, 20, 1, 10000),
    "100k-20s": (102400, 20, 1, 2000),
    "1k-10rcpt": (1024, 20, 10, 4000),
    # Paced, not saturating: 2000 messages at 100 per second, each on its
    # own connection, every one of them a timed probe (sessions = 0).
    "1k-100ps": (1024, 0, 1, 2000),
}
# Rate of the paced workloads, messages per second.
PACED = {"1k-100ps": 100}
RELAYS = ["direct", "direct-nodump", "mailgate", "mailgate-plugins", "postfix", "haraka", "haraka-forward"]
# Also available: mailgate-noreuse (outbound connection reuse off) and
# mailgate-plugins-reused (the plugins with instances = "reused").
PROBES_PER_SECOND = 20


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port}")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup():
    """Installs what is missing (Postfix, Haraka) and builds mailgate and the plugins."""
    if not shutil.which("smtp-source") or not shutil.which("postfix"):
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", "postfix"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    haraka = HARAKA_DIR / "node_modules" / ".bin" / "haraka"
    if not haraka.exists():
        if not shutil.which("npm"):
            run(["apt-get", "install", "-y", "-qq", "nodejs", "npm"])
        HARAKA_DIR.mkdir(parents=True, exist_ok=True)
        run(["npm", "install", "--no-save", "--no-audit", "--no-fund", f"Haraka@{HARAKA_VERSION}"], cwd=HARAKA_DIR)
    run(["cargo", "build", "--release", "--locked", "--quiet", "-p", "mailgate"], cwd=ROOT)
    subprocess.run(["rustup", "target", "add", "wasm32-wasip2"], capture_output=True)
    run(
        ["cargo", "build", "--release", "--locked", "--quiet", "--target", "wasm32-wasip2",
         "--target-dir", "target/wasm-plugins", "--manifest-path", "plugins/Cargo.toml",
         "-p", "spam-score", "-p", "header-rewrite", "-p", "smarthost-router"],
        cwd=ROOT,
    )


def start_mailgate(d: Path, port: int, sink_port: int, extra: str = "", max_connections: int = 1000):
    """Starts the release gateway with its files in `d`, listening on
    `port`, an open relay for loopback routing every domain to the sink."""
    (d / "mailgate.toml").write_text(f"""
[server]
hostname = "bench.mailgate.test"
spool_dir = "{d}/spool"
max_connections = {max_connections}

[[listener]]
name = "bench"
address = "127.0.0.1:{port}"

[relay]
trusted_networks = ["127.0.0.0/8"]

[[route]]
name = "sink"
domains = ["*"]
smarthost = "127.0.0.1:{sink_port}"
{extra}
""")
    return subprocess.Popen(
        [os.environ.get("MAILGATE_BIN", str(ROOT / "target/release/mailgate")), "run", "--config", str(d / "mailgate.toml")],
        stdout=subprocess.DEVNULL, stderr=open(d / "log", "wb"), start_new_session=True,
    )


def plugin_chain(work: Path, instances: str = "") -> str:
    """The three example plugins, each at all five stages."""
    stages = '["connect", "helo", "mail", "rcpt", "data"]'
    return f"""
[plugins]
cache_dir = "{work}/plugin-cache"

[[plugin]]
name = "smarthost-router"
path = "{PLUGIN_DIR}/smarthost_router.wasm"
stages = {stages}
{instances}
[[plugin.settings.rules]]
domains = ["*"]
route = "sink"

[[plugin]]
name = "header-rewrite"
path = "{PLUGIN_DIR}/header_rewrite.wasm"
stages = {stages}
{instances}
[[plugin.settings.rules]]
set = "X-Relayed-By"
value = "mailgate"
[[plugin.settings.rules]]
remove = "X-Internal"

[[plugin]]
name = "spam-score"
path = "{PLUGIN_DIR}/spam_score.wasm"
stages = {stages}
{instances}
[plugin.settings]
quarantine_at = 100.0
reject_at = 200.0
"""


class Relays:
    """Starts and stops the relays under test, each on its own port, all
    forwarding to the sink port."""

    def __init__(self, work: Path, sink_port: int):
        self.work = work
        self.sink_port = sink_port
        self.ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []
        self.pids: dict[str, int] = {}
        self.postfix_conf: Path | None = None

    def start(self, name: str) -> int:
        if name in ("direct", "direct-nodump"):
            return self.sink_port
        port = free_port()
        getattr(self, "start_" + name.replace("-", "_"))(port)
        wait_port(port)
        self.ports[name] = port
        return port

    def stop(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # Haraka's workers too
            except ProcessLookupError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.postfix_conf:
            subprocess.run(["postfix", "-c", str(self.postfix_conf), "stop"], capture_output=True)

    def _mailgate(self, name: str, port: int, extra: str = ""):
        d = self.work / name
        d.mkdir()
        proc = start_mailgate(d, port, self.sink_port, extra=extra)
        self.procs.append(proc)
        self.pids[name] = proc.pid

    def start_mailgate(self, port: int):
        self._mailgate("mailgate", port)

    def start_mailgate_noreuse(self, port: int):
        self._mailgate("mailgate-noreuse", port, '[delivery]\nidle_timeout = "0s"')

    def start_mailgate_plugins(self, port: int):
        self._mailgate("mailgate-plugins", port, plugin_chain(self.work))

    def start_mailgate_plugins_reused(self, port: int):
        self._mailgate("mailgate-plugins-reused", port, plugin_chain(self.work, 'instances = "reused"'))

    def start_postfix(self, port: int):
        pf = self.work / "postfix"
        conf = pf / "conf"
        conf.mkdir(parents=True)
        shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
        (conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {pf}/queue
data_directory = {pf}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relayhost = [127.0.0.1]:{self.sink_port}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = {pf}/maillog
maillog_file_prefixes = {pf}
default_process_limit = 200
""")
        (pf / "queue").mkdir()
        (pf / "data").mkdir()
        c = ["-c", str(conf)]
        run(["postconf", *c, "-M#", "smtp/inet"], capture_output=True)
        run(["postconf", *c, "-M", f"127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd"])
        run(["postconf", *c, "-F", "*/*/chroot = n"])
        subprocess.run(["postfix", *c, "set-permissions"], capture_output=True)
        run(["postfix", *c, "start"], capture_output=True)
        self.postfix_conf = conf

    def _haraka(self, name: str, port: int, outbound_queue: bool):
        d = self.work / name
        cfg = d / "config"
        run([str(HARAKA_DIR / "node_modules/.bin/haraka"), "-i", str(d)], capture_output=True)
        # Reverse DNS of each client is Haraka's default; the others do
        # none, so a one-line plugin answers it without a lookup.
        (d / "plugins").mkdir(exist_ok=True)
        (d / "plugins" / "skip_rdns.js").write_text(
            "exports.hook_lookup_rdns = function (next) { next(OK, 'localhost') }\n"
        )
        (cfg / "me").write_text(f"bench.{name}.test\n")
        (cfg / "smtp.ini").write_text(f"listen=127.0.0.1:{port}\nnodes=cpus\n")
        (cfg / "log.ini").write_text("[main]\nlevel=warn\ntimestamps=false\n")
        (cfg / "plugins").write_text("skip_rdns\nrelay\nqueue/smtp_forward\n")
        (cfg / "relay.ini").write_text("[relay]\nacl=true\nforce_routing=false\n")
        (cfg / "relay_acl_allow").write_text("127.0.0.0/8\n")
        route = f"host=127.0.0.1\nport={self.sink_port}\n"
        (cfg / "smtp_forward.ini").write_text(
            f"[main]\n{route}enable_outbound={'false' if outbound_queue else 'true'}\n\n[dest.test]\n{route}"
        )
        (cfg / "outbound.ini").write_text("[main]\nconcurrency_max=100\n")
        (d / "queue").mkdir()
        proc = subprocess.Popen(
            [str(HARAKA_DIR / "node_modules/.bin/haraka"), "-c", str(d)],
            stdout=open(d / "log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)

    def start_haraka(self, port: int):
        self._haraka("haraka", port, outbound_queue=True)

    def start_haraka_forward(self, port: int):
        self._haraka("haraka-forward", port, outbound_queue=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_cpu() -> tuple[float, float, float]:
    """(busy, iowait, total) jiffies of all cores since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = f[3], f[4]
    total = sum(f[:8])
    return total - idle - iowait, iowait, total


class Probes:
    """Injects timestamped probe messages at a fixed rate on their own
    connections while the load runs."""

    def __init__(self, port: int, size: int, rate: float = 0, count: int = 0):
        self.port = port
        self.rate = rate or PROBES_PER_SECOND
        # With a count, stops by itself after that many (a paced workload).
        self.count = count
        self.body = ("Subject: probe\r\n\r\n" + ("x" * 76 + "\r\n") * max(1, size // 78)).encode()
        self.sent = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def one(self):
        t0 = time.time_ns()
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                smtp.sendmail(f"probe-{t0}@bench.test", ["probe@dest.test"], self.body)
            with self.lock:
                self.sent += 1
        except (OSError, smtplib.SMTPException):
            with self.lock:
                self.failed += 1

    def loop(self):
        interval = 1 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set() and not (self.count and len(self.threads) >= self.count):
            t = threading.Thread(target=self.one, daemon=True)
            t.start()
            self.threads.append(t)
            next_at += interval
            self.stop.wait(max(0, next_at - time.monotonic()))

    def start(self):
        self.runner = threading.Thread(target=self.loop, daemon=True)
        self.runner.start()

    def finish(self):
        self.stop.set()
        self.runner.join()
        for t in self.threads:
            t.join()


class Arrivals(threading.Thread):
    """Timestamps every message the sink finishes writing (inotify
    IN_CLOSE_WRITE on the dump directory) with the precise wall clock;
    file modification times on tmpfs use the coarse clock, a tick behind."""

    IN_CLOSE_WRITE, IN_Q_OVERFLOW = 0x8, 0x4000

    def __init__(self, directory: Path):
        super().__init__(daemon=True)
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, str(directory).encode(), self.IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")
        self.times: dict[bytes, int] = {}
        self.overflow = False
        self.done = threading.Event()

    def run(self):
        poll = select.poll()
        poll.register(self.fd, select.POLLIN)
        while not self.done.is_set():
            if not poll.poll(100):
                continue
            buf = os.read(self.fd, 1 << 20)
            now = time.time_ns()
            off = 0
            while off < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, off)
                if mask & self.IN_Q_OVERFLOW:
                    self.overflow = True
                self.times[buf[off + 16 : off + 16 + length].rstrip(b"\0")] = now
                off += 16 + length

    def stop(self):
        self.done.set()
        self.join()
        os.close(self.fd)


def probe_latencies(dump: Path, arrivals: dict[bytes, int]) -> list[float]:
    """Latencies (ms) of the probe messages: arrival minus the time in the
    sender address, which the sink's dump records as X-Mail-Args."""
    marker = b"X-Mail-Args: <probe-"
    latencies = []
    for name, arrived in arrivals.items():
        with open(dump / name.decode(), "rb") as fh:
            head = fh.read(512)
        i = head.find(marker)
        if i >= 0:
            t0 = int(head[i + len(marker) : head.index(b"@", i)])
            latencies.append((arrived - t0) / 1e6)
    return latencies


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(relay: str, port: int, sink_port: int, workload: str, work: Path, pid: int | None):
    size, sessions, rcpts, messages = WORKLOADS[workload]
    dump = Path(tempfile.mkdtemp(prefix=f"sink-{relay}-{workload}-", dir="/dev/shm"))
    shutil.chown(dump, "postfix")
    sink_cmd = ["smtp-sink", "-u", "postfix", "-4", f"127.0.0.1:{sink_port}", "1024"]
    nodump = relay == "direct-nodump"
    arrivals = None
    if not nodump:
        # One flat directory (the second in the name keeps names apart).
        sink_cmd[1:1] = ["-d", f"{dump}/%H%M%S."]
        arrivals = Arrivals(dump)
        arrivals.start()
    sink = subprocess.Popen(sink_cmd)
    wait_port(sink_port)
    paced = PACED.get(workload, 0)
    probes = None if nodump else Probes(port, size, paced, messages if paced else 0)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    sys0 = system_cpu()
    start = time.time_ns()
    if probes:
        probes.start()
    source = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
              "-f", "sender@bench.test", "-t", "rcpt@dest.test"]
    if rcpts > 1:
        source += ["-r", str(rcpts)]
    if paced:
        # Every message is a probe: wait for the probes to be sent.
        probes.runner.join()
    else:
        run([*source, f"127.0.0.1:{port}"])
    injected = time.time_ns()
    if probes:
        probes.finish()
    result = {"relay": relay, "workload": workload, "inject_s": (injected - start) / 1e9}
    if nodump:
        # smtp-source talked to the sink itself: done when it is.
        result.update(arrived=messages, expected=messages, rate=messages / ((injected - start) / 1e9))
    else:
        expected = probes.sent + (0 if paced else messages)
        last, seen = time.monotonic(), 0
        while True:
            n = len(arrivals.times)
            if n >= expected:
                break
            if n != seen:
                last, seen = time.monotonic(), n
            elif time.monotonic() - last > 30:
                log(f"  {relay}: only {n} of {expected} messages arrived; giving up")
                break
            time.sleep(0.02)
        arrivals.stop()
        if arrivals.overflow:
            log("  inotify queue overflowed: raise /proc/sys/fs/inotify/max_queued_events")
        latencies = probe_latencies(dump, arrivals.times)
        span = (max(arrivals.times.values()) - start) / 1e9
        result.update(
            arrived=len(arrivals.times), expected=expected, rate=len(arrivals.times) / span,
            p50=percentile(latencies, 50), p99=percentile(latencies, 99), probes=len(latencies),
            probes_failed=probes.failed,
        )
    sink.send_signal(signal.SIGTERM)
    sink.wait()
    sys1 = system_cpu()
    busy, iowait, total = (b - a for a, b in zip(sys0, sys1))
    result["cpu_busy"] = busy / total if total else 0.0
    result["iowait"] = iowait / total if total else 0.0
    if pid:
        result["relay_cpu_ms"] = (cpu_seconds(pid) - cpu0) * 1000 / max(1, result["arrived"])
    shutil.rmtree(dump, ignore_errors=True)
    return result


def report(results, relays, workloads, runs) -> str:
    out = []
    machine = f"{os.cpu_count()} cores, {os.uname().release}"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            machine += ", " + line.split(":", 1)[1].strip()
            break
    out.append(f"Machine: {machine}. Runs: {runs}; figures are medians over the runs.\n")

    def med(relay, workload, key):
        vals = [r[key] for r in results if r["relay"] == relay and r["workload"] == workload and key in r]
        return statistics.median(vals) if vals else None

    out.append("| workload | relay | msg/s | p50 ms | p99 ms | arrived/expected | CPU busy | iowait | relay CPU ms/msg |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        for r in relays:
            rows = [x for x in results if x["relay"] == r and x["workload"] == w]
            if not rows or "rate" not in rows[0]:
                continue
            arrived = "; ".join(f"{x['arrived']}/{x['expected']}" for x in rows)
            p50, p99 = med(r, w, "p50"), med(r, w, "p99")
            cpu_ms = med(r, w, "relay_cpu_ms")
            out.append(
                f"| {w} | {r} | {med(r, w, 'rate'):.0f} | {'' if p50 is None else f'{p50:.1f}'} | "
                f"{'' if p99 is None else f'{p99:.1f}'} | {arrived} | {med(r, w, 'cpu_busy'):.0%} | "
                f"{med(r, w, 'iowait'):.0%} | {'' if cpu_ms is None else f'{cpu_ms:.2f}'} |"
            )
    pairs = [("mailgate", "postfix"), ("mailgate", "haraka"), ("mailgate-plugins", "postfix"),
             ("mailgate-plugins", "haraka"), ("mailgate-plugins", "haraka-forward"),
             ("mailgate-plugins", "mailgate"), ("mailgate", "direct-nodump"), ("mailgate-plugins", "direct-nodump"),
             ("mailgate-plugins", "direct"), ("mailgate-plugins-reused", "postfix"),
             ("mailgate-plugins-reused", "haraka")]
    present = {x["relay"] for x in results}
    pairs = [(a, b) for a, b in pairs if a in present and b in present]
    if not pairs or all(w in PACED for w in workloads):
        return "\n".join(out) + "\n"
    out.append("\nRatios of throughput (per run, then the median over runs):\n")
    out.append("| workload | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    out.append("|---|" + "---|" * len(pairs))
    for w in workloads:
        if w in PACED:
            continue  # paced: every relay keeps up, only latency compares
        cells = []
        for a, b in pairs:
            ratios = []
            for i in range(runs):
                ra = [x["rate"] for x in results if x["relay"] == a and x["workload"] == w and x["run"] == i]
                rb = [x["rate"] for x in results if x["relay"] == b and x["workload"] == w and x["run"] == i]
                if ra and rb:
                    ratios.append(ra[0] / rb[0])
            cells.append(f"{statistics.median(ratios):.2f}" if ratios else "")
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relays", default=",".join(RELAYS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's message count")
    parser.add_argument("--out", default=str(ROOT / "target" / "bench" / "relay.md"))
    parser.add_argument("--no-setup", action="store_true")
    args = parser.parse_args()
    relays = args.relays.split(",")
    workloads = args.workloads.split(",")
    for name in workloads:
        size, sessions, rcpts, messages = WORKLOADS[name]
        WORKLOADS[name] = (size, sessions, rcpts, max(1, int(messages * args.scale)))
    if not args.no_setup:
        setup()
    work = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    os.chmod(work, 0o755)  # Postfix's daemons run as the postfix user
    Path("/proc/sys/fs/inotify/max_queued_events").write_text("1048576\n")
    sink_port = free_port()
    relay_set = Relays(work, sink_port)
    results = []
    try:
        ports = {r: relay_set.start(r) for r in relays}
        time.sleep(2)  # Haraka's workers come up after the listener
        for i in range(args.runs):
            for w in workloads:
                for r in relays:
                    if w in PACED and r == "direct-nodump":
                        continue  # no probes, so nothing to time
                    res = measure(r, ports[r], sink_port, w, work, relay_set.pids.get(r))
                    res["run"] = i
                    results.append(res)
                    lat = f"p50 {res['p50']:.1f} ms p99 {res['p99']:.1f} ms" if "p50" in res else ""
                    log(f"run {i + 1} {w:10} {r:17} {res['rate']:7.0f} msg/s  {lat}  "
                        f"{res['arrived']}/{res['expected']} arrived, cpu {res['cpu_busy']:.0%}")
    finally:
        relay_set.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = report(results, relays, workloads, args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
