//! MTA Hooks scanners as chain entries, end to end: a scanner written for
//! the tests in Python's standard library (`fixtures/mta_hooks_scanner.py`)
//! is discovered, registered with, and asked at every inbound stage (each
//! action, header and recipient changes, a timeout, a registration it
//! forgot), at the outbound stages with the real delivery engine and real
//! downstream servers (cancel on defer and before an attempt, a DSN
//! explained or suppressed, a delivery reported), in shadow mode, and
//! when it is down.

use anyhow::{Context, Result};
use base64::Engine as _;
use mailgate_tests::{MtaHooksScanner, Setup, SinkServer, SmtpClient, header_values, wait_until};

use crate::WAIT;
use crate::scrape::Scrape;

fn scanner(name: &str, url: &str, stages: &str, extra: &str) -> String {
    format!("name = \"{name}\"\nkind = \"mta-hooks\"\nurl = \"{url}\"\nstages = [{stages}]\n{extra}\n")
}

const INBOUND: &str = "\"connect\", \"helo\", \"mail\", \"rcpt\", \"data\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_is_discovered_registered_and_decides_at_every_inbound_stage() -> Result<()> {
    let scan = MtaHooksScanner::start(Some("s3cret-token"), "", 3.0)?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("scanner.token");
    std::fs::write(&token, "s3cret-token\n")?;
    let sink = SinkServer::start().await?;
    let entry = scanner(
        "scanner",
        &scan.url(),
        INBOUND,
        &format!("token_file = \"{}\"\ntimeout = \"1s\"", token.display()),
    );
    let gw = Setup::new().route_all_to(sink.addr()).plugin(&entry).start().await?;

    // ehlo: disconnect.
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    let bye = client.command("EHLO disconnect.test").await?;
    assert_eq!((bye.code, bye.text()), (421, "4.7.0 scanner says goodbye"));
    client.read_to_close().await?;

    // mail: a 4xx reject; rcpt: a 5xx reject; data: header and recipient
    // changes.
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    client.expect("EHLO client.test", 250).await?;
    let later = client.command("MAIL FROM:<tempfail@example.com>").await?;
    assert_eq!((later.code, later.text()), (451, "4.7.1 scanner says later"));
    client.expect("MAIL FROM:<alice@example.com> SIZE=100", 250).await?;
    let blocked = client.command("RCPT TO:<blocked@dest.test>").await?;
    assert_eq!(
        (blocked.code, blocked.text()),
        (550, "5.7.1 scanner blocks this recipient")
    );
    client.expect("RCPT TO:<bob@dest.test> NOTIFY=FAILURE", 250).await?;
    client.expect("DATA", 354).await?;
    client
        .send(b"Subject: tag\r\nX-Remove-Me: yes\r\nX-Keep: yes\r\n\r\nHello.\r\n.\r\n")
        .await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let received = &sink.messages()[0];
    let mut rcpts = received.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@dest.test", "copy@dest.test"]);
    let text = received.text();
    assert_eq!(header_values(&text, "X-Scanner"), ["scanned"], "{text}");
    assert!(header_values(&text, "X-Remove-Me").is_empty(), "{text}");
    assert_eq!(header_values(&text, "X-Keep"), ["yes"], "{text}");

    // data: discard, quarantine, reject; a scanner slower than `timeout`
    // is a fault, answered by `on_error` (tempfail).
    for (subject, code, text) in [
        ("discard", 250, None),
        ("quarantine", 250, None),
        ("reject", 554, Some("5.7.1 scanner rejects this content")),
        ("slow", 451, Some("4.3.0 Error: local error in processing")),
    ] {
        let content = format!("Subject: {subject}\r\n\r\nbody\r\n");
        let reply = client
            .send_message("alice@example.com", &["bob@dest.test"], content.as_bytes())
            .await?;
        assert_eq!(reply.code, code, "{subject}: {}", reply.text());
        if let Some(text) = text {
            assert_eq!(reply.text(), text, "{subject}");
        }
    }
    let quarantined = std::fs::read_dir(gw.spool().join("quarantine"))?.count();
    assert_eq!(quarantined, 1, "the quarantined message is held");

    // A scanner that forgot the registration (404) is registered with again.
    scan.forget()?;
    let reply = client
        .send_message(
            "alice@example.com",
            &["bob@dest.test"],
            b"Subject: fine\r\n\r\nbody\r\n",
        )
        .await?;
    assert_eq!(reply.code, 250, "{}", reply.text());
    wait_until(WAIT, || sink.count() == 2).await?;
    assert_eq!(sink.count(), 2, "nothing else was delivered");

    // What the scanner was sent: discovery, one registration for the
    // configured stages (and the second one), with the token throughout.
    let requests = scan.requests();
    assert_eq!(requests[0]["path"], "/.well-known/mta-hooks");
    let registrations: Vec<&serde_json::Value> = requests.iter().filter(|r| r["path"] == "/v1/register").collect();
    assert_eq!(registrations.len(), 2, "{registrations:?}");
    let asked = &registrations[0]["body"];
    assert_eq!(
        asked["inbound"]["stages"],
        serde_json::json!(["connect", "ehlo", "mail", "rcpt", "data"])
    );
    assert_eq!(asked["outbound"], serde_json::Value::Null);
    assert_eq!(asked["serialization"], "json");
    assert_eq!(asked["timeoutMs"], 1000);
    assert!(
        requests.iter().all(|r| r["method"] == "GET" || r["authorized"] == true),
        "{requests:?}"
    );
    let connect = &scan.calls("connect")[0];
    assert_eq!(connect["client"]["ip"], "127.0.0.1");
    assert_eq!(connect["action"], "accept");
    assert_eq!(connect["protocol"]["version"], "1.0");
    let mail = scan.calls("mail");
    let sized = mail
        .iter()
        .find(|m| m["envelope"]["from"]["address"] == "alice@example.com")
        .context("no mail call for alice")?;
    assert_eq!(sized["envelope"]["from"]["parameters"]["SIZE"], "100");
    assert_eq!(sized["client"]["ehlo"], "client.test");
    let rcpt = scan.calls("rcpt");
    let bob = rcpt
        .iter()
        .find(|r| r["envelope"]["to"][0]["address"] == "bob@dest.test")
        .context("no rcpt call for bob")?;
    assert_eq!(bob["envelope"]["to"][0]["parameters"]["NOTIFY"], "FAILURE");
    let data = &scan.calls("data")[0];
    let raw = base64::engine::general_purpose::STANDARD.decode(data["rawMessage"].as_str().unwrap_or(""))?;
    assert!(String::from_utf8_lossy(&raw).contains("Subject: tag\r\n"));
    let names: Vec<&str> = data["message"]["headers"]
        .as_array()
        .context("no headers")?
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["Received", "Subject", "X-Remove-Me", "X-Keep"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_decides_at_the_outbound_stages() -> Result<()> {
    let scan = MtaHooksScanner::start(None, "", 3.0)?;
    let dest = SinkServer::start().await?;
    dest.behave(|b| {
        for gone in ["gone@dest.test", "quiet@dest.test"] {
            b.rcpt_replies.insert(gone.into(), "550 5.1.1 no such user".into());
        }
        b.rcpt_replies
            .insert("later@dest.test".into(), "451 4.2.1 mailbox busy".into());
    });
    let back = SinkServer::start().await?;
    let gw = Setup::new()
        .hourly_retries()
        .route_to("\"back.test\"", back.addr())
        .route_all_to(dest.addr())
        .plugin(&scanner(
            "scanner",
            &scan.url(),
            "\"deliver\", \"defer\", \"bounce\", \"delivered\"",
            "",
        ))
        .start()
        .await?;
    for to in [
        "ok@dest.test",
        "later@dest.test",
        "nowhere@dest.test",
        "gone@dest.test",
        "quiet@dest.test",
    ] {
        let content = format!("From: sender@back.test\r\nTo: {to}\r\nSubject: out\r\n\r\nhello\r\n");
        SmtpClient::deliver(gw.addr, "sender@back.test", &[to], content.as_bytes()).await?;
    }
    // ok: delivered, and the scanner told; later: deferred, the scanner
    // cancels (a bounce now, not in an hour); nowhere: cancelled before
    // its attempt; gone: refused, its DSN explained by the scanner;
    // quiet: refused, its DSN suppressed.
    wait_until(WAIT, || gw.queued() == 0 && back.count() == 3).await?;
    assert_eq!(
        dest.messages().iter().map(|m| m.rcpt_to.clone()).collect::<Vec<_>>(),
        [["ok@dest.test"]]
    );
    let bounces: Vec<String> = back.messages().iter().map(|m| m.text()).collect();
    let about = |rcpt: &str| bounces.iter().find(|b| b.contains(rcpt)).cloned();
    assert!(about("later@dest.test").is_some(), "{bounces:?}");
    let nowhere = about("nowhere@dest.test").context("no DSN for nowhere")?;
    assert!(nowhere.contains("scanner"), "{nowhere}");
    let gone = about("gone@dest.test").context("no DSN for gone")?;
    assert!(gone.contains("scanner explains"), "{gone}");
    assert!(about("quiet@dest.test").is_none(), "{bounces:?}");

    // Each delivery is reported, the DSNs' included.
    let to = |call: &serde_json::Value| call["envelope"]["to"][0]["address"].as_str().unwrap_or("").to_owned();
    let delivered = scan.calls("delivery");
    let ok: Vec<_> = delivered.iter().filter(|d| to(d) == "ok@dest.test").collect();
    assert_eq!(ok.len(), 1, "{delivered:?}");
    assert_eq!(ok[0]["response"]["message"], "250 accepted");
    assert_eq!(delivered.iter().filter(|d| to(d) == "sender@back.test").count(), 3);
    let defer = scan.calls("defer");
    assert_eq!(defer[0]["response"]["code"], 451, "{defer:?}");
    assert_eq!(defer[0]["delivery"]["attempt"], 1);
    assert!(defer[0]["queue"]["id"].as_str().is_some_and(|id| !id.is_empty()));
    let routed: Vec<String> = scan
        .calls("route")
        .iter()
        .map(to)
        .filter(|t| t.ends_with("@dest.test"))
        .collect();
    assert_eq!(routed.len(), 5, "one route call per attempt: {routed:?}");
    let dsn = scan.calls("dsn");
    assert!(dsn.iter().any(|d| to(d) == "quiet@dest.test"));
    assert!(dsn.iter().all(|d| d["response"]["message"].is_string()), "{dsn:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_scanner_is_compared_and_never_applied_and_gets_only_offered_stages() -> Result<()> {
    // It offers only `data`; `rcpt` is configured too, so it is left out
    // of the registration and never called.
    let scan = MtaHooksScanner::start(None, "data", 3.0)?;
    let sink = SinkServer::start().await?;
    let setup = Setup::new().admin()?;
    let admin = setup.admin_address().context("no admin address")?;
    let gw = setup
        .route_all_to(sink.addr())
        .plugin(&scanner(
            "shadow-scanner",
            &scan.url(),
            "\"rcpt\", \"data\"",
            "mode = \"shadow\"",
        ))
        .start()
        .await?;
    for subject in ["reject", "fine"] {
        let content = format!("Subject: {subject}\r\n\r\nhello\r\n");
        SmtpClient::deliver(gw.addr, "a@example.com", &["b@dest.test"], content.as_bytes()).await?;
    }
    wait_until(WAIT, || sink.count() == 2).await?;
    let registration = scan
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/v1/register")
        .context("no registration")?;
    assert_eq!(registration["body"]["inbound"]["stages"], serde_json::json!(["data"]));
    assert!(scan.calls("rcpt").is_empty());
    assert_eq!(scan.calls("data").len(), 2);
    let scrape = Scrape::take(admin).await?;
    let count = |agreed: &str| {
        scrape.value(
            "mailgate_plugin_shadow_decisions_total",
            &[("plugin", "shadow-scanner"), ("stage", "data"), ("agreed", agreed)],
        )
    };
    assert_eq!((count("true"), count("false")), (1.0, 1.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_that_is_down_is_answered_by_on_error() -> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://{closed}");
    let sink = SinkServer::start().await?;
    let open = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scanner("down", &url, "\"rcpt\"", "on_error = \"continue\""))
        .start()
        .await?;
    SmtpClient::deliver(
        open.addr,
        "a@example.com",
        &["b@dest.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    )
    .await?;
    wait_until(WAIT, || sink.count() == 1).await?;

    let closed_gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&scanner("down", &url, "\"rcpt\"", ""))
        .start()
        .await?;
    let mut client = SmtpClient::connect(closed_gw.addr).await?;
    client.expect_reply(220).await?;
    client.expect("EHLO client.test", 250).await?;
    client.expect("MAIL FROM:<a@example.com>", 250).await?;
    let refused = client.command("RCPT TO:<b@dest.test>").await?;
    assert_eq!(
        (refused.code, refused.text()),
        (451, "4.3.0 Error: local error in processing")
    );
    Ok(())
}
