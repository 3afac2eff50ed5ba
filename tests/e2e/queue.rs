//! The delivery engine's scheduling and operator side: retry timing, the
//! per-destination concurrency limit, delay and failure DSNs, and queue
//! operations through the CLI and the admin API of a running gateway.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mailgate_tests::{Gateway, Setup, SinkServer, SmtpClient, dsn_parts, wait_until};

use crate::{WAIT, binary};

async fn send(gw: &Gateway, to: &str, subject: &str) -> Result<()> {
    let content = format!("From: sender@back.test\r\nSubject: {subject}\r\n\r\nbody\r\n");
    SmtpClient::deliver(gw.addr, "sender@back.test", &[to], content.as_bytes()).await
}

/// Runs `mailgate queue --config CONFIG ARGS...`; its exit success and stdout.
async fn queue_cli(config: &Path, args: &[&str]) -> Result<(bool, String)> {
    let output = tokio::process::Command::new(binary())
        .arg("queue")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .await?;
    eprintln!("queue {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_backoff_schedule() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.tempfail_mail = 2);
    let gw = Setup::new()
        .delivery("retry_initial = \"400ms\"")
        .delivery("retry_max = \"10s\"")
        .route_all_to(sink.addr())
        .start()
        .await?;
    send(&gw, "b@y.test", "timing").await?;
    let mut seen = Vec::new();
    for attempts in 1..=3 {
        wait_until(WAIT, || sink.mail_commands() >= attempts).await?;
        seen.push(Instant::now());
    }
    wait_until(WAIT, || sink.count() == 1).await?;
    let first_wait = seen[1] - seen[0];
    let second_wait = seen[2] - seen[1];
    // 400 ms then 800 ms, each with +-20 % jitter.
    assert!(first_wait >= Duration::from_millis(300), "{first_wait:?}");
    assert!(second_wait >= Duration::from_millis(620), "{second_wait:?}");
    assert!(
        second_wait > first_wait,
        "backoff grows: {first_wait:?} then {second_wait:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_destination_limit_caps_parallel_transactions() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.data_delay = Duration::from_millis(300));
    let gw = Setup::new()
        .delivery("concurrency = 20")
        .delivery("max_connections_per_destination = 2")
        .route_all_to(sink.addr())
        .start()
        .await?;
    for n in 0..8 {
        send(&gw, &format!("u{n}@y.test"), "parallel").await?;
    }
    wait_until(WAIT, || sink.count() == 8).await?;
    assert_eq!(
        sink.max_concurrent_transactions(),
        2,
        "two at a time, and two were used"
    );
    // Connections were reused for later messages: fewer connections than messages.
    let messages = sink.messages();
    let mut connections: Vec<usize> = messages.iter().map(|m| m.connection).collect();
    connections.sort_unstable();
    connections.dedup();
    assert!(
        connections.len() < 8,
        "several messages per connection: {connections:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_warning_then_a_bounce_reach_the_sender() -> Result<()> {
    let dest = SinkServer::start().await?;
    dest.behave(|b| {
        b.rcpt_replies
            .insert("slow@dest.test".into(), "451 4.2.0 mailbox busy".into());
    });
    let back = SinkServer::start().await?;
    let gw = Setup::new()
        .delivery("delay_warning = \"500ms\"")
        .delivery("max_age = \"3s\"")
        .route_to("\"dest.test\"", dest.addr())
        .route_to("\"back.test\"", back.addr())
        .start()
        .await?;
    send(&gw, "slow@dest.test", "patience").await?;

    wait_until(WAIT, || back.count() >= 1).await?;
    let warning = &back.messages()[0];
    assert_eq!(warning.mail_from, "");
    assert_eq!(warning.rcpt_to, ["sender@back.test"]);
    let (status, headers) = dsn_parts(&warning.content)?;
    assert!(status.contains("Action: delayed"), "{status}");
    assert!(status.contains("Will-Retry-Until: "), "{status}");
    assert!(status.contains("451 4.2.0 mailbox busy"), "{status}");
    assert!(headers.contains("Subject: patience"), "{headers}");
    assert!(warning.text().contains("Subject: Delayed Mail"));

    wait_until(WAIT, || back.count() >= 2).await?;
    let bounce = &back.messages()[1];
    let (status, headers) = dsn_parts(&bounce.content)?;
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 4.4.7"), "{status}");
    assert!(status.contains("451 4.2.0 mailbox busy"), "{status}");
    assert!(headers.contains("Subject: patience"), "{headers}");
    wait_until(WAIT, || gw.queued() == 0).await?;
    assert_eq!(back.count(), 2, "one warning, one bounce");
    Ok(())
}

/// The queue's entries as `mailgate queue list --json` prints them.
async fn listed(config: &Path) -> Result<Vec<serde_json::Value>> {
    let (ok, out) = queue_cli(config, &["list", "--json"]).await?;
    anyhow::ensure!(ok, "queue list failed");
    Ok(serde_json::from_str::<serde_json::Value>(&out)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn ids(entries: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = entries
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_work_against_a_running_gateway() -> Result<()> {
    let dest = SinkServer::start().await?;
    dest.behave(|b| b.mail_reply = Some("451 4.3.0 not now".into()));
    let back = SinkServer::start().await?;
    let gw = Setup::new()
        .admin()?
        .hourly_retries()
        .route_to("\"dest.test\"", dest.addr())
        .route_to("\"back.test\"", back.addr())
        .start()
        .await?;
    for n in 0..3 {
        send(&gw, "user@dest.test", &format!("queued {n}")).await?;
    }
    wait_until(WAIT, || dest.mail_commands() >= 3).await?;
    let config = gw.config();

    // The attempts end shortly after the sink's 451.
    let mut entries = listed(&config).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while entries.iter().any(|e| e["status"] != "waiting") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        entries = listed(&config).await?;
    }
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["status"] == "waiting"), "{entries:?}");
    let ids = ids(&entries);
    let (ok, text) = queue_cli(&config, &["list"]).await?;
    assert!(
        ok && text.contains(&ids[0]) && text.contains("451 4.3.0 not now"),
        "{text}"
    );

    let (ok, shown) = queue_cli(&config, &["show", &ids[0]]).await?;
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&shown)?;
    assert_eq!(shown["id"], ids[0].as_str());
    assert_eq!(shown["state"]["attempts"], 1);

    // retry ID: one more attempt now (not in an hour).
    let before = dest.mail_commands();
    let (ok, _) = queue_cli(&config, &["retry", &ids[0]]).await?;
    assert!(ok);
    wait_until(WAIT, || dest.mail_commands() == before + 1).await?;

    // delete ID: gone without notice.
    let (ok, _) = queue_cli(&config, &["delete", &ids[1]]).await?;
    assert!(ok);
    wait_until(WAIT, || gw.queued() == 2).await?;
    assert!(!self::ids(&listed(&config).await?).contains(&ids[1]));
    let (ok, _) = queue_cli(&config, &["delete", &ids[1]]).await?;
    assert!(!ok, "deleting it again fails");

    // bounce ID: the sender gets a DSN.
    let (ok, _) = queue_cli(&config, &["bounce", &ids[2]]).await?;
    assert!(ok);
    wait_until(WAIT, || back.count() == 1).await?;
    let (status, _) = dsn_parts(&back.messages()[0].content)?;
    assert!(status.contains("delivery cancelled by the operator"), "{status}");

    // retry --all, once the destination works again: delivered.
    dest.behave(|b| b.mail_reply = None);
    let (ok, out) = queue_cli(&config, &["retry", "--all"]).await?;
    assert!(ok && out.contains("1 message(s)"), "{out}");
    wait_until(WAIT, || dest.count() == 1).await?;
    wait_until(WAIT, || gw.queued() == 0).await?;

    // The API itself answers JSON, 404 for what is not queued.
    let admin = gw.admin.context("admin address")?.to_string();
    let response = http_get(&admin, &format!("/queue/{}", ids[0])).await?;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains("application/json"), "{response}");
    let response = http_get(&admin, "/queue/not-an-id").await?;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    Ok(())
}

async fn http_get(address: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_work_on_a_stopped_gateways_spool() -> Result<()> {
    let dest = SinkServer::start().await?;
    dest.behave(|b| b.mail_reply = Some("451 4.3.0 not now".into()));
    let gw = Setup::new().hourly_retries().route_all_to(dest.addr()).start().await?;
    send(&gw, "user@dest.test", "offline").await?;
    wait_until(WAIT, || dest.mail_commands() >= 1).await?;
    let config = gw.config();
    let dir = gw.stop().await?;
    let config = dir.path().join(config.file_name().context("name")?);

    let entries = listed(&config).await?;
    assert_eq!(entries.len(), 1);
    let id = entries[0]["id"].as_str().context("id")?.to_owned();
    let (ok, _) = queue_cli(&config, &["delete", &id]).await?;
    assert!(ok);
    assert!(listed(&config).await?.is_empty());
    assert_eq!(mailgate_tests::count_queued(&dir.path().join("spool")), 0);
    Ok(())
}

/// Holds: a domain's mail kept back while its server is repaired, shown by
/// `queue list`, kept across a restart, not delivered by a retry, and
/// delivered once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_wait_for_release_across_a_restart() -> Result<()> {
    let down = mailgate_tests::unused_port()?;
    let gw = Setup::new().hourly_retries().route_all_to(down).start().await?;
    send(&gw, "one@held.test", "held").await?;
    send(&gw, "two@other.test", "not held").await?;
    wait_until(WAIT, || gw.queued() == 2).await?;
    let config = gw.config();
    let dir = gw.stop().await?;

    // On the stopped gateway's spool, with the CLI.
    let (ok, out) = queue_cli(&config, &["hold", "--domain", "HELD.test"]).await?;
    assert!(ok && out.contains("1 message(s) held"), "{out}");
    let (ok, out) = queue_cli(&config, &["list", "--json"]).await?;
    assert!(ok, "{out}");
    let entries: serde_json::Value = serde_json::from_str(&out)?;
    let held: Vec<&serde_json::Value> = entries
        .as_array()
        .context("not a list")?
        .iter()
        .filter(|e| e["status"] == "held")
        .collect();
    assert_eq!(held.len(), 1, "{out}");
    assert_eq!(held[0]["state"]["held"]["reason"], "held by the operator");
    assert_eq!(held[0]["envelope"]["recipients"][0]["address"], "one@held.test");

    // After a restart the hold stands: a retry delivers only the other one.
    let sink = SinkServer::start().await?;
    let setup = Setup::new().admin()?.route_all_to(sink.addr());
    let gw = Gateway::start_in(setup, dir).await?;
    let admin = gw.admin.context("no admin address")?;
    let (status, _) = mailgate_tests::http(admin, "POST", "/queue/retry").await?;
    assert_eq!(status, 200);
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["two@other.test"]);
    let (_, listed) = mailgate_tests::http(admin, "GET", "/queue").await?;
    assert!(listed.contains("\"held\""), "{listed}");

    let (status, body) = mailgate_tests::http(admin, "POST", "/queue/domain/held.test/release").await?;
    assert_eq!((status, body.contains("\"released\":1")), (200, true), "{body}");
    let (status, _) = mailgate_tests::http(admin, "POST", "/queue/retry").await?;
    assert_eq!(status, 200);
    wait_until(WAIT, || sink.count() == 2 && gw.queued() == 0).await?;
    assert_eq!(sink.messages()[1].rcpt_to, ["one@held.test"]);
    Ok(())
}

