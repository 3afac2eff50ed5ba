//! An admin API that is safe to expose: control endpoints behind bearer
//! tokens kept hashed in a file (`mailgate admin token add`), refused
//! without or with a wrong token and changing nothing then; metrics open
//! (or protected); read-only and control endpoints on separate addresses;
//! no start on a public address without tokens; the CLI with its token.

use anyhow::{Context, Result};
use mailgate_tests::{Setup, SinkServer, SmtpClient, http, http_with, wait_until};

use crate::{WAIT, mailgate_cli};

fn dir_of(config: &std::path::Path) -> std::path::PathBuf {
    config.parent().map(std::path::Path::to_path_buf).unwrap_or_default()
}

/// `mailgate admin token add NAME --config CONFIG`: the token printed.
async fn add_token(config: &std::path::Path, name: &str) -> Result<String> {
    let (ok, output) = mailgate_cli("admin", config, &["token", "add", name]).await?;
    anyhow::ensure!(ok, "{output}");
    Ok(output.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_need_a_token_and_metrics_stay_open() -> Result<()> {
    let down = mailgate_tests::unused_port()?;
    let dir = tempfile::tempdir()?;
    let setup = Setup::new()
        .admin()?
        .admin_line("tokens_file = \"admin-tokens\"")
        .admin_line("client_token_file = \"client-token\"")
        .hourly_retries()
        .route_all_to(down);
    let config = setup.write(dir.path())?;
    // The file does not exist yet: `token add` creates it (mode 0600).
    let token = add_token(&config, "ops").await?;
    assert_eq!(token.len(), 64, "{token}");
    let stored = std::fs::read_to_string(dir.path().join("admin-tokens"))?;
    assert!(stored.starts_with("ops:") && !stored.contains(&token), "{stored}");
    let gw = mailgate_tests::Gateway::start_in(setup, dir).await?;
    let admin = gw.admin.context("no admin address")?;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: held back\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || gw.queued() == 1).await?;
    // Its first attempt (to a closed port) is over when it is counted.
    crate::scrape::Scrape::once(
        admin,
        "mailgate_delivery_attempts_total",
        &[("result", "deferred")],
        1.0,
    )
    .await?;

    assert_eq!(http(admin, "GET", "/metrics").await?.0, 200, "metrics stay open");
    assert_eq!(http(admin, "GET", "/healthz").await?.0, 200);
    for token in [None, Some("wrong")] {
        assert_eq!(http_with(admin, "GET", "/queue", token).await?.0, 401);
        assert_eq!(http_with(admin, "POST", "/queue/hold", token).await?.0, 401);
        assert_eq!(http_with(admin, "POST", "/reload", token).await?.0, 401);
    }
    // Nothing was held by the refused requests.
    let (status, listed) = http_with(admin, "GET", "/queue", Some(&token)).await?;
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed.contains("\"waiting\"") && !listed.contains("\"held\""),
        "{listed}"
    );

    // The CLI: a wrong token in its file is refused; the environment's
    // token wins over the file; the right token in the file works.
    let cli = |action: &'static str, token: Option<&str>| {
        let mut command = tokio::process::Command::new(crate::binary());
        command
            .args(["queue", "--config"])
            .arg(gw.config())
            .args([action, "--all"]);
        command.env_remove("MAILGATE_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("MAILGATE_ADMIN_TOKEN", token);
        }
        command.output()
    };
    let client_token = dir_of(&gw.config()).join("client-token");
    std::fs::write(&client_token, "wrong\n")?;
    let refused = cli("hold", None).await?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("bearer token"),
        "{refused:?}"
    );
    let held = cli("hold", Some(&token)).await?;
    assert!(held.status.success(), "{held:?}");
    assert!(String::from_utf8_lossy(&held.stdout).contains("1 message(s) held"));
    std::fs::write(&client_token, format!("{token}\n"))?;
    let released = cli("release", None).await?;
    assert!(released.status.success(), "{released:?}");
    assert!(
        String::from_utf8_lossy(&released.stdout).contains("1 message(s) released"),
        "{released:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_control_endpoints_listen_apart() -> Result<()> {
    let sink = SinkServer::start().await?;
    let control = mailgate_tests::unused_port()?;
    let gw = Setup::new()
        .admin()?
        .admin_line(&format!("control_address = \"{control}\""))
        .route_all_to(sink.addr())
        .start()
        .await?;
    let read_only = gw.admin.context("no admin address")?;
    assert_eq!(http(read_only, "GET", "/metrics").await?.0, 200);
    assert_eq!(
        http(read_only, "GET", "/queue").await?.0,
        404,
        "no control on the read-only address"
    );
    assert_eq!(http(control, "GET", "/queue").await?.0, 200);
    assert_eq!(http(control, "GET", "/metrics").await?.0, 404);
    Ok(())
}

