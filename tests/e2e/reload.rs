//! Hot reload end to end, on the real binary: under load (SIGHUP and
//! `mailgate reload`), new transactions run on the new chain and one held
//! open finishes on the old one; a failed reload keeps the old
//! configuration serving.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use mailgate_tests::plugins::FAULTY;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, header, stuff, wait_until};

use crate::plugins::scripted;
use crate::scrape::Scrape;
use crate::{WAIT, binary};

/// The scripted plugin adding `X-Chain: version` at the data stage.
fn tagger(version: &str) -> String {
    scripted(
        "tagger",
        "\"data\"",
        &format!(
            "[plugin.settings.data]\nmodifications = [{{ kind = \"add-header\", name = \"X-Chain\", value = \"{version}\" }}]\n"
        ),
    )
}

/// What the sink received, by X-Test-Id: the X-Chain header of each.
pub(crate) fn received_chains(sink: &SinkServer) -> HashMap<String, String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            let text = m.text();
            Some((
                header(&text, "X-Test-Id")?,
                header(&text, "X-Chain").unwrap_or_default(),
            ))
        })
        .collect()
}

/// Runs `mailgate reload --config config`: (success, stdout + stderr).
async fn reload_cli(config: &Path) -> Result<(bool, String)> {
    crate::mailgate_cli("reload", config, &[]).await
}

/// Sends one message with this test id; returns the final reply's code.
async fn send(addr: SocketAddr, id: &str) -> Result<String> {
    let mut client = SmtpClient::greeted(addr).await?;
    let content = format!("X-Test-Id: {id}\r\nSubject: ops\r\n\r\nbody\r\n");
    let reply = client
        .send_message("a@x.test", &["b@y.test"], content.as_bytes())
        .await?;
    ensure!(reply.code == 250, "{id}: {}", reply.text());
    Ok(id.to_owned())
}

/// 100 clients send mail without pause over persistent connections while
/// the configuration is reloaded twice, by SIGHUP and by `mailgate
/// reload`. Every transaction succeeds; every transaction begun after a
/// reload finished runs on the new chain, and one held open across the
/// first reload finishes on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_switch_the_chain_for_new_transactions_only() -> Result<()> {
    let sink = SinkServer::start().await?;
    // A pool slot for each client, since all 100 may be in DATA at once
    // (an exhausted pool is a fault, as documented).
    let base = Setup::new().admin()?.route_all_to(sink.addr()).max_instances(128);
    let dir = tempfile::tempdir()?;
    let config = base.clone().plugin(&tagger("v1")).write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let addr = gateway.addr;

    // A transaction begun on generation 1 and finished after the reload.
    let mut held = SmtpClient::greeted(addr).await?;
    held.expect("MAIL FROM:<a@x.test>", 250).await?;
    held.expect("RCPT TO:<b@y.test>", 250).await?;

    // (test id, reloads finished before its MAIL) for each 250.
    let accepted: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..100 {
        let (accepted, failures, phase, stop) = (
            Arc::clone(&accepted),
            Arc::clone(&failures),
            Arc::clone(&phase),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let mut client = match SmtpClient::greeted(addr).await {
                Ok(client) => client,
                Err(e) => return failures.lock().unwrap().push(format!("client {c}: {e:#}")),
            };
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let id = format!("c{c}-{n}");
                let seen = phase.load(Ordering::SeqCst);
                let content = format!("X-Test-Id: {id}\r\nSubject: reload\r\n\r\nbody\r\n");
                match client.send_message("a@x.test", &["b@y.test"], content.as_bytes()).await {
                    Ok(reply) if reply.code == 250 => accepted.lock().unwrap().push((id, seen)),
                    Ok(reply) => return failures.lock().unwrap().push(format!("{id}: {}", reply.text())),
                    Err(e) => return failures.lock().unwrap().push(format!("{id}: {e:#}")),
                }
            }
        }));
    }
    let count = |accepted: &Arc<Mutex<Vec<(String, usize)>>>| accepted.lock().unwrap().len();

    wait_until(WAIT, || count(&accepted) >= 200).await?;
    base.clone().plugin(&tagger("v2")).write(dir.path())?;
    gateway.hangup()?;
    wait_until(WAIT, || {
        gateway
            .log()
            .iter()
            .any(|l| l.contains("configuration reloaded") && l.contains("generation=2"))
    })
    .await?;
    phase.store(1, Ordering::SeqCst);
    held.expect("DATA", 354).await?;
    held.send(&stuff(b"X-Test-Id: held\r\n\r\nbegun before the reload\r\n"))
        .await?;
    let reply = held.reply().await?;
    assert_eq!(reply.code, 250, "{}", reply.text());

    let reached = count(&accepted) + 200;
    wait_until(WAIT, || count(&accepted) >= reached).await?;
    base.clone().plugin(&tagger("v3")).write(dir.path())?;
    let (ok, output) = reload_cli(&config).await?;
    assert!(ok && output.contains("generation 3"), "{output}");
    phase.store(2, Ordering::SeqCst);
    let reached = count(&accepted) + 200;
    wait_until(WAIT, || count(&accepted) >= reached).await?;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await?;
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "transactions failed: {failures:?}");

    let accepted = accepted.lock().unwrap().clone();
    wait_until(WAIT, || received_chains(&sink).len() > accepted.len()).await?;
    let chains = received_chains(&sink);
    assert_eq!(
        chains.get("held").map(String::as_str),
        Some("v1"),
        "the held transaction"
    );
    let mut versions = HashSet::new();
    for (id, reloads_before) in &accepted {
        let chain = chains
            .get(id)
            .with_context(|| format!("{id} was accepted but not relayed"))?;
        let version: usize = chain
            .trim_start_matches('v')
            .parse()
            .with_context(|| format!("{id}: {chain}"))?;
        assert!(
            version > *reloads_before,
            "{id} began after reload {reloads_before} but ran on {chain}"
        );
        versions.insert(version);
    }
    assert_eq!(versions.len(), 3, "every chain served: {versions:?}");
    drop(held);
    let status = gateway.terminate().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// A broken file, a plugin that fails to start, or a change that needs a
