//! The outbound plugin stages end to end, with the real delivery engine
//! and real downstream SMTP servers that defer, refuse and accept on cue:
//! a plugin that reroutes on `defer` gets the mail to the other server;
//! `deliver` holds and bounces; `bounce` suppresses one bounce and lets
//! another go; `delivered` hears of each delivery; a plugin that crashes
//! at an outbound stage loses nothing.

use anyhow::{Context, Result};
use mailgate_tests::plugins::OUTBOUND as SCRIPTED;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, wait_until};

use crate::{WAIT, binary, mailgate_cli};

fn plugin(name: &str, stages: &str, settings: &str) -> String {
    format!("name = \"{name}\"\npath = \"{SCRIPTED}\"\nstages = [{stages}]\ncapabilities = [\"log\"]\n{settings}")
}

async fn send(gw: &GatewayProcess, to: &str) -> Result<()> {
    let content = format!("From: sender@back.test\r\nTo: {to}\r\nSubject: out\r\n\r\nhello\r\n");
    SmtpClient::deliver(gw.addr, "sender@back.test", &[to], content.as_bytes()).await
}

async fn log_line(gw: &GatewayProcess, needle: &str) -> Result<String> {
    let find = || gw.log().into_iter().find(|l| l.contains(needle));
    wait_until(WAIT, || find().is_some())
        .await
        .with_context(|| format!("no log line with {needle:?}"))?;
    find().context("gone")
}

