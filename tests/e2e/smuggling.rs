//! SMTP smuggling (CVE-2023-51764 class): only <CRLF>.<CRLF> ends DATA.
//! For each bare-line-ending variant of an end-of-data sequence, a client
//! hides a second transaction after it. The downstream must receive exactly
//! one message per transaction (normalising policy), or none (rejecting
//! policy), and never the smuggled one; what is relayed must itself carry
//! no bare CR or LF, so no downstream can be fooled either.

use anyhow::Result;
use mailgate_tests::{Setup, SinkServer, SmtpClient, wait_until};

use crate::WAIT;
use crate::limits::only_the_good_message_arrives;

const VARIANTS: [(&str, &[u8]); 5] = [
    ("LF.LF", b"\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.LF", b"\r\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
];

/// The DATA section: a first message, the fake end, a smuggled transaction,
/// and the real end.
fn smuggling_payload(variant: &[u8]) -> Vec<u8> {
    let mut data = b"From: a@x.test\r\nSubject: first\r\n\r\nfirst body".to_vec();
    data.extend_from_slice(variant);
    data.extend_from_slice(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n");
    data.extend_from_slice(b"From: ceo@y.test\r\nSubject: smuggled\r\n\r\nwire the money\r\n.\r\n");
    data
}

async fn open_transaction(client: &mut SmtpClient) -> Result<()> {
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    client.expect("DATA", 354).await?;
    Ok(())
}

fn has_bare_line_ending(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_line_endings_never_end_data_or_smuggle_a_message() -> Result<()> {
    for (name, variant) in VARIANTS {
        let sink = SinkServer::start().await?;
        let gw = Setup::new().route_all_to(sink.addr()).start().await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        open_transaction(&mut client).await?;
        client.send(&smuggling_payload(variant)).await?;
        // Exactly one reply: the data ended once, at the real terminator.
        client.expect_reply(250).await?;
        client.expect("QUIT", 221).await?;
        assert!(client.read_to_close().await?.is_empty(), "{name}: extra replies");

        wait_until(WAIT, || sink.count() >= 1 && gw.queued() == 0).await?;
        let messages = sink.messages();
        assert_eq!(
            messages.len(),
            1,
            "{name}: downstream received {} messages",
            messages.len()
        );
        let message = &messages[0];
        assert_eq!(message.mail_from, "a@x.test", "{name}");
        assert_eq!(message.rcpt_to, ["b@y.test"], "{name}");
        assert!(
            message.text().contains("wire the money"),
            "{name}: the rest stays inside the one message"
        );
        assert!(
            !has_bare_line_ending(&message.raw),
            "{name}: a bare CR or LF was relayed"
        );
        let terminators = message.raw.windows(5).filter(|w| *w == b"\r\n.\r\n").count();
        assert_eq!(
            terminators, 1,
            "{name}: an end-of-data sequence inside the relayed content"
        );
        gw.stop().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_line_endings_are_refused_under_the_reject_policy() -> Result<()> {
    for (name, variant) in VARIANTS {
        let sink = SinkServer::start().await?;
        let gw = Setup::new()
            .smtp("bare_line_endings = \"reject\"")
            .route_all_to(sink.addr())
            .start()
            .await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        open_transaction(&mut client).await?;
        client.send(&smuggling_payload(variant)).await?;
        let reply = client.reply().await?;
        assert_eq!(reply.code, 550, "{name}: {reply:?}");
        assert!(reply.text().starts_with("5.6.0 "), "{name}: {reply:?}");
        // The smuggled commands were data, not commands: the session is
        // back at the start of a transaction.
        client.expect("RCPT TO:<b@y.test>", 503).await?;
        only_the_good_message_arrives(&mut client, &sink, &gw).await?;
        gw.stop().await?;
    }
    Ok(())
}
