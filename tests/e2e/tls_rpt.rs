//! SMTP TLS reporting (RFC 8460): sessions of delivery over MX are counted
//! per recipient domain (`mailgate tls-report` shows them, and they outlive
//! a restart), and once a period is over the domain's `rua` destinations
//! get the aggregate report: mailed through the gateway's own queue, and
//! posted over HTTPS, gzipped JSON with the RFC's field names.

use std::io::Read as _;

use anyhow::{Context, Result};
use base64::Engine as _;
use mailgate_tests::{Gateway, HttpsServer, TestCa, wait_until};

use crate::mta_sts::{World, send};
use crate::{WAIT, mailgate_cli};

fn gunzip(bytes: &[u8]) -> Result<serde_json::Value> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
    Ok(serde_json::from_str(&text)?)
}

/// (successful, failed) summed over `reports`, and the failure types seen.
fn totals(reports: &[serde_json::Value]) -> (u64, u64, Vec<String>) {
    let (mut ok, mut failed, mut kinds) = (0, 0, Vec::new());
    for report in reports {
        for policy in report["policies"].as_array().into_iter().flatten() {
            ok += policy["summary"]["total-successful-session-count"]
                .as_u64()
                .unwrap_or(0);
            failed += policy["summary"]["total-failure-session-count"].as_u64().unwrap_or(0);
            for detail in policy["failure-details"].as_array().into_iter().flatten() {
                kinds.push(detail["result-type"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    (ok, failed, kinds)
}

/// What `mailgate tls-report --config CONFIG` prints, once it mentions
/// `needle` (the gateway writes its figures every 5 seconds), or after
/// 20 seconds.
pub(crate) async fn tls_report_showing(config: &std::path::Path, needle: &str) -> Result<String> {
    let mut shown = String::new();
    for _ in 0..100 {
        shown = mailgate_cli("tls-report", config, &[]).await?.1;
        if shown.contains(needle) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted_shown_and_kept_across_a_restart() -> Result<()> {
    // The counts belong to the default period, the UTC day. A run across
    // midnight would see them reported and forgotten at the turn (a fresh
    // CI run at 23:59:40 did): start after it instead.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let left = 86_400 - now % 86_400;
    if left < 90 {
        tokio::time::sleep(std::time::Duration::from_secs(left + 1)).await;
    }
    let mut world = World::new().await?;
    let gw = world.start().await?;
    send(&gw, "over tls").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    world.plain_mx();
    send(&gw, "refused").await?;
    // The figures are written within 5 seconds.
    let shown = tls_report_showing(&gw.config(), "starttls-not-supported").await?;
    assert!(
        shown.contains("sts.test  policy sts (enforce)  successful 1  failed"),
        "{shown}"
    );
    assert!(
        shown.contains("starttls-not-supported  mx.sts.test (127.0.0.1)"),
        "{shown}"
    );

    // A restart within the period goes on counting from there.
    let dir = gw.stop().await?;
    let gw = Gateway::start_in(world.setup(), dir).await?;
    let before: serde_json::Value =
        serde_json::from_str(&mailgate_cli("tls-report", &gw.config(), &["--json"]).await?.1)?;
    let failed_before = before["domains"]["sts.test"]["failures"][0]["count"]
        .as_u64()
        .context("no count")?;
    send(&gw, "refused again").await?;
    let mut after = before.clone();
    for _ in 0..100 {
        after = serde_json::from_str(&mailgate_cli("tls-report", &gw.config(), &["--json"]).await?.1)?;
        if after["domains"]["sts.test"]["failures"][0]["count"].as_u64() > Some(failed_before) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(after["domains"]["sts.test"]["successful"], 1, "{after}");
    assert!(
        after["domains"]["sts.test"]["failures"][0]["count"].as_u64() > Some(failed_before),
        "{after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_mailed_and_posted_once_the_period_is_over() -> Result<()> {
    let mut world = World::new().await?;
    let ca = TestCa::new()?;
    let collector = HttpsServer::start(ca.server_config(&["reports.test"])?).await?;
    collector.respond(201, "text/plain", "");
    std::fs::write(world.dir.path().join("reports-ca.pem"), ca.pem())?;
    world.dns.address("reports.test", "127.0.0.1".parse()?);
    world.dns.txt(
        "_smtp._tls.sts.test",
        &format!(
            "v=TLSRPTv1; rua=mailto:tls-reports@back.test,https://reports.test:{}/v1/tlsrpt",
            collector.addr().port()
        ),
    );
    // The policy host and the collector have certificates of two CAs.
    let mut bundle = std::fs::read_to_string(world.dir.path().join("ca.pem"))?;
    bundle.push_str(&ca.pem());
    std::fs::write(world.dir.path().join("ca.pem"), bundle)?;
    let dir = std::mem::replace(&mut world.dir, tempfile::tempdir()?);
    let gw = Gateway::start_in(
        world
            .setup()
            .delivery("tls_report_period = \"3s\"")
            .delivery("max_age = \"1h\""),
        dir,
    )
    .await?;
    send(&gw, "over tls").await?;
    wait_until(WAIT, || world.mx.count() == 1).await?;
    world.plain_mx();
    send(&gw, "refused").await?;

    // The mailed reports arrive at back.test's sink, the posted ones at
    // the collector; both together count both sessions.
    let mailed = |world: &World| -> Vec<serde_json::Value> {
        world
            .bounces
            .messages()
            .iter()
            .filter(|m| m.text().contains("Subject: Report Domain: sts.test Submitter: gw.test"))
            .filter_map(|m| attachment(&m.text()).and_then(|gz| gunzip(&gz).ok()))
            .collect()
    };
    let posted = |collector: &HttpsServer| -> Vec<serde_json::Value> {
        collector
            .received()
            .iter()
            .filter_map(|r| gunzip(&r.body).ok())
            .collect()
    };
    wait_until(WAIT, || {
        let (ok, failed, _) = totals(&mailed(&world));
        let (ok2, failed2, _) = totals(&posted(&collector));
        ok >= 1 && failed >= 1 && ok2 >= 1 && failed2 >= 1
    })
    .await?;
    let mail = mailed(&world);
    let (_, _, kinds) = totals(&mail);
    assert!(kinds.iter().any(|k| k == "starttls-not-supported"), "{mail:?}");
    let first = &mail[0];
    assert_eq!(first["organization-name"], "gw.test");
    assert_eq!(first["policies"][0]["policy"]["policy-type"], "sts");
    assert_eq!(first["policies"][0]["policy"]["policy-domain"], "sts.test");
    assert_eq!(first["policies"][0]["policy"]["mx-host"][0], "mx.sts.test");
    assert!(
        first["date-range"]["start-datetime"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z'))
    );
    let message = world
        .bounces
        .messages()
        .into_iter()
        .find(|m| m.text().contains("Report Domain: sts.test"))
        .context("no mailed report")?;
    let text = message.text();
    assert!(text.contains("multipart/report; report-type=\"tlsrpt\""), "{text}");
    assert!(text.contains("Content-Type: application/tlsrpt+gzip"), "{text}");
    assert!(text.contains("TLS-Report-Domain: sts.test"), "{text}");
    assert_eq!(message.rcpt_to, ["tls-reports@back.test"]);
    let request = &collector.received()[0];
    assert!(request.line().starts_with("POST /v1/tlsrpt "), "{}", request.head);
    assert!(
        request
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/tlsrpt+gzip"),
        "{}",
        request.head
    );
    Ok(())
}

/// The base64 attachment of a mailed report, decoded.
fn attachment(text: &str) -> Option<Vec<u8>> {
    let start = text.find("Content-Transfer-Encoding: base64\r\n\r\n")? + 37;
    let end = start + text[start..].find("\r\n\r\n")?;
    let encoded: String = text[start..end].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(encoded).ok()
}
