#!/usr/bin/env python3
"""Soak: kill -9 and a flaky downstream, under load, must lose nothing.

    bench/soak.py [--messages 10000] [--clients 50] [--kill-every 0.2-0.8]

- A downstream SMTP server (here, asyncio) records every message by its
  X-Soak-Id. It answers 451 to a random share of MAIL commands and drops a
  random share of connections in the middle of DATA, so the gateway's
  queue keeps retrying.
- The release `mailgate` relays to it. While the clients send, the gateway
  is killed with SIGKILL at random moments and started again on the same
  spool.
- The clients send MESSAGES messages with unique ids over CLIENTS parallel
  sessions; a message counts as accepted only when the gateway answered
  250 after its final dot. Refused or broken sends are retried with a new
  id (the old one was never accepted... or was: a 250 lost with the
  connection is counted as "maybe", and may arrive).
- At the end, after the last restart, the script waits until the spool is
  empty and checks: every accepted id arrived; ids that arrived twice are
  only those whose delivery was in flight at a kill (at most the delivery
  concurrency per kill, the documented window); nothing is left in the
  spool; no id arrived that was never sent.

Prints the figures and exits 1 when a check fails. Loopback only.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "target" / "release" / "mailgate"


class Downstream:
    """A flaky SMTP sink that records X-Soak-Id headers."""

    def __init__(self, tempfail_share, drop_share):
        self.tempfail_share = tempfail_share
        self.drop_share = drop_share
        self.arrived = Counter()
        self.tempfailed = 0
        self.dropped = 0

    async def start(self):
        self.server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def session(self, reader, writer):
        try:
            writer.write(b"220 sink ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-sink\r\n250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    if random.random() < self.tempfail_share:
                        self.tempfailed += 1
                        writer.write(b"451 4.3.0 try again\r\n")
                    else:
                        writer.write(b"250 ok\r\n")
                elif verb == b"RCPT":
                    writer.write(b"250 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    drop = random.random() < self.drop_share
                    ident = None
                    while True:
                        data = await reader.readline()
                        if not data:
                            return
                        if data.startswith(b"X-Soak-Id: "):
                            ident = data[11:].strip().decode()
                        if data == b".\r\n":
                            break
                        if drop and ident is not None:
                            self.dropped += 1
                            writer.close()
                            return
                    if ident is not None:
                        self.arrived[ident] += 1
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            writer.close()


class Gateway:
    """The release binary on a fixed port and spool, restartable."""

    def __init__(self, workdir, downstream_port, concurrency):
        self.workdir = Path(workdir)
        self.spool = self.workdir / "spool"
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.config = self.workdir / "mailgate.toml"
        self.config.write_text(
            f"""[server]
hostname = "soak.test"
spool_dir = "{self.spool}"
shutdown_grace_period = "1s"

[[listener]]
name = "soak"
address = "127.0.0.1:{self.port}"

[delivery]
concurrency = {concurrency}
retry_initial = "200ms"
retry_max = "1s"

[[route]]
domains = ["*"]
smarthost = "127.0.0.1:{downstream_port}"
"""
        )
        self.process = None
        self.kills = 0

    async def start(self):
        self.process = subprocess.Popen(
            [str(BINARY), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(400):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.025)
        raise RuntimeError("mailgate did not listen")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)

    def queued(self):
        """Messages with a file of their own in queue/, plus the records of
        segments/ not listed in their segment's .done file."""
        queue = self.spool / "queue"
        files = sum(1 for p in queue.iterdir() if p.name.endswith(".msg")) if queue.exists() else 0
        segments = self.spool / "segments"
        records = 0
        for log in sorted(segments.glob("*.log")) if segments.exists() else []:
            done_file = log.with_suffix(".done")
            done = set(done_file.read_text().split()) if done_file.exists() else set()
            records += sum(1 for ident in segment_ids(log.read_bytes()) if ident not in done)
        return files + records

    def incoming(self):
        incoming = self.spool / "incoming"
        return sum(1 for _ in incoming.iterdir()) if incoming.exists() else 0


def segment_ids(data):
    """The ids of a segment's whole records (gateway/src/queue/spool/segments.rs:
    "MGR1", id length u8, content length u64, envelope length u32, CRC u32,
    id, content, envelope)."""
    at = 0
    while at + 21 <= len(data) and data[at:at + 4] == b"MGR1":
        id_len = data[at + 4]
        content_len = int.from_bytes(data[at + 5:at + 13], "little")
        json_len = int.from_bytes(data[at + 13:at + 17], "little")
        end = at + 21 + id_len + content_len + json_len
        if end > len(data):
            break
        yield data[at + 21:at + 21 + id_len].decode()
        at = end


