//! The ESMTP extensions DSN (RFC 3461), CHUNKING (RFC 3030) and
//! REQUIRETLS (RFC 8689) over real sockets: parameters taken in, kept in
//! the spool, passed to next hops that offer them, and the reports
//! mailgate writes; interoperability with Python's smtplib and Postfix.

use anyhow::{Context, Result, ensure};
use mailgate_tests::{Postfix, Received, Setup, SinkServer, SmtpClient, TestCa, dsn_parts, wait_until};

use crate::WAIT;

const MESSAGE: &[u8] =
    b"From: a@x.test\r\nSubject: extensions\r\nMessage-ID: <ext@x.test>\r\n\r\n.leading dot\r\nconfidential body\r\n";

/// Sends one transaction with raw MAIL and RCPT lines; returns the final reply's code.
async fn transact(client: &mut SmtpClient, mail: &str, rcpts: &[&str]) -> Result<u16> {
    client.expect(mail, 250).await?;
    for rcpt in rcpts {
        client.expect(rcpt, 250).await?;
    }
    client.expect("DATA", 354).await?;
    client.send(&mailgate_tests::stuff(MESSAGE)).await?;
    Ok(client.reply().await?.code)
}

/// The reports (MAIL FROM:<>) the sink received.
fn reports(sink: &SinkServer) -> Vec<Received> {
    sink.messages().into_iter().filter(|m| m.mail_from.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_go_to_a_next_hop_that_offers_dsn() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.dsn = true);
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let ehlo = client.command("EHLO client.test").await?;
    ensure!(ehlo.lines.iter().any(|l| l == "DSN"), "{ehlo:?}");
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2B314",
        &[
            "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@y.test",
            "RCPT TO:<c@y.test>",
            "RCPT TO:<d@y.test> NOTIFY=NEVER",
        ],
    )
    .await?;
    assert_eq!(code, 250);
    wait_until(WAIT, || sink.count() == 1 && gw.queued() == 0).await?;
    let message = &sink.messages()[0];
    assert!(
        message.mail_params.ends_with(" RET=HDRS ENVID=QQ+2B314"),
        "{}",
        message.mail_params
    );
    assert_eq!(
        message.rcpt_params,
        ["NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@y.test", "", "NOTIFY=NEVER"]
    );
    // The next hop reports success itself: mailgate sends nothing.
    assert!(reports(&sink).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_survive_a_restart() -> Result<()> {
    // Queued while the next hop is down, delivered after a restart.
    let down = mailgate_tests::unused_port()?;
    let gw = Setup::new().hourly_retries().route_all_to(down).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> RET=FULL ENVID=kept",
        &["RCPT TO:<b@y.test> NOTIFY=DELAY ORCPT=rfc822;b@y.test"],
    )
    .await?;
    assert_eq!(code, 250);
    wait_until(WAIT, || gw.queued() == 1).await?;
    let dir = gw.stop().await?;

    let sink = SinkServer::start().await?;
    sink.behave(|b| b.dsn = true);
    let setup = Setup::new().admin()?.route_all_to(sink.addr());
    let gw = mailgate_tests::Gateway::start_in(setup, dir).await?;
    // The failed attempt set the next one an hour away: retry now.
    let admin = gw.admin.context("no admin address")?;
    let (status, _) = mailgate_tests::http(admin, "POST", "/queue/retry").await?;
    ensure!(status == 200, "retry answered {status}");
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert!(
        message.mail_params.ends_with(" RET=FULL ENVID=kept"),
        "{}",
        message.mail_params
    );
    assert_eq!(message.rcpt_params, ["NOTIFY=DELAY ORCPT=rfc822;b@y.test"]);
    wait_until(WAIT, || gw.queued() == 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_reports_say_relayed_or_delivered() -> Result<()> {
    let sink = SinkServer::start().await?;
    let maildir = tempfile::tempdir()?;
    let gw = Setup::new()
        .route_to_maildir("\"local.test\"", maildir.path())
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> ENVID=env-1",
        &[
            "RCPT TO:<b@y.test> NOTIFY=SUCCESS ORCPT=rfc822;Bee@y.test",
            "RCPT TO:<m@local.test> NOTIFY=SUCCESS,FAILURE",
            "RCPT TO:<quiet@y.test>",
        ],
    )
    .await?;
    assert_eq!(code, 250);
    wait_until(WAIT, || reports(&sink).len() == 1 && gw.queued() == 0).await?;
    let report = &reports(&sink)[0];
    assert_eq!(report.rcpt_to, ["a@x.test"]);
    let (status, headers) = dsn_parts(&report.content)?;
    assert!(status.contains("Original-Envelope-Id: env-1\r\n"), "{status}");
    assert!(
        status.contains("Original-Recipient: rfc822;Bee@y.test\r\nFinal-Recipient: rfc822; b@y.test\r\nAction: relayed\r\nStatus: 2.0.0\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; m@local.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n"),
        "{status}"
    );
    assert!(!status.contains("quiet@y.test"), "{status}");
    assert!(headers.contains("Subject: extensions"), "{headers}");
    assert!(!String::from_utf8_lossy(&report.content).contains("confidential body"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reports_follow_notify_and_ret() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        for bad in ["never@y.test", "full@y.test", "hdrs@y.test"] {
            b.rcpt_replies.insert(bad.into(), "550 5.1.1 no such user".into());
        }
    });
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> RET=FULL ENVID=full-1",
        &[
            "RCPT TO:<never@y.test> NOTIFY=NEVER",
            "RCPT TO:<full@y.test> ORCPT=rfc822;Full@y.test",
        ],
    )
    .await?;
    assert_eq!(code, 250);
    let code = transact(&mut client, "MAIL FROM:<h@x.test> RET=HDRS", &["RCPT TO:<hdrs@y.test>"]).await?;
    assert_eq!(code, 250);
    wait_until(WAIT, || reports(&sink).len() == 2 && gw.queued() == 0).await?;
    let all = reports(&sink);
    let full = all
        .iter()
        .find(|r| r.rcpt_to == ["a@x.test"])
        .context("no report to a@")?;
    let (status, _) = dsn_parts(&full.content)?;
    assert!(status.contains("Original-Envelope-Id: full-1\r\n"), "{status}");
    assert!(
        status.contains("Original-Recipient: rfc822;Full@y.test\r\nFinal-Recipient: rfc822; full@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
        "{status}"
    );
    assert!(!status.contains("never@y.test"), "NOTIFY=NEVER: {status}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&full.content)
        .context("the report does not parse")?;
    let returned = parsed
        .attachments()
        .find_map(|a| a.message())
        .context("RET=FULL: no message/rfc822 part")?;
    assert!(returned.body_text(0).is_some_and(|b| b.contains("confidential body")));

    let hdrs = all
        .iter()
        .find(|r| r.rcpt_to == ["h@x.test"])
        .context("no report to h@")?;
    let (_, headers) = dsn_parts(&hdrs.content)?;
    assert!(headers.contains("Message-ID: <ext@x.test>"), "{headers}");
    assert!(!String::from_utf8_lossy(&hdrs.content).contains("confidential body"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_warnings_only_where_notify_allows() -> Result<()> {
    let deferring = SinkServer::start().await?;
    deferring.behave(|b| b.tempfail_mail = usize::MAX);
    let back = SinkServer::start().await?;
    let gw = Setup::new()
        .delivery("retry_initial = \"200ms\"")
        .delivery("retry_max = \"200ms\"")
        .delivery("delay_warning = \"500ms\"")
        .route_to("\"x.test\"", back.addr())
        .route_all_to(deferring.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test>",
        &[
            "RCPT TO:<failure-only@y.test> NOTIFY=FAILURE",
            "RCPT TO:<delay@y.test> NOTIFY=DELAY",
            "RCPT TO:<default@y.test>",
            "RCPT TO:<never@y.test> NOTIFY=NEVER",
        ],
    )
    .await?;
    assert_eq!(code, 250);
    wait_until(WAIT, || back.count() == 1).await?;
    let (status, _) = dsn_parts(&back.messages()[0].content)?;
    assert!(
        status.contains("Final-Recipient: rfc822; delay@y.test\r\nAction: delayed\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; default@y.test\r\nAction: delayed\r\n"),
        "{status}"
    );
    assert!(
        !status.contains("failure-only@y.test") && !status.contains("never@y.test"),
        "{status}"
    );
    Ok(())
}

/// Content whose DATA form needs dot-stuffing and holds what looks like
/// an end of data and commands: BDAT must carry it untouched.
fn tricky_content() -> Vec<u8> {
    let mut content =
        b"From: a@x.test\r\nSubject: chunks\r\n\r\n.leading\r\n.\r\nQUIT\r\nbinary: \x00\x01\xff\r\n".to_vec();
    for _ in 0..2000 {
        content.extend_from_slice(&[b'z'; 70]);
        content.extend_from_slice(b"\r\n");
    }
    content.extend_from_slice(b"end\r\n");
    content
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_are_received_pipelined_and_sent_on_as_bdat() -> Result<()> {
    for chunking_downstream in [true, false] {
        let sink = SinkServer::start().await?;
        sink.behave(|b| b.chunking = chunking_downstream);
        let gw = Setup::new()
            .smtp("bare_line_endings = \"reject\"")
            .route_all_to(sink.addr())
            .start()
            .await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        let ehlo = client.command("EHLO client.test").await?;
        ensure!(ehlo.lines.iter().any(|l| l == "CHUNKING"), "{ehlo:?}");
        let content = tricky_content();
        let (first, second) = content.split_at(37);
        let mut burst = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n".to_vec();
        burst.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
        burst.extend_from_slice(first);
        burst.extend_from_slice(format!("BDAT {} LAST\r\n", second.len()).as_bytes());
        burst.extend_from_slice(second);
        burst.extend_from_slice(b"NOOP\r\n");
        client.send(&burst).await?;
        for code in [250, 250, 250, 250, 250] {
            client.expect_reply(code).await?;
        }
        wait_until(WAIT, || sink.count() == 1).await?;
        let message = &sink.messages()[0];
        assert!(
            message.without_trace() == content,
            "content changed (chunking downstream: {chunking_downstream})"
        );
        assert_eq!(message.bdat, chunking_downstream);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_chunks_are_read_and_thrown_away() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("max_message_bytes = 1000")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    // Before MAIL: 503, and the chunk's "QUIT" is not a command.
    client.send(b"BDAT 6\r\nQUIT\r\n").await?;
    client.expect_reply(503).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    // Over the size limit: 552, the 5000 octets are discarded unread, and
    // the transaction is over: the next chunk gets 503.
    let mut big = b"BDAT 5000\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'Q', 4994));
    big.extend_from_slice(b"QUIT\r\n");
    client.send(&big).await?;
    let reply = client.expect_reply(552).await?;
    assert!(reply.text().starts_with("5.3.4"), "{}", reply.text());
    client.send(b"BDAT 4 LAST\r\nRSET").await?;
    client.expect_reply(503).await?;
    // DATA after BDAT in one transaction is refused.
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    client.send(b"BDAT 3\r\nabc").await?;
    client.expect_reply(250).await?;
    client.expect("DATA", 503).await?;
    // A zero-length last chunk ends a message.
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    client.send(b"BDAT 14\r\nSubject: z\r\n\r\nBDAT 0 LAST\r\n").await?;
    client.expect_reply(250).await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].without_trace(), b"Subject: z\r\n\r\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_is_offered_inside_tls_and_relayed_only_over_verified_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file)?;
    let dns = crate::tls::dns().await?;
    let strict = SinkServer::start().await?;
    strict.behave(|b| {
        b.tls = Some(ca.server_config(&["relay.test"]).unwrap());
        b.requiretls = true;
    });
    let lax = SinkServer::start().await?;
    lax.behave(|b| b.tls = Some(ca.server_config(&["relay.test"]).unwrap()));
    let back = SinkServer::start().await?;
    let route = |domain: &str, port: u16| {
        format!(
            "domains = [\"{domain}\"]\nsmarthost = \"relay.test:{port}\"\nca_file = \"{}\"",
            ca_file.display()
        )
    };
    let gw = Setup::new()
        .certificate(ca.issue(&["gw.test"])?)
        .dns(dns.addr())
        .route(&route("strict.test", strict.addr().port()))
        .route(&route("lax.test", lax.addr().port()))
        .route_all_to(back.addr())
        .start()
        .await?;

    let mut client = SmtpClient::greeted(gw.addr).await?;
    let ehlo = client.command("EHLO client.test").await?;
    ensure!(
        !ehlo.lines.iter().any(|l| l == "REQUIRETLS"),
        "offered in clear: {ehlo:?}"
    );
    let reply = client.expect("MAIL FROM:<a@x.test> REQUIRETLS", 530).await?;
    assert!(reply.text().starts_with("5.7.10"), "{}", reply.text());
    client.expect("STARTTLS", 220).await?;
    let mut client = client.tls_handshake(ca.client_config()?, "gw.test").await?;
    let ehlo = client.command("EHLO client.test").await?;
    ensure!(ehlo.lines.iter().any(|l| l == "REQUIRETLS"), "{ehlo:?}");
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> REQUIRETLS",
        &["RCPT TO:<b@strict.test>"],
    )
    .await?;
    assert_eq!(code, 250);
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> REQUIRETLS",
        &["RCPT TO:<c@lax.test>"],
    )
    .await?;
    assert_eq!(code, 250);

    wait_until(WAIT, || strict.count() == 1).await?;
    let relayed = &strict.messages()[0];
    assert!(relayed.tls, "relayed inside TLS");
    assert!(relayed.mail_params.contains("REQUIRETLS"), "{}", relayed.mail_params);

    // The next hop without REQUIRETLS gets nothing: the sender gets 5.7.30.
    wait_until(WAIT, || reports(&back).len() == 1 && gw.queued() == 0).await?;
    assert_eq!(lax.count(), 0);
    let (status, _) = dsn_parts(&reports(&back)[0].content)?;
    assert!(
        status.contains("Final-Recipient: rfc822; c@lax.test\r\nAction: failed\r\nStatus: 5.7.30\r\n"),
        "{status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sends_dsn_parameters() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.dsn = true);
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
with smtplib.SMTP(host, port, local_hostname="py.test") as s:
    s.ehlo()
    assert s.has_extn("dsn") and s.has_extn("chunking"), s.esmtp_features
    refused = s.sendmail("a@x.test", ["b@y.test"], b"Subject: from smtplib\r\n\r\nhello\r\n",
                         mail_options=["RET=HDRS", "ENVID=py-1"],
                         rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;b@y.test"])
    assert refused == {}, refused
"#;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(gw.addr.ip().to_string())
        .arg(gw.addr.port().to_string())
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "smtplib: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert!(
        message.mail_params.ends_with(" RET=HDRS ENVID=py-1"),
        "{}",
        message.mail_params
    );
    assert_eq!(message.rcpt_params, ["NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b@y.test"]);
    Ok(())
}

/// mailgate relays into a private Postfix, which relays on to a sink that
/// refuses one recipient: Postfix's own reports (its failure and, as its
/// next hop offers no DSN, its "relayed" success) reach the sender with
/// the ENVID and ORCPT given to mailgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_receives_the_dsn_parameters_and_reports_with_them() -> Result<()> {
    if let Some(why) = Postfix::unavailable() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        b.rcpt_replies
            .insert("bad@y.test".into(), "550 5.1.1 no such user".into());
    });
    let postfix = Postfix::start(sink.addr()).await?;
    let gw = Setup::new().route_all_to(postfix.addr).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let code = transact(
        &mut client,
        "MAIL FROM:<a@x.test> RET=HDRS ENVID=pf+2B42",
        &[
            "RCPT TO:<bad@y.test> NOTIFY=FAILURE ORCPT=rfc822;Bad+2BOne@y.test",
            "RCPT TO:<ok@y.test> NOTIFY=SUCCESS ORCPT=rfc822;ok@y.test",
        ],
    )
    .await?;
    assert_eq!(code, 250);
    let deadline = std::time::Duration::from_secs(60);
    wait_until(deadline, || reports(&sink).len() >= 2)
        .await
        .with_context(|| format!("Postfix's reports did not arrive; its log:\n{}", postfix.log()))?;
    let statuses: Vec<String> = reports(&sink)
        .iter()
        .map(|r| dsn_parts(&r.content).map(|(status, _)| status))
        .collect::<Result<_>>()?;
    let failed = statuses
        .iter()
        .find(|s| s.contains("Action: failed"))
        .context("no failure report from Postfix")?;
    assert!(failed.contains("Reporting-MTA: dns; postfix.test"), "{failed}");
    assert!(failed.contains("Original-Envelope-Id: pf+42"), "{failed}");
    assert!(failed.contains("Original-Recipient: rfc822;Bad+One@y.test"), "{failed}");
    let relayed = statuses
        .iter()
        .find(|s| s.contains("Action: relayed"))
        .context("no success report from Postfix")?;
    assert!(relayed.contains("Original-Envelope-Id: pf+42"), "{relayed}");
    assert!(relayed.contains("Original-Recipient: rfc822;ok@y.test"), "{relayed}");
    Ok(())
}
