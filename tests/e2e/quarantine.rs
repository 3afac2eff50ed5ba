//! The quarantine an operator can work with: a plugin quarantines at the
//! data stage; the admin API and `mailgate quarantine` list (reason, the
//! plugin, time, envelope, size), show (headers, or the whole message),
//! release (into the queue, delivered as accepted) and delete; the CLI also
//! works on a stopped gateway's spool.

use anyhow::{Context, Result, ensure};
use mailgate_tests::{Setup, SinkServer, SmtpClient, http, wait_until};

use crate::WAIT;
use crate::plugins::scripted;

/// Runs `mailgate quarantine --config CONFIG ARGS`: (success, output).
async fn quarantine_cli(config: &std::path::Path, args: &[&str]) -> Result<(bool, String)> {
    crate::mailgate_cli("quarantine", config, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_mail_is_listed_shown_released_and_deleted() -> Result<()> {
    let sink = SinkServer::start().await?;
    let holder = scripted(
        "holder",
        "\"data\"",
        "[plugin.settings.data]\nwhen = \"hold\"\nverdict = \"quarantine\"\ntext = \"looks suspicious\"\n",
    );
    let setup = Setup::new().admin()?.plugin(&holder).route_all_to(sink.addr());
    let gw = setup.start().await?;
    let admin = gw.admin.context("no admin address")?;
    for (n, to) in [(1, "one@y.test"), (2, "two@y.test")] {
        let content = format!("Subject: hold me {n}\r\n\r\nsecret body {n}\r\n");
        SmtpClient::deliver(gw.addr, "a@x.test", &[to], content.as_bytes()).await?;
    }

    let (status, body) = http(admin, "GET", "/quarantine").await?;
    ensure!(status == 200, "{body}");
    let entries: serde_json::Value = serde_json::from_str(&body)?;
    let entries = entries.as_array().context("not a list")?;
    assert_eq!(entries.len(), 2, "{body}");
    let first = &entries[0];
    assert_eq!(first["envelope"]["quarantine"], "looks suspicious");
    assert_eq!(first["envelope"]["quarantined_by"], "plugin holder");
    assert_eq!(first["envelope"]["recipients"][0]["address"], "one@y.test");
    assert!(first["size"].as_u64().is_some_and(|s| s > 20), "{first}");
    let id = |entry: &serde_json::Value| entry["id"].as_str().unwrap_or_default().to_owned();
    let (one, two) = (id(&entries[0]), id(&entries[1]));

    let (_, shown) = http(admin, "GET", &format!("/quarantine/{one}")).await?;
    let shown: serde_json::Value = serde_json::from_str(&shown)?;
    let headers = shown["headers"].as_str().unwrap_or_default();
    assert!(headers.contains("Subject: hold me 1"), "{shown}");
    assert!(!shown.to_string().contains("secret body"), "headers only: {shown}");
    let (_, whole) = http(admin, "GET", &format!("/quarantine/{one}/message")).await?;
    assert!(whole.contains("secret body 1"), "{whole}");

    // Released: delivered as it was accepted (the chain does not run again).
    let (status, body) = http(admin, "POST", &format!("/quarantine/{one}/release")).await?;
    ensure!(status == 200, "{body}");
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["one@y.test"]);
    assert!(sink.messages()[0].text().contains("secret body 1"));
    let (status, _) = http(admin, "POST", &format!("/quarantine/{one}/release")).await?;
    assert_eq!(status, 404, "released once");

    // The other one, on the stopped gateway's spool, with the CLI.
    let config = gw.config();
    let dir = gw.stop().await?;
    let (ok, listed) = quarantine_cli(&config, &["list"]).await?;
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&two)
            && listed.contains("\"looks suspicious\" by plugin holder")
            && listed.contains("two@y.test"),
        "{listed}"
    );
    let (ok, shown) = quarantine_cli(&config, &["show", &two, "--body"]).await?;
    assert!(ok && shown.contains("secret body 2"), "{shown}");
    let (ok, deleted) = quarantine_cli(&config, &["delete", &two]).await?;
    assert!(ok && deleted.contains("deleted"), "{deleted}");
    let (ok, listed) = quarantine_cli(&config, &["list"]).await?;
    assert!(ok && !listed.contains(&two), "{listed}");
    drop(dir);
    Ok(())
}

/// Quarantined messages expire after `delivery.quarantine_max_age`: the
/// next tending (after any operator command, else every minute) removes
/// them and logs each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_mail_expires_after_its_max_age() -> Result<()> {
    let holder = scripted(
        "holder",
        "\"data\"",
        "[plugin.settings.data]\nwhen = \"hold\"\nverdict = \"quarantine\"\ntext = \"looks suspicious\"\n",
    );
    let gw = Setup::new()
        .admin()?
        .delivery("quarantine_max_age = \"1s\"")
        .plugin(&holder)
        .start()
        .await?;
    let admin = gw.admin.context("no admin address")?;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: hold me\r\n\r\nold\r\n").await?;
    let (_, body) = http(admin, "GET", "/quarantine").await?;
    assert!(body.contains("looks suspicious"), "kept at first: {body}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // This listing is answered first; it then tends the quarantine.
    http(admin, "GET", "/quarantine").await?;
    let (status, body) = http(admin, "GET", "/quarantine").await?;
    assert_eq!((status, body.trim()), (200, "[]"), "expired");
    Ok(())
}
