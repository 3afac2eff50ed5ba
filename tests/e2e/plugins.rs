//! The plugin chain end to end: every verdict at every stage, every
//! modification arriving downstream, settings and metadata reaching
//! plugins, faults answered by `on_error`, instance reuse, and start-up
//! errors. Plugins are compiled from source by `build.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use mailgate_tests::plugins::{FAULTY, PROBE, SCRIPTED};
use mailgate_tests::{Gateway, GatewayProcess, Setup, SinkServer, SmtpClient, TestReply, stuff, wait_until};

use crate::operations::Scrape;
use crate::{WAIT, binary};

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
async fn start_up_fails_with_a_clear_message_for_broken_plugins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let corrupt = dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 definitely not a component")?;
    let cases = [
        (
            corrupt.display().to_string(),
            "",
            "is not a valid WebAssembly component",
        ),
        (dir.path().join("missing.wasm").display().to_string(), "", "cannot read"),
        (
            mailgate_tests::plugins::WRONG_WORLD.to_owned(),
            "",
            "does not match the mailgate:plugin@0.2.0 world (nor @0.1.0)",
        ),
        (
            FAULTY.to_owned(),
            "mode = \"refuse-settings\"",
            "init refused the settings: these settings are refused on purpose",
        ),
        (
            SCRIPTED.to_owned(),
            "rcpt = { verdict = 42 }",
            "init refused the settings: invalid settings",
        ),
    ];
    for (path, settings, expected) in cases {
        let setup = Setup::new().plugin(&format!(
            "name = \"broken\"\npath = \"{path}\"\nstages = [\"rcpt\"]\n[plugin.settings]\n{settings}\n"
        ));
        let error = match setup.start().await {
            Ok(_) => anyhow::bail!("{path} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{path}: {error}");
        // Refused settings are located at the settings table, the rest at the path.
        let key = if expected.starts_with("init") {
            "`plugin[0].settings"
        } else {
            "`plugin[0].path`"
        };
        assert!(error.contains(key), "names the key {key}: {error}");
        assert!(error.contains("plugin `broken`"), "names the plugin: {error}");
        if !expected.starts_with("init") {
            assert!(error.contains(&path), "names the file: {error}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_compiles_plugins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mailgate.toml");
    let write = |path: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nspool_dir = \"{}\"\n[[listener]]\nname = \"x\"\naddress = \"127.0.0.1:0\"\n[plugins]\ncache_dir = \"{}\"\n[[plugin]]\nname = \"p\"\npath = \"{path}\"\nstages = [\"data\"]\n",
                dir.path().join("spool").display(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/plugin-cache")
                    .display()
            ),
        )
    };
    write(mailgate_tests::plugins::WRONG_WORLD)?;
    let output = crate::mailgate_check(&config, None)?;
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not match the mailgate:plugin@0.2.0 world (nor @0.1.0)")
    );
    write(SCRIPTED)?;
    let output = crate::mailgate_check(&config, None)?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 plugin(s)"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_plugins_load_only_with_their_digest() -> Result<()> {
    let output = std::process::Command::new(crate::binary())
        .args(["plugin", "hash", SCRIPTED])
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout)?;
    let digest = line
        .trim()
        .strip_prefix("sha256 = \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| anyhow::anyhow!("not a sha256 line: {line}"))?
        .to_owned();
    assert_eq!(digest.len(), 64, "{line}");
    let pinned = |digest: &str| scripted("pinned", "\"rcpt\"", &format!("sha256 = \"{digest}\""));

    // The right digest loads; a wrong one stops start-up naming both.
    let sink = SinkServer::start().await?;
    let wrong = "0".repeat(64);
    let error = match Setup::new().plugin(&pinned(&wrong)).start().await {
        Ok(_) => anyhow::bail!("a plugin with the wrong digest loaded"),
        Err(e) => e.to_string(),
    };
    for part in ["plugin `pinned`", SCRIPTED, &digest, &wrong, "`plugin[0].path`"] {
        assert!(error.contains(part), "{part}: {error}");
    }
    let setup = Setup::new().admin()?.plugin(&pinned(&digest)).route_all_to(sink.addr());
    let gw = setup.start().await?;

    // A reload with a wrong digest fails and the running chain keeps serving.
    let admin = gw.admin.ok_or_else(|| anyhow::anyhow!("no admin address"))?;
    let rewritten = std::fs::read_to_string(gw.config())?.replace(&digest, &wrong);
    std::fs::write(gw.config(), rewritten)?;
    let (status, body) = mailgate_tests::http(admin, "POST", "/reload").await?;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(&wrong) && body.contains(&digest), "{body}");
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: pinned\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_runs_its_own_chain() -> Result<()> {
    let sink = SinkServer::start().await?;
    let stamp = |name: &str, value: &str, listeners: &str| {
        scripted(
            name,
            "\"data\"",
            &format!(
                "{listeners}\n[plugin.settings.data]\nmodifications = [{{ kind = \"add-header\", name = \"X-Chain\", value = \"{value}\" }}]\n"
            ),
        )
    };
    let setup = Setup::new()
        .listener("submission", "")
        .plugin(&stamp("everywhere", "all", ""))
        .plugin(&stamp("mx-only", "mx", "listeners = [\"test\"]"))
        .plugin(&stamp("submission-only", "submission", "listeners = [\"submission\"]"))
        .route_all_to(sink.addr());
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let output = crate::mailgate_check(&config, None)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("listener test (127.0.0.1:0): everywhere [data] -> mx-only [data]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listener submission (127.0.0.1:0): everywhere [data] -> submission-only [data]"),
        "{stdout}"
    );

    let gw = setup.start().await?;
    for (listener, id) in [("test", "via-mx"), ("submission", "via-submission")] {
        let content = format!("Subject: {id}\r\n\r\nhi\r\n");
        SmtpClient::deliver(gw.listener(listener), "a@x.test", &["b@y.test"], content.as_bytes()).await?;
    }
    wait_until(WAIT, || sink.count() == 2).await?;
    for message in sink.messages() {
        let text = message.text();
        let chain = mailgate_tests::header_values(&text, "X-Chain");
        if text.contains("Subject: via-mx") {
            assert_eq!(chain, ["all", "mx"]);
        } else {
            assert_eq!(chain, ["all", "submission"]);
        }
    }

    // A listener that does not exist is a configuration error at its key.
    let error = match Setup::new()
        .plugin(&stamp("typo", "x", "listeners = [\"mxx\"]"))
        .start()
        .await
    {
        Ok(_) => anyhow::bail!("an unknown listener was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("`plugin[0].listeners[0]`: no [[listener]] is named \"mxx\""),
        "{error}"
    );
    Ok(())
}