/// A plugin puts a message on hold at the data stage: the client gets its
/// 250, the message waits in the queue until an operator releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_holds_a_message_for_review() -> Result<()> {
    let sink = SinkServer::start().await?;
    let reviewer = crate::plugins::scripted(
        "reviewer",
        "\"data\"",
        "[plugin.settings.data]\nwhen = \"review\"\nverdict = \"hold\"\ntext = \"needs a human\"\n",
    );
    let gw = Setup::new()
        .admin()?
        .plugin(&reviewer)
        .route_all_to(sink.addr())
        .start()
        .await?;
    let admin = gw.admin.context("no admin address")?;
    send(&gw, "b@y.test", "please review").await?;
    send(&gw, "c@y.test", "ordinary").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let (_, listed) = mailgate_tests::http(admin, "GET", "/queue").await?;
    let entries: serde_json::Value = serde_json::from_str(&listed)?;
    let held = &entries.as_array().context("not a list")?[0];
    assert_eq!(held["status"], "held", "{listed}");
    assert_eq!(held["state"]["held"]["reason"], "needs a human (plugin reviewer)");
    let id = held["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) = mailgate_tests::http(admin, "POST", &format!("/queue/{id}/release")).await?;
    assert_eq!((status, body.contains("\"released\":1")), (200, true), "{body}");
    wait_until(WAIT, || sink.count() == 2 && gw.queued() == 0).await?;
    assert!(sink.messages()[1].text().contains("Subject: please review"));
    Ok(())
}
