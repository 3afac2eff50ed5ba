//! Which hooks the chain calls: each listener its own chain, and a hook a
//! plugin leaves to the SDK's default only once (`mailgate:plugin/defaults`).

use anyhow::{Context, Result};
use mailgate_tests::plugins::PROBE;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, wait_until};

use crate::plugins::scripted;
use crate::scrape::Scrape;
use crate::{WAIT, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_runs_its_own_chain() -> Result<()> {
    let sink = SinkServer::start().await?;
    let stamp = |name: &str, value: &str, listeners: &str| {
        scripted(
            name,
            "\"data\"",
            &format!(
                "{listeners}\n[plugin.settings.data]\nmodifications = [{{ kind = \"add-header\", name = \"X-Chain\", value = \"{value}\" }}]\n"
            ),
        )
    };
    let setup = Setup::new()
        .listener("submission", "")
        .plugin(&stamp("everywhere", "all", ""))
        .plugin(&stamp("mx-only", "mx", "listeners = [\"test\"]"))
        .plugin(&stamp("submission-only", "submission", "listeners = [\"submission\"]"))
        .route_all_to(sink.addr());
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let output = crate::mailgate_check(&config, None)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("listener test (127.0.0.1:0): everywhere [data] -> mx-only [data]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("listener submission (127.0.0.1:0): everywhere [data] -> submission-only [data]"),
        "{stdout}"
    );

    let gw = setup.start().await?;
    for (listener, id) in [("test", "via-mx"), ("submission", "via-submission")] {
        let content = format!("Subject: {id}\r\n\r\nhi\r\n");
        SmtpClient::deliver(gw.listener(listener), "a@x.test", &["b@y.test"], content.as_bytes()).await?;
    }
    wait_until(WAIT, || sink.count() == 2).await?;
    for message in sink.messages() {
        let text = message.text();
        let chain = mailgate_tests::header_values(&text, "X-Chain");
        if text.contains("Subject: via-mx") {
            assert_eq!(chain, ["all", "mx"]);
        } else {
            assert_eq!(chain, ["all", "submission"]);
        }
    }

    // A listener that does not exist is a configuration error at its key.
    let error = match Setup::new()
        .plugin(&stamp("typo", "x", "listeners = [\"mxx\"]"))
        .start()
        .await
    {
        Ok(_) => anyhow::bail!("an unknown listener was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("`plugin[0].listeners[0]`: no [[listener]] is named \"mxx\""),
        "{error}"
    );
    Ok(())
}

/// A hook the plugin leaves to the SDK's default says so on its first call
/// (`mailgate:plugin/defaults`) and is not called again; hooks the plugin
/// implements are called every time, even when they answer `continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_left_to_the_sdk_default_are_called_once() -> Result<()> {
    let sink = SinkServer::start().await?;
    let all = "\"connect\", \"helo\", \"mail\", \"rcpt\", \"data\"";
    let setup = Setup::new()
        .admin()?
        .route_all_to(sink.addr())
        // Implements only on_data, where it uses these capabilities.
        .plugin(&format!(
            "name = \"probe\"\npath = \"{PROBE}\"\nstages = [{all}]\ncapabilities = [\"dns\", \"kv\", \"metrics\", \"http\"]\nhttp_allow = [\"http://127.0.0.1:9/\"]\n"
        ))
        // Implements every hook; with no settings each answers `continue`.
        .plugin(&scripted("every", all, ""));
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let admin = setup.admin_address().context("no admin address")?;
    for messages in [1, 2] {
        let mut client = SmtpClient::greeted(gateway.addr).await?;
        for n in 0..messages {
            let content = format!("Subject: message {n}\r\n\r\nx\r\n");
            let reply = client
                .send_message("a@x.test", &["b@y.test"], content.as_bytes())
                .await?;
            assert_eq!(reply.code, 250, "{}", reply.text());
        }
        client.expect("QUIT", 221).await?;
    }
    wait_until(WAIT, || sink.count() == 3).await?;

    let scrape = Scrape::take(admin).await?;
    let calls = |plugin: &str, hook: &str| {
        scrape.value(
            "mailgate_plugin_calls_total",
            &[("plugin", plugin), ("hook", hook), ("verdict", "continue")],
        )
    };
    // 2 connections, 2 greetings, 3 transactions.
    let expected = [
        ("connect", 2.0),
        ("helo", 2.0),
        ("mail", 3.0),
        ("rcpt", 3.0),
        ("data", 3.0),
    ];
    for (hook, count) in expected {
        assert_eq!(
            calls("every", hook),
            count,
            "the implemented {hook} hook is called every time"
        );
        let probe = if hook == "data" { count } else { 1.0 };
        assert_eq!(calls("probe", hook), probe, "probe's {hook} hook");
    }
    let said: Vec<String> = gateway
        .log()
        .into_iter()
        .filter(|line| line.contains("plugin does not implement this hook"))
        .collect();
    assert_eq!(said.len(), 4, "one line per default hook: {said:#?}");
    for hook in ["connect", "helo", "mail", "rcpt"] {
        assert!(
            said.iter()
                .any(|l| l.contains("plugin=\"probe\"") && l.contains(&format!("stage=\"{hook}\""))),
            "{hook}: {said:#?}"
        );
    }
    Ok(())
}