/// A hook the plugin leaves to the SDK's default says so on its first call
/// (`mailgate:plugin/defaults`) and is not called again; hooks the plugin
/// implements are called every time, even when they answer `continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_left_to_the_sdk_default_are_called_once() -> Result<()> {
    let sink = SinkServer::start().await?;
    let all = "\"connect\", \"helo\", \"mail\", \"rcpt\", \"data\"";
    let setup = Setup::new()
        .admin()?
        .route_all_to(sink.addr())
        // Implements only on_data, where it uses these capabilities.
        .plugin(&format!(
            "name = \"probe\"\npath = \"{PROBE}\"\nstages = [{all}]\ncapabilities = [\"dns\", \"kv\", \"metrics\", \"http\"]\nhttp_allow = [\"http://127.0.0.1:9/\"]\n"
        ))
        // Implements every hook; with no settings each answers `continue`.
        .plugin(&scripted("every", all, ""));
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let admin = setup.admin_address().context("no admin address")?;
    for messages in [1, 2] {
        let mut client = SmtpClient::greeted(gateway.addr).await?;
        for n in 0..messages {
            let content = format!("Subject: message {n}\r\n\r\nx\r\n");
            let reply = client
                .send_message("a@x.test", &["b@y.test"], content.as_bytes())
                .await?;
            assert_eq!(reply.code, 250, "{}", reply.text());
        }
        client.expect("QUIT", 221).await?;
    }
    wait_until(WAIT, || sink.count() == 3).await?;

    let scrape = Scrape::take(admin).await?;
    let calls = |plugin: &str, hook: &str| {
        scrape.value(
            "mailgate_plugin_calls_total",
            &[("plugin", plugin), ("hook", hook), ("verdict", "continue")],
        )
    };
    // 2 connections, 2 greetings, 3 transactions.
    let expected = [
        ("connect", 2.0),
        ("helo", 2.0),
        ("mail", 3.0),
        ("rcpt", 3.0),
        ("data", 3.0),
    ];
    for (hook, count) in expected {
        assert_eq!(
            calls("every", hook),
            count,
            "the implemented {hook} hook is called every time"
        );
        let probe = if hook == "data" { count } else { 1.0 };
        assert_eq!(calls("probe", hook), probe, "probe's {hook} hook");
    }
    let said: Vec<String> = gateway
        .log()
        .into_iter()
        .filter(|line| line.contains("plugin does not implement this hook"))
        .collect();
    assert_eq!(said.len(), 4, "one line per default hook: {said:#?}");
    for hook in ["connect", "helo", "mail", "rcpt"] {
        assert!(
            said.iter()
                .any(|l| l.contains("plugin=\"probe\"") && l.contains(&format!("stage=\"{hook}\""))),
            "{hook}: {said:#?}"
        );
    }
    Ok(())
}
