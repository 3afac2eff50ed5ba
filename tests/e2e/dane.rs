//! DANE for SMTP (RFC 7672) against a real DNSSEC-signed DNS on loopback
//! (BIND, with keys made at test time; the test's own root key is the
//! trust anchor) and a real TLS downstream whose certificate comes from a
//! test CA: DANE-EE and DANE-TA records that match deliver over TLS; a
//! record that matches nothing, a DANE-TA chain for another name, a bogus
//! zone and a host without STARTTLS are deferred and then bounced with a
//! DSN that names the cause, and nothing is sent in clear; an unsigned
//! (insecure) zone is delivered to as before; DANE goes before an enforced
//! MTA-STS policy; REQUIRETLS counts DNSSEC-validated MX records with a
//! DANE-verified certificate as authenticated; TLS reporting counts the
//! sessions under each domain's `tlsa` policy.

use anyhow::{Context, Result};
use mailgate_tests::{
    Gateway, HttpsServer, Setup, SignedDns, Signing, SinkServer, SmtpClient, TestCa, Zone, dsn_parts, wait_until,
};
use sha2::{Digest as _, Sha256};

use crate::WAIT;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A signed zone `name` whose MX host `mx.<name>` is 127.0.0.1 with the
/// TLSA record `tlsa` (none when empty) for `port`.
fn mx_zone(name: &str, signing: Signing, port: u16, tlsa: &str) -> Zone {
    let zone = Zone::new(name, signing)
        .record(&format!("@ MX 10 mx.{name}."))
        .record("mx A 127.0.0.1");
    match tlsa {
        "" => zone,
        tlsa => zone.record(&format!("_{port}._tcp.mx TLSA {tlsa}")),
    }
}

struct World {
    ca: TestCa,
    mx: SinkServer,
    bounces: SinkServer,
    /// The MTA-STS policy host of both.test.
    policy: HttpsServer,
    _dns: SignedDns,
    _files: tempfile::TempDir,
    gw: Gateway,
}

impl World {
    async fn new() -> Result<Self> {
        let ca = TestCa::new()?;
        let (tls, cert, spki) = ca.server_config_chained(&[
            "mx.ee.test",
            "mx.ta.test",
            "mx.wrong.test",
            "mx.plain.test",
            "mx.bogus.test",
        ])?;
        let mx = SinkServer::start().await?;
        mx.behave(|b| {
            b.tls = Some(tls);
            b.requiretls = true;
        });
        let port = mx.addr().port();
        let spki_sha256 = hex(&Sha256::digest(&spki));
        let dns = SignedDns::start(&[
            mx_zone("ee.test", Signing::Secure, port, &format!("3 1 1 {spki_sha256}")),
            // The full certificate, SHA-512, and a PKIX-EE record, which
            // SMTP does not use.
            mx_zone(
                "ee512.test",
                Signing::Secure,
                port,
                &format!("3 0 2 {}", hex(&sha2::Sha512::digest(&cert))),
            )
            .record(&format!("_{port}._tcp.mx TLSA 1 1 1 {spki_sha256}")),
            mx_zone(
                "ta.test",
                Signing::Secure,
                port,
                &format!("2 0 1 {}", hex(&Sha256::digest(ca.der()))),
            ),
            // The CA anchors the chain, but the certificate does not name
            // mx.other.test.
            mx_zone(
                "other.test",
                Signing::Secure,
                port,
                &format!("2 0 1 {}", hex(&Sha256::digest(ca.der()))),
            ),
            mx_zone(
                "wrong.test",
                Signing::Secure,
                port,
                &format!("3 1 1 {}", "00".repeat(32)),
            ),
            mx_zone("plain.test", Signing::Insecure, port, ""),
            // Only a PKIX-EE record: secure but unusable, so TLS is
            // mandatory and unauthenticated (RFC 7672 section 2.2).
            mx_zone("pkix.test", Signing::Secure, port, &format!("1 1 1 {spki_sha256}")),
            mx_zone("bogus.test", Signing::Bogus, port, &format!("3 1 1 {spki_sha256}")),
            // DANE and an enforced MTA-STS policy: the MX certificate's CA
            // is not one delivery trusts, so MTA-STS alone would refuse it.
            mx_zone("both.test", Signing::Secure, port, &format!("3 1 1 {spki_sha256}"))
                .record("_mta-sts TXT \"v=STSv1; id=1;\"")
                .record("mta-sts A 127.0.0.1"),
        ])
        .await?;
        let web_ca = TestCa::new()?;
        let files = tempfile::tempdir()?;
        let web_ca_file = files.path().join("web-ca.pem");
        web_ca.write(&web_ca_file)?;
        let policy = HttpsServer::start(web_ca.server_config(&["mta-sts.both.test"])?).await?;
        policy.respond(
            200,
            "text/plain",
            "version: STSv1\r\nmode: enforce\r\nmx: mx.both.test\r\nmax_age: 86400\r\n",
        );
        let bounces = SinkServer::start().await?;
        let setup = Setup::new()
            .certificate(ca.issue(&["gw.test"])?)
            .dns(dns.addr())
            .dns_line("dnssec = true")
            .dns_line(&format!("trust_anchor = \"{}\"", dns.anchor_file().display()))
            .delivery(&format!("mx_port = {port}"))
            .delivery(&format!("mta_sts_ca_file = \"{}\"", web_ca_file.display()))
            .delivery(&format!("mta_sts_port = {}", policy.addr().port()))
            .delivery("max_age = \"2s\"")
            .delivery("retry_initial = \"300ms\"")
            .delivery("idle_timeout = \"0s\"")
            .route_to("\"back.test\"", bounces.addr());
        let gw = setup.start().await?;
        Ok(Self {
            ca,
            mx,
            bounces,
            policy,
            _dns: dns,
            _files: files,
            gw,
        })
    }