#[test]
fn control_endpoints_off_loopback_without_tokens_stop_start_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mailgate.toml");
    std::fs::write(
        &config,
        "[server]\nspool_dir = \"spool\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n[admin]\naddress = \"0.0.0.0:8025\"\n",
    )?;
    let output = crate::mailgate_check(&config, None)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("`admin.address`: the control endpoints (queue, quarantine, reload) would be reachable from the network without authentication"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_endpoints_take_client_certificates_over_https() -> Result<()> {
    let ca = mailgate_tests::TestCa::new()?;
    let rogue = mailgate_tests::TestCa::new()?;
    let ops = ca.issue_client("ops-laptop")?;
    let intruder = rogue.issue_client("ops-laptop")?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = ca.issue(&["127.0.0.1"])?;
    std::fs::write(dir.path().join("admin-cert.pem"), cert)?;
    std::fs::write(dir.path().join("admin-key.pem"), key)?;
    std::fs::write(dir.path().join("cli-cert.pem"), &ops.0)?;
    std::fs::write(dir.path().join("cli-key.pem"), &ops.1)?;
    ca.write(&dir.path().join("ca.pem"))?;
    let down = mailgate_tests::unused_port()?;
    let setup = Setup::new()
        .admin()?
        .admin_line("tls_cert_file = \"admin-cert.pem\"")
        .admin_line("tls_key_file = \"admin-key.pem\"")
        .admin_line("client_ca_file = \"ca.pem\"")
        .admin_line("client_cert_file = \"cli-cert.pem\"")
        .admin_line("client_key_file = \"cli-key.pem\"")
        .admin_line("server_ca_file = \"ca.pem\"")
        .hourly_retries()
        .route_all_to(down);
    let config = setup.write(dir.path())?;
    let admin = setup.admin_address().context("no admin address")?;
    let gw = mailgate_tests::GatewayProcess::start(&crate::binary(), &config).await?;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: held back\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || mailgate_tests::count_queued(&dir.path().join("spool")) == 1).await?;

    // Metrics need no certificate; plain HTTP is not spoken at all.
    let anonymous = ca.client_config_with(None)?;
    assert_eq!(
        mailgate_tests::https(admin, anonymous.clone(), "GET", "/metrics", None)
            .await?
            .0,
        200
    );
    assert!(
        !matches!(http(admin, "GET", "/metrics").await, Ok((200, _))),
        "plain HTTP is refused"
    );
    // Without a certificate: 401. With one from another CA: no TLS session.
    for (method, path) in [("GET", "/queue"), ("POST", "/queue/hold"), ("POST", "/reload")] {
        let (status, body) = mailgate_tests::https(admin, anonymous.clone(), method, path, None).await?;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body.contains("client certificate"), "{body}");
        let refused = mailgate_tests::https(admin, ca.client_config_with(Some(&intruder))?, method, path, None).await;
        assert!(
            refused.is_err(),
            "{method} {path} with a rogue certificate: {refused:?}"
        );
    }
    let trusted = ca.client_config_with(Some(&ops))?;
    // Its first attempt (to a closed port) may still be running.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, listed) = loop {
        let (status, listed) = mailgate_tests::https(admin, trusted.clone(), "GET", "/queue", None).await?;
        if !listed.contains("\"delivering\"") || tokio::time::Instant::now() > deadline {
            break (status, listed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed.contains("\"waiting\"") && !listed.contains("\"held\""),
        "nothing was held by the refused requests: {listed}"
    );

    // The CLI presents its certificate from the configuration.
    let (ok, output) = mailgate_cli("queue", &config, &["hold", "--all"]).await?;
    assert!(ok, "{output}");
    assert!(output.contains("1 message(s) held"), "{output}");
    wait_until(WAIT, || {
        gw.log()
            .iter()
            .any(|l| l.contains("admin request") && l.contains("certificate ops-laptop") && l.contains("/queue/hold"))
    })
    .await
    .context("no log line names the certificate")?;
    Ok(())
}

#[test]
fn client_certificates_alone_allow_control_off_loopback() -> Result<()> {
    let ca = mailgate_tests::TestCa::new()?;
    let dir = tempfile::tempdir()?;
    let (cert, key) = ca.issue(&["192.0.2.1"])?;
    std::fs::write(dir.path().join("admin-cert.pem"), cert)?;
    std::fs::write(dir.path().join("admin-key.pem"), key)?;
    ca.write(&dir.path().join("ca.pem"))?;
    let config = dir.path().join("mailgate.toml");
    let base = "[server]\nspool_dir = \"spool\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n[admin]\naddress = \"0.0.0.0:8025\"\n";
    std::fs::write(
        &config,
        format!(
            "{base}tls_cert_file = \"admin-cert.pem\"\ntls_key_file = \"admin-key.pem\"\nclient_ca_file = \"ca.pem\"\n"
        ),
    )?;
    let output = crate::mailgate_check(&config, None)?;
    assert!(output.status.success(), "{output:?}");
    // A client CA without HTTPS is refused, naming the key.
    std::fs::write(&config, format!("{base}client_ca_file = \"ca.pem\"\n"))?;
    let output = crate::mailgate_check(&config, None)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("`admin.client_ca_file`: client certificates need HTTPS on the admin listeners"),
        "{stderr}"
    );
    Ok(())
}
