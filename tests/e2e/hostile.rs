//! Hostile input against the real binary: random bytes, NUL bytes,
//! non-UTF-8 commands, a slowloris client, clients that vanish mid-DATA,
//! a 100,000-recipient attempt and a 50 MB header block. Each is answered
//! or closed, a well-behaved client is served after all of them, nothing
//! half-received is left in the spool, and the process's memory stays
//! bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, count_queued, wait_until};
use tokio::io::AsyncWriteExt;

use crate::{WAIT, binary};

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// xorshift64: reproducible noise without a dependency.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The connection is closed by the gateway (after whatever it answered).
async fn closed(client: &mut SmtpClient) -> Result<String> {
    let rest = client.read_to_close().await?;
    Ok(String::from_utf8_lossy(&rest).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_answered_or_closed_and_others_are_still_served() -> Result<()> {
    let sink = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = Setup::new()
        .route_all_to(sink.addr())
        .smtp("command_timeout = \"2s\"")
        .smtp("data_timeout = \"2s\"")
        .smtp("max_message_bytes = 10485760")
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    let pid = gw.pid().context("no pid")?;
    let addr = gw.addr;
    let spool = dir.path().join("spool");
    let baseline = rss_kib(pid)?;

    // Random bytes (NULs, CRs, non-UTF-8 included): answered with errors,
    // then closed at the error cap or for an overlong line.
    for seed in 1..=10 {
        let mut client = SmtpClient::greeted(addr).await?;
        let mut bytes = noise(seed, 64 * 1024);
        for chunk in bytes.chunks_mut(300) {
            chunk[chunk.len() - 1] = b'\n';
        }
        let _ = client.send(&bytes).await;
        let rest = closed(&mut client).await?;
        ensure!(
            rest.contains("421 4.7.0") || rest.contains("500"),
            "seed {seed}: {rest}"
        );
    }

    // NUL bytes and non-UTF-8 in commands: answered, the session goes on.
    let mut client = SmtpClient::greeted(addr).await?;
    let nul = client.command("MAIL FROM:<a\0b@example.com>").await?;
    assert_eq!(nul.code / 100, 5, "{nul:?}");
    client.send(b"EHLO \xff\xfe\xfd.example\r\n").await?;
    let reply = client.reply().await?;
    assert!(matches!(reply.code, 250 | 501), "{reply:?}");
    client.send(b"RCPT TO:<\xc3\x28@example.com>\r\n").await?;
    assert_eq!(client.reply().await?.code / 100, 5);
    client.expect("NOOP", 250).await?;

    // Slowloris: a byte every 200 ms, never a whole line. The command
    // timeout is a deadline for the line, so the client is cut off.
    let mut slow = SmtpClient::greeted(addr).await?;
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..50 {
        if slow.send(b"N").await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !cut {
        let rest = closed(&mut slow).await?;
        ensure!(rest.contains("421 4.4.2"), "slowloris: {rest}");
    }
    ensure!(
        started.elapsed() < Duration::from_secs(9),
        "slowloris held {:?}",
        started.elapsed()
    );

    // Clients that vanish mid-DATA.
    for _ in 0..5 {
        let mut client = SmtpClient::greeted(addr).await?;
        client.expect("MAIL FROM:<a@example.com>", 250).await?;
        client.expect("RCPT TO:<b@dest.test>", 250).await?;
        client.expect("DATA", 354).await?;
        client.send(b"Subject: half\r\n\r\nthe first half of a mess").await?;
        drop(client);
    }

    // 100,000 recipients in one pipelined burst, written while the replies
    // are read: 1000 accepted, 1000 refused for the limit without counting
    // as errors (RFC 5321 section 4.5.3.1.10), then 452s until the error
    // cap closes the connection; the rest is never read.
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let mut burst = b"EHLO burst.test\r\nMAIL FROM:<a@example.com>\r\n".to_vec();
    for n in 0..100_000 {
        burst.extend_from_slice(format!("RCPT TO:<r{n}@dest.test>\r\n").as_bytes());
    }
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&burst).await;
    });
    let mut replies = Vec::new();
    tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut replies))
        .await
        .context("the gateway did not close the burst connection")??;
    sending.abort();
    let replies = String::from_utf8_lossy(&replies);
    let count = |prefix: &str| replies.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("250 2.1.5"), 1000, "recipients accepted");
    assert!(count("452 ") <= 1000 + 21, "{}", count("452 "));
    assert!(
        replies
            .trim_end()
            .ends_with("421 4.7.0 Too many errors, closing connection")
            || count("421 4.7.0") == 1,
        "{replies:.200}"
    );

    // A 50 MB header block: read to the end, refused, never relayed.
    let mut client = SmtpClient::greeted(addr).await?;
    client.expect("MAIL FROM:<a@example.com>", 250).await?;
    client.expect("RCPT TO:<b@dest.test>", 250).await?;
    client.expect("DATA", 354).await?;
    let line = format!("X-Filler: {}\r\n", "a".repeat(988));
    let block = line.repeat(1024);
    for _ in 0..50 {
        client.send(block.as_bytes()).await?;
    }
    client.send(b"\r\nbody\r\n.\r\n").await?;
    let reply = client.reply().await?;
    assert_eq!(reply.code, 552, "{reply:?}");

    // A well-behaved client is served after all that.
    SmtpClient::deliver(
        addr,
        "good@example.com",
        &["b@dest.test"],
        b"Subject: fine\r\n\r\nhello\r\n",
    )
    .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].mail_from, "good@example.com");
    wait_until(WAIT, || count_queued(&spool) == 0).await?;
    let leftovers: Vec<_> = std::fs::read_dir(spool.join("incoming"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "half-received messages left: {leftovers:?}");

    let grown = rss_kib(pid)?.saturating_sub(baseline);
    assert!(grown < 128 * 1024, "RSS grew by {grown} KiB");
    Ok(())
}
