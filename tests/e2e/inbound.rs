//! Inbound security over real sockets with real TLS (certificates made at
//! test time): listener roles, STARTTLS and its command injection, AUTH,
//! the relay policy, abuse limits, the PROXY protocol, reloading on SIGHUP,
//! and Python's smtplib as a second, independent client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use mailgate_tests::{Gateway, GatewayProcess, Setup, SinkServer, SmtpClient, TestCa, header, wait_until};
use rustls::ClientConfig;

use crate::plugins::scripted;
use crate::{WAIT, binary};

const MESSAGE: &[u8] = b"Subject: inbound\r\n\r\nhello\r\n";

/// A CA, and a client configuration trusting it.
struct Pki {
    ca: TestCa,
    client: Arc<ClientConfig>,
}

impl Pki {
    fn new() -> Result<Self> {
        let ca = TestCa::new()?;
        let client = ca.client_config()?;
        Ok(Self { ca, client })
    }

    /// A gateway setup with a certificate for gw.test and 127.0.0.1, the
    /// user alice (password s3cret), a submission and a submissions
    /// listener, quick AUTH failure delays, and no trusted networks.
    fn setup(&self) -> Result<Setup> {
        Ok(Setup::new()
            .certificate(self.ca.issue(&["gw.test", "127.0.0.1"])?)
            .user("alice", "s3cret")
            .auth("failure_delay = \"10ms\"")
            .relay("trusted_networks = []")
            .listener("submission", "role = \"submission\"")
            .listener("submissions", "role = \"submissions\""))
    }
}

/// A CA, a sink, and a gateway set up by `Pki::setup`, changed by
/// `tweak`, relaying everything to the sink.
async fn relaying(tweak: impl FnOnce(Setup) -> Setup) -> Result<(Pki, SinkServer, Gateway)> {
    let pki = Pki::new()?;
    let sink = SinkServer::start().await?;
    let gw = tweak(pki.setup()?).route_all_to(sink.addr()).start().await?;
    Ok((pki, sink, gw))
}

fn plain(user: &str, password: &str) -> String {
    BASE64.encode(format!("\0{user}\0{password}"))
}

/// Connects in clear, reads the greeting and says EHLO; returns the
/// client and the EHLO keywords.
async fn greeted(addr: std::net::SocketAddr) -> Result<(SmtpClient, Vec<String>)> {
    let mut client = SmtpClient::connect(addr).await?;
    client.expect_reply(220).await?;
    let ehlo = client.expect("EHLO client.test", 250).await?;
    Ok((client, ehlo.lines))
}

async fn ehlo(client: &mut SmtpClient) -> Result<Vec<String>> {
    Ok(client.expect("EHLO client.test", 250).await?.lines)
}

/// Connects to a STARTTLS listener, upgrades and says EHLO again.
async fn upgraded(addr: std::net::SocketAddr, pki: &Pki) -> Result<SmtpClient> {
    let (client, _) = greeted(addr).await?;
    let mut client = client.starttls(Arc::clone(&pki.client), "gw.test").await?;
    ehlo(&mut client).await?;
    Ok(client)
}

