//! ARC (RFC 8617) end to end: a relay whose `header-rewrite` plugin adds
//! a footer (which breaks the author's DKIM signature) and whose `dkim`
//! plugin verifies and asks for an ARC seal. The seal is checked by the
//! same library on the next hop (the relay again, which reports
//! `arc=pass` and seals with `cv=pass`) and by an independent verifier,
//! Python's dkimpy. Keys come from `mailgate dkim keygen`; a real DNS
//! server on loopback publishes them.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use mailgate_tests::plugins::HEADER_REWRITE;
use mailgate_tests::{DnsServer, GatewayProcess, Setup, SinkServer, SmtpClient, header_values, wait_until};

use crate::WAIT;
use crate::authentication::{dkim_plugin, keygen_for};

/// dkimpy's ARC verification of the message on stdin, with the TXT
/// records given as JSON in argv[1] (dkimpy asks its `dnsfunc`, so no
/// resolver is involved); prints the chain validation and the reason.
const DKIMPY_ARC_VERIFY: &str = r#"
import json, sys
import dkim
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    return records.get(name.decode().rstrip("."), "").encode()
cv, results, reason = dkim.arc_verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc)
print(cv.decode(), reason)
"#;

/// What dkimpy says of `message`'s ARC chain: "pass", "fail" or "none",
/// and its reason.
fn dkimpy_arc(message: &[u8], records: &HashMap<String, String>) -> Result<(String, String)> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("python3")
        .args(["-c", DKIMPY_ARC_VERIFY, &serde_json::to_string(records)?])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3")?;
    child.stdin.take().context("stdin")?.write_all(message)?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "dkimpy (installed by tests/setup): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (cv, reason) = stdout.trim().split_once(' ').unwrap_or((stdout.trim(), ""));
    Ok((cv.to_owned(), reason.to_owned()))
}

