//! Sender authentication end to end: the `spf` plugin (its own RFC 7208
//! evaluator, through the `dns` capability) and the `dkim` plugin (the
//! `dkim` capability: the gateway's mail-auth signs with keys made by
//! `mailgate dkim keygen` and verifies DKIM, SPF and DMARC). A real DNS
//! server on loopback publishes the SPF, DKIM and DMARC records.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use mailgate_tests::plugins::{DKIM, SPF};
use mailgate_tests::{DnsServer, Setup, SinkServer, SmtpClient, header_values, wait_until};

use crate::capabilities::{plugin_test, transcripts};
use crate::{WAIT, binary};

fn spf_plugin(settings: &str) -> String {
    format!(
        "name = \"spf\"\npath = \"{SPF}\"\nstages = [\"mail\", \"data\"]\ncapabilities = [\"dns\", \"log\", \"metrics\"]\n[plugin.settings]\nreceiver = \"mx.test\"\n{settings}\n"
    )
}

pub(crate) fn dkim_plugin(settings: &str) -> String {
    format!(
        "name = \"dkim\"\npath = \"{DKIM}\"\nstages = [\"data\"]\ncapabilities = [\"dkim\", \"log\", \"metrics\"]\n[plugin.settings]\n{settings}\n"
    )
}

/// `mailgate dkim keygen` for example.com: writes the key into `dir` and
/// returns its path and the TXT record's text (the quoted strings joined).
fn keygen(dir: &Path, selector: &str, algorithm: &str) -> Result<(String, String)> {
    keygen_for(dir, "example.com", selector, algorithm)
}

