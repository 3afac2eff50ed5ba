//! Milters as chain entries, end to end: a scripted milter written in the
//! tests (every verdict and modification, the macros, failures), Debian's
//! OpenDKIM signing mail that then verifies downstream, Debian's rspamd
//! refusing GTUBE, and shadow mode.

use anyhow::{Context, Result};
use mailgate_tests::plugins::DKIM;
use mailgate_tests::{
    DnsServer, Gateway, OpenDkim, Rspamd, Script, Setup, SinkServer, SmtpClient, TestMilter, header_values, wait_until,
};

use crate::scrape::Scrape;
use crate::{WAIT, binary};

/// A gateway relaying everything to a new sink, with `entries` as its chain.
async fn gateway(entries: &[String]) -> Result<(SinkServer, Gateway)> {
    let sink = SinkServer::start().await?;
    let mut setup = Setup::new().route_all_to(sink.addr());
    for entry in entries {
        setup = setup.plugin(entry);
    }
    Ok((sink, setup.start().await?))
}

fn milter(name: &str, address: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nkind = \"milter\"\naddress = \"{address}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_sees_every_stage_and_its_answers_apply() -> Result<()> {
    let test_milter = TestMilter::start(Script::Markers).await?;
    let (sink, gw) = gateway(&[milter("test-milter", &test_milter.address(), "")]).await?;
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    client.expect("EHLO client.test", 250).await?;
    client
        .expect("MAIL FROM:<alice@example.com> SIZE=100 RET=HDRS ENVID=m+2B1", 250)
        .await?;
    client
        .expect("RCPT TO:<bob@dest.test> NOTIFY=FAILURE,DELAY", 250)
        .await?;
    client.expect("RCPT TO:<removed@dest.test>", 250).await?;
    let blocked = client.command("RCPT TO:<blocked@dest.test>").await?;
    assert_eq!((blocked.code, blocked.text()), (550, "5.7.1 Command rejected"));
    client.expect("DATA", 354).await?;
    client
        .send(b"Subject: hello\r\nX-Remove: one\r\nX-Remove: two\r\n\r\nHello.\r\n.\r\n")
        .await?;
    client.expect_reply(250).await?;

    wait_until(WAIT, || sink.count() == 1 && gw.queued() == 0).await?;
    let received = &sink.messages()[0];
    assert_eq!(received.mail_from, "bounce@example.com");
    let mut rcpts = received.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["added@dest.test", "bob@dest.test"]);
    let text = received.text();
    assert!(text.starts_with("X-First: top\r\n"), "{text}");
    assert_eq!(header_values(&text, "Subject"), ["[milter] hello"]);
    assert_eq!(header_values(&text, "X-Remove"), ["two"]);
    assert_eq!(header_values(&text, "X-Test-Milter"), ["seen"]);
    assert!(text.ends_with("\r\n\r\nHello.\r\n-- scanned\r\n"), "{text}");

    // What the milter was sent: the stages in order, Postfix's macros.
    let seen = test_milter.seen();
    let commands: String = seen.iter().map(|s| s.command).collect();
    assert!(commands.starts_with("CHMRRRTLLLLNBE"), "{commands}");
    let connect = &seen[0];
    assert_eq!(connect.macros.get("j").map(String::as_str), Some("gw.test"));
    assert_eq!(connect.macros.get("{daemon_name}").map(String::as_str), Some("test"));
    assert_eq!(connect.args.first().map(String::as_str), Some("[127.0.0.1]"));
    assert_eq!(seen[1].args, ["client.test"]);
    // MAIL and RCPT come with their ESMTP arguments, as Postfix sends them.
    assert_eq!(
        seen[2].args,
        ["<alice@example.com>", "SIZE=100", "RET=HDRS", "ENVID=m+2B1"]
    );
    assert_eq!(seen[3].args, ["<bob@dest.test>", "NOTIFY=FAILURE,DELAY"]);
    let queue_id = seen[2].macros.get("i").cloned().unwrap_or_default();
    assert!(!queue_id.is_empty(), "{:?}", seen[2]);
    assert_eq!(
        seen[2].macros.get("{mail_addr}").map(String::as_str),
        Some("alice@example.com")
    );
    assert_eq!(
        seen[3].macros.get("{rcpt_addr}").map(String::as_str),
        Some("bob@dest.test")
    );
    let headers: Vec<&Vec<String>> = seen.iter().filter(|s| s.command == 'L').map(|s| &s.args).collect();
    assert_eq!(headers[1], &vec!["Subject".to_owned(), "hello".to_owned()]);
    assert!(
        headers[0][0] == "Received",
        "the gateway's trace field comes first: {headers:?}"
    );

    // Verdicts at the end of the message.
    for (marker, code, text) in [
        ("REJECTME", 550, Some("5.7.1 Milter says no")),
        ("TEMPFAILME", 451, Some("4.7.1 Service unavailable - try again later")),
        ("DISCARDME", 250, None),
        ("QUARANTINEME", 250, None),
    ] {
        let reply = client
            .send_message(
                "a@example.com",
                &["b@dest.test"],
                format!("Subject: x\r\n\r\n{marker}\r\n").as_bytes(),
            )
            .await?;
        assert_eq!(reply.code, code, "{marker}");
        if let Some(text) = text {
            assert_eq!(reply.text(), text, "{marker}");
        }
    }
    let held = std::fs::read_dir(gw.spool().join("quarantine"))?.count();
    assert_eq!(held, 1, "the quarantined message is held");
    assert_eq!(sink.count(), 1, "nothing else was delivered");
    // A transaction ended before its end of message (RSET) is aborted on
    // the milter's side before the next one starts.
    client.expect("MAIL FROM:<a@example.com>", 250).await?;
    client.expect("RCPT TO:<b@dest.test>", 250).await?;
    client.expect("RSET", 250).await?;
    client.expect("MAIL FROM:<c@example.com>", 250).await?;
    let commands: String = test_milter.seen().iter().map(|s| s.command).collect();
    assert!(commands.ends_with("EMRAM"), "{commands}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_milter_is_a_fault_answered_by_on_error() -> Result<()> {
    let closed = mailgate_tests::unused_port()?;
    let sink = SinkServer::start().await?;
    let address = format!("inet:{closed}");
    let passing = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&milter("down", &address, "on_error = \"continue\""))
        .start()
        .await?;
    SmtpClient::deliver(
        passing.addr,
        "a@example.com",
        &["b@dest.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    )
    .await?;
    wait_until(WAIT, || sink.count() == 1).await?;

    let failing = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&milter("down", &address, ""))
        .start()
        .await?;
    let mut client = mailgate_tests::SmtpClient::connect(failing.addr).await?;
    let greeting = client.reply().await?;
    assert_eq!(
        (greeting.code, greeting.text()),
        (451, "4.3.0 Error: local error in processing"),
        "on_error = \"tempfail\" (the default) at connect"
    );
    Ok(())
}