    async fn send(&self, domain: &str) -> Result<()> {
        let rcpt = format!("rcpt@{domain}");
        let content = format!("From: sender@back.test\r\nTo: {rcpt}\r\nSubject: to {domain}\r\n\r\nhello\r\n");
        SmtpClient::deliver(self.gw.addr, "sender@back.test", &[&rcpt], content.as_bytes()).await
    }

    fn delivered(&self, domain: &str) -> Option<bool> {
        let rcpt = format!("rcpt@{domain}");
        self.mx
            .messages()
            .iter()
            .find(|m| m.rcpt_to.contains(&rcpt))
            .map(|m| m.tls)
    }

    /// The bounce for `domain` (or for one address): its delivery-status
    /// and human parts.
    async fn bounce(&self, domain: &str) -> Result<String> {
        let rcpt = match domain.contains('@') {
            true => domain.to_owned(),
            false => format!("rcpt@{domain}"),
        };
        let find = || {
            self.bounces
                .messages()
                .iter()
                .map(|m| m.content.clone())
                .find(|content| String::from_utf8_lossy(content).contains(&rcpt))
        };
        wait_until(WAIT, || find().is_some()).await?;
        let content = find().context("no bounce")?;
        let (status, _) = dsn_parts(&content)?;
        Ok(format!("{status}\n{}", String::from_utf8_lossy(&content)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_tlsa_records_deliver_over_tls_and_every_failure_defers_then_bounces_naming_it() -> Result<()> {
    let world = World::new().await?;
    for domain in [
        "ee.test",
        "ee512.test",
        "ta.test",
        "plain.test",
        "both.test",
        "pkix.test",
    ] {
        world.send(domain).await?;
    }
    wait_until(WAIT, || world.mx.count() == 6).await?;
    for domain in ["ee.test", "ee512.test", "ta.test", "both.test", "pkix.test"] {
        assert_eq!(world.delivered(domain), Some(true), "{domain}: delivered inside TLS");
    }
    // both.test's MTA-STS policy was fetched, and DANE went first (RFC
    // 8461 section 2): under the policy alone the certificate would fail.
    assert_eq!(world.policy.hits(), 1);
    // Insecure: opportunistic TLS as before (the downstream offers it).
    assert!(world.delivered("plain.test").is_some(), "plain.test delivered");

    for domain in ["wrong.test", "other.test", "bogus.test"] {
        world.send(domain).await?;
    }
    let wrong = world.bounce("wrong.test").await?;
    assert!(
        wrong.contains("matches none of the 1 usable TLSA records of _"),
        "{wrong}"
    );
    let other = world.bounce("other.test").await?;
    assert!(
        other.contains("mx.other.test") && other.contains("DANE TLSA records of"),
        "{other}"
    );
    let bogus = world.bounce("bogus.test").await?;
    assert!(bogus.contains("DNSSEC validation failed (bogus)"), "{bogus}");
    for domain in ["wrong.test", "other.test", "bogus.test"] {
        assert_eq!(world.delivered(domain), None, "{domain}: nothing delivered");
    }

    // REQUIRETLS (RFC 8689 section 4.2.1): DNSSEC-validated MX records and
    // a DANE-verified certificate authenticate the next hop; an insecure
    // zone without MTA-STS does not.
    let mut client = SmtpClient::greeted(world.gw.addr).await?;
    client.expect("EHLO client.test", 250).await?;
    client.expect("STARTTLS", 220).await?;
    let mut client = client.tls_handshake(world.ca.client_config()?, "gw.test").await?;
    client.expect("EHLO client.test", 250).await?;
    for domain in ["ee.test", "plain.test"] {
        client.expect("MAIL FROM:<sender@back.test> REQUIRETLS", 250).await?;
        client.expect(&format!("RCPT TO:<secret@{domain}>"), 250).await?;
        client.expect("DATA", 354).await?;
        client
            .expect(
                &format!("From: sender@back.test\r\nTo: secret@{domain}\r\nSubject: secret\r\n\r\nhello\r\n."),
                250,
            )
            .await?;
    }
    wait_until(WAIT, || world.mx.count() == 7).await?;
    let relayed = world
        .mx
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to.contains(&"secret@ee.test".to_owned()));
    let relayed = relayed.context("the REQUIRETLS message to ee.test")?;
    assert!(
        relayed.tls && relayed.mail_params.contains("REQUIRETLS"),
        "{}",
        relayed.mail_params
    );
    let refused = world.bounce("secret@plain.test").await?;
    assert!(
        refused.contains("5.7.30") && refused.contains("not DNSSEC-validated"),
        "{refused}"
    );

    // A host with secure TLSA records that stops offering STARTTLS gets
    // nothing in clear.
    world.mx.behave(|b| b.tls = None);
    let port = world.mx.addr().port();
    for domain in ["ee.test", "pkix.test"] {
        world.send(domain).await?;
        let wanted = format!("does not offer STARTTLS, which its DANE TLSA records (_{port}._tcp.mx.{domain}) require");
        let find = || {
            world
                .bounces
                .messages()
                .iter()
                .map(|m| m.text())
                .find(|text| text.contains(&wanted))
        };
        wait_until(WAIT, || find().is_some()).await?;
    }
    assert_eq!(world.mx.count(), 7, "nothing was sent in clear");

    // TLS reporting counts these sessions under each domain's `tlsa`
    // policy, with the RFC 8460 failure types.
    let shown = crate::tls_rpt::tls_report_showing(&world.gw.config(), "starttls-not-supported").await?;
    for expected in [
        "ee.test  policy tlsa (mx.ee.test)  successful 2  failed",
        "starttls-not-supported  mx.ee.test (127.0.0.1)",
        "ta.test  policy tlsa (mx.ta.test)  successful 1  failed 0",
        "pkix.test  policy tlsa (mx.pkix.test)  successful 1  failed",
        "wrong.test  policy tlsa (mx.wrong.test)  successful 0",
        "tlsa-invalid  mx.wrong.test (127.0.0.1)",
        "tlsa-invalid  mx.other.test (127.0.0.1)",
        "bogus.test  policy tlsa (bogus.test)  successful 0",
        "dnssec-invalid  - (-)",
        "plain.test  policy no-policy-found  successful 1  failed 0",
        "both.test  policy tlsa (mx.both.test)  successful 1  failed 0",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_dane_needs_dnssec_validation_in_the_configuration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = Setup::new().delivery("tls = \"dane\"").write(dir.path())?;
    let text = crate::mailgate_check_refuses(&config)?;
    assert!(
        text.contains("`tls = \"dane\"` needs DNSSEC validation: set `dns.dnssec = true`"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_message_shows_the_dane_failure_in_queue_list_and_show() -> Result<()> {
    let ca = TestCa::new()?;
    let (tls, _, _) = ca.server_config_chained(&["mx.wrong.test"])?;
    let mx = SinkServer::start().await?;
    mx.behave(|b| b.tls = Some(tls));
    let port = mx.addr().port();
    let dns = SignedDns::start(&[mx_zone(
        "wrong.test",
        Signing::Secure,
        port,
        &format!("3 1 1 {}", "00".repeat(32)),
    )])
    .await?;
    let gw = Setup::new()
        .admin()?
        .hourly_retries()
        .dns(dns.addr())
        .dns_line("dnssec = true")
        .dns_line(&format!("trust_anchor = \"{}\"", dns.anchor_file().display()))
        .delivery(&format!("mx_port = {port}"))
        .start()
        .await?;
    let content = b"From: sender@back.test\r\nTo: rcpt@wrong.test\r\nSubject: s\r\n\r\nhello\r\n";
    SmtpClient::deliver(gw.addr, "sender@back.test", &["rcpt@wrong.test"], content).await?;
    let config = gw.config();
    let mut shown = String::new();
    for _ in 0..100 {
        shown = crate::mailgate_cli("queue", &config, &["list"]).await?.1;
        if shown.contains("usable TLSA") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        shown.contains("rcpt@wrong.test") && shown.contains("matches none of the 1 usable TLSA records of _"),
        "{shown}"
    );
    let (ok, listed) = crate::mailgate_cli("queue", &config, &["list", "--json"]).await?;
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let id = listed[0]["id"].as_str().context("no queue id")?.to_owned();
    let (ok, details) = crate::mailgate_cli("queue", &config, &["show", &id]).await?;
    assert!(ok, "{details}");
    assert!(
        details.contains("the DANE TLSA records of _") && details.contains("require a matching certificate"),
        "{details}"
    );
    assert_eq!(mx.count(), 0);
    Ok(())
}
