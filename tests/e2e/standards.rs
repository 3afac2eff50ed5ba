//! RFC 5321 behaviours over the wire: the postmaster, recipients past the
//! limit, the empty reverse-path, mail loops, repeated recipients, and
//! relay trust apart from the connection limit.

use anyhow::{Context, Result};
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, header_values, stuff, wait_until};

use crate::scrape::Scrape;
use crate::{WAIT, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_is_accepted_whatever_the_relay_policy() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .relay("trusted_networks = []")
        .server("postmaster = \"hostmaster@admin.test\"")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<victim@elsewhere.test>", 554).await?;
    for postmaster in ["<Postmaster>", "<POSTMASTER>", "<postmaster@GW.test>"] {
        client.expect(&format!("RCPT TO:{postmaster}"), 250).await?;
    }
    client.expect("DATA", 354).await?;
    client
        .send(&stuff(b"Subject: to the postmaster\r\n\r\nhello\r\n"))
        .await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["hostmaster@admin.test"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_past_the_limit_still_get_the_message_to_the_accepted_ones() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("max_recipients = 100")
        .smtp("max_errors = 5")
        .route_all_to(sink.addr())
        .start()
        .await?;
    // 130 recipients pipelined in one write, then DATA: 30 are refused
    // with 452 4.5.3, far more than the 5 errors allowed.
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let mut batch = String::from("MAIL FROM:<a@x.test>\r\n");
    for n in 0..130 {
        batch.push_str(&format!("RCPT TO:<r{n}@y.test>\r\n"));
    }
    batch.push_str("DATA\r\n");
    client.send(batch.as_bytes()).await?;
    client.expect_reply(250).await?;
    let mut codes = Vec::new();
    for _ in 0..130 {
        codes.push(client.reply().await?.code);
    }
    assert_eq!(codes.iter().filter(|&&c| c == 250).count(), 100);
    assert_eq!(codes.iter().filter(|&&c| c == 452).count(), 30);
    client.expect_reply(354).await?;
    client.send(&stuff(b"Subject: many\r\n\r\nhi\r\n")).await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let delivered = &sink.messages()[0].rcpt_to;
    assert_eq!(delivered.len(), 100);
    assert_eq!(delivered.last().map(String::as_str), Some("r99@y.test"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_reverse_path_is_a_syntax_error() -> Result<()> {
    let gw = Setup::new().start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for line in ["MAIL FROM:", "MAIL FROM:   "] {
        let reply = client.expect(line, 501).await?;
        assert!(reply.text().starts_with("5.5.4 "), "{line:?}: {}", reply.text());
    }
    client.expect("MAIL FROM:<>", 250).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_recipient_is_delivered_once() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let reply = client
        .send_message(
            "a@x.test",
            &["b@y.test", "b@Y.TEST", "c@y.test", "b@y.test"],
            b"Subject: twice\r\n\r\nhi\r\n",
        )
        .await?;
    assert_eq!(reply.code, 250);
    wait_until(WAIT, || sink.count() == 1 && gw.queued() == 0).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["b@y.test", "c@y.test"]);
    Ok(())
}

/// A message that has been through `hops` relays already.
fn looping(hops: usize) -> Vec<u8> {
    let mut content = String::new();
    for n in 0..hops {
        content.push_str(&format!(
            "Received: from hop{n}.test (hop{n}.test [192.0.2.{}])\r\n\tby relay{n}.test with ESMTP;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n",
            n % 250
        ));
    }
    content.push_str("Subject: round and round\r\n\r\nbody\r\n");
    content.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_loops_are_refused_counted_and_logged() -> Result<()> {
    let sink = SinkServer::start().await?;
    let maildir = tempfile::tempdir()?;
    let setup = Setup::new()
        .admin()?
        .smtp("max_hops = 50")
        .route_to_maildir("\"local.test\"", maildir.path())
        .route_all_to(sink.addr());
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let admin = setup.admin_address().context("no admin address")?;

    let mut client = SmtpClient::greeted(gateway.addr).await?;
    let reply = client.send_message("a@x.test", &["b@y.test"], &looping(150)).await?;
    assert_eq!(reply.code, 554);
    assert!(
        reply.text().starts_with("5.4.6 Too many hops (150 Received"),
        "{}",
        reply.text()
    );
    // At the limit the message goes through, to a next hop with one more
    // trace field and into a maildir with exactly one more.
    let reply = client
        .send_message("a@x.test", &["b@y.test", "m@local.test"], &looping(50))
        .await?;
    assert_eq!(reply.code, 250, "{}", reply.text());
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(header_values(&sink.messages()[0].text(), "Received").len(), 51);
    let new = maildir.path().join("new");
    wait_until(WAIT, || std::fs::read_dir(&new).is_ok_and(|d| d.count() == 1)).await?;
    let file = std::fs::read_dir(&new)?.next().context("no maildir file")??.path();
    let text = std::fs::read_to_string(file)?.replace('\n', "\r\n");
    assert_eq!(header_values(&text, "Received").len(), 51);

    let scrape = Scrape::take(admin).await?;
    assert_eq!(
        scrape.value("mailgate_messages_total", &[("stage", "data"), ("result", "rejected")]),
        1.0
    );
    let logged = gateway
        .log()
        .iter()
        .any(|l| l.contains("outcome=\"rejected\"") && l.contains("too many hops: 150 Received fields"));
    assert!(logged, "no log line names the loop:\n{}", gateway.log().join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_trust_and_the_connection_limit_are_set_apart() -> Result<()> {
    // Trusted for relaying, but held to the per-address limit.
    let gw = Setup::new()
        .server("max_connections_per_ip = 2")
        .server("connection_limit_exempt = []")
        .relay("trusted_networks = [\"127.0.0.0/8\"]")
        .start()
        .await?;
    let _first = SmtpClient::greeted(gw.addr).await?;
    let mut second = SmtpClient::greeted(gw.addr).await?;
    second.expect("MAIL FROM:<a@x.test>", 250).await?;
    second.expect("RCPT TO:<anyone@elsewhere.test>", 250).await?;
    let mut third = SmtpClient::connect(gw.addr).await?;
    third.expect_reply(421).await?;

    // Exempt from the limit (a load balancer), but not trusted to relay.
    let gw = Setup::new()
        .server("max_connections_per_ip = 2")
        .server("connection_limit_exempt = [\"127.0.0.0/8\"]")
        .relay("trusted_networks = []")
        .start()
        .await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(SmtpClient::greeted(gw.addr).await?);
    }
    let last = clients.last_mut().context("no client")?;
    last.expect("MAIL FROM:<a@x.test>", 250).await?;
    last.expect("RCPT TO:<anyone@elsewhere.test>", 554).await?;
    Ok(())
}