/// A milter on a Unix socket, and one that stops answering: its
/// `timeout` makes that a fault, answered by `on_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_and_timeouts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stamp = TestMilter::start_unix(Script::Stamp, &dir.path().join("milter.sock")).await?;
    let silent = TestMilter::start(Script::Silent).await?;
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&milter("stamp", &stamp.address(), ""))
        .plugin(&milter(
            "silent",
            &silent.address(),
            "timeout = \"500ms\"\non_error = \"reject\"",
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let reply = client
        .send_message("a@example.com", &["b@dest.test"], b"Subject: x\r\n\r\nhi\r\n")
        .await?;
    assert_eq!(
        (reply.code, reply.text()),
        (554, "5.7.0 Refused by local policy"),
        "the silent milter timed out"
    );
    assert!(
        stamp.seen().iter().any(|s| s.command == 'E'),
        "the Unix-socket milter was asked"
    );
    assert_eq!(sink.count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_signs_through_mailgate_and_the_signature_verifies_downstream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("od.pem");
    let output = std::process::Command::new(binary())
        .args(["dkim", "keygen", "--domain", "example.com", "--selector", "od", "--out"])
        .arg(&key)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let record: String = stdout
        .lines()
        .find(|l| l.starts_with("od._domainkey.example.com."))
        .unwrap_or_default()
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    let opendkim = OpenDkim::start(dir.path(), "example.com", "od", &key).await?;

    let signed_sink = SinkServer::start().await?;
    let signer = Setup::new()
        .route_all_to(signed_sink.addr())
        .plugin(&milter("opendkim", &opendkim.address(), ""))
        .start()
        .await?;
    let message = b"From: Alice <alice@example.com>\r\nTo: bob@dest.test\r\nSubject: signed by opendkim\r\n\
        Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <od1@example.com>\r\n\r\nHello.\r\n";
    SmtpClient::deliver(signer.addr, "alice@example.com", &["bob@dest.test"], message).await?;
    wait_until(WAIT, || signed_sink.count() == 1).await?;
    let signed = signed_sink.messages()[0].content.clone();
    let text = String::from_utf8_lossy(&signed).into_owned();
    let signatures = header_values(&text, "DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{text}");
    assert!(
        signatures[0].contains("d=example.com") && signatures[0].contains("s=od"),
        "{text}"
    );

    // Downstream: another gateway verifies with the published key.
    let dns = DnsServer::start().await?;
    dns.txt("od._domainkey.example.com", &record);
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let verified_sink = SinkServer::start().await?;
    let verifier = Setup::new()
        .dns(dns.addr())
        .route_all_to(verified_sink.addr())
        .tables("[dkim]\nauthserv_id = \"mx.test\"\n")
        .plugin(&format!(
            "name = \"dkim\"\npath = \"{DKIM}\"\nstages = [\"data\"]\ncapabilities = [\"dkim\", \"log\", \"metrics\"]\n"
        ))
        .start()
        .await?;
    SmtpClient::deliver(verifier.addr, "alice@example.com", &["bob@dest.test"], &signed).await?;
    wait_until(WAIT, || verified_sink.count() == 1).await?;
    let results = header_values(&verified_sink.messages()[0].text(), "Authentication-Results");
    assert!(
        results[0].contains("dkim=pass header.d=example.com header.s=od"),
        "{results:?}"
    );
    assert!(results[0].contains("dmarc=pass"), "{results:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rspamd_refuses_gtube_and_passes_clean_mail() -> Result<()> {
    let rspamd = Rspamd::start().await?;
    let (sink, gw) = gateway(&[milter("rspamd", &rspamd.address(), "")]).await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let gtube = b"From: a@example.com\r\nTo: b@dest.test\r\nSubject: test\r\nMessage-ID: <g@example.com>\r\n\r\n\
        XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let reply = client.send_message("a@example.com", &["b@dest.test"], gtube).await?;
    assert_eq!(
        (reply.code, reply.text()),
        (554, "5.7.1 Gtube pattern"),
        "rspamd's reject action, answered through the milter"
    );
    let clean = b"From: a@example.com\r\nTo: b@dest.test\r\nSubject: minutes\r\nMessage-ID: <c@example.com>\r\n\
        Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nThe minutes of today's meeting are attached.\r\n";
    let reply = client.send_message("a@example.com", &["b@dest.test"], clean).await?;
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_entries_are_compared_and_never_applied() -> Result<()> {
    let live = TestMilter::start(Script::Stamp).await?;
    let same = TestMilter::start(Script::Stamp).await?;
    let canary = TestMilter::start(Script::RejectAll).await?;
    let sink = SinkServer::start().await?;
    let setup = Setup::new().admin()?;
    let admin = setup.admin_address().context("no admin address")?;
    let gw = setup
        .route_all_to(sink.addr())
        .plugin(&milter("live-stamp", &live.address(), ""))
        .plugin(&milter("shadow-same", &same.address(), "mode = \"shadow\""))
        .plugin(&milter("shadow-canary", &canary.address(), "mode = \"shadow\""))
        .start()
        .await?;
    for n in 0..3 {
        let content = format!("Subject: {n}\r\n\r\nhello\r\n");
        SmtpClient::deliver(gw.addr, "a@example.com", &["b@dest.test"], content.as_bytes()).await?;
    }
    wait_until(WAIT, || sink.count() == 3).await?;
    for message in sink.messages() {
        assert_eq!(
            header_values(&message.text(), "X-Test-Milter"),
            ["seen"],
            "only the live entry's header"
        );
    }
    assert!(
        canary.seen().iter().filter(|s| s.command == 'E').count() == 3,
        "the shadow saw every message"
    );
    let scrape = Scrape::take(admin).await?;
    let count = |plugin: &str, stage: &str, agreed: &str| {
        scrape.value(
            "mailgate_plugin_shadow_decisions_total",
            &[("plugin", plugin), ("stage", stage), ("agreed", agreed)],
        )
    };
    assert_eq!(count("shadow-same", "data", "true"), 3.0);
    assert_eq!(count("shadow-same", "data", "false"), 0.0);
    assert_eq!(count("shadow-canary", "rcpt", "true"), 3.0);
    assert_eq!(count("shadow-canary", "data", "false"), 3.0);
    Ok(())
}
