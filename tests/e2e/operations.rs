//! Operations end to end, on the real binary (one process per test, so
//! that its metrics are its own): Prometheus metrics scraped over HTTP,
//! health checks, JSON logs with one line per message outcome, and SIGTERM
//! during traffic. Hot reload is in `reload.rs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mailgate_tests::plugins::FAULTY;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, TestCa, count_queued, http, wait_until};

use crate::plugins::scripted;
use crate::reload::received_chains;
use crate::scrape::Scrape;
use crate::{WAIT, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_delivery_a_plugin_reject_and_a_fault() -> Result<()> {
    let sink = SinkServer::start().await?;
    let setup = Setup::new()
        .admin()?
        .route_all_to(sink.addr())
        .plugin(&scripted(
            "gate",
            "\"rcpt\"",
            "[plugin.settings.rcpt]\nwhen = \"blocked\"\nverdict = \"reject\"\ncode = 550\nenhanced = \"5.7.1\"\ntext = \"blocked\"\n",
        ))
        .plugin(&format!(
            "name = \"faulty\"\npath = \"{FAULTY}\"\nstages = [\"data\"]\non_error = \"continue\"\n[plugin.settings]\nmode = \"trap\"\nstage = \"data\"\n"
        ));
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let admin = setup.admin_address().context("no admin address")?;

    assert_eq!(http(admin, "GET", "/healthz").await?, (200, "ok\n".to_owned()));
    assert_eq!(http(admin, "GET", "/readyz").await?, (200, "ready\n".to_owned()));
    let before = Scrape::take(admin).await?;
    assert_eq!(before.value("mailgate_delivery_attempts_total", &[]), 0.0);
    assert_eq!(
        before.value("mailgate_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    let mut client = SmtpClient::greeted(gateway.addr).await?;
    let reply = client
        .send_message("a@x.test", &["ok@y.test"], b"Subject: counted\r\n\r\nhello\r\n")
        .await?;
    assert_eq!(reply.code, 250, "{}", reply.text());
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<blocked@y.test>", 550).await?;
    client.expect("RSET", 250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    // The attempt is counted once the spool is updated, just after the sink's 250.
    let after = Scrape::once(
        admin,
        "mailgate_delivery_attempts_total",
        &[("result", "delivered")],
        1.0,
    )
    .await?;

    type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let expected: &[Expected] = &[
        ("mailgate_delivery_attempts_total", &[("result", "delivered")], 1.0),
        ("mailgate_delivery_attempts_total", &[("result", "deferred")], 0.0),
        (
            "mailgate_plugin_calls_total",
            &[("plugin", "gate"), ("hook", "rcpt"), ("verdict", "continue")],
            1.0,
        ),
        (
            "mailgate_plugin_calls_total",
            &[("plugin", "gate"), ("hook", "rcpt"), ("verdict", "reject")],
            1.0,
        ),
        (
            "mailgate_plugin_calls_total",
            &[("plugin", "faulty"), ("hook", "data"), ("verdict", "fault")],
            1.0,
        ),
        (
            "mailgate_plugin_faults_total",
            &[("plugin", "faulty"), ("kind", "trap")],
            1.0,
        ),
        (
            "mailgate_plugin_call_duration_seconds_count",
            &[("plugin", "gate"), ("hook", "rcpt")],
            2.0,
        ),
        (
            "mailgate_messages_total",
            &[("stage", "data"), ("result", "queued")],
            1.0,
        ),
        (
            "mailgate_messages_total",
            &[("stage", "rcpt"), ("result", "rejected")],
            1.0,
        ),
        (
            "mailgate_smtp_commands_total",
            &[("command", "MAIL"), ("result", "2xx")],
            2.0,
        ),
        (
            "mailgate_smtp_commands_total",
            &[("command", "RCPT"), ("result", "5xx")],
            1.0,
        ),
        (
            "mailgate_smtp_commands_total",
            &[("command", "DATA"), ("result", "2xx")],
            1.0,
        ),
        (
            // DATA is counted by its final reply, not by the 354.
            "mailgate_smtp_commands_total",
            &[("command", "DATA"), ("result", "3xx")],
            0.0,
        ),
        (
            "mailgate_smtp_connections_total",
            &[("listener", "test"), ("result", "accepted")],
            1.0,
        ),
        ("mailgate_smtp_sessions_active", &[("listener", "test")], 1.0),
        ("mailgate_queue_messages", &[("state", "delivering")], 0.0),
        ("mailgate_dns_lookups_total", &[], 0.0),
        ("mailgate_config_last_reload_successful", &[], 1.0),
    ];
    for (name, labels, value) in expected {
        assert_eq!(after.value(name, labels), *value, "{name}{labels:?}");
    }
    assert!(after.value("mailgate_smtp_received_bytes_total", &[("listener", "test")]) >= 20.0);
    assert!(after.has("mailgate_delivery_duration_seconds"));

    // Every family is documented; labels never carry addresses or domains.
    for sample in &after.0.samples {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| sample.metric.strip_suffix(suffix))
            .filter(|base| after.0.docs.contains_key(*base))
            .unwrap_or(&sample.metric);
        assert!(sample.metric.starts_with("mailgate_"), "{}", sample.metric);
        assert!(after.0.docs.contains_key(family), "no HELP for {}", sample.metric);
        for value in sample.labels.values() {
            assert!(
                !value.contains("127.0.0.1") && !value.contains("y.test") && !value.contains('@'),
                "{}: unbounded label value {value}",
                sample.metric
            );
        }
    }

    drop(client);
    let status = gateway.terminate().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// SIGTERM while 20 clients send and deliveries are in flight: an idle
/// session gets 421 4.3.2, a transfer in DATA finishes and is accepted,
/// /readyz turns 503, the process exits 0, and every message that got a
/// 250 is relayed (the rest of the queue after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_traffic_loses_nothing_and_exits_0() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.data_delay = Duration::from_millis(200));
    let setup = Setup::new().admin()?.route_all_to(sink.addr());
    let admin = setup.admin_address().context("no admin")?;
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let addr = gateway.addr;

    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..20 {
        let acked = Arc::clone(&acked);
        clients.push(tokio::spawn(async move {
            let Ok(mut client) = SmtpClient::greeted(addr).await else {
                return;
            };
            for n in 0.. {
                let id = format!("c{c}-{n}");
                let content = format!("X-Test-Id: {id}\r\n\r\nbody\r\n");
                match client.send_message("a@x.test", &["b@y.test"], content.as_bytes()).await {
                    Ok(reply) if reply.code == 250 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => return,
                }
            }
        }));
    }
    let mut idle = SmtpClient::greeted(addr).await?;
    let mut transfer = SmtpClient::greeted(addr).await?;
    transfer.expect("MAIL FROM:<a@x.test>", 250).await?;
    transfer.expect("RCPT TO:<b@y.test>", 250).await?;
    transfer.expect("DATA", 354).await?;
    transfer.send(b"X-Test-Id: in-data\r\n\r\nfirst half\r\n").await?;
    wait_until(WAIT, || acked.lock().unwrap().len() >= 50).await?;

    gateway.signal("TERM")?;
    let goodbye = idle.reply().await?;
    assert_eq!(goodbye.code, 421, "{}", goodbye.text());
    assert!(goodbye.text().contains("4.3.2"), "{}", goodbye.text());
    assert_eq!(http(admin, "GET", "/readyz").await?.0, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    transfer.send(b"second half\r\n.\r\n").await?;
    let reply = transfer.reply().await?;
    assert_eq!(reply.code, 250, "{}", reply.text());
    acked.lock().unwrap().insert("in-data".into());
    let next = transfer.command("NOOP").await;
    assert!(
        next.map_or(true, |r| r.code == 421),
        "the session goes on after shutdown"
    );
    for client in clients {
        client.await?;
    }
    let status = gateway.wait().await?;
    assert_eq!(status.code(), Some(0), "{status:?}");

    let acked = acked.lock().unwrap().clone();
    let relayed = || received_chains(&sink).into_keys().collect::<HashSet<_>>();
    let missing: Vec<_> = acked.difference(&relayed()).cloned().collect();
    let spooled = count_queued(&dir.path().join("spool"));
    assert!(missing.len() <= spooled, "{} missing, {spooled} spooled", missing.len());
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    wait_until(WAIT, || acked.is_subset(&relayed())).await?;
    let status = gateway.terminate().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// JSON logs: every line is a JSON object; exactly one info line per
/// message outcome, with queue id, size, recipients, outcome and reply,
/// inside the conn and txn spans; neither bodies nor AUTH credentials
/// appear, even with mailgate's own logs at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_outcome_and_no_secrets() -> Result<()> {
    let ca = TestCa::new()?;
    let client_tls = ca.client_config()?;
    let sink = SinkServer::start().await?;
    let setup = Setup::new()
        .server("log_format = \"json\"")
        .smtp("max_message_bytes = 2000")
        .certificate(ca.issue(&["gw.test", "127.0.0.1"])?)
        .user("alice", "Pa55-word-never-logged")
        .listener("submission", "role = \"submission\"")
        .route_all_to(sink.addr());
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start_logging(&binary(), &config, "info,mailgate=trace").await?;

    let mut client = SmtpClient::greeted(gateway.addr).await?;
    let body_marker = "BODY-TEXT-NEVER-LOGGED";
    let content = format!("Subject: logged\r\n\r\n{body_marker}\r\n");
    let queued = client
        .send_message("a@x.test", &["b@y.test", "c@y.test"], content.as_bytes())
        .await?;
    assert_eq!(queued.code, 250, "{}", queued.text());
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(3000));
    let rejected = client.send_message("a@x.test", &["b@y.test"], big.as_bytes()).await?;
    assert_eq!(rejected.code, 552, "{}", rejected.text());

    let submission = gateway.listener("submission").context("no submission listener")?;
    let mut sub = SmtpClient::greeted(submission).await?;
    sub.expect("STARTTLS", 220).await?;
    let mut sub = sub.tls_handshake(client_tls, "gw.test").await?;
    sub.expect("EHLO client.test", 250).await?;
    let credentials = BASE64.encode(b"\0alice\0Pa55-word-never-logged");
    sub.expect(&format!("AUTH PLAIN {credentials}"), 235).await?;
    sub.expect("QUIT", 221).await?;
    client.expect("QUIT", 221).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let log = gateway.log_handle();
    let status = gateway.terminate().await?;
    assert!(status.success(), "{status:?}");
    wait_until(WAIT, || log.lock().unwrap().iter().any(|l| l.contains("drained"))).await?;
    let lines = log.lock().unwrap().clone();

    let mut outcomes = Vec::new();
    for line in &lines {
        for secret in [body_marker, "Pa55-word-never-logged", credentials.as_str()] {
            assert!(!line.contains(secret), "logged {secret}: {line}");
        }
        let json: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON log line: {line}"))?;
        if json["fields"].get("outcome").is_some() {
            outcomes.push(json);
        }
    }
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    let ids: HashSet<_> = outcomes.iter().map(|o| o["fields"]["queue_id"].to_string()).collect();
    assert_eq!(ids.len(), 2, "one line per message: {outcomes:#?}");
    let (queued, rejected) = (&outcomes[0], &outcomes[1]);
    assert_eq!(queued["level"], "INFO");
    assert_eq!(queued["fields"]["outcome"], "queued");
    assert_eq!(queued["fields"]["rcpts"], 2);
    assert!(queued["fields"]["size"].as_u64().unwrap_or(0) > content.len() as u64);
    assert!(
        queued["fields"]["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("250 2.0.0"),
        "{queued}"
    );
    assert_eq!(rejected["fields"]["outcome"], "rejected");
    assert_eq!(rejected["fields"]["rcpts"], 1);
    assert!(
        rejected["fields"]["reply"].as_str().unwrap_or("").starts_with("552"),
        "{rejected}"
    );
    let spans: Vec<&str> = queued["spans"]
        .as_array()
        .map(|spans| spans.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(spans, ["conn", "txn"], "{queued}");
    assert_eq!(queued["span"]["queue_id"], queued["fields"]["queue_id"]);
    Ok(())
}