/// Connects to an implicit-TLS listener, reads the greeting, says EHLO.
async fn implicit(addr: std::net::SocketAddr, pki: &Pki) -> Result<(SmtpClient, Vec<String>)> {
    let mut client = SmtpClient::connect_tls(addr, Arc::clone(&pki.client), "gw.test").await?;
    client.expect_reply(220).await?;
    let keywords = ehlo(&mut client).await?;
    Ok((client, keywords))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_needs_tls_then_auth_and_then_relays_anywhere() -> Result<()> {
    let settings = "[plugin.settings.mail]\nmodifications = [{ kind = \"metadata-from-context\", key = \"ctx\" }]\n[plugin.settings.data]\nmodifications = [{ kind = \"header-from-metadata\", name = \"X-Context\", key = \"ctx\" }]\n";
    let (pki, sink, gw) = relaying(|setup| setup.plugin(&scripted("context", "\"mail\", \"data\"", settings))).await?;
    let (mut client, keywords) = greeted(gw.listener("submission")).await?;
    assert!(keywords.contains(&"STARTTLS".to_owned()), "{keywords:?}");
    assert!(
        !keywords.iter().any(|k| k.starts_with("AUTH")),
        "no AUTH in clear: {keywords:?}"
    );
    let reply = client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "s3cret")), 538)
        .await?;
    assert!(reply.text().starts_with("5.7.11 "), "{}", reply.text());
    client.expect("MAIL FROM:<alice@x.test>", 530).await?;

    let mut client = client.starttls(Arc::clone(&pki.client), "gw.test").await?;
    let keywords = ehlo(&mut client).await?;
    assert!(keywords.contains(&"AUTH PLAIN LOGIN".to_owned()), "{keywords:?}");
    assert!(!keywords.contains(&"STARTTLS".to_owned()), "{keywords:?}");
    let reply = client.expect("MAIL FROM:<alice@x.test>", 530).await?;
    assert_eq!(reply.text(), "5.7.0 Authentication required");
    let reply = client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "wrong")), 535)
        .await?;
    assert_eq!(reply.text(), "5.7.8 Authentication credentials invalid");
    client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "s3cret")), 235)
        .await?;
    let reply = client
        .send_message("alice@x.test", &["carol@elsewhere.test"], MESSAGE)
        .await?;
    ensure!(reply.code == 250, "{}", reply.first_line());

    wait_until(WAIT, || sink.count() == 1).await?;
    let text = sink.messages()[0].text();
    let received = header(&text, "Received").unwrap_or_default();
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(received.contains("(using TLSv1.3 with cipher "), "{received}");
    // The plugin saw the identity and the encryption at MAIL.
    let context = header(&text, "X-Context").unwrap_or_default();
    assert!(
        context.contains("listener=submission tls=true auth=alice "),
        "{context}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_over_implicit_tls() -> Result<()> {
    let (pki, sink, gw) = relaying(|setup| setup).await?;
    let (mut client, keywords) = implicit(gw.listener("submissions"), &pki).await?;
    assert!(keywords.contains(&"AUTH PLAIN LOGIN".to_owned()), "{keywords:?}");
    assert!(!keywords.contains(&"STARTTLS".to_owned()), "not again inside TLS");
    client.expect("STARTTLS", 503).await?;
    let reply = client.expect("AUTH LOGIN", 334).await?;
    assert_eq!(reply.text(), "VXNlcm5hbWU6");
    client.expect(&BASE64.encode("alice"), 334).await?;
    client.expect(&BASE64.encode("s3cret"), 235).await?;
    let reply = client
        .send_message("alice@x.test", &["carol@elsewhere.test"], MESSAGE)
        .await?;
    ensure!(reply.code == 250, "{}", reply.first_line());
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_clients_are_served_too() -> Result<()> {
    let (pki, sink, gw) = relaying(|setup| setup).await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate_der(&pki.ca.pem())?.into())?;
    let tls12 = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = SmtpClient::connect_tls(gw.listener("submissions"), Arc::new(tls12), "gw.test").await?;
    client.expect_reply(220).await?;
    ehlo(&mut client).await?;
    client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "s3cret")), 235)
        .await?;
    let reply = client
        .send_message("alice@x.test", &["carol@elsewhere.test"], MESSAGE)
        .await?;
    ensure!(reply.code == 250, "{}", reply.first_line());
    wait_until(WAIT, || sink.count() == 1).await?;
    let received = header(&sink.messages()[0].text(), "Received").unwrap_or_default();
    assert!(received.contains("(using TLSv1.2 with cipher TLS_ECDHE_"), "{received}");
    Ok(())
}