async def send_one(port, ident, size):
    """One message; True for a 250 after the dot, None when the 250 may
    have been lost with the connection, False when refused or broken before
    the dot."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    dotted = False
    try:
        async def reply():
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    raise ConnectionError("closed")
                if line[3:4] != b"-":
                    return int(line[:3])

        if await reply() != 220:
            return False
        writer.write(b"EHLO soak-client\r\n")
        if await reply() != 250:
            return False
        writer.write(b"MAIL FROM:<soak@example.com>\r\n")
        if await reply() != 250:
            return False
        writer.write(b"RCPT TO:<dest@example.net>\r\n")
        if await reply() != 250:
            return False
        writer.write(b"DATA\r\n")
        if await reply() != 354:
            return False
        # Lines of 78 octets (a longer line is refused under RFC 5322).
        line = b"x" * 76 + b"\r\n"
        body = (line * (max(0, size - 100) // len(line) + 1)).rstrip(b"\r\n")
        writer.write(
            b"Subject: soak\r\nX-Soak-Id: " + ident.encode() + b"\r\n\r\n" + body + b"\r\n.\r\n"
        )
        dotted = True
        code = await reply()
        writer.write(b"QUIT\r\n")
        return code == 250
    except (ConnectionError, OSError, asyncio.TimeoutError):
        return None if dotted else False
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--kill-every", default="0.2-0.8", help="seconds between kills, MIN-MAX")
    parser.add_argument("--tempfail", type=float, default=0.15, help="share of MAIL the downstream tempfails")
    parser.add_argument("--drop", type=float, default=0.05, help="share of DATA the downstream drops")
    parser.add_argument("--concurrency", type=int, default=20, help="the gateway's delivery concurrency")
    args = parser.parse_args()
    if not BINARY.exists():
        sys.exit(f"{BINARY} is missing: cargo build --release -p mailgate")
    low, high = (float(x) for x in args.kill_every.split("-"))

    downstream = Downstream(args.tempfail, args.drop)
    downstream_port = await downstream.start()
    workdir = tempfile.mkdtemp(prefix="mailgate-soak-")
    gateway = Gateway(workdir, downstream_port, args.concurrency)
    await gateway.start()

    accepted, maybe, sent_ids = set(), set(), set()
    refused = 0
    next_id = iter(range(10**9))
    remaining = [args.messages]
    started = time.monotonic()

    async def client():
        nonlocal refused
        while remaining[0] > 0:
            ident = f"m{next(next_id)}"
            sent_ids.add(ident)
            try:
                result = await send_one(gateway.port, ident, args.size)
            except (OSError, asyncio.TimeoutError):
                result = False
            if result is True:
                accepted.add(ident)
                remaining[0] -= 1
            elif result is None:
                maybe.add(ident)
            else:
                refused += 1
                await asyncio.sleep(0.05)

    async def killer():
        while remaining[0] > 0:
            await asyncio.sleep(random.uniform(low, high))
            if remaining[0] <= 0:
                break
            gateway.kill()
            await asyncio.sleep(random.uniform(0.0, 0.5))
            await gateway.start()

    async def progress():
        while remaining[0] > 0:
            await asyncio.sleep(5)
            print(
                f"  {time.monotonic() - started:6.1f} s: {len(accepted)} accepted, {gateway.kills} kills, "
                f"{gateway.queued()} queued, {sum(downstream.arrived.values())} arrived",
                flush=True,
            )

    await asyncio.gather(progress(), killer(), *(client() for _ in range(args.clients)))
    sending = time.monotonic() - started

    # Drain: the downstream stops failing, the gateway delivers the rest.
    downstream.tempfail_share = 0.0
    downstream.drop_share = 0.0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        missing = [i for i in accepted if downstream.arrived[i] == 0]
        if not missing and gateway.queued() == 0:
            break
        await asyncio.sleep(0.5)
    drained = time.monotonic() - started
    gateway.stop()

    missing = sorted(i for i in accepted if downstream.arrived[i] == 0)
    twice = sorted(i for i, n in downstream.arrived.items() if n > 1)
    unknown = sorted(i for i in downstream.arrived if i not in sent_ids)
    arrived_refused = sorted(
        i for i in downstream.arrived if i not in accepted and i not in maybe
    )
    window = gateway.kills * args.concurrency
    print(f"machine: {os.cpu_count()} cores")
    print(f"messages accepted: {len(accepted)} over {args.clients} clients, {args.size} octets each")
    print(f"sends refused or broken before the dot (retried): {refused}; 250 lost with the connection: {len(maybe)}")
    print(f"gateway killed with SIGKILL: {gateway.kills} times")
    print(f"downstream: {downstream.tempfailed} MAIL tempfailed, {downstream.dropped} DATA dropped")
    print(f"sending took {sending:.1f} s; all delivered after {drained:.1f} s")
    print(f"accepted but not arrived: {len(missing)}")
    print(f"arrived twice: {len(twice)} (window: at most {window} = kills x delivery concurrency)")
    print(f"arrived without a 250 (refused at the dot): {len(arrived_refused)}")
    print(f"left in the spool: {gateway.queued()} queued, {gateway.incoming()} incoming")
    ok = not missing and not unknown and len(twice) <= window and not arrived_refused
    ok = ok and gateway.queued() == 0 and gateway.incoming() == 0
    print("result:", "PASS" if ok else "FAIL")
    if missing:
        print("missing:", missing[:20])
    downstream.server.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
