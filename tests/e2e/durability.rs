//! Durability with the real binary: kill -9 at any moment loses no message
//! that was answered 250, and the spool is delivered after a restart.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use mailgate_tests::{GatewayProcess, SinkServer, SmtpClient, count_queued, stuff, wait_until};

use crate::{WAIT, binary};

/// Deliveries in flight at once: the most that a kill can interrupt between
/// the downstream's 250 and the spool update.
const CONCURRENCY: usize = 10;

fn write_config(dir: &Path, sink: &SinkServer, extra_smtp: &str) -> Result<PathBuf> {
    let path = dir.join("mailgate.toml");
    let text = format!(
        "[server]\nhostname = \"gw.test\"\nspool_dir = \"{spool}\"\n\n[[listener]]\nname = \"test\"\naddress = \"127.0.0.1:0\"\n\n[smtp]\n{extra_smtp}\n\n[delivery]\nconcurrency = {CONCURRENCY}\nretry_initial = \"200ms\"\nretry_max = \"500ms\"\n\n[[route]]\ndomains = [\"*\"]\nsmarthost = \"{sink}\"\n",
        spool = dir.join("spool").display(),
        sink = sink.addr()
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

fn test_ids(sink: &SinkServer) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for message in sink.messages() {
        if let Some(id) = message
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("X-Test-Id: ").map(str::to_owned))
        {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Clients keep sending while the gateway is killed with SIGKILL; the
/// downstream tempfails part of the traffic so that the spool holds mail at
/// the moment of the kill. After a restart every message that got a 250
/// arrives. A duplicate is tolerated only for a message whose delivery was
/// in flight at the kill (between the downstream's 250 and the spool update).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_accepted_message() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.tempfail_mail = 40);
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &sink, "")?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..8 {
        let (addr, acked) = (gateway.addr, Arc::clone(&acked));
        clients.push(tokio::spawn(async move {
            let Ok(mut client) = SmtpClient::greeted(addr).await else {
                return;
            };
            for m in 0.. {
                let id = format!("{c}-{m}");
                let content = format!("X-Test-Id: {id}\r\nSubject: durable\r\n\r\nbody {id}\r\n");
                match client.send_message("a@x.test", &["b@y.test"], content.as_bytes()).await {
                    Ok(reply) if reply.code == 250 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    wait_until(WAIT, || acked.lock().unwrap().len() >= 150).await?;
    gateway.kill().await?;
    for client in clients {
        client.await?;
    }
    let acked = acked.lock().unwrap().clone();
    let delivered_before_restart = test_ids(&sink).len();

    let gateway = GatewayProcess::start(&binary(), &config).await?;
    wait_until(WAIT, || {
        let seen = test_ids(&sink);
        acked.iter().all(|id| seen.contains_key(id))
    })
    .await
    .with_context(|| format!("{} acknowledged, {} arrived", acked.len(), test_ids(&sink).len()))?;
    wait_until(WAIT, || count_queued(&dir.path().join("spool")) == 0).await?;
    let seen = test_ids(&sink);
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.iter().all(|(_, n)| **n == 2), "{duplicates:?}");
    // At most the deliveries in flight at the kill can repeat.
    assert!(duplicates.len() <= CONCURRENCY, "{} duplicates", duplicates.len());
    eprintln!(
        "acknowledged {}, delivered before the kill {delivered_before_restart}, after restart {}, duplicates {}",
        acked.len(),
        seen.len(),
        duplicates.len()
    );
    gateway.kill().await?;
    Ok(())
}

/// Mail waiting in the spool when the gateway dies is delivered after it
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_mail_is_delivered_after_a_restart() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.mail_reply = Some("451 4.3.0 not now".into()));
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &sink, "")?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let mut client = SmtpClient::greeted(gateway.addr).await?;
    for i in 0..5 {
        let content = format!("X-Test-Id: r{i}\r\n\r\nwaiting\r\n");
        client
            .send_message("a@x.test", &["b@y.test"], content.as_bytes())
            .await?;
    }
    wait_until(WAIT, || sink.mail_commands() >= 5).await?;
    gateway.kill().await?;
    assert_eq!(count_queued(&dir.path().join("spool")), 5);

    sink.behave(|b| b.mail_reply = None);
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    wait_until(WAIT, || test_ids(&sink).len() == 5).await?;
    wait_until(WAIT, || count_queued(&dir.path().join("spool")) == 0).await?;
    assert!(test_ids(&sink).values().all(|&n| n == 1));
    let terminated = gateway.terminate().await?;
    assert!(terminated.success(), "SIGTERM exit status {terminated:?}");
    Ok(())
}

/// Streaming a large accepted message and a huge over-limit one keeps the
/// gateway's memory far below the message sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_streaming() -> Result<()> {
    let sink = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &sink, "max_message_bytes = 20000000")?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let mut client = SmtpClient::greeted(gateway.addr).await?;
    let line = [b'z'; 78];
    let mut body = b"Subject: large\r\n\r\n".to_vec();
    while body.len() < 15_000_000 {
        body.extend_from_slice(&line);
        body.extend_from_slice(b"\r\n");
    }
    let reply = client.send_message("a@x.test", &["b@y.test"], &body).await?;
    assert_eq!(reply.code, 250);
    // 60 MB over the limit, in pieces.
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    client.expect("DATA", 354).await?;
    let block = stuff(&body[18..]);
    let block = &block[..block.len() - 3];
    for _ in 0..4 {
        client.send(block).await?;
    }
    client.send(b"\r\n.\r\n").await?;
    assert_eq!(client.reply().await?.code, 552);
    wait_until(WAIT, || sink.count() == 1).await?;

    let pid = gateway.pid().context("no pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")?;
    eprintln!("peak RSS {peak_kb} kB after streaming 15 MB + 60 MB");
    assert!(peak_kb < 60 * 1024, "peak RSS {peak_kb} kB");
    gateway.kill().await?;
    Ok(())
}
