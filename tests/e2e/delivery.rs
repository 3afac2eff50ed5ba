//! Delivery: retries, per-recipient failures and bounces, maildir routes,
//! expiry, and the relay policy.

use anyhow::Result;
use mailgate_tests::{Setup, SinkServer, SmtpClient, wait_until};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_4xx_then_delivers() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.tempfail_mail = 2);
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("a@x.test", &["b@y.test"], b"Subject: retry\r\n\r\nhi\r\n")
        .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.mail_commands(), 3, "two 451s, then success");
    wait_until(WAIT, || gw.queued() == 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_retried() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.drop_connections = 2);
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("a@x.test", &["b@y.test"], b"Subject: retry\r\n\r\nhi\r\n")
        .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.connections(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_of_one_recipient_bounces_to_the_sender() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        b.rcpt_replies
            .insert("bad@y.test".into(), "550 5.1.1 <bad@y.test>: no such user".into());
    });
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let content =
        b"From: sender@x.test\r\nSubject: original subject\r\nMessage-ID: <orig@x.test>\r\n\r\nconfidential body\r\n";
    client
        .send_message("sender@x.test", &["good@y.test", "bad@y.test"], content)
        .await?;

    wait_until(WAIT, || sink.count() == 2 && gw.queued() == 0).await?;
    let messages = sink.messages();
    let original = messages
        .iter()
        .find(|m| m.mail_from == "sender@x.test")
        .expect("original");
    assert_eq!(original.rcpt_to, ["good@y.test"]);
    let bounce = messages
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("bounce from <>");
    assert_eq!(bounce.rcpt_to, ["sender@x.test"]);
    let text = bounce.text();
    assert!(
        text.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{text}"
    );
    assert!(text.contains("Content-Type: message/delivery-status"), "{text}");
    assert!(text.contains("Reporting-MTA: dns; gw.test"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bad@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 <bad@y.test>: no such user"),
        "{text}"
    );
    assert!(!text.contains("Final-Recipient: rfc822; good@y.test"), "{text}");
    assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
    assert!(text.contains("Subject: original subject"), "{text}");
    assert!(!text.contains("confidential body"), "the bounce quotes headers only");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_is_sent_for_the_null_sender() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        b.rcpt_replies
            .insert("bad@y.test".into(), "550 5.1.1 no such user".into());
    });
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("", &["bad@y.test"], b"Subject: a bounce itself\r\n\r\nx\r\n")
        .await?;
    wait_until(WAIT, || sink.mail_commands() >= 1 && gw.queued() == 0).await?;
    assert_eq!(sink.count(), 0, "nothing relayed, and no bounce of a bounce");
    assert_eq!(sink.mail_commands(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_mail_expires_and_bounces() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        b.rcpt_replies
            .insert("busy@y.test".into(), "451 4.2.0 mailbox busy".into());
    });
    let gw = Setup::new()
        .delivery("max_age = \"1s\"")
        .delivery("retry_initial = \"300ms\"")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("sender@x.test", &["busy@y.test"], b"Subject: slow\r\n\r\nx\r\n")
        .await?;
    wait_until(WAIT, || sink.count() == 1 && gw.queued() == 0).await?;
    let bounce = &sink.messages()[0];
    assert_eq!(bounce.mail_from, "");
    let text = bounce.text();
    assert!(text.contains("Status: 4.4.7"), "{text}");
    assert!(text.contains("delivery time expired"), "{text}");
    assert!(text.contains("451 4.2.0 mailbox busy"), "{text}");
    assert!(sink.mail_commands() >= 3, "retried before expiring");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_routes_drop_one_file_per_recipient() -> Result<()> {
    let sink = SinkServer::start().await?;
    let maildir = tempfile::tempdir()?;
    let gw = Setup::new()
        .route_to_maildir("\"local.test\"", maildir.path())
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message(
            "a@x.test",
            &["one@local.test", "two@local.test", "remote@y.test"],
            b"Subject: split\r\n\r\n.dot line\r\n",
        )
        .await?;
    let new = maildir.path().join("new");
    wait_until(WAIT, || {
        std::fs::read_dir(&new).map(|d| d.count() == 2).unwrap_or(false) && sink.count() == 1
    })
    .await?;
    let mut files: Vec<String> = std::fs::read_dir(&new)?
        .map(|e| std::fs::read_to_string(e?.path()).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    files.sort();
    assert!(
        files[0].starts_with("Return-Path: <a@x.test>\nDelivered-To: one@local.test\nReceived: from client.test"),
        "{}",
        files[0]
    );
    assert!(
        files[1].starts_with("Return-Path: <a@x.test>\nDelivered-To: two@local.test\n"),
        "{}",
        files[1]
    );
    assert!(files[0].ends_with("Subject: split\n\n.dot line\n"), "{}", files[0]);
    assert_eq!(sink.messages()[0].rcpt_to, ["remote@y.test"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_needs_an_accepted_domain_or_a_trusted_network() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .relay("trusted_networks = []")
        .relay("accepted_domains = [\"accepted.test\", \"*.accepted.test\"]")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    let reply = client.command("RCPT TO:<someone@elsewhere.test>").await?;
    assert_eq!(reply.first_line(), "554 5.7.1 Relay access denied");
    client.expect("RCPT TO:<user@accepted.test>", 250).await?;
    client.expect("RCPT TO:<user@mx.accepted.test>", 250).await?;
    client.expect("RSET", 250).await?;

    // The trusted network (loopback here) may relay anywhere.
    let trusted = Setup::new()
        .relay("accepted_domains = []")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(trusted.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<someone@elsewhere.test>", 250).await?;
    client.expect("QUIT", 221).await?;
    Ok(())
}

/// Sends message number `n` (its subject) from a@x.test to b@y.test.
async fn send_numbered(client: &mut SmtpClient, n: usize) -> Result<()> {
    let content = format!("Subject: {n}\r\n\r\nx\r\n");
    client
        .send_message("a@x.test", &["b@y.test"], content.as_bytes())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_for_later_messages() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for n in 0..5 {
        send_numbered(&mut client, n).await?;
        wait_until(WAIT, || sink.count() == n + 1).await?;
    }
    assert_eq!(sink.connections(), 1, "one connection carried all five messages");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_server_closed_is_replaced() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.close_after_message = true);
    // A deferral would wait an hour: only an immediate retry on a new
    // connection delivers within the test's wait.
    let gw = Setup::new().hourly_retries().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for n in 0..4 {
        send_numbered(&mut client, n).await?;
        wait_until(WAIT, || sink.count() == n + 1 && gw.queued() == 0).await?;
    }
    assert_eq!(sink.count(), 4, "each message arrived exactly once");
    assert_eq!(sink.connections(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_content_to_a_server_without_8bitmime_bounces() -> Result<()> {
    let dest = SinkServer::start().await?;
    dest.behave(|b| b.eight_bit = false);
    let back = SinkServer::start().await?;
    let gw = Setup::new()
        .route_to("\"dest.test\"", dest.addr())
        .route_to("\"back.test\"", back.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<s@back.test> BODY=8BITMIME", 250).await?;
    client.expect("RCPT TO:<r@dest.test>", 250).await?;
    client.expect("DATA", 354).await?;
    client
        .send("Subject: caf\u{e9}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nna\u{ef}ve\r\n.\r\n".as_bytes())
        .await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || back.count() == 1).await?;
    assert_eq!(dest.count(), 0, "never sent, rather than corrupted");
    let (status, _) = mailgate_tests::dsn_parts(&back.messages()[0].content)?;
    assert!(status.contains("Status: 5.6.3"), "{status}");
    assert!(status.contains("8BITMIME"), "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_helo_when_ehlo_is_refused() -> Result<()> {
    let sink = SinkServer::start().await?;
    sink.behave(|b| b.refuse_ehlo = true);
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message("a@x.test", &["b@y.test"], b"Subject: old server\r\n\r\nhi\r\n")
        .await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    // Without EHLO there are no extensions: no SIZE= or BODY= parameters.
    assert_eq!(sink.messages()[0].mail_params, "");
    Ok(())
}