/// A downstream that refuses `gone` mailboxes for good (550 5.1.1) and
/// accepts the rest, the sender's side (`back.test`) where bounces go, and
/// a gateway setup relaying between them with hourly retries.
async fn bouncing(gone: &[&str]) -> Result<(SinkServer, SinkServer, Setup)> {
    let dest = SinkServer::start().await?;
    let refused: Vec<String> = gone.iter().map(|g| (*g).to_owned()).collect();
    dest.behave(move |b| {
        for mailbox in &refused {
            b.rcpt_replies.insert(mailbox.clone(), "550 5.1.1 no such user".into());
        }
    });
    let back = SinkServer::start().await?;
    let setup = Setup::new()
        .hourly_retries()
        .route_to("\"back.test\"", back.addr())
        .route_all_to(dest.addr());
    Ok((dest, back, setup))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reroutes_on_defer_and_hears_of_the_delivery_at_the_other_server() -> Result<()> {
    let busy = SinkServer::start().await?;
    busy.behave(|b| b.mail_reply = Some("451 4.7.28 rate limited, try later".into()));
    let backup = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let record = tempfile::tempdir()?;
    let config = Setup::new()
        .hourly_retries()
        .delivery(&format!("record = \"{}\"", record.path().display()))
        .route_all_to(busy.addr())
        .named_route("backup", backup.addr())
        .plugin(&plugin(
            "rerouter",
            "\"defer\", \"delivered\"",
            "[plugin.settings.defer]\nverdict = \"reroute\"\nroute = \"backup\"\n[plugin.settings.delivered]\n",
        ))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    send(&gw, "rcpt@dest.test").await?;
    wait_until(WAIT, || backup.count() == 1).await?;
    assert_eq!(busy.count(), 0, "the busy server accepted nothing");
    let defer = log_line(&gw, "defer of rcpt@dest.test after").await?;
    assert!(defer.contains("4.7.28 rate limited"), "{defer}");
    let delivered = log_line(&gw, "delivered ").await?;
    assert!(
        delivered.contains(&format!(
            "to rcpt@dest.test via smarthost:127.0.0.1:{} (attempt 1)",
            backup.addr().port()
        )),
        "{delivered}"
    );
    log_line(&gw, "rerouted after a deferral; trying again now").await?;

    // Each outbound call was recorded; `mailgate plugin test` replays them.
    let files = crate::capabilities::transcripts(record.path(), 2).await?;
    let defer = files
        .iter()
        .find(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains("\"stage\": \"defer\"")))
        .context("no transcript of the defer stage")?;
    let delivered = files
        .iter()
        .find(|f| *f != defer)
        .context("no transcript of the delivery")?;
    let recorded = std::fs::read_to_string(defer)?;
    assert!(
        recorded.contains("\"outcome\": \"reroute route backup\"") && recorded.contains("4.7.28 rate limited"),
        "{recorded}"
    );
    let settings = dir.path().join("rerouter.json");
    std::fs::write(
        &settings,
        r#"{"defer": {"verdict": "reroute", "route": "backup"}, "delivered": {}}"#,
    )?;
    let (code, stdout, stderr) =
        crate::capabilities::plugin_test(SCRIPTED, Some(&settings), defer, &["defer=reroute"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("defer rcpt@dest.test to smarthost:127.0.0.1:")
            && stdout.contains("reroute route backup")
            && stdout.contains("(recorded: reroute route backup)"),
        "{stdout}"
    );
    let (code, stdout, _) = crate::capabilities::plugin_test(SCRIPTED, Some(&settings), defer, &["defer=default"])?;
    assert_eq!(code, Some(1), "a wrong expectation fails: {stdout}");
    let (code, stdout, stderr) =
        crate::capabilities::plugin_test(SCRIPTED, Some(&settings), delivered, &["delivered=continue"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("via smarthost") || stdout.contains("delivered rcpt@dest.test to smarthost:"),
        "{stdout}"
    );
    // One delivery, heard once.
    assert_eq!(std::fs::read_dir(record.path())?.count(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_holds_and_bounces_and_bounce_suppresses_or_explains() -> Result<()> {
    let (dest, back, setup) = bouncing(&["gone@dest.test", "moved@dest.test"]).await?;
    let dir = tempfile::tempdir()?;
    let setup = setup
        .admin()?
        .plugin(&plugin(
            "holder",
            "\"deliver\"",
            "[plugin.settings.deliver]\nwhen = \"review\"\nverdict = \"hold\"\ntext = \"needs a look\"\n",
        ))
        .plugin(&plugin(
            "bouncer",
            "\"deliver\"",
            "[plugin.settings.deliver]\nwhen = \"blocked\"\nverdict = \"bounce\"\ntext = \"this address is blocked here\"\n",
        ))
        .plugin(&plugin(
            "suppressor",
            "\"bounce\"",
            "[plugin.settings.bounce]\nwhen = \"gone\"\nverdict = \"suppress\"\n",
        ))
        .plugin(&plugin(
            "explainer",
            "\"bounce\"",
            "[plugin.settings.bounce]\nwhen = \"moved\"\nverdict = \"explain\"\ntext = \"Moved to another company; write to info@elsewhere.test\"\n",
        ));
    let config = setup.write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    for to in [
        "review@dest.test",
        "blocked@dest.test",
        "gone@dest.test",
        "moved@dest.test",
    ] {
        send(&gw, to).await?;
    }
    // blocked: bounced by the plugin; moved: bounced with its explanation;
    // gone: refused, its bounce suppressed.
    wait_until(WAIT, || back.count() == 2).await?;
    let bounces: Vec<String> = back.messages().iter().map(|m| m.text()).collect();
    let blocked = bounces
        .iter()
        .find(|b| b.contains("blocked@dest.test"))
        .context("no bounce for blocked")?;
    assert!(
        blocked.contains("this address is blocked here (plugin bouncer)"),
        "{blocked}"
    );
    let moved = bounces
        .iter()
        .find(|b| b.contains("moved@dest.test"))
        .context("no bounce for moved")?;
    assert!(moved.contains("Moved to another company"), "{moved}");
    log_line(&gw, "bounce suppressed by a plugin").await?;
    assert!(!bounces.iter().any(|b| b.contains("gone@dest.test")), "{bounces:?}");
    assert_eq!(dest.count(), 0, "nothing was accepted");
    // review: held for an operator, with the plugin's reason.
    let (ok, listed) = mailgate_cli("queue", &config, &["list"]).await?;
    assert!(ok, "{listed}");
    assert!(
        listed.contains("review@dest.test") && listed.contains("needs a look (plugin holder)"),
        "{listed}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_crashes_at_an_outbound_stage_loses_nothing() -> Result<()> {
    let dest = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = Setup::new()
        .hourly_retries()
        .route_all_to(dest.addr())
        .plugin(&format!(
            "name = \"crasher\"\npath = \"{SCRIPTED}\"\nstages = [\"deliver\"]\ncapabilities = [\"log\"]\non_error = \"continue\"\n\
             [plugin.settings.deliver]\nverdict = \"trap\"\n"
        ))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    send(&gw, "rcpt@dest.test").await?;
    wait_until(WAIT, || dest.count() == 1).await?;
    let fault = log_line(&gw, "plugin fault at an outbound stage").await?;
    assert!(fault.contains("crasher") && fault.contains("deliver"), "{fault}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_the_outbound_export_cannot_take_outbound_stages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Built against mailgate:plugin@0.1.0, which has no outbound stages.
    let config = Setup::new()
        .plugin(&format!(
            "name = \"old\"\npath = \"{}\"\nstages = [\"data\", \"delivered\"]\ncapabilities = [\"log\", \"kv\"]\n",
            mailgate_tests::plugins::LEGACY
        ))
        .write(dir.path())?;
    let text = crate::mailgate_check_refuses(&config)?;
    assert!(
        text.contains("old")
            && text.contains(
                "configured for the outbound stages delivered but does not export mailgate:plugin/outbound@0.2.0"
            ),
        "{text}"
    );
    Ok(())
}

/// A plain HTTP server on loopback that answers 200 to everything and
/// keeps the bodies of the POSTs it gets.
async fn webhook_receiver() -> Result<(std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let kept = std::sync::Arc::clone(&bodies);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = std::sync::Arc::clone(&kept);
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if data.len() >= end + 4 + length {
                            let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                            kept.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(body);
                            break;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    Ok((addr, bodies))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_plugin_posts_deliveries_and_bounces_in_batches() -> Result<()> {
    let (hook, bodies) = webhook_receiver().await?;
    let (dest, back, setup) = bouncing(&["gone@dest.test"]).await?;
    let dir = tempfile::tempdir()?;
    let config = setup
        .delivery("concurrency = 1")
        .plugin(&format!(
            "name = \"webhook\"\npath = \"{}\"\nstages = [\"bounce\", \"delivered\"]\n\
             capabilities = [\"http\", \"clock\", \"log\", \"metrics\"]\nhttp_allow = [\"http://{hook}/\"]\n\
             instances = \"reused\"\n[plugin.settings]\nurl = \"http://{hook}/events\"\nbatch_size = 3\n",
            mailgate_tests::plugins::WEBHOOK
        ))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    let content = b"From: sender@back.test\r\nSubject: three\r\n\r\nhello\r\n";
    SmtpClient::deliver(
        gw.addr,
        "sender@back.test",
        &["ok1@dest.test", "ok2@dest.test", "gone@dest.test"],
        content,
    )
    .await?;
    // Two delivered (one event), one bounced, then the bounce delivered to
    // the sender: the third event sends the batch.
    let posted = || bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    wait_until(WAIT, || !posted().is_empty()).await?;
    let batch: serde_json::Value = serde_json::from_str(&posted()[0])?;
    let events = batch.as_array().context("a JSON array")?;
    assert_eq!(events.len(), 3, "{batch}");
    assert_eq!(events[0]["event"], "delivered");
    assert_eq!(
        events[0]["recipients"],
        serde_json::json!(["ok1@dest.test", "ok2@dest.test"])
    );
    assert_eq!(
        events[0]["destination"],
        format!("smarthost:127.0.0.1:{}", dest.addr().port())
    );
    assert_eq!(events[1]["event"], "bounced");
    assert_eq!(events[1]["recipients"], serde_json::json!(["gone@dest.test"]));
    assert!(
        events[1]["detail"].as_str().unwrap_or("").contains("550 5.1.1"),
        "{batch}"
    );
    assert_eq!(events[2]["event"], "delivered");
    assert_eq!(events[2]["recipients"], serde_json::json!(["sender@back.test"]));
    assert_eq!(events[2]["sender"], "");
    assert_eq!(back.count(), 1, "the bounce itself went out");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suppression_plugin_refuses_an_address_that_hard_bounced_until_an_operator_lifts_it() -> Result<()> {
    let (_dest, back, setup) = bouncing(&["gone@dest.test"]).await?;
    let dir = tempfile::tempdir()?;
    let setup = setup.admin()?.plugin(&format!(
        "name = \"suppression\"\npath = \"{}\"\nstages = [\"rcpt\", \"bounce\"]\n\
             capabilities = [\"kv\", \"log\", \"metrics\"]\n",
        mailgate_tests::plugins::SUPPRESSION
    ));
    let admin = setup.admin_address().context("no admin address")?;
    let config = setup.write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    // The first message is accepted; the next hop refuses the mailbox for
    // good, the sender gets the bounce, and the address is suppressed.
    send(&gw, "gone@dest.test").await?;
    wait_until(WAIT, || back.count() == 1).await?;
    log_line(&gw, "suppressing gone@dest.test after a hard bounce").await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<sender@back.test>", 250).await?;
    let refused = client.command("RCPT TO:<Gone@dest.test>").await?;
    assert_eq!(refused.code, 550, "{refused:?}");
    assert!(
        refused.text().starts_with("5.1.1 Gone@dest.test: suppressed"),
        "{refused:?}"
    );
    drop(client);

    // The operator sees the entry through the running gateway and lifts it.
    let (ok, listed) = mailgate_cli("kv", &config, &["list", "suppression"]).await?;
    assert!(
        ok && listed.contains("gone@dest.test  550 5.1.1 no such user"),
        "{listed}"
    );
    let (ok, deleted) = mailgate_cli("kv", &config, &["delete", "suppression", "gone@dest.test"]).await?;
    assert!(ok && deleted.contains("deleted gone@dest.test"), "{deleted}");
    let (ok, missing) = mailgate_cli("kv", &config, &["delete", "suppression", "gone@dest.test"]).await?;
    assert!(!ok && missing.contains("no key"), "{missing}");
    log_line(&gw, "key-value entry removed by the operator").await?;
    // Accepted again; refused again by the next hop, so suppressed again.
    send(&gw, "gone@dest.test").await?;
    let suppressions = || {
        gw.log()
            .iter()
            .filter(|l| l.contains("suppressing gone@dest.test"))
            .count()
    };
    wait_until(WAIT, || suppressions() == 2).await?;

    // With the gateway stopped (SIGTERM: it flushes the store), the CLI
    // reads the store itself.
    gw.signal("TERM")?;
    log_line(&gw, "stopped").await?;
    // Once the admin API is gone, an answer can only come from the store.
    wait_until(WAIT, || std::net::TcpStream::connect(admin).is_err()).await?;
    let mut listed = String::new();
    for _ in 0..100 {
        let (ok, text) = mailgate_cli("kv", &config, &["list", "suppression", "--json"]).await?;
        listed = text;
        if ok && listed.contains("gone@dest.test") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let entries: serde_json::Value = serde_json::from_str(listed.trim())?;
    assert_eq!(entries[0]["key"], "gone@dest.test", "{listed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_plugin_hears_of_quarantined_messages() -> Result<()> {
    let (hook, bodies) = webhook_receiver().await?;
    let dest = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = Setup::new()
        .route_all_to(dest.addr())
        .plugin(&format!(
            "name = \"spamcheck\"\npath = \"{}\"\nstages = [\"data\"]\n\
             [plugin.settings.data]\nwhen = \"cheap\"\nverdict = \"quarantine\"\ntext = \"looks like spam\"\n",
            mailgate_tests::plugins::SCRIPTED
        ))
        .plugin(&format!(
            "name = \"webhook\"\npath = \"{}\"\nstages = [\"quarantined\"]\n\
             capabilities = [\"http\", \"clock\", \"log\", \"metrics\"]\nhttp_allow = [\"http://{hook}/\"]\n\
             [plugin.settings]\nurl = \"http://{hook}/events\"\nbatch_size = 1\n",
            mailgate_tests::plugins::WEBHOOK
        ))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    let content = b"From: sender@back.test\r\nSubject: cheap watches\r\n\r\nbuy\r\n";
    SmtpClient::deliver(gw.addr, "sender@back.test", &["rcpt@dest.test"], content).await?;
    let posted = || bodies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    wait_until(WAIT, || !posted().is_empty()).await?;
    let batch: serde_json::Value = serde_json::from_str(&posted()[0])?;
    let event = &batch[0];
    assert_eq!(event["event"], "quarantined", "{batch}");
    assert_eq!(event["destination"], "quarantine");
    assert_eq!(event["recipients"], serde_json::json!(["rcpt@dest.test"]));
    assert_eq!(event["detail"], "looks like spam (plugin spamcheck)", "{batch}");
    assert_eq!(dest.count(), 0, "nothing delivered");
    Ok(())
}
