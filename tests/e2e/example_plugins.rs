//! The example plugins in `plugins/`, end to end: the smarthost router,
//! header rewriting, spam scoring, the Python external-sender tagger and the
//! JavaScript attachment filter.

use anyhow::Result;
use mailgate_tests::plugins::{
    ATTACHMENT_FILTER, EXTERNAL_TAGGER, HEADER_REWRITE, RFC5322_CHECK, SMARTHOST_ROUTER, SPAM_SCORE,
};
use mailgate_tests::{Setup, SinkServer, SmtpClient, header, wait_until};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smarthost_router_forwards_by_recipient_and_sender_domain() -> Result<()> {
    let (partner, sales, company) = (
        SinkServer::start().await?,
        SinkServer::start().await?,
        SinkServer::start().await?,
    );
    let settings = format!(
        r#"[[plugin.settings.rules]]
domains = ["partner.test"]
senders = ["sales.example"]
smarthost = "{sales}"
[[plugin.settings.rules]]
domains = ["partner.test", "*.partner.test"]
smarthost = "{partner}"
[[plugin.settings.rules]]
domains = ["*"]
route = "company"
"#,
        sales = sales.addr(),
        partner = partner.addr()
    );
    let gw = Setup::new()
        .named_route("company", company.addr())
        .plugin(&format!(
            "name = \"router\"\npath = \"{SMARTHOST_ROUTER}\"\nstages = [\"rcpt\"]\n{settings}"
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .send_message(
            "me@eng.example",
            &["a@partner.test", "b@mx.partner.test", "c@elsewhere.test"],
            b"Subject: 1\r\n\r\nx\r\n",
        )
        .await?;
    client
        .send_message("me@sales.example", &["d@partner.test"], b"Subject: 2\r\n\r\nx\r\n")
        .await?;
    wait_until(WAIT, || {
        partner.count() == 1 && company.count() == 1 && sales.count() == 1
    })
    .await?;
    assert_eq!(partner.messages()[0].rcpt_to, ["a@partner.test", "b@mx.partner.test"]);
    assert_eq!(company.messages()[0].rcpt_to, ["c@elsewhere.test"]);
    assert_eq!(sales.messages()[0].rcpt_to, ["d@partner.test"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rewrite_strips_internal_lines_and_adds_a_footer() -> Result<()> {
    let sink = SinkServer::start().await?;
    let settings = r#"[plugin.settings]
footer = "-- \nSent through mailgate"
[[plugin.settings.rules]]
remove = "Received"
containing = "internal.example"
[[plugin.settings.rules]]
remove = "X-Internal-Id"
[[plugin.settings.rules]]
set = "X-Relayed-By"
value = "mailgate"
[[plugin.settings.rules]]
add = "X-Scanned"
value = "yes"
"#;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&format!(
            "name = \"rewrite\"\npath = \"{HEADER_REWRITE}\"\nstages = [\"data\"]\n{settings}"
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let content = b"Received: from desk.internal.example by mx.internal.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Received: from partner.test by edge.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
X-Internal-Id: 42\r\nX-Relayed-By: old\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"sep\"\r\n\r\n--sep\r\nContent-Type: text/plain\r\n\r\nThe report is attached.\r\n\
--sep\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--sep--\r\n";
    client.send_message("a@x.test", &["b@y.test"], content).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let text = sink.messages()[0].text();
    assert!(!text.contains("internal.example"), "{text}");
    assert!(text.contains("Received: from partner.test by edge.example"), "{text}");
    assert!(
        text.starts_with("Received: from client.test"),
        "our own trace header stays: {text}"
    );
    assert!(!text.contains("X-Internal-Id"), "{text}");
    assert_eq!(header(&text, "X-Relayed-By").as_deref(), Some("mailgate"));
    assert_eq!(header(&text, "X-Scanned").as_deref(), Some("yes"));
    assert!(
        text.contains("The report is attached.\r\n-- \r\nSent through mailgate\r\n--sep\r\n"),
        "footer at the end of the text part: {text}"
    );
    assert!(
        text.contains("\r\n\r\nJVBERi0=\r\n--sep--\r\n"),
        "the attachment is untouched: {text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spam_score_tags_quarantines_and_rejects() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&format!(
            "name = \"spam\"\npath = \"{SPAM_SCORE}\"\nstages = [\"data\"]\n[plugin.settings]\nquarantine_at = 5.0\nreject_at = 10.0\n"
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let clean = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@x.test>\r\nSubject: Minutes\r\n\r\nSee https://wiki.example.com/minutes\r\n";
    assert_eq!(client.send_message("a@x.test", &["b@y.test"], clean).await?.code, 250);
    let spammy = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: FREE MONEY FOR YOU\r\n\r\nClick here: https://bit.ly/abc and become a winner\r\n";
    assert_eq!(client.send_message("a@x.test", &["b@y.test"], spammy).await?.code, 250);
    let awful = b"Subject: YOU ARE A WINNER!!!\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nviagra 100% free, act now: http://192.0.2.9/x\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n";
    let reply = client.send_message("a@x.test", &["b@y.test"], awful).await?;
    assert_eq!(reply.code, 550);
    assert!(
        reply.text().starts_with("5.7.1 Message rejected as spam (score "),
        "{reply:?}"
    );

    wait_until(WAIT, || sink.count() == 1 && gw.queued() == 0).await?;
    let text = sink.messages()[0].text();
    assert_eq!(header(&text, "X-Spam-Score").as_deref(), Some("0.0"), "{text}");
    assert_eq!(
        header(&text, "X-Spam-Status").as_deref(),
        Some("No, score=0.0 required=5.0 tests=NONE"),
        "{text}"
    );
    let quarantine = gw.spool().join("quarantine");
    let held: Vec<_> = std::fs::read_dir(&quarantine)?.collect::<Result<_, _>>()?;
    assert_eq!(held.len(), 1, "the spammy message is quarantined");
    let held = String::from_utf8_lossy(&std::fs::read(held[0].path())?).into_owned();
    assert!(held.contains("X-Spam-Status: Yes, score="), "{held}");
    assert!(held.contains("URL_SHORTENER") && held.contains("KW_WINNER"), "{held}");
    Ok(())
}

/// The Python plugin, built with componentize-py: it must be granted the
/// capabilities its runtime imports, and works with fresh and with reused
/// instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_tags_external_senders() -> Result<()> {
    let plugin = |extra: &str| {
        format!(
            "name = \"external-tagger\"\npath = \"{EXTERNAL_TAGGER}\"\nstages = [\"data\"]\nmemory_limit_bytes = 268435456\n{extra}\n[plugin.settings]\ninternal_domains = [\"example.com\", \"*.example.com\"]\n"
        )
    };
    let denied = Setup::new().plugin(&plugin("")).start().await;
    let error = denied.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("imports `mailgate:plugin/log@0.2.0`, but its capabilities are []"),
        "{error}"
    );

    for instances in ["fresh", "reused"] {
        let sink = SinkServer::start().await?;
        let gw = Setup::new()
            .route_all_to(sink.addr())
            .plugin(&plugin(&format!(
                "capabilities = [\"log\"]\ninstances = \"{instances}\""
            )))
            .start()
            .await?;
        let mut client = SmtpClient::greeted(gw.addr).await?;
        for (n, sender) in ["someone@outside.test", "colleague@example.com", "other@partner.test"]
            .iter()
            .enumerate()
        {
            let content = format!("Subject: note {n}\r\n\r\nhello\r\n");
            client
                .send_message(sender, &["me@example.com"], content.as_bytes())
                .await?;
        }
        wait_until(WAIT, || sink.count() == 3).await?;
        let mut tagged: Vec<(String, Option<String>)> = sink
            .messages()
            .iter()
            .map(|m| (m.mail_from.clone(), header(&m.text(), "Subject")))
            .collect();
        tagged.sort();
        assert_eq!(
            tagged,
            [
                ("colleague@example.com".to_owned(), Some("note 1".to_owned())),
                ("other@partner.test".to_owned(), Some("[EXTERNAL] note 2".to_owned())),
                ("someone@outside.test".to_owned(), Some("[EXTERNAL] note 0".to_owned())),
            ],
            "{instances}"
        );
        let outside = sink
            .messages()
            .into_iter()
            .find(|m| m.mail_from == "someone@outside.test");
        assert_eq!(
            outside.and_then(|m| header(&m.text(), "X-External-Sender")).as_deref(),
            Some("someone@outside.test")
        );
    }
    Ok(())
}

/// A message with one attachment of this name (a PDF report first, so the
/// blocked part is not the first one).
fn with_attachment(filename: &str) -> Vec<u8> {
    format!(
        "Subject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n\
         --b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nTVo=\r\n--b--\r\n"
    )
    .into_bytes()
}

/// The JavaScript plugin, built with componentize-js: refuses blocked
/// attachment types naming the type, passes the rest, quarantines when told
/// to, and rejects bad settings at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_plugin_refuses_blocked_attachments() -> Result<()> {
    let plugin = |settings: &str| {
        format!(
            "name = \"attachments\"\npath = \"{ATTACHMENT_FILTER}\"\nstages = [\"data\"]\ncapabilities = [\"log\"]\nmemory_limit_bytes = 268435456\n[plugin.settings]\n{settings}"
        )
    };
    let bad = Setup::new().plugin(&plugin("action = \"drop\"\n")).start().await;
    let error = bad.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        error.contains("action must be \"reject\" or \"quarantine\", not \"drop\""),
        "{error}"
    );

    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&plugin("also_block = [\"docm\"]\n"))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for (filename, blocked) in [
        ("invoice.pdf.exe", Some("exe")),
        ("Payment.JS", Some("js")),
        ("setup.scr.zip", Some("scr")),
        ("macro.docm", Some("docm")),
        ("photos.zip", None),
        ("notes.txt", None),
    ] {
        let reply = client
            .send_message("a@x.test", &["b@y.test"], &with_attachment(filename))
            .await?;
        match blocked {
            Some(ext) => {
                assert_eq!(reply.code, 550, "{filename}: {reply:?}");
                assert_eq!(
                    reply.text(),
                    format!("5.7.1 Message refused: attachments of type .{ext} are not accepted (\"{filename}\")"),
                );
            }
            None => assert_eq!(reply.code, 250, "{filename}: {reply:?}"),
        }
    }
    wait_until(WAIT, || sink.count() == 2 && gw.queued() == 0).await?;

    let quarantining = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&plugin("action = \"quarantine\"\n"))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(quarantining.addr).await?;
    let reply = client
        .send_message("a@x.test", &["b@y.test"], &with_attachment("run.bat"))
        .await?;
    assert_eq!(reply.code, 250, "{reply:?}");
    let held = std::fs::read_dir(quarantining.spool().join("quarantine"))?.count();
    assert_eq!(held, 1, "the message is quarantined");
    assert_eq!(sink.count(), 2, "and not delivered");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_plugin_refuses_messages_without_exactly_one_from_and_date() -> Result<()> {
    let plugin = |settings: &str| {
        format!(
            "name = \"rfc5322\"\npath = \"{RFC5322_CHECK}\"\nstages = [\"data\"]\ncapabilities = [\"log\"]\n{settings}"
        )
    };
    let bad = Setup::new()
        .plugin(&plugin("[plugin.settings]\nstrict = true\n"))
        .start()
        .await;
    let error = bad.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(error.contains("rfc5322-check takes no settings"), "{error}");

    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&plugin(""))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    let date = "Date: Fri, 4 Dec 2026 20:00:00 +0000\r\n";
    for (headers, refusal) in [
        (format!("From: a@x.test\r\n{date}Subject: fine\r\n"), None),
        (
            "From: a@x.test\r\nSubject: no date\r\n".to_owned(),
            Some("5.6.0 message has 0 Date header fields; RFC 5322 requires exactly one"),
        ),
        (
            format!("From: a@x.test\r\nFrom: b@x.test\r\n{date}"),
            Some("5.6.0 message has 2 From header fields; RFC 5322 requires exactly one"),
        ),
        (
            format!("From: a@x.test\r\n{date}Subject: one\r\nSubject: two\r\n"),
            Some("5.6.0 message has 2 Subject header fields; RFC 5322 allows one"),
        ),
    ] {
        let message = format!("{headers}\r\nbody\r\n");
        let reply = client
            .send_message("a@x.test", &["b@y.test"], message.as_bytes())
            .await?;
        match refusal {
            Some(text) => {
                assert_eq!(reply.code, 550, "{headers}: {reply:?}");
                assert_eq!(reply.text(), text);
            }
            None => assert_eq!(reply.code, 250, "{headers}: {reply:?}"),
        }
    }
    // Fifty more transactions, each on a fresh instance: none traps.
    for n in 0..50 {
        let message = format!("From: a@x.test\r\n{date}Subject: {n}\r\n\r\nbody\r\n");
        let reply = client
            .send_message("a@x.test", &["b@y.test"], message.as_bytes())
            .await?;
        assert_eq!(reply.code, 250, "{n}: {reply:?}");
    }
    wait_until(WAIT, || sink.count() == 51 && gw.queued() == 0).await?;
    Ok(())
}