/// `mailgate dkim keygen` for `domain`.
pub(crate) fn keygen_for(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> Result<(String, String)> {
    let key = dir.join(format!("{selector}.pem"));
    let output = std::process::Command::new(binary())
        .args(["dkim", "keygen", "--domain", domain, "--selector", selector])
        .args(["--algorithm", algorithm, "--out"])
        .arg(&key)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(output.status.success(), "keygen failed: {stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT")))
        .context("no TXT line")?;
    let record: String = line.split('"').skip(1).step_by(2).collect();
    ensure!(record.starts_with("v=DKIM1; k="), "{record}");
    ensure!(
        stdout.contains(&format!("private_key = {:?}", key.display().to_string())),
        "{stdout}"
    );
    Ok((key.display().to_string(), record))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_plugin_refuses_unauthorised_senders_and_records_the_result() -> Result<()> {
    let dns = DnsServer::start().await?;
    dns.txt("allowed.example", "v=spf1 ip4:192.0.2.0/24 mx -all");
    dns.mx("allowed.example", 10, "mail.allowed.example")?;
    dns.address("mail.allowed.example", "127.0.0.1".parse()?);
    dns.txt(
        "denied.example",
        "v=spf1 include:_spf.provider.example -all exp=why.denied.example",
    );
    dns.txt("_spf.provider.example", "v=spf1 ip4:198.51.100.0/24 ?all");
    dns.txt("why.denied.example", "only %{d} servers send for %{o}");
    dns.txt("soft.example", "v=spf1 ~all");
    dns.servfail("broken.example");
    dns.txt("helo.example", "v=spf1 a:helo.example -all");
    dns.address("helo.example", "127.0.0.1".parse()?);
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .dns(dns.addr())
        .route_all_to(sink.addr())
        .plugin(&spf_plugin(""))
        .start()
        .await?;
    let mut client = SmtpClient::connect(gw.addr).await?;
    client.expect_reply(220).await?;
    client.expect("EHLO helo.example", 250).await?;
    let denied = client.command("MAIL FROM:<a@denied.example>").await?;
    assert_eq!(denied.code, 550, "{denied:?}");
    assert_eq!(
        denied.text(),
        "5.7.23 SPF fail: denied.example does not designate 127.0.0.1 as permitted sender: only denied.example servers send for denied.example"
    );
    let broken = client.command("MAIL FROM:<a@broken.example>").await?;
    assert_eq!(
        (broken.code, broken.text()),
        (
            451,
            "4.7.24 SPF check of broken.example failed temporarily; please try again later"
        )
    );
    for sender in ["a@allowed.example", "a@soft.example", ""] {
        let reply = client
            .send_message(sender, &["b@dest.test"], b"Subject: spf\r\n\r\nhi\r\n")
            .await?;
        assert_eq!(reply.code, 250, "<{sender}>: {reply:?}");
    }
    wait_until(WAIT, || sink.count() == 3).await?;
    let mut fields: Vec<(String, Vec<String>)> = sink
        .messages()
        .iter()
        .map(|m| (m.mail_from.clone(), header_values(&m.text(), "Received-SPF")))
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            (
                String::new(),
                vec![
                    "pass (mx.test: domain of postmaster@helo.example designates 127.0.0.1 as permitted sender) \
                     client-ip=127.0.0.1; envelope-from=\"\"; helo=helo.example; receiver=mx.test; identity=helo;"
                        .to_owned()
                ]
            ),
            (
                "a@allowed.example".to_owned(),
                vec![
                    "pass (mx.test: domain of a@allowed.example designates 127.0.0.1 as permitted sender) \
                     client-ip=127.0.0.1; envelope-from=a@allowed.example; helo=helo.example; receiver=mx.test; identity=mailfrom;"
                        .to_owned()
                ]
            ),
            (
                "a@soft.example".to_owned(),
                vec![
                    "softfail (mx.test: domain of a@soft.example does not designate 127.0.0.1 as permitted sender) \
                     client-ip=127.0.0.1; envelope-from=a@soft.example; helo=helo.example; receiver=mx.test; identity=mailfrom;"
                        .to_owned()
                ]
            ),
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_plugin_signs_outgoing_and_verifies_incoming_mail_with_dmarc() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let (rsa_key, rsa_record) = keygen(keys.path(), "rsa2026", "rsa")?;
    let (ed_key, ed_record) = keygen(keys.path(), "ed2026", "ed25519")?;
    let dns = DnsServer::start().await?;
    dns.txt("rsa2026._domainkey.example.com", &rsa_record);
    dns.txt("ed2026._domainkey.example.com", &ed_record);
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    // The sending gateway is not in the SPF record: DMARC must rest on DKIM.
    dns.txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all");

    // The organisation's outbound gateway signs for its clients.
    let outbound_sink = SinkServer::start().await?;
    let outbound = Setup::new()
        .dns(dns.addr())
        .route_all_to(outbound_sink.addr())
        .tables(&format!(
            "[[dkim.key]]\ndomain = \"example.com\"\nselector = \"rsa2026\"\nprivate_key = \"{rsa_key}\"\n\
             [[dkim.key]]\ndomain = \"example.com\"\nselector = \"ed2026\"\nprivate_key = \"{ed_key}\"\n"
        ))
        .plugin(&dkim_plugin("sign_networks = [\"127.0.0.0/8\"]"))
        .start()
        .await?;
    let message = b"From: Alice <alice@example.com>\r\nTo: bob@dest.test\r\nSubject: signed\r\n\
        Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello Bob.\r\n";
    SmtpClient::deliver(outbound.addr, "alice@example.com", &["bob@dest.test"], message).await?;
    wait_until(WAIT, || outbound_sink.count() == 1).await?;
    let signed = outbound_sink.messages()[0].content.clone();
    let signatures = header_values(&String::from_utf8_lossy(&signed), "DKIM-Signature");
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(
        signatures[0].contains("a=rsa-sha256") && signatures[0].contains("s=rsa2026"),
        "{signatures:?}"
    );
    assert!(
        signatures[1].contains("a=ed25519-sha256") && signatures[1].contains("s=ed2026"),
        "{signatures:?}"
    );

    // The receiving side's gateway: SPF (only recorded) hands its result
    // to the DKIM plugin's DMARC evaluation through the metadata.
    let inbound_sink = SinkServer::start().await?;
    let record = tempfile::tempdir()?;
    let inbound = Setup::new()
        .dns(dns.addr())
        .route_all_to(inbound_sink.addr())
        .listener("recorded", &format!("record = \"{}\"", record.path().display()))
        .tables("[dkim]\nauthserv_id = \"mx.test\"\n")
        .plugin(&spf_plugin("fail = \"record\""))
        .plugin(&dkim_plugin(""))
        .start()
        .await?;
    // A forged result claiming to be the receiver's goes.
    let mut forged = b"Authentication-Results: mx.test; dkim=pass header.d=example.com\r\n".to_vec();
    forged.extend_from_slice(&signed);
    let mut client = SmtpClient::greeted(inbound.listener("recorded")).await?;
    let reply = client
        .send_message("alice@example.com", &["bob@dest.test"], &forged)
        .await?;
    assert_eq!(reply.code, 250, "{reply:?}");
    wait_until(WAIT, || inbound_sink.count() == 1).await?;
    let text = inbound_sink.messages()[0].text();
    let results = header_values(&text, "Authentication-Results");
    assert_eq!(results.len(), 1, "the forged one is removed: {results:?}");
    let result = &results[0];
    assert!(result.starts_with("mx.test;"), "{result}");
    for expected in [
        "dkim=pass header.d=example.com header.s=rsa2026",
        "dkim=pass header.d=example.com header.s=ed2026",
        "spf=fail",
        "dmarc=pass header.from=example.com policy.dmarc=reject",
    ] {
        assert!(result.contains(expected), "{expected} in {result}");
    }
    let received_spf = header_values(&text, "Received-SPF");
    assert!(received_spf[0].starts_with("fail (mx.test:"), "{received_spf:?}");

    // The same message altered in transit: both signatures break, SPF
    // fails, and example.com's p=reject applies.
    let tampered = String::from_utf8_lossy(&signed).replace("Hello Bob.", "Pay Mallory.");
    let reply = client
        .send_message("alice@example.com", &["bob@dest.test"], tampered.as_bytes())
        .await?;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert_eq!(
        reply.text(),
        "5.7.26 Message rejected: it fails the DMARC policy of example.com (p=reject)"
    );
    assert_eq!(inbound_sink.count(), 1);

    // Both transactions replay against the plugin from their transcripts
    // (the recorded verifications), with no DNS server running.
    drop(client);
    drop(inbound);
    drop(dns);
    let files = transcripts(record.path(), 2).await?;
    let (code, stdout, stderr) = plugin_test(DKIM, None, &files[0], &["data=continue"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("dmarc=pass"), "{stdout}");
    let (code, stdout, stderr) = plugin_test(DKIM, None, &files[1], &["data=reject"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("550 5.7.26"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_dkim_key_stops_start_up_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("broken.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")?;
    let error = Setup::new()
        .tables(&format!(
            "[[dkim.key]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
            key.display()
        ))
        .start()
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(error.contains("`dkim.key.private_key`"), "{error}");
    assert!(
        error.contains("broken.pem: neither an Ed25519 nor an RSA key"),
        "{error}"
    );
    Ok(())
}