/// The value of the ARC header field `name` with instance `i`.
fn arc_field(text: &str, name: &str, i: u32) -> Option<String> {
    header_values(text, name)
        .into_iter()
        .find(|v| v.replace(' ', "").starts_with(&format!("i={i};")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_message_sealed_by_the_relay_verifies_downstream_and_on_the_next_hop() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (author_key, author_record) = keygen_for(keys.path(), "example.com", "rsa2026", "rsa")?;
    let (relay_key, relay_record) = keygen_for(keys.path(), "relay.test", "arc2026", "rsa")?;
    let records = HashMap::from([
        ("rsa2026._domainkey.example.com".to_owned(), author_record),
        ("arc2026._domainkey.relay.test".to_owned(), relay_record),
    ]);
    let dns = DnsServer::start().await?;
    for (name, value) in &records {
        dns.txt(name, value);
    }
    dns.txt("_dmarc.example.com", "v=DMARC1; p=none");

    // The author's gateway signs.
    let author_sink = SinkServer::start().await?;
    let author = Setup::new()
        .dns(dns.addr())
        .route_all_to(author_sink.addr())
        .tables(&format!(
            "[[dkim.key]]\ndomain = \"example.com\"\nselector = \"rsa2026\"\nprivate_key = \"{author_key}\"\n"
        ))
        .plugin(&dkim_plugin("sign_networks = [\"127.0.0.0/8\"]"))
        .start()
        .await?;
    let message = b"From: Alice <alice@example.com>\r\nTo: list@relay.test\r\nSubject: news\r\n\
        Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <arc-1@example.com>\r\n\r\nHello list.\r\n";
    SmtpClient::deliver(author.addr, "alice@example.com", &["list@relay.test"], message).await?;
    wait_until(WAIT, || author_sink.count() == 1).await?;
    let signed = author_sink.messages()[0].content.clone();

    // The relay adds a footer, verifies what came in and seals what goes.
    let relay_sink = SinkServer::start().await?;
    let relay = Setup::new()
        .dns(dns.addr())
        .route_all_to(relay_sink.addr())
        .tables(&format!(
            "[dkim]\nauthserv_id = \"relay.test\"\n\
             [[dkim.key]]\ndomain = \"relay.test\"\nselector = \"arc2026\"\nprivate_key = \"{relay_key}\"\n"
        ))
        .plugin(&format!(
            "name = \"footer\"\npath = \"{HEADER_REWRITE}\"\nstages = [\"data\"]\n\
             [plugin.settings]\nfooter = \"-- \\nSent through the relay.test list\"\n"
        ))
        .plugin(&dkim_plugin("sign_authenticated = false\narc_seal = \"relay.test\""))
        .start()
        .await?;
    SmtpClient::deliver(relay.addr, "alice@example.com", &["bob@dest.test"], &signed).await?;
    wait_until(WAIT, || relay_sink.count() == 1).await?;
    let first = relay_sink.messages()[0].content.clone();
    let text = String::from_utf8_lossy(&first).into_owned();
    ensure!(text.contains("Sent through the relay.test list"), "{text}");
    let seal = arc_field(&text, "ARC-Seal", 1).context("no ARC-Seal i=1")?;
    for tag in ["cv=none", "d=relay.test", "s=arc2026", "a=rsa-sha256"] {
        ensure!(seal.contains(tag), "{tag} in {seal}");
    }
    let ams = arc_field(&text, "ARC-Message-Signature", 1).context("no ARC-Message-Signature i=1")?;
    ensure!(ams.contains("d=relay.test"), "{ams}");
    // The AAR holds what the relay found on arrival: the author's
    // signature intact (the footer came later).
    let aar = arc_field(&text, "ARC-Authentication-Results", 1).context("no ARC-Authentication-Results")?;
    for expected in [
        "relay.test;",
        "dkim=pass header.d=example.com",
        "arc=none",
        "dmarc=pass",
    ] {
        ensure!(aar.contains(expected), "{expected} in {aar}");
    }
    ensure!(
        text.starts_with("ARC-Seal: i=1;"),
        "the set goes on top: {}",
        &text[..80.min(text.len())]
    );

    // An independent verifier agrees; and notices a change after the seal.
    let (cv, reason) = dkimpy_arc(&first, &records)?;
    ensure!(cv == "pass", "dkimpy: {cv} {reason}");
    let tampered = text.replace("Hello list.", "Hello world.");
    let (cv, _) = dkimpy_arc(tampered.as_bytes(), &records)?;
    ensure!(cv == "fail", "dkimpy on a tampered message: {cv}");

    // The next hop (the relay again): mail-auth validates the chain (the
    // author's DKIM now fails; ARC carries the earlier result) and the new
    // set continues it.
    SmtpClient::deliver(relay.addr, "alice@example.com", &["bob@dest.test"], &first).await?;
    wait_until(WAIT, || relay_sink.count() == 2).await?;
    let second = relay_sink.messages()[1].content.clone();
    let text = String::from_utf8_lossy(&second).into_owned();
    let results = header_values(&text, "Authentication-Results");
    let ours = results
        .iter()
        .find(|r| r.starts_with("relay.test;"))
        .context("no results")?;
    ensure!(ours.contains("arc=pass"), "{ours}");
    // (mail-auth writes a body hash mismatch as dkim=neutral.)
    ensure!(
        ours.contains("body hash did not verify") && !ours.contains("dkim=pass"),
        "the footer broke the author's signature: {ours}"
    );
    let seal = arc_field(&text, "ARC-Seal", 2).context("no ARC-Seal i=2")?;
    ensure!(seal.contains("cv=pass"), "{seal}");
    ensure!(arc_field(&text, "ARC-Seal", 1).is_some(), "the first set stays");
    let (cv, reason) = dkimpy_arc(&second, &records)?;
    ensure!(cv == "pass", "dkimpy on two sets: {cv} {reason}");

    // A tampered chain comes in: reported as arc=fail, sealed with cv=fail.
    SmtpClient::deliver(relay.addr, "alice@example.com", &["bob@dest.test"], tampered.as_bytes()).await?;
    wait_until(WAIT, || relay_sink.count() == 3).await?;
    let third = relay_sink.messages()[2].text();
    let results = header_values(&third, "Authentication-Results");
    let ours = results
        .iter()
        .find(|r| r.starts_with("relay.test;"))
        .context("no results")?;
    ensure!(ours.contains("arc=fail"), "{ours}");
    let seal = arc_field(&third, "ARC-Seal", 2).context("no ARC-Seal i=2 on the tampered one")?;
    ensure!(seal.contains("cv=fail"), "{seal}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealing_without_an_rsa_key_for_the_domain_leaves_the_message_unsealed_with_a_log_line() -> Result<()> {
    let sink = SinkServer::start().await?;
    let dns = DnsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = Setup::new()
        .dns(dns.addr())
        .route_all_to(sink.addr())
        .tables("[dkim]\nauthserv_id = \"relay.test\"\n")
        .plugin(&dkim_plugin("sign_authenticated = false\narc_seal = \"relay.test\""))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&crate::binary(), &config).await?;
    let message = b"From: a@example.com\r\nTo: b@dest.test\r\nSubject: s\r\n\r\nbody\r\n";
    SmtpClient::deliver(gw.addr, "a@example.com", &["b@dest.test"], message).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let text = sink.messages()[0].text();
    ensure!(header_values(&text, "ARC-Seal").is_empty(), "{text}");
    ensure!(
        header_values(&text, "Authentication-Results")
            .iter()
            .any(|r| r.contains("arc=none")),
        "{text}"
    );
    let log = gw.log().join("\n");
    ensure!(
        log.contains("cannot ARC-seal for relay.test: no RSA key in [[dkim.key]] for relay.test"),
        "{log}"
    );
    Ok(())
}