/// `mailgate plugin test` straight from a message file and an envelope,
/// asserting the headers the plugin adds, with settings from a file of any
/// name (TOML unless it is a JSON object).
#[test]
fn plugin_test_takes_an_eml_and_checks_headers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let eml = dir.path().join("msg.eml");
    // LF line endings, as a mail client saves them: made CRLF for the test.
    std::fs::write(&eml, "From: a@x.test\nSubject: hello\n\nbody\n")?;
    let settings = dir.path().join("settings-without-extension");
    std::fs::write(&settings, "[[rules]]\nset = \"X-Checked\"\nvalue = \"yes\"\n")?;
    let run = |expected: &str| -> anyhow::Result<(Option<i32>, String)> {
        let output = std::process::Command::new(crate::binary())
            .args(["plugin", "test", "--plugin", HEADER_REWRITE, "--settings"])
            .arg(&settings)
            .arg("--eml")
            .arg(&eml)
            .args(["--from", "a@x.test", "--to", "b@y.test", "--expect", "continue"])
            .args(["--expect-header", expected])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.code(), text))
    };
    let (code, text) = run("X-Checked: yes")?;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("msg.eml") && text.contains("data"), "{text}");
    let (code, text) = run("X-Checked: no")?;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("FAILED: expected header \"X-Checked: no\""), "{text}");
    // The same settings as JSON, through a path with no extension either.
    std::fs::write(&settings, r#"{"rules": [{"set": "X-Checked", "value": "yes"}]}"#)?;
    let (code, text) = run("x-checked: yes")?;
    assert_eq!(code, Some(0), "{text}");
    Ok(())
}