/// The context switches of the gateway's epoch threads (`mailgate-epoch`,
/// one per plugin engine): how often they woke.
fn epoch_wakeups(pid: u32) -> Result<u64> {
    let mut total = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm"))?.trim() != "mailgate-epoch" {
            continue;
        }
        threads += 1;
        let status = std::fs::read_to_string(task.join("status"))?;
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>()?;
            }
        }
    }
    anyhow::ensure!(threads > 0, "no mailgate-epoch thread in process {pid}");
    Ok(total)
}

/// The gateway in a process of its own (so that its epoch threads can be
/// counted in `/proc`), relaying to `sink` through `plugin`; and its pid.
async fn process_with(sink: &SinkServer, dir: &std::path::Path, plugin: &str) -> Result<(GatewayProcess, u32)> {
    let config = Setup::new().route_all_to(sink.addr()).plugin(plugin).write(dir)?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let pid = gateway.pid().context("no pid")?;
    Ok((gateway, pid))
}

/// How often the gateway's epoch threads wake in the next 500 ms.
async fn epoch_wakeups_in_500_ms(pid: u32) -> Result<u64> {
    let before = epoch_wakeups(pid)?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Ok(epoch_wakeups(pid)? - before)
}

/// A hook call counts for the epoch ticker only while it runs: once it
/// has returned, the ticker naps (10 ms) instead of ticking every
/// millisecond, though the instance lives on until its transaction ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_call_is_not_ticked_for_while_its_instance_lives() -> Result<()> {
    let sink = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (gateway, pid) = process_with(&sink, dir.path(), &scripted("held", "\"rcpt\"", "")).await?;
    let mut client = SmtpClient::greeted(gateway.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 250).await?;
    // The transaction is open: the plugin's instance, whose call has
    // returned, lives on. Ticking, the thread would wake about 500 times.
    let woke = epoch_wakeups_in_500_ms(pid).await?;
    assert!(woke < 150, "the epoch thread woke {woke} times in 500 ms");
    client.expect("DATA", 354).await?;
    client.send(b"Subject: held\r\n\r\nx\r\n.\r\n").await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}

/// Instances kept warm (`instances = "reused"`) wait in the pool with no
/// call armed: once the latest budget has passed, the epoch thread sleeps
/// until woken, both with the instance made at start-up idle and with the
/// same instance idle again after a transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_warm_instances_are_not_ticked_for() -> Result<()> {
    let sink = SinkServer::start().await?;
    let dir = tempfile::tempdir()?;
    let warm = scripted("warm", "\"rcpt\"", "instances = \"reused\"\ntime_budget = \"50ms\"");
    let (gateway, pid) = process_with(&sink, dir.path(), &warm).await?;
    // Past the 50 ms budget and a 10 ms nap the thread sleeps for good;
    // ticking for an idle instance, it would wake about 500 times.
    let past_the_budget = std::time::Duration::from_millis(200);
    tokio::time::sleep(past_the_budget).await;
    let woke = epoch_wakeups_in_500_ms(pid).await?;
    assert!(woke < 20, "after start-up the epoch thread woke {woke} times in 500 ms");
    SmtpClient::deliver(gateway.addr, "a@x.test", &["b@y.test"], b"Subject: warm\r\n\r\nx\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    tokio::time::sleep(past_the_budget).await;
    let woke = epoch_wakeups_in_500_ms(pid).await?;
    assert!(
        woke < 20,
        "after a transaction the epoch thread woke {woke} times in 500 ms"
    );
    Ok(())
}
