//! MTA-STS (RFC 8461) for delivery over MX, against a real DNS server, a
//! real HTTPS policy host and real SMTP servers on loopback, with
//! certificates from a test CA: enforce delivers only over verified TLS to
//! the hosts the policy names, and defers (then bounces, saying why)
//! otherwise; testing delivers anyway; a new record id fetches the policy
//! again; the cached policy outlives a failed fetch and a restart; a
//! redirected policy is not used.

use anyhow::{Context, Result};
use hickory_proto::rr::RecordType;
use mailgate_tests::{DnsServer, Gateway, HttpsServer, Setup, SinkServer, SmtpClient, TestCa, dsn_parts, wait_until};

use crate::WAIT;
use crate::scrape::Scrape;

/// A recipient domain with its MX host on loopback, its `_mta-sts` record
/// and its policy host, and a gateway delivering to it.
pub(crate) struct World {
    pub(crate) ca: TestCa,
    pub(crate) dns: DnsServer,
    pub(crate) policy: HttpsServer,
    pub(crate) mx: SinkServer,
    pub(crate) bounces: SinkServer,
    pub(crate) dir: tempfile::TempDir,
}

const DOMAIN: &str = "sts.test";

fn policy_text(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

impl World {
    pub(crate) async fn new() -> Result<Self> {
        let ca = TestCa::new()?;
        let dns = DnsServer::start().await?;
        // No caching in the gateway's resolver: the tests change records.
        dns.ttl(0);
        let policy = HttpsServer::start(ca.server_config(&["mta-sts.sts.test"])?).await?;
        let mx = SinkServer::start().await?;
        mx.behave(|b| b.tls = ca.server_config(&["mx.sts.test"]).ok());
        dns.mx(DOMAIN, 10, "mx.sts.test")?;
        dns.address("mx.sts.test", "127.0.0.1".parse()?);
        dns.address("mta-sts.sts.test", "127.0.0.1".parse()?);
        dns.txt("_mta-sts.sts.test", "v=STSv1; id=1;");
        policy.respond(200, "text/plain", &policy_text("enforce", "mx.sts.test"));
        let dir = tempfile::tempdir()?;
        ca.write(&dir.path().join("ca.pem"))?;
        Ok(Self {
            ca,
            dns,
            policy,
            mx,
            bounces: SinkServer::start().await?,
            dir,
        })
    }

    pub(crate) fn setup(&self) -> Setup {
        Setup::new()
            .dns(self.dns.addr())
            .delivery(&format!("mx_port = {}", self.mx.addr().port()))
            .delivery("ca_file = \"ca.pem\"")
            .delivery("mta_sts_ca_file = \"ca.pem\"")
            .delivery(&format!("mta_sts_port = {}", self.policy.addr().port()))
            .delivery("max_age = \"2s\"")
            .delivery("retry_initial = \"300ms\"")
            // A new session per message, so that each one meets the policy.
            .delivery("idle_timeout = \"0s\"")
            .route_to("\"back.test\"", self.bounces.addr())
    }

    pub(crate) async fn start(&mut self) -> Result<Gateway> {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        Gateway::start_in(self.setup(), dir).await
    }

    /// `_mta-sts` announces a policy with a new id.
    fn new_record_id(&self, id: &str) {
        self.dns.remove("_mta-sts.sts.test", RecordType::TXT);
        self.dns.txt("_mta-sts.sts.test", &format!("v=STSv1; id={id};"));
    }

    /// The MX host stops offering STARTTLS.
    pub(crate) fn plain_mx(&self) {
        self.mx.behave(|b| b.tls = None);
    }
}

pub(crate) async fn send(gw: &Gateway, subject: &str) -> Result<()> {
    let content = format!("From: sender@back.test\r\nTo: rcpt@{DOMAIN}\r\nSubject: {subject}\r\n\r\nhello\r\n");
    SmtpClient::deliver(
        gw.addr,
        "sender@back.test",
        &[&format!("rcpt@{DOMAIN}")],
        content.as_bytes(),
    )
    .await
}

/// The delivery-status and human parts of the `n`th bounce.
async fn bounce(bounces: &SinkServer, n: usize) -> Result<String> {
    wait_until(WAIT, || bounces.count() > n).await?;
    let message = &bounces.messages()[n];
    let (status, _) = dsn_parts(&message.content)?;
    Ok(format!("{status}\n{}", message.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_delivers_only_over_verified_tls_and_bounces_saying_why() -> Result<()> {
    let mut world = World::new().await?;
    let dir = std::mem::replace(&mut world.dir, tempfile::tempdir()?);
    let gw = Gateway::start_in(world.setup().admin()?, dir).await?;
    send(&gw, "over tls").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    assert!(world.mx.messages()[0].tls, "delivered inside verified TLS");
    assert_eq!(world.policy.requests(), ["GET /.well-known/mta-sts.txt HTTP/1.1"]);
    let cached = std::fs::read_to_string(gw.spool().join("mta-sts").join("sts.test.json"))?;
    assert!(
        cached.contains("\"enforce\"") && cached.contains("mx.sts.test"),
        "{cached}"
    );

    // Without STARTTLS the MX host gets nothing in clear; the message
    // expires and the bounce says why.
    world.plain_mx();
    send(&gw, "not in clear").await?;
    let report = bounce(&world.bounces, 0).await?;
    assert!(
        report.contains("does not offer STARTTLS, which the MTA-STS policy of sts.test requires"),
        "{report}"
    );
    assert_eq!(world.mx.count(), 1, "nothing was sent in clear");
    assert_eq!(world.policy.hits(), 1, "the cached policy served every attempt");

    // `TLS-Required: No` (RFC 8689 section 5) lifts the recipient's policy.
    let content = b"From: sender@back.test\r\nTLS-Required: No\r\nSubject: anyway\r\n\r\nhello\r\n";
    SmtpClient::deliver(gw.addr, "sender@back.test", &["rcpt@sts.test"], content).await?;
    wait_until(WAIT, || world.mx.count() == 2).await?;
    assert!(!world.mx.messages()[1].tls, "sent in clear, as its sender allowed");

    // mailgate_delivery_tls_total counts each session by policy and result
    // (the registry is the process's, so other tests add to it too).
    let scrape = Scrape::take(gw.admin.context("no admin address")?).await?;
    let count = |policy, result| scrape.value("mailgate_delivery_tls_total", &[("policy", policy), ("result", result)]);
    assert!(count("mta-sts", "success") >= 1.0);
    assert!(count("mta-sts", "starttls-not-supported") >= 1.0);
    assert!(count("opportunistic", "starttls-not-supported") >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_hosts_the_policy_does_not_name_are_refused_unless_testing() -> Result<()> {
    let mut world = World::new().await?;
    world.policy.respond(
        200,
        "text/plain; charset=utf-8",
        &policy_text("enforce", "*.elsewhere.test"),
    );
    let gw = world.start().await?;
    send(&gw, "wrong mx").await?;
    let report = bounce(&world.bounces, 0).await?;
    assert!(report.contains("Status: 4.4.7"), "expired: {report}");
    assert!(
        report.contains("the MTA-STS policy of sts.test (mode enforce) matches none of its MX hosts (mx.sts.test)"),
        "{report}"
    );
    assert_eq!(world.mx.count(), 0);

    // A new record id: the policy is fetched again, now in testing mode,
    // and mail goes to the unnamed host, even without TLS.
    world.plain_mx();
    world
        .policy
        .respond(200, "text/plain", &policy_text("testing", "*.elsewhere.test"));
    world.new_record_id("2");
    send(&gw, "testing").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    assert!(!world.mx.messages()[0].tls);
    assert_eq!(world.policy.hits(), 2, "fetched again for the new id");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cached_policy_outlives_a_failed_fetch_and_a_restart() -> Result<()> {
    let mut world = World::new().await?;
    let setup_dir;
    {
        let gw = world.start().await?;
        send(&gw, "first").await?;
        wait_until(WAIT, || world.mx.count() == 1).await?;
        setup_dir = gw.stop().await?;
    }
    // The record changes, the policy host fails, the MX host loses TLS,
    // and the gateway restarts on the same spool.
    world.new_record_id("2");
    world.policy.respond(500, "text/plain", "broken\n");
    world.plain_mx();
    let gw = Gateway::start_in(world.setup(), setup_dir).await?;
    send(&gw, "second").await?;
    let report = bounce(&world.bounces, 0).await?;
    assert!(report.contains("MTA-STS policy of sts.test requires"), "{report}");
    assert_eq!(world.mx.count(), 1, "the cached enforce policy still held");
    assert_eq!(
        world.policy.hits(),
        2,
        "the new id was tried once, then the failure was remembered"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_policy_is_not_followed() -> Result<()> {
    let mut world = World::new().await?;
    world.policy.respond(301, "text/plain", "");
    world.plain_mx();
    let gw = world.start().await?;
    send(&gw, "no policy").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    assert!(
        !world.mx.messages()[0].tls,
        "no usable policy: opportunistic, and the host has no TLS"
    );
    assert_eq!(world.policy.hits(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requiretls_goes_over_mx_where_an_enforced_policy_authenticates_it() -> Result<()> {
    let mut world = World::new().await?;
    world.mx.behave(|b| b.requiretls = true);
    // nosts.test has an MX host but no policy.
    world.dns.mx("nosts.test", 10, "mx.sts.test")?;
    let ca = TestCa::new()?;
    let gw = Gateway::start_in(
        world.setup().certificate(ca.issue(&["gw.test"])?),
        std::mem::replace(&mut world.dir, tempfile::tempdir()?),
    )
    .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("EHLO client.test", 250).await?;
    client.expect("STARTTLS", 220).await?;
    let mut client = client.tls_handshake(ca.client_config()?, "gw.test").await?;
    client.expect("EHLO client.test", 250).await?;
    for to in ["rcpt@sts.test", "rcpt@nosts.test"] {
        client.expect("MAIL FROM:<sender@back.test> REQUIRETLS", 250).await?;
        client.expect(&format!("RCPT TO:<{to}>"), 250).await?;
        client.expect("DATA", 354).await?;
        client
            .expect("From: sender@back.test\r\nSubject: secret\r\n\r\nhello\r\n.", 250)
            .await?;
    }
    wait_until(WAIT, || world.mx.count() == 1).await?;
    let relayed = &world.mx.messages()[0];
    assert!(
        relayed.tls && relayed.mail_params.contains("REQUIRETLS"),
        "{}",
        relayed.mail_params
    );
    assert!(relayed.text().contains("hello"));
    let report = bounce(&world.bounces, 0).await?;
    assert!(report.contains("Status: 5.7.30"), "{report}");
    assert!(
        report.contains("nosts.test publishes no MTA-STS policy in enforce mode"),
        "{report}"
    );
    assert_eq!(world.mx.count(), 1, "nothing for the unauthenticated domain");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_without_a_cached_policy_delivers_as_before_and_is_reported() -> Result<()> {
    let mut world = World::new().await?;
    world.policy.respond(500, "text/plain", "broken\n");
    world.plain_mx();
    let gw = world.start().await?;
    send(&gw, "no policy to be had").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    assert!(!world.mx.messages()[0].tls, "opportunistic, and the host has no TLS");
    assert_eq!(world.policy.hits(), 1);
    // TLS reporting counts the fetch error (written within 5 seconds).
    let shown = crate::tls_rpt::tls_report_showing(&gw.config(), "sts-policy-fetch-error").await?;
    assert!(shown.contains("sts.test  policy no-policy-found"), "{shown}");
    assert!(shown.contains("sts-policy-fetch-error"), "{shown}");
    assert!(shown.contains("starttls-not-supported  mx.sts.test"), "{shown}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_for_another_name_or_from_an_unknown_ca_are_refused_under_enforce() -> Result<()> {
    let mut world = World::new().await?;
    let other = TestCa::new()?;
    let gw = world.start().await?;
    send(&gw, "first, fine").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    // A certificate for another name, then one from a CA nobody trusts.
    let wrong_name = world.ca.server_config(&["wrong.test"])?;
    world.mx.behave(|b| b.tls = Some(wrong_name));
    send(&gw, "certificate for another name").await?;
    let report = bounce(&world.bounces, 0).await?;
    assert!(
        report.contains("the MTA-STS policy of sts.test requires a verified certificate"),
        "{report}"
    );
    world.mx.behave(|b| b.tls = other.server_config(&["mx.sts.test"]).ok());
    send(&gw, "untrusted certificate").await?;
    bounce(&world.bounces, 1).await?;
    assert_eq!(world.mx.count(), 1, "nothing was sent");
    let shown = crate::tls_rpt::tls_report_showing(&gw.config(), "certificate-not-trusted").await?;
    assert!(
        shown.contains("certificate-not-trusted  mx.sts.test (127.0.0.1)"),
        "{shown}"
    );
    assert!(
        shown.contains("certificate-host-mismatch  mx.sts.test (127.0.0.1)"),
        "{shown}"
    );
    Ok(())
}
