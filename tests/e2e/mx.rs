//! MX routing over a real DNS server on loopback: preference order and
//! fallback to the next host, implicit MX (A/AAAA), null MX and NXDOMAIN
//! bounces, SERVFAIL retried.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use hickory_proto::rr::RecordType;
use mailgate_tests::{DnsServer, Gateway, Setup, SinkServer, SmtpClient, dsn_parts, wait_until};

use crate::WAIT;

/// A sink on `ip` (a loopback address) and the port it got.
async fn sink_on(ip: &str) -> Result<SinkServer> {
    SinkServer::start_on(format!("{ip}:0").parse()?).await
}

/// A gateway resolving through `dns`, contacting MX hosts on `port`,
/// sending bounces for `back.test` to `bounces`.
async fn gateway(dns: &DnsServer, port: u16, bounces: SocketAddr) -> Result<Gateway> {
    Setup::new()
        .dns(dns.addr())
        .delivery(&format!("mx_port = {port}"))
        .route_to("\"back.test\"", bounces)
        .start()
        .await
}

async fn send(gw: &Gateway, to: &str) -> Result<()> {
    let content = format!("From: sender@back.test\r\nTo: {to}\r\nSubject: mx test\r\n\r\nhello\r\n");
    SmtpClient::deliver(gw.addr, "sender@back.test", &[to], content.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_next_mx_when_the_first_refuses_connections() -> Result<()> {
    let sink = sink_on("127.0.0.2").await?;
    let port = sink.addr().port();
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.mx("dest.test", 10, "mx1.dest.test")?;
    dns.mx("dest.test", 20, "mx2.dest.test")?;
    // Nothing listens on 127.0.0.3 at that port: connection refused.
    dns.address("mx1.dest.test", "127.0.0.3".parse()?);
    dns.address("mx2.dest.test", "127.0.0.2".parse()?);
    let gw = gateway(&dns, port, bounces.addr()).await?;
    send(&gw, "user@dest.test").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["user@dest.test"]);
    assert!(dns.queries("dest.test", RecordType::MX) >= 1);
    assert!(
        dns.queries("mx1.dest.test", RecordType::A) >= 1,
        "the preferred MX was tried first"
    );
    wait_until(WAIT, || gw.queued() == 0).await?;
    assert_eq!(bounces.count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_addresses_of_one_host_are_tried_in_order() -> Result<()> {
    let sink = sink_on("127.0.0.5").await?;
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.mx("multi.test", 10, "mx.multi.test")?;
    dns.address("mx.multi.test", "127.0.0.4".parse()?);
    dns.address("mx.multi.test", "127.0.0.5".parse()?);
    let gw = gateway(&dns, sink.addr().port(), bounces.addr()).await?;
    send(&gw, "user@multi.test").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_without_mx_is_its_own_mail_exchanger() -> Result<()> {
    let sink = sink_on("127.0.0.2").await?;
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.address("plain.test", "127.0.0.2".parse()?);
    let gw = gateway(&dns, sink.addr().port(), bounces.addr()).await?;
    send(&gw, "user@plain.test").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert!(dns.queries("plain.test", RecordType::MX) >= 1);
    Ok(())
}

/// IPv6 end to end: mail taken on a listener on `[::1]` and delivered to
/// an MX host that has only an AAAA record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_taken_on_ipv6_reaches_an_mx_host_with_only_an_ipv6_address() -> Result<()> {
    let Ok(sink) = SinkServer::start_on("[::1]:0".parse()?).await else {
        eprintln!("skipped: this machine has no IPv6 loopback (::1), so the IPv6 test did not run");
        return Ok(());
    };
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.mx("six.test", 10, "mx.six.test")?;
    dns.address("mx.six.test", "::1".parse::<IpAddr>()?);
    let gw = Setup::new()
        .dns(dns.addr())
        .delivery(&format!("mx_port = {}", sink.addr().port()))
        .route_to("\"back.test\"", bounces.addr())
        .listener_at("six", "[::1]:0", "")
        .relay("trusted_networks = [\"::1/128\", \"127.0.0.0/8\"]")
        .start()
        .await?;
    let six = gw.listener("six");
    assert!(six.is_ipv6(), "{six}");
    SmtpClient::deliver(six, "a@back.test", &["user@six.test"], b"Subject: six\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert!(dns.queries("mx.six.test", RecordType::AAAA) >= 1);
    let received = sink.messages().remove(0).text();
    assert!(
        received.contains("[IPv6:::1]"),
        "the trace names the IPv6 client: {received}"
    );
    Ok(())
}

/// The delivery-status part of the first bounce the sender received.
fn delivery_status(bounces: &SinkServer) -> Result<String> {
    let message = bounces.messages().into_iter().next().context("no bounce")?;
    assert_eq!(message.mail_from, "", "bounces come from the null sender");
    Ok(dsn_parts(&message.content)?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_nxdomain_bounce_at_once() -> Result<()> {
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.null_mx("nomail.test");
    let gw = gateway(&dns, 25, bounces.addr()).await?;

    send(&gw, "user@nomail.test").await?;
    wait_until(WAIT, || bounces.count() == 1).await?;
    let status = delivery_status(&bounces)?;
    assert!(status.contains("Final-Recipient: rfc822; user@nomail.test"), "{status}");
    assert!(status.contains("Status: 5.1.10"), "{status}");
    assert!(status.contains("null MX"), "{status}");

    // nowhere.test is not in the zone: NXDOMAIN.
    send(&gw, "user@nowhere.test").await?;
    wait_until(WAIT, || bounces.count() == 2).await?;
    let messages = bounces.messages();
    let text = messages[1].text();
    assert!(text.contains("Status: 5.1.2"), "{text}");
    assert!(text.contains("nowhere.test does not exist"), "{text}");
    wait_until(WAIT, || gw.queued() == 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_is_retried_until_the_lookup_works() -> Result<()> {
    let sink = sink_on("127.0.0.2").await?;
    let bounces = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    dns.servfail("flaky.test");
    dns.mx("flaky.test", 10, "mx.flaky.test")?;
    dns.address("mx.flaky.test", "127.0.0.2".parse()?);
    let gw = gateway(&dns, sink.addr().port(), bounces.addr()).await?;
    send(&gw, "user@flaky.test").await?;
    wait_until(WAIT, || dns.queries("flaky.test", RecordType::MX) >= 2).await?;
    assert_eq!(sink.count(), 0);
    assert_eq!(gw.queued(), 1, "SERVFAIL defers; the message stays queued");
    dns.heal("flaky.test");
    wait_until(WAIT, || sink.count() == 1).await?;
    wait_until(WAIT, || gw.queued() == 0).await?;
    assert_eq!(bounces.count(), 0);
    Ok(())
}
