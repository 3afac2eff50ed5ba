//! Outbound TLS and AUTH against sinks with certificates made at test time:
//! opportunistic STARTTLS, required TLS that never falls back to clear
//! text, certificate names checked, AUTH to a smarthost.

use anyhow::Result;
use mailgate_tests::{DnsServer, Gateway, Setup, SinkServer, SmtpClient, TestCa, wait_until};

use crate::WAIT;

async fn send(gw: &Gateway) -> Result<()> {
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@relay.test"], b"Subject: tls\r\n\r\nhello\r\n").await
}

/// A DNS server saying `relay.test` is 127.0.0.1, for certificate names.
pub(crate) async fn dns() -> Result<DnsServer> {
    let dns = DnsServer::start().await?;
    dns.address("relay.test", "127.0.0.1".parse()?);
    Ok(dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_tls_upgrades_when_offered() -> Result<()> {
    let ca = TestCa::new()?;
    let sink = SinkServer::start().await?;
    // A certificate nobody could verify: opportunistic TLS encrypts anyway.
    sink.behave(|b| b.tls = Some(ca.server_config(&["unrelated.test"]).unwrap()));
    let gw = Setup::new().route_all_to(sink.addr()).start().await?;
    send(&gw).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert!(sink.messages()[0].tls, "delivered inside TLS");

    // And without STARTTLS on offer, it is delivered in clear.
    let plain = SinkServer::start().await?;
    let gw = Setup::new().route_all_to(plain.addr()).start().await?;
    send(&gw).await?;
    wait_until(WAIT, || plain.count() == 1).await?;
    assert!(!plain.messages()[0].tls);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_never_sends_in_clear() -> Result<()> {
    let plain = SinkServer::start().await?;
    let dns = dns().await?;
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&format!(
            "domains = [\"*\"]\nsmarthost = \"relay.test:{}\"\ntls = \"require\"",
            plain.addr().port()
        ))
        .start()
        .await?;
    send(&gw).await?;
    // Several attempts, each stopping after EHLO: never a MAIL command.
    wait_until(WAIT, || plain.connections() >= 2).await?;
    assert_eq!(plain.mail_commands(), 0, "nothing was sent in clear");
    assert_eq!(plain.count(), 0);
    assert_eq!(gw.queued(), 1, "deferred, not bounced");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_checks_the_certificate_name() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file)?;
    let dns = dns().await?;
    let route = |port: u16| {
        format!(
            "domains = [\"*\"]\nsmarthost = \"relay.test:{port}\"\ntls = \"require\"\nca_file = \"{}\"",
            ca_file.display()
        )
    };

    let wrong = SinkServer::start().await?;
    wrong.behave(|b| b.tls = Some(ca.server_config(&["other.test"]).unwrap()));
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route(wrong.addr().port()))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || wrong.connections() >= 2).await?;
    assert_eq!(wrong.mail_commands(), 0, "a certificate for another name is refused");
    assert_eq!(gw.queued(), 1);

    let right = SinkServer::start().await?;
    right.behave(|b| b.tls = Some(ca.server_config(&["relay.test"]).unwrap()));
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route(right.addr().port()))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || right.count() == 1).await?;
    assert!(right.messages()[0].tls);

    // An unknown CA is refused too, unless the danger_ option says so.
    let other_ca = TestCa::new()?;
    let stranger = SinkServer::start().await?;
    stranger.behave(|b| b.tls = Some(other_ca.server_config(&["relay.test"]).unwrap()));
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route(stranger.addr().port()))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || stranger.connections() >= 2).await?;
    assert_eq!(stranger.mail_commands(), 0);
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&format!(
            "{}\ndanger_accept_invalid_certs = true",
            route(stranger.addr().port())
        ))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || stranger.count() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_to_a_smarthost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new()?;
    let ca_file = dir.path().join("ca.pem");
    ca.write(&ca_file)?;
    let secret = dir.path().join("password");
    std::fs::write(&secret, "s3cret pass\n")?;
    let dns = dns().await?;
    let sink = SinkServer::start().await?;
    sink.behave(|b| {
        b.tls = Some(ca.server_config(&["relay.test"]).unwrap());
        b.auth = Some(("relay-user".into(), "s3cret pass".into()));
        b.pipelining = false;
    });
    let route = |extra: &str| {
        format!(
            "domains = [\"*\"]\nsmarthost = \"relay.test:{}\"\ntls = \"require\"\nca_file = \"{}\"\nauth_username = \"relay-user\"\n{extra}",
            sink.addr().port(),
            ca_file.display()
        )
    };

    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route(&format!("auth_password_file = \"{}\"", secret.display())))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let received = &sink.messages()[0];
    assert_eq!(received.auth.as_deref(), Some("relay-user"));
    assert!(received.tls);

    // A server offering only AUTH LOGIN gets LOGIN.
    sink.behave(|b| b.auth_login_only = true);
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route("auth_password = \"s3cret pass\""))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || sink.count() == 2).await?;
    assert_eq!(sink.messages()[1].auth.as_deref(), Some("relay-user"));

    // A wrong password defers (it is a configuration problem, not the
    // sender's) and sends nothing.
    let gw = Setup::new()
        .dns(dns.addr())
        .route(&route("auth_password = \"wrong\""))
        .start()
        .await?;
    send(&gw).await?;
    wait_until(WAIT, || sink.auth_failures() >= 2).await?;
    assert_eq!(sink.count(), 2);
    assert_eq!(gw.queued(), 1);
    Ok(())
}
