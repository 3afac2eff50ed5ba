//! Isolation between transactions: with fresh instances (the default) a
//! plugin never sees state an earlier transaction left, in static memory
//! or on its heap; with `instances = "reused"` it does, which shows the
//! probe would notice a leak.

use anyhow::Result;
use mailgate_tests::plugins::PROBE;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, header, wait_until};

use crate::{WAIT, binary};

/// What the probe saw in five transactions, and the gateway's log.
async fn carried(instances: &str) -> Result<(Vec<String>, Vec<String>)> {
    let sink = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&format!(
            "name = \"carrier\"\npath = \"{PROBE}\"\nstages = [\"data\"]\ninstances = \"{instances}\"\n\
             capabilities = [\"dns\", \"kv\", \"metrics\", \"http\"]\nhttp_allow = [\"127.0.0.1\"]\n\
             [plugin.settings]\ncarry = true\n"
        ))
        .write(dir.path())?;
    let gw = GatewayProcess::start(&binary(), &config).await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for n in 0..5 {
        let content = format!("Subject: {n}\r\n\r\nhi\r\n");
        let reply = client
            .send_message("a@x.test", &["b@y.test"], content.as_bytes())
            .await?;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    wait_until(WAIT, || sink.count() == 5).await?;
    let mut seen: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| header(&m.text(), "X-Carried"))
        .collect();
    seen.sort();
    Ok((seen, gw.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_carry_nothing_from_one_transaction_to_the_next() -> Result<()> {
    let (fresh, log) = carried("fresh").await?;
    assert_eq!(fresh, vec!["static 1 heap 1"; 5], "{fresh:?}");
    // Each of them a new instance of the snapshot taken after `init`.
    assert!(
        log.iter()
            .any(|l| l.contains("plugin pre-initialized") && l.contains("carrier")),
        "{log:?}"
    );
    // Reused instances keep their memory: the probe sees it.
    let (reused, _) = carried("reused").await?;
    assert!(reused.iter().any(|h| h != "static 1 heap 1"), "{reused:?}");
    Ok(())
}