/// CVE-2011-0411: a command pipelined after STARTTLS in the same write
/// must not be carried out inside the TLS session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_injected_after_starttls_are_not_executed() -> Result<()> {
    // The relay listener "test" offers STARTTLS because [tls] is set;
    // loopback is trusted here so that the injected MAIL would be accepted.
    let (pki, sink, gw) = relaying(|setup| setup.relay("trusted_networks = [\"127.0.0.0/8\"]")).await?;
    let (mut client, keywords) = greeted(gw.addr).await?;
    assert!(keywords.contains(&"STARTTLS".to_owned()), "{keywords:?}");
    assert!(
        !keywords.iter().any(|k| k.starts_with("AUTH")),
        "no AUTH on a relay listener"
    );
    client
        .send(b"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@elsewhere.test>\r\n")
        .await?;
    client.expect_reply(220).await?;
    let mut client = client.tls_handshake(Arc::clone(&pki.client), "gw.test").await?;
    // The session starts over: the injected MAIL was not carried out.
    let reply = client.expect("RCPT TO:<victim@elsewhere.test>", 503).await?;
    assert_eq!(reply.text(), "5.5.1 Error: need MAIL command");
    let keywords = ehlo(&mut client).await?;
    assert!(!keywords.contains(&"STARTTLS".to_owned()));
    client.expect("STARTTLS", 503).await?;
    client.expect("RCPT TO:<victim@elsewhere.test>", 503).await?;
    let reply = client.send_message("good@x.test", &["b@y.test"], MESSAGE).await?;
    ensure!(reply.code == 250, "{}", reply.first_line());
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.mail_commands(), 1);
    assert!(!sink.messages()[0].text().contains("injected"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_submits_over_starttls_and_implicit_tls() -> Result<()> {
    let (pki, sink, gw) = relaying(|setup| setup).await?;
    let ca_file = gw.dir.path().join("ca.pem");
    pki.ca.write(&ca_file)?;
    let script = r#"
import smtplib, ssl, sys
submission, submissions, cafile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=cafile)
message = "From: alice@x.test\r\nTo: carol@elsewhere.test\r\nSubject: {}\r\n\r\nhello from smtplib\r\n"
with smtplib.SMTP("127.0.0.1", submission, local_hostname="py.test", timeout=30) as s:
    s.starttls(context=context)
    try:
        s.login("alice", "wrong")
        sys.exit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login("alice", "s3cret")
    s.sendmail("alice@x.test", ["carol@elsewhere.test"], message.format("starttls"))
with smtplib.SMTP_SSL("127.0.0.1", submissions, local_hostname="py.test", context=context, timeout=30) as s:
    s.ehlo()
    s.user, s.password = "alice", "s3cret"
    s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    s.sendmail("alice@x.test", ["carol@elsewhere.test"], message.format("implicit"))
with smtplib.SMTP("127.0.0.1", submission, local_hostname="py.test", timeout=30) as s:
    try:
        s.sendmail("alice@x.test", ["carol@elsewhere.test"], message.format("no auth"))
        sys.exit("mail without AUTH was accepted")
    except smtplib.SMTPSenderRefused as e:
        assert e.smtp_code == 530, e
print("ok")
"#;
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(gw.listener("submission").port().to_string())
        .arg(gw.listener("submissions").port().to_string())
        .arg(&ca_file)
        .output()
        .await
        .context("running python3")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "smtplib failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
    wait_until(WAIT, || sink.count() == 2).await?;
    let mut subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| header(&m.text(), "Subject").unwrap_or_default())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["implicit", "starttls"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_relay_attempts_are_refused() -> Result<()> {
    let sink = SinkServer::start().await?;
    // The default [relay] (loopback trusted, no accepted domains) plus one
    // accepted domain; the "lb" listener takes the client from PROXY
    // headers, so a client can come from outside loopback.
    let gw = Setup::new()
        .relay("accepted_domains = [\"example.test\"]")
        .listener("lb", "proxy_protocol = true")
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut outsider = SmtpClient::connect(gw.listener("lb")).await?;
    outsider.send(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n").await?;
    outsider.expect_reply(220).await?;
    outsider.expect("EHLO outside.test", 250).await?;
    outsider.expect("MAIL FROM:<spammer@outside.test>", 250).await?;
    for rcpt in [
        "victim@elsewhere.test",
        "victim@example.test.evil",
        "\"a@example.test\"@evil.test",
    ] {
        let reply = outsider.expect(&format!("RCPT TO:<{rcpt}>"), 554).await?;
        assert_eq!(reply.text(), "5.7.1 Relay access denied", "{rcpt}");
    }
    outsider.expect("RCPT TO:<postmaster@example.test>", 250).await?;
    outsider.expect("DATA", 354).await?;
    outsider.send(&mailgate_tests::stuff(MESSAGE)).await?;
    outsider.expect_reply(250).await?;
    outsider.expect("AUTH PLAIN AGFsaWNlAHMzY3JldA==", 503).await?;

    // A trusted network may relay anywhere.
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@elsewhere.test"], MESSAGE).await?;
    wait_until(WAIT, || sink.count() == 2).await?;
    let rcpts: Vec<Vec<String>> = sink.messages().iter().map(|m| m.rcpt_to.clone()).collect();
    assert!(rcpts.contains(&vec!["postmaster@example.test".to_owned()]), "{rcpts:?}");
    assert!(rcpts.contains(&vec!["b@elsewhere.test".to_owned()]), "{rcpts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_honoured_only_where_enabled() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .relay("accepted_domains = [\"example.test\"]")
        .listener("lb", "proxy_protocol = true")
        .route_all_to(sink.addr())
        .start()
        .await?;
    // v1 and v2 headers name the client in the trace header.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend([198, 51, 100, 4, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
    for (header_bytes, client_ip) in [
        (
            b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n".to_vec(),
            "[203.0.113.9]",
        ),
        (v2, "[198.51.100.4]"),
    ] {
        let mut client = SmtpClient::connect(gw.listener("lb")).await?;
        client.send(&header_bytes).await?;
        client.expect_reply(220).await?;
        client.expect("EHLO c.test", 250).await?;
        let reply = client.send_message("a@x.test", &["b@example.test"], MESSAGE).await?;
        ensure!(reply.code == 250, "{}", reply.first_line());
        let count = sink.count() + 1;
        wait_until(WAIT, || sink.count() >= count).await?;
        let received = header(&sink.messages()[count - 1].text(), "Received").unwrap_or_default();
        assert!(
            received.starts_with(&format!("from c.test ({client_ip})")),
            "{received}"
        );
    }
    // Without a header the PROXY listener closes at once, saying nothing.
    let mut client = SmtpClient::connect(gw.listener("lb")).await?;
    client.send(b"EHLO c.test\r\n").await?;
    // (A reset is fine too: the gateway closed with the rest unread.)
    let said = client.read_to_close().await.unwrap_or_default();
    assert!(said.is_empty(), "{}", String::from_utf8_lossy(&said));

    // Elsewhere a PROXY line is just an unknown command, and changes nothing.
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    client.expect("PROXY TCP4 203.0.113.9 127.0.0.1 40000 25", 500).await?;
    client.expect("EHLO c.test", 250).await?;
    let reply = client.send_message("a@x.test", &["b@elsewhere.test"], MESSAGE).await?;
    ensure!(reply.code == 250, "loopback is still trusted: {}", reply.first_line());
    wait_until(WAIT, || sink.count() == 3).await?;
    let received = header(&sink.messages()[2].text(), "Received").unwrap_or_default();
    assert!(received.starts_with("from c.test ([127.0.0.1])"), "{received}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_address_are_capped() -> Result<()> {
    let gw = Setup::new()
        .server("max_connections_per_ip = 2")
        .relay("trusted_networks = []")
        .listener("lb", "proxy_protocol = true")
        .start()
        .await?;
    let first = SmtpClient::greeted(gw.addr).await?;
    let _second = SmtpClient::greeted(gw.addr).await?;
    let mut third = SmtpClient::connect(gw.addr).await?;
    let reply = third.expect_reply(421).await?;
    assert_eq!(
        reply.text(),
        "4.7.0 gw.test Error: too many connections from your address"
    );
    assert!(third.read_to_close().await?.is_empty());
    // Another client (by its PROXY address) is not affected.
    let mut other = SmtpClient::connect(gw.listener("lb")).await?;
    other.send(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n").await?;
    other.expect_reply(220).await?;
    // A closed connection frees its slot.
    drop(first);
    let mut reconnected = None;
    for _ in 0..100 {
        let mut client = SmtpClient::connect(gw.addr).await?;
        if client.reply().await?.code == 220 {
            reconnected = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reconnected.is_some(), "the slot was never freed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_commands_without_a_transaction_are_capped() -> Result<()> {
    let gw = Setup::new()
        .smtp("max_errors = 3")
        .smtp("max_idle_commands = 5")
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for _ in 0..3 {
        client.expect("FROB", 500).await?;
    }
    let reply = client.expect("FROB", 421).await?;
    assert_eq!(reply.text(), "4.7.0 gw.test Error: too many errors");
    assert!(client.read_to_close().await?.is_empty());

    // EHLO and four NOOPs are five commands; the sixth closes.
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for _ in 0..4 {
        client.expect("NOOP", 250).await?;
    }
    let reply = client.expect("NOOP", 421).await?;
    assert_eq!(
        reply.text(),
        "4.7.0 gw.test Error: too many commands without a transaction"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_per_user_are_capped() -> Result<()> {
    let (pki, sink, gw) = relaying(|setup| setup.auth("user_message_limit = 2")).await?;
    let (mut client, _) = implicit(gw.listener("submissions"), &pki).await?;
    client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "s3cret")), 235)
        .await?;
    for _ in 0..2 {
        let reply = client
            .send_message("alice@x.test", &["b@elsewhere.test"], MESSAGE)
            .await?;
        ensure!(reply.code == 250, "{}", reply.first_line());
    }
    let reply = client.expect("MAIL FROM:<alice@x.test>", 450).await?;
    assert!(reply.text().starts_with("4.7.1 "), "{}", reply.text());
    wait_until(WAIT, || sink.count() == 2).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_slows_down_then_disconnects_the_client() -> Result<()> {
    let pki = Pki::new()?;
    let gw = pki
        .setup()?
        .auth("failure_delay = \"300ms\"")
        .auth("max_failures = 3")
        .start()
        .await?;
    let mut client = upgraded(gw.listener("submission"), &pki).await?;
    for least in [300, 600] {
        let started = Instant::now();
        client
            .expect(&format!("AUTH PLAIN {}", plain("alice", "guess")), 535)
            .await?;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(least), "answered after {waited:?}");
    }
    let reply = client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "guess")), 421)
        .await?;
    assert_eq!(
        reply.text(),
        "4.7.0 gw.test Error: too many failed authentication attempts"
    );
    assert!(client.read_to_close().await?.is_empty());
    // The address stays shut out for a while, even with the right password.
    let mut client = upgraded(gw.listener("submission"), &pki).await?;
    client
        .expect(&format!("AUTH PLAIN {}", plain("alice", "s3cret")), 421)
        .await?;
    Ok(())
}

/// The certificate a STARTTLS handshake on `addr` presents.
async fn served_certificate(addr: std::net::SocketAddr, client: Arc<ClientConfig>) -> Result<Vec<u8>> {
    let (client_conn, _) = greeted(addr).await?;
    let client_conn = client_conn.starttls(client, "gw.test").await?;
    client_conn.peer_certificate().context("no certificate")
}

fn certificate_der(pem: &str) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject as _;
    Ok(rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_users() -> Result<()> {
    let pki = Pki::new()?;
    let first = pki.ca.issue(&["gw.test"])?;
    let first_der = certificate_der(&first.0)?;
    let dir = tempfile::tempdir()?;
    let config = pki.setup()?.certificate(first).write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    assert_eq!(
        served_certificate(gateway.addr, Arc::clone(&pki.client)).await?,
        first_der
    );

    // New files, and a new user added with the CLI.
    let (cert, key) = pki.ca.issue(&["gw.test"])?;
    let second_der = certificate_der(&cert)?;
    std::fs::write(dir.path().join("cert.pem"), cert)?;
    std::fs::write(dir.path().join("key.pem"), key)?;
    let mut add = tokio::process::Command::new(binary())
        .args(["user", "--config"])
        .arg(&config)
        .args(["add", "bob"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = add.stdin.take().context("no stdin")?;
        stdin.write_all(b"hunter2\n").await?;
    }
    ensure!(add.wait().await?.success(), "mailgate user add failed");
    // Until the signal, the old certificate is served.
    assert_eq!(
        served_certificate(gateway.addr, Arc::clone(&pki.client)).await?,
        first_der
    );

    gateway.hangup()?;
    let deadline = Instant::now() + WAIT;
    while served_certificate(gateway.addr, Arc::clone(&pki.client)).await? != second_der {
        ensure!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let submission = gateway
        .listener("submission")
        .context("no submission listener in the log")?;
    let mut client = upgraded(submission, &pki).await?;
    client
        .expect(&format!("AUTH PLAIN {}", plain("bob", "hunter2")), 235)
        .await?;
    drop(client);
    gateway.terminate().await?;
    Ok(())
}