/// restart: the reload fails, says why, is counted, and the old
/// configuration keeps serving; the next good reload applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_keeps_the_old_configuration_serving() -> Result<()> {
    let sink = SinkServer::start().await?;
    let base = Setup::new().admin()?.route_all_to(sink.addr());
    let admin = base.admin_address().context("no admin")?;
    let dir = tempfile::tempdir()?;
    let config = base.clone().plugin(&tagger("v1")).write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let chain_of = |id: &str| received_chains(&sink).get(id).cloned();

    // Not TOML at all, by SIGHUP.
    std::fs::write(&config, "[server\nthis is not toml")?;
    gateway.hangup()?;
    wait_until(WAIT, || gateway.log().iter().any(|l| l.contains("reload failed"))).await?;
    send(gateway.addr, "after-bad-toml").await?;

    // A plugin whose init refuses its settings, by `mailgate reload`.
    base.clone()
        .plugin(&format!(
            "name = \"broken\"\npath = \"{FAULTY}\"\nstages = [\"rcpt\"]\n[plugin.settings]\nmode = \"refuse-settings\"\n"
        ))
        .write(dir.path())?;
    let (ok, output) = reload_cli(&config).await?;
    assert!(!ok && output.contains("broken"), "{output}");
    send(gateway.addr, "after-broken-plugin").await?;

    // A new listener needs a restart.
    base.clone()
        .plugin(&tagger("v2"))
        .listener("extra", "")
        .write(dir.path())?;
    let (ok, output) = reload_cli(&config).await?;
    assert!(!ok && output.contains("needs a restart"), "{output}");
    send(gateway.addr, "after-new-listener").await?;

    wait_until(WAIT, || sink.count() == 3).await?;
    for id in ["after-bad-toml", "after-broken-plugin", "after-new-listener"] {
        assert_eq!(chain_of(id).as_deref(), Some("v1"), "{id}");
    }
    let scrape = Scrape::take(admin).await?;
    assert_eq!(
        scrape.value("mailgate_config_reloads_total", &[("result", "failure")]),
        3.0
    );
    assert_eq!(
        scrape.value("mailgate_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert_eq!(scrape.value("mailgate_config_last_reload_successful", &[]), 0.0);

    base.clone().plugin(&tagger("v2")).write(dir.path())?;
    // Another file that names the same gateway: refused, nothing reloaded.
    let other_dir = tempfile::tempdir()?;
    let other = base.clone().plugin(&tagger("v3")).write(other_dir.path())?;
    let (ok, output) = reload_cli(&other).await?;
    assert!(!ok && output.contains("reloads the gateway's own file"), "{output}");
    let (ok, output) = reload_cli(&config).await?;
    assert!(ok, "{output}");
    send(gateway.addr, "after-good-reload").await?;
    wait_until(WAIT, || sink.count() == 4).await?;
    assert_eq!(chain_of("after-good-reload").as_deref(), Some("v2"));
    let scrape = Scrape::take(admin).await?;
    assert_eq!(
        scrape.value("mailgate_config_reloads_total", &[("result", "success")]),
        1.0
    );
    assert_eq!(scrape.value("mailgate_config_last_reload_successful", &[]), 1.0);
    let status = gateway.terminate().await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}
