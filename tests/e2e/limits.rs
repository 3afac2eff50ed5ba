//! Limits: command line length, DATA line length, message size,
//! recipients per message, connections, and timeouts.

use std::time::Duration;

use anyhow::Result;
use mailgate_tests::{Gateway, Setup, SinkServer, SmtpClient, stuff, wait_until};

use crate::WAIT;

/// Sends a good message on `client` and checks it is the only one relayed:
/// anything wrongly accepted before it would have been spooled before it,
/// so once it has arrived and the queue is empty, the sink has seen all.
pub async fn only_the_good_message_arrives(client: &mut SmtpClient, sink: &SinkServer, gw: &Gateway) -> Result<()> {
    let reply = client
        .send_message("a@x.test", &["b@y.test"], b"Subject: good\r\n\r\nok\r\n")
        .await?;
    assert_eq!(reply.code, 250);
    wait_until(WAIT, || sink.count() >= 1 && gw.queued() == 0).await?;
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "a refused message was relayed");
    assert!(messages[0].text().contains("Subject: good"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_command_line_gets_500_and_the_connection_survives() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    // Over 512 octets but buffered, and far over anything buffered.
    for len in [600, 100_000] {
        let reply = client.command(&format!("NOOP {}", "a".repeat(len))).await?;
        assert_eq!(reply.first_line(), "500 5.5.6 Error: line too long");
    }
    let reply = client.command(&format!("RCPT TO:<{}@y.test>", "a".repeat(600))).await?;
    assert_eq!(reply.code, 500);
    client.expect("NOOP", 250).await?;
    only_the_good_message_arrives(&mut client, &sink, &gw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lines_over_998_octets_are_rejected_by_default() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let mut content = b"Subject: long\r\n\r\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 5000));
    content.extend_from_slice(b"\r\n");
    let reply = client.send_message("a@x.test", &["b@y.test"], &content).await?;
    assert_eq!(
        reply.first_line(),
        "550 5.6.0 Message contains a line longer than 998 octets"
    );
    only_the_good_message_arrives(&mut client, &sink, &gw).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_lines_over_998_octets_are_folded_when_configured() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("long_lines = \"fold\"")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let mut content = b"Subject: ".to_vec();
    content.extend(std::iter::repeat_n(b'h', 1500));
    content.extend_from_slice(b"\r\n\r\n");
    content.extend(std::iter::repeat_n(b'b', 2500));
    content.extend_from_slice(b"\r\n");
    let reply = client.send_message("a@x.test", &["b@y.test"], &content).await?;
    assert_eq!(reply.code, 250);
    wait_until(WAIT, || sink.count() == 1).await?;
    let relayed = sink.messages()[0].without_trace();
    assert!(
        relayed.split(|&b| b == b'\n').all(|line| line.len() <= 999),
        "a line over 998 octets was relayed"
    );
    assert_eq!(relayed.iter().filter(|&&b| b == b'h').count(), 1500);
    assert_eq!(relayed.iter().filter(|&&b| b == b'b').count(), 2500 + 1); // "Subject" has a 'b'
    assert!(relayed.windows(3).any(|w| w == b"\r\n "), "the header was not folded");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit_applies_at_mail_and_while_streaming() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("max_message_bytes = 10000")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let ehlo = client.command("EHLO client.test").await?;
    assert!(ehlo.lines.contains(&"SIZE 10000".to_owned()), "{ehlo:?}");
    let reply = client.command("MAIL FROM:<a@x.test> SIZE=20000").await?;
    assert_eq!(
        reply.first_line(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );

    // No SIZE declared: the body is refused after the final dot.
    let mut content = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..1000 {
        content.extend_from_slice(&[b'y'; 98]);
        content.extend_from_slice(b"\r\n");
    }
    let reply = client.send_message("a@x.test", &["b@y.test"], &content).await?;
    assert_eq!(
        reply.first_line(),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    only_the_good_message_arrives(&mut client, &sink, &gw).await?;
    assert_eq!(
        std::fs::read_dir(gw.spool().join("incoming"))?.count(),
        0,
        "a partial message was left behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_past_the_limit_get_452() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("max_recipients = 100")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let mut batch = String::from("MAIL FROM:<a@x.test>\r\n");
    for i in 0..101 {
        batch.push_str(&format!("RCPT TO:<r{i}@y.test>\r\n"));
    }
    client.send(batch.as_bytes()).await?;
    client.expect_reply(250).await?;
    for _ in 0..100 {
        client.expect_reply(250).await?;
    }
    let reply = client.reply().await?;
    assert_eq!(reply.first_line(), "452 4.5.3 Error: too many recipients");
    client.expect("DATA", 354).await?;
    client.send(&stuff(b"Subject: many\r\n\r\nhi\r\n")).await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let rcpts = &sink.messages()[0].rcpt_to;
    assert_eq!(rcpts.len(), 100);
    assert_eq!(rcpts[99], "r99@y.test");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_421() -> Result<()> {
    let gw = Setup::new().server("max_connections = 2").start().await?;
    let mut first = SmtpClient::connect(gw.addr).await?;
    first.expect_reply(220).await?;
    let mut second = SmtpClient::connect(gw.addr).await?;
    second.expect_reply(220).await?;
    let mut third = SmtpClient::connect(gw.addr).await?;
    let reply = third.reply().await?;
    assert_eq!(reply.code, 421);
    assert!(reply.text().starts_with("4.3.2 "), "{reply:?}");
    third.read_to_close().await?;

    first.expect("QUIT", 221).await?;
    first.read_to_close().await?;
    // The freed slot is available again (the permit is released when the task ends).
    let mut greeted = None;
    for _ in 0..100 {
        let mut again = SmtpClient::connect(gw.addr).await?;
        if again.reply().await?.code == 220 {
            greeted = Some(again);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(greeted.is_some(), "a slot was never freed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_timed_out_with_421() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .smtp("command_timeout = \"300ms\"")
        .smtp("data_timeout = \"300ms\"")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut idle = SmtpClient::greeted(gw.addr).await?;
    let reply = idle.reply().await?;
    assert_eq!(reply.code, 421);
    assert!(reply.text().starts_with("4.4.2 "), "{reply:?}");
    assert!(idle.read_to_close().await?.is_empty());

    // Stalling in the middle of DATA: timed out, and nothing relayed.
    let mut stalled = SmtpClient::greeted(gw.addr).await?;
    stalled.expect("MAIL FROM:<a@x.test>", 250).await?;
    stalled.expect("RCPT TO:<b@y.test>", 250).await?;
    stalled.expect("DATA", 354).await?;
    stalled.send(b"Subject: partial\r\n\r\nhalf a mess").await?;
    assert_eq!(stalled.reply().await?.code, 421);
    let mut client = SmtpClient::greeted(gw.addr).await?;
    only_the_good_message_arrives(&mut client, &sink, &gw).await
}
