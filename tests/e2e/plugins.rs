//! The plugin chain end to end: every verdict at every stage, every
//! modification arriving downstream, settings and metadata reaching
//! plugins, faults answered by `on_error`, and instance reuse. Loading is
//! in `plugin_loading.rs`, which hooks are called in `hook_calls.rs`.
//! Plugins are compiled from source by `build.rs`.

use anyhow::Result;
use mailgate_tests::plugins::{FAULTY, SCRIPTED};
use mailgate_tests::{Gateway, Setup, SinkServer, SmtpClient, TestReply, stuff, wait_until};

use crate::WAIT;

/// A `[[plugin]]` body for the scripted test plugin.
pub fn scripted(name: &str, stages: &str, settings: &str) -> String {
    format!("name = \"{name}\"\npath = \"{SCRIPTED}\"\nstages = [{stages}]\n{settings}")
}

/// Counts the messages kept in the quarantine.
fn quarantined(gw: &Gateway) -> usize {
    std::fs::read_dir(gw.spool().join("quarantine")).map_or(0, |d| d.count())
}

/// What the client saw at the stage under test.
struct Seen {
    reply: TestReply,
    closed: bool,
}

/// Drives a session up to `stage` and returns the reply there; the
/// transaction goes on to the end when the stage succeeds.
async fn reply_at(gw: &Gateway, stage: &str) -> Result<Seen> {
    let mut client = SmtpClient::connect(gw.addr).await?;
    let greeting = client.reply().await?;
    let steps: [(&str, &[u8]); 4] = [
        ("helo", b"EHLO client.test\r\n"),
        ("mail", b"MAIL FROM:<a@x.test>\r\n"),
        ("rcpt", b"RCPT TO:<b@y.test>\r\n"),
        ("data", b"DATA\r\n"),
    ];
    let mut reply = greeting;
    if stage != "connect" {
        for (name, command) in steps {
            client.send(command).await?;
            reply = client.reply().await?;
            if name == stage {
                break;
            }
            if name == "rcpt" && stage == "data" {
                continue;
            }
        }
        if stage == "data" {
            anyhow::ensure!(reply.code == 354, "DATA: {reply:?}");
            client.send(&stuff(b"Subject: verdicts\r\n\r\nbody\r\n")).await?;
            reply = client.reply().await?;
        }
    }
    // A closed connection fails the next command at once.
    let closed = client.command("NOOP").await.is_err();
    Ok(Seen { reply, closed })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verdict_at_every_stage_gives_its_reply() -> Result<()> {
    let cases: &[(&str, &str, &str)] = &[
        // verdict, script, the reply the client sees
        (
            "reject",
            "verdict = \"reject\"\ncode = 550\nenhanced = \"5.7.1\"\ntext = \"scripted reject\"",
            "550 5.7.1 scripted reject",
        ),
        (
            "tempfail",
            "verdict = \"tempfail\"\ncode = 451\nenhanced = \"4.7.1\"\ntext = \"scripted tempfail\"",
            "451 4.7.1 scripted tempfail",
        ),
        (
            "disconnect",
            "verdict = \"disconnect\"\ncode = 421\nenhanced = \"4.7.0\"\ntext = \"scripted disconnect\"",
            "421 4.7.0 scripted disconnect",
        ),
        (
            "default enhanced code",
            "verdict = \"reject\"\ncode = 554\ntext = \"no code given\"",
            "554 5.7.1 no code given",
        ),
    ];
    let passing = [
        ("connect", "220"),
        ("helo", "250"),
        ("mail", "250 2.1.0"),
        ("rcpt", "250 2.1.5"),
        ("data", "250 2.0.0"),
    ];
    for (stage, pass) in passing {
        for (what, script, expected) in cases {
            let sink = SinkServer::start().await?;
            let gw = Setup::new()
                .route_all_to(sink.addr())
                .plugin(&scripted(
                    "scripted",
                    &format!("\"{stage}\""),
                    &format!("[plugin.settings.{stage}]\n{script}\n"),
                ))
                .start()
                .await?;
            let t = std::time::Instant::now();
            let seen = reply_at(&gw, stage).await?;
            eprintln!("TIMING {what} at {stage}: {:?}", t.elapsed());
            assert_eq!(seen.reply.first_line(), *expected, "{what} at {stage}");
            let must_close = expected.starts_with("421") || stage == "connect";
            assert_eq!(seen.closed, must_close, "{what} at {stage}: connection closed?");
            if stage == "data" {
                wait_until(WAIT, || gw.queued() == 0).await?;
                assert_eq!(sink.count(), 0, "{what} at data: nothing may be relayed");
            }
        }
        for verdict in ["continue", "accept"] {
            let sink = SinkServer::start().await?;
            let gw = Setup::new()
                .route_all_to(sink.addr())
                .plugin(&scripted(
                    "scripted",
                    &format!("\"{stage}\""),
                    &format!("[plugin.settings.{stage}]\nverdict = \"{verdict}\"\n"),
                ))
                .start()
                .await?;
            let seen = reply_at(&gw, stage).await?;
            assert!(
                seen.reply.first_line().starts_with(pass),
                "{verdict} at {stage}: {:?}",
                seen.reply
            );
            assert!(!seen.closed, "{verdict} at {stage}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_quarantine_answer_250_and_deliver_nothing() -> Result<()> {
    for verdict in ["discard", "quarantine"] {
        let sink = SinkServer::start().await?;
        let gw = Setup::new()
            .route_all_to(sink.addr())
            .plugin(&scripted(
                "scripted",
                "\"data\"",
                &format!("[plugin.settings.data]\nverdict = \"{verdict}\"\ntext = \"held for review\"\n"),
            ))
            .start()
            .await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        let reply = client
            .send_message("a@x.test", &["b@y.test"], b"Subject: held\r\n\r\nbody\r\n")
            .await?;
        assert_eq!(reply.code, 250, "{verdict}");
        assert!(reply.text().starts_with("2.0.0 Ok: queued as "), "{verdict}: {reply:?}");
        // A second, ordinary transaction on the same connection still works.
        client.expect("RSET", 250).await?;
        assert_eq!(gw.queued(), 0, "{verdict}: nothing spooled for delivery");
        assert_eq!(quarantined(&gw), usize::from(verdict == "quarantine"), "{verdict}");
        assert_eq!(sink.count(), 0);
        if verdict == "quarantine" {
            let entry = std::fs::read_dir(gw.spool().join("quarantine"))?
                .next()
                .expect("entry")?;
            let bytes = std::fs::read(entry.path())?;
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.contains("Subject: held"), "content kept");
            assert!(
                text.contains("\"quarantine\":\"held for review\""),
                "reason kept: {text}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_stops_the_chain_but_not_the_relay_policy() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .relay("trusted_networks = []")
        .relay("accepted_domains = [\"y.test\"]")
        .route_all_to(sink.addr())
        .plugin(&scripted(
            "first",
            "\"rcpt\"",
            "[plugin.settings.rcpt]\nverdict = \"accept\"\n",
        ))
        .plugin(&scripted(
            "second",
            "\"rcpt\"",
            "[plugin.settings.rcpt]\nverdict = \"reject\"\ncode = 550\ntext = \"never asked\"\n",
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    let reply = client.command("RCPT TO:<c@elsewhere.test>").await?;
    assert_eq!(reply.first_line(), "554 5.7.1 Relay access denied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_modifications_arrive_downstream() -> Result<()> {
    let sink = SinkServer::start().await?;
    let settings = r#"[plugin.settings.mail]
modifications = [{ kind = "set-reverse-path", value = "rewritten@x.test" }]
[plugin.settings.rcpt]
when = "old@"
modifications = [{ kind = "set-recipient", value = "new@y.test" }]
[plugin.settings.data]
modifications = [
  { kind = "add-recipient", value = "extra@y.test" },
  { kind = "remove-recipient", value = "drop@y.test" },
]
"#;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scripted("scripted", "\"mail\", \"rcpt\", \"data\"", settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message(
            "original@x.test",
            &["old@y.test", "keep@y.test", "drop@y.test"],
            b"Subject: env\r\n\r\nx\r\n",
        )
        .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert_eq!(message.mail_from, "rewritten@x.test");
    assert_eq!(message.rcpt_to, ["new@y.test", "keep@y.test", "extra@y.test"]);

    // The data stage can set the sender too, and remove every recipient.
    let sink = SinkServer::start().await?;
    let settings = r#"[plugin.settings.data]
modifications = [{ kind = "set-reverse-path", value = "" }, { kind = "remove-recipient", value = "only@y.test" }]
"#;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scripted("scripted", "\"data\"", settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let reply = client
        .send_message("a@x.test", &["only@y.test"], b"Subject: gone\r\n\r\nx\r\n")
        .await?;
    assert_eq!(reply.code, 250, "no recipients left: accepted and dropped");
    assert_eq!(gw.queued(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_modifications_arrive_downstream() -> Result<()> {
    let sink = SinkServer::start().await?;
    let settings = r#"[plugin.settings.data]
modifications = [
  { kind = "add-header", name = "X-Added", value = "by a plugin" },
  { kind = "remove-header", name = "X-Remove-Me" },
  { kind = "set-header", name = "Subject", value = "changed subject" },
  { kind = "remove-header-at", name = "Received", index = 1 },
  { kind = "replace-body", value = "a new body\nwith two lines\n.leading dot\n" },
]
"#;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scripted("scripted", "\"data\"", settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let content = b"Received: from internal.example by relay.example; Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: original\r\nX-Remove-Me: one\r\nx-remove-me: two\r\nFrom: a@x.test\r\n\r\nold body\r\n";
    client.send_message("a@x.test", &["b@y.test"], content).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    let text = message.text();
    assert!(
        text.starts_with("Received: from client.test"),
        "our trace header stays first: {text}"
    );
    assert!(
        !text.contains("internal.example"),
        "the second Received field was removed: {text}"
    );
    assert!(!text.to_lowercase().contains("x-remove-me"), "{text}");
    assert!(text.contains("\r\nSubject: changed subject\r\n"), "{text}");
    assert!(!text.contains("original"), "{text}");
    assert!(text.contains("\r\nX-Added: by a plugin\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\na new body\r\nwith two lines\r\n.leading dot\r\n"),
        "{text}"
    );
    assert_eq!(
        message.raw,
        stuff(&message.content),
        "the relayed body is correctly dot-stuffed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_recipients_to_different_servers() -> Result<()> {
    let (first, second, default) = (
        SinkServer::start().await?,
        SinkServer::start().await?,
        SinkServer::start().await?,
    );
    let settings = format!(
        r#"[plugin.settings.rcpt]
when = "@first.test"
modifications = [{{ kind = "route", smarthost = "{}" }}]
[plugin.settings.data]
modifications = [{{ kind = "route-recipient", recipient = "two@second.test", route = "second" }}]
"#,
        first.addr()
    );
    let gw = Setup::new()
        .named_route("second", second.addr())
        .route_all_to(default.addr())
        .plugin(&scripted("scripted", "\"rcpt\", \"data\"", &settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message(
            "a@x.test",
            &["one@first.test", "two@second.test", "three@other.test"],
            b"Subject: split\r\n\r\nx\r\n",
        )
        .await?;
    wait_until(WAIT, || {
        first.count() == 1 && second.count() == 1 && default.count() == 1
    })
    .await?;
    assert_eq!(first.messages()[0].rcpt_to, ["one@first.test"]);
    assert_eq!(second.messages()[0].rcpt_to, ["two@second.test"]);
    assert_eq!(default.messages()[0].rcpt_to, ["three@other.test"]);

    // Routing the whole message at the data stage.
    let settings = format!(
        "[plugin.settings.data]\nmodifications = [{{ kind = \"route\", smarthost = \"{}\" }}]\n",
        first.addr()
    );
    let gw = Setup::new()
        .route_all_to(default.addr())
        .plugin(&scripted("scripted", "\"data\"", &settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("a@x.test", &["p@q.test", "r@s.test"], b"Subject: all\r\n\r\nx\r\n")
        .await?;
    wait_until(WAIT, || first.count() == 2).await?;
    assert_eq!(first.messages()[1].rcpt_to, ["p@q.test", "r@s.test"]);
    assert_eq!(default.count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_metadata_and_the_message_reach_plugins() -> Result<()> {
    let sink = SinkServer::start().await?;
    let settings = r#"[plugin.settings.connect]
modifications = [{ kind = "metadata-from-context", key = "at-connect" }]
[plugin.settings.helo]
modifications = [{ kind = "set-metadata", key = "greeting", value = "seen" }]
[plugin.settings.rcpt]
modifications = [{ kind = "metadata-from-context", key = "at-rcpt" }]
[plugin.settings.data]
modifications = [
  { kind = "header-from-metadata", name = "X-At-Connect", key = "at-connect" },
  { kind = "header-from-metadata", name = "X-Greeting", key = "greeting" },
  { kind = "header-from-metadata", name = "X-At-Rcpt", key = "at-rcpt" },
  { kind = "header-from-metadata", name = "X-From-Other-Plugin", key = "other" },
  { kind = "header-from-settings", name = "X-Settings" },
  { kind = "header-from-message", name = "X-Message" },
]
"#;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scripted("other", "\"mail\"", "[plugin.settings.mail]\nmodifications = [{ kind = \"set-metadata\", key = \"other\", value = \"from the first plugin\" }]\n"))
        .plugin(&scripted("scripted", "\"connect\", \"helo\", \"rcpt\", \"data\"", settings))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let content = b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello there\r\n--b\r\nContent-Type: application/pdf; name=\"doc.pdf\"\r\nContent-Disposition: attachment; filename=\"doc.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";
    client.send_message("a@x.test", &["b@y.test"], content).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let text = sink.messages()[0].text().replace("\r\n ", " ");
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header("X-At-Connect"),
        "ip=127.0.0.1 listener=test tls=false auth=- helo= from=- rcpts=0"
    );
    assert_eq!(header("X-Greeting"), "seen");
    assert_eq!(
        header("X-At-Rcpt"),
        "ip=127.0.0.1 listener=test tls=false auth=- helo=client.test from=a@x.test rcpts=0"
    );
    assert_eq!(header("X-From-Other-Plugin"), "from the first plugin");
    assert!(
        header("X-Settings").contains("\"header-from-settings\""),
        "{}",
        header("X-Settings")
    );
    let message = header("X-Message");
    assert!(message.starts_with("subject=café headers="), "{message}");
    assert!(
        message.contains("parts=text/plain::11,application/pdf:doc.pdf:5"),
        "{message}"
    );
    assert!(message.contains("texts=hello there"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_follow_on_error_and_the_gateway_keeps_serving() -> Result<()> {
    let modes = ["trap", "spin", "grab-memory", "illegal-verdict", "illegal-modification"];
    let policies = [
        ("tempfail", "451 4.3.0 Error: local error in processing"),
        ("continue", "250 2.1.5 Ok"),
        ("reject", "554 5.7.0 Refused by local policy"),
    ];
    for mode in modes {
        for (policy, expected) in policies {
            let gw = Setup::new()
                .plugin(&format!(
                    "name = \"faulty\"\npath = \"{FAULTY}\"\nstages = [\"rcpt\"]\non_error = \"{policy}\"\ntime_budget = \"200ms\"\nmemory_limit_bytes = 16777216\n[plugin.settings]\nmode = \"{mode}\"\nstage = \"rcpt\"\n"
                ))
                .start()
                .await?;
            let mut client = SmtpClient::greeted(gw.addr).await?;
            client.expect("MAIL FROM:<a@x.test>", 250).await?;
            let started = std::time::Instant::now();
            let reply = client.command("RCPT TO:<b@y.test>").await?;
            assert_eq!(reply.first_line(), expected, "{mode} with on_error = {policy}");
            if mode == "spin" {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(5),
                    "the time budget stopped the loop"
                );
            }
            // The same connection and a new one are served normally.
            client.expect("NOOP", 250).await?;
            let mut next = SmtpClient::greeted(gw.addr).await?;
            next.expect("MAIL FROM:<c@x.test>", 250).await?;
            next.expect("QUIT", 221).await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_share_nothing_and_reused_ones_are_discarded_after_a_trap() -> Result<()> {
    for mode in ["fresh", "reused"] {
        let sink = SinkServer::start().await?;
        let settings = r#"[plugin.settings.data]
modifications = [{ kind = "counter", name = "X-Seen" }]
[plugin.settings.rcpt]
when = "boom@"
modifications = [{ kind = "trap" }]
"#;
        let gw = Setup::new()
            .route_all_to(sink.addr())
            .plugin(&format!(
                "name = \"counter\"\npath = \"{SCRIPTED}\"\nstages = [\"rcpt\", \"data\"]\ninstances = \"{mode}\"\n{settings}"
            ))
            .start()
            .await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        for n in 1..=3 {
            let content = format!("Subject: message {n}\r\n\r\nx\r\n");
            client
                .send_message("a@x.test", &["b@y.test"], content.as_bytes())
                .await?;
        }
        // A trap on RCPT: the instance is discarded.
        client.expect("MAIL FROM:<a@x.test>", 250).await?;
        assert_eq!(client.command("RCPT TO:<boom@y.test>").await?.code, 451);
        client.expect("RSET", 250).await?;
        client
            .send_message("a@x.test", &["b@y.test"], b"Subject: message 4\r\n\r\nx\r\n")
            .await?;
        wait_until(WAIT, || sink.count() == 4).await?;
        // Deliveries may arrive in any order: key them by subject.
        let mut seen: Vec<(String, String)> = sink
            .messages()
            .iter()
            .map(|m| {
                let text = m.text();
                let header = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name).map(str::to_owned))
                        .unwrap_or_default()
                };
                (header("Subject: "), header("X-Seen: "))
            })
            .collect();
        seen.sort();
        let counts: Vec<&str> = seen.iter().map(|(_, count)| count.as_str()).collect();
        match mode {
            "fresh" => assert_eq!(counts, ["1", "1", "1", "1"], "fresh instances start from nothing"),
            _ => assert_eq!(
                counts,
                ["1", "2", "3", "1"],
                "reused instances count on; after the trap a new one starts"
            ),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_reaches_later_plugins_within_the_same_stage() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scripted(
            "first",
            "\"data\"",
            "[plugin.settings.data]\nmodifications = [{ kind = \"set-metadata\", key = \"verdict\", value = \"clean\" }]\n",
        ))
        .plugin(&scripted(
            "second",
            "\"data\"",
            "[plugin.settings.data]\nmodifications = [{ kind = \"header-from-metadata\", name = \"X-Seen\", key = \"verdict\" }]\n",
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("a@x.test", &["b@y.test"], b"Subject: m\r\n\r\nx\r\n")
        .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert!(
        sink.messages()[0].text().contains("\r\nX-Seen: clean\r\n"),
        "{}",
        sink.messages()[0].text()
    );
    Ok(())
}
