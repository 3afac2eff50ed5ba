//! Relaying: what goes in comes out, byte for byte, apart from the trace header.

use anyhow::Result;
use mailgate_tests::{Setup, SinkServer, SmtpClient, stuff, wait_until};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_message_to_the_smarthost() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let content = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: hello\r\n\r\nHello world\r\n";
    let reply = client.send_message("a@x.test", &["b@y.test"], content).await?;
    assert_eq!(reply.code, 250);
    assert!(reply.text().starts_with("2.0.0 Ok: queued as "), "{reply:?}");
    client.expect("QUIT", 221).await?;

    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert_eq!(message.mail_from, "a@x.test");
    assert_eq!(message.rcpt_to, ["b@y.test"]);
    let id = reply.text().trim_start_matches("2.0.0 Ok: queued as ");
    let trace = format!(
        "Received: from client.test ([127.0.0.1])\r\n\tby gw.test (mailgate) with ESMTP id {id}\r\n\tfor <b@y.test>;\r\n\t"
    );
    assert!(message.text().starts_with(&trace), "{}", message.text());
    assert_eq!(message.without_trace(), content);
    wait_until(WAIT, || gw.queued() == 0).await?;
    Ok(())
}

/// Content that trips naive relays: dot-leading lines, a lone dot, 8-bit
/// and invalid UTF-8 octets, a long folded header, a line of exactly 998
/// octets, and a base64 attachment. All must arrive unchanged, and the wire
/// form must be correctly dot-stuffed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_is_relayed_byte_for_byte() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut content = Vec::new();
    content.extend_from_slice(b"From: a@x.test\r\nSubject: transparency\r\n");
    content.extend_from_slice(b"X-Long:");
    for i in 0..60 {
        content.extend_from_slice(format!("\r\n\tfolded-part-{i:03}-with-some-padding-text").as_bytes());
    }
    content.extend_from_slice(b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n");
    content.extend_from_slice(
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    content.extend_from_slice(
        ".leading dot\r\n..two dots\r\n.\r\n...\r\nGr\u{fc}\u{df}e, \u{65e5}\u{672c}\r\n".as_bytes(),
    );
    content.extend_from_slice(b"raw high octets: \x80\x81\xfe\xff\r\n");
    content.extend(std::iter::repeat_n(b'x', 998));
    content.extend_from_slice(
        b"\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let binary: Vec<u8> = (0..30_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for line in base64_lines(&binary) {
        content.extend_from_slice(line.as_bytes());
        content.extend_from_slice(b"\r\n");
    }
    content.extend_from_slice(b"--b1--\r\n");

    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test> BODY=8BITMIME", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    client.expect("DATA", 354).await?;
    client.send(&stuff(&content)).await?;
    client.expect_reply(250).await?;

    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert!(message.without_trace() == content, "content changed in transit");
    assert_eq!(
        message.raw,
        stuff(&message.content),
        "wire form is not the dot-stuffed content"
    );
    assert_eq!(
        message.mail_params,
        "SIZE=".to_owned() + &message.content.len().to_string() + " BODY=8BITMIME"
    );
    Ok(())
}

/// A whole pipelined session in few writes: every command is answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    client.send(b"EHLO client.test\r\nNOOP\r\nVRFY someone\r\nFROB\r\nRSET\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n").await?;
    for code in [250, 250, 252, 500, 250, 250, 250, 250, 354] {
        client.expect_reply(code).await?;
    }
    client
        .send(b"Subject: one\r\n\r\n1\r\n.\r\nMAIL FROM:<d@x.test>\r\nRCPT TO:<e@y.test>\r\nDATA\r\n")
        .await?;
    for code in [250, 250, 250, 354] {
        client.expect_reply(code).await?;
    }
    client.send(b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n").await?;
    client.expect_reply(250).await?;
    client.expect_reply(221).await?;

    wait_until(WAIT, || sink.count() == 2).await?;
    let mut messages = sink.messages();
    messages.sort_by_key(|m| m.mail_from.clone());
    assert_eq!(messages[0].rcpt_to, ["b@y.test", "c@y.test"]);
    assert_eq!(messages[0].without_trace(), b"Subject: one\r\n\r\n1\r\n");
    assert_eq!(messages[1].rcpt_to, ["e@y.test"]);
    assert_eq!(messages[1].without_trace(), b"Subject: two\r\n\r\n2\r\n");
    Ok(())
}

/// 50 concurrent clients send 20 messages each; each arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_deliver_everything_exactly_once() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    let mut clients = Vec::new();
    for c in 0..50 {
        let addr = gw.addr;
        clients.push(tokio::spawn(async move {
            let mut client = SmtpClient::greeted(addr).await?;
            for m in 0..20 {
                let content = format!("X-Test-Id: {c}-{m}\r\nSubject: load\r\n\r\nmessage {m} of client {c}\r\n");
                let reply = client
                    .send_message(&format!("c{c}@x.test"), &["sink@y.test"], content.as_bytes())
                    .await?;
                anyhow::ensure!(reply.code == 250, "client {c} message {m}: {reply:?}");
            }
            client.expect("QUIT", 221).await?;
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    wait_until(WAIT * 2, || sink.count() >= 1000).await?;
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| {
            m.text()
                .lines()
                .find_map(|l| l.strip_prefix("X-Test-Id: ").map(str::to_owned))
        })
        .collect();
    assert_eq!(ids.len(), 1000);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "some message arrived twice");
    wait_until(WAIT, || gw.queued() == 0).await?;
    Ok(())
}

/// Encodes as base64 in 76-character lines (RFC 2045), without a crate.
fn base64_lines(data: &[u8]) -> Vec<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text.as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}
