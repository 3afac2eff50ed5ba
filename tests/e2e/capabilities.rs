//! The plugins' capabilities (`dns`, `kv`, `metrics`) and the operator
//! plugins built on them (dnsbl, greylist, rate-limit), end to end: a real
//! DNS server on loopback answers the lookups, the embedded store keeps
//! state on disk across a restart, and a real Redis lets a fleet of three
//! gateways share one rate limit.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use hickory_proto::rr::RecordType;
use mailgate_tests::plugins::{DNSBL, GREYLIST, PROBE, RATE_LIMIT};
use mailgate_tests::{
    DnsServer, Gateway, GatewayProcess, RedisServer, Setup, SinkServer, SmtpClient, http, wait_until,
};

use crate::WAIT;
use crate::scrape::Scrape;

/// Every value of header `name` in a message, in order.
fn headers(text: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    text.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// A `[[plugin]]` body: its name, file, one stage, capabilities, and the
/// settings (TOML lines after `[plugin.settings]`).
fn plugin(name: &str, path: &str, stage: &str, capabilities: &str, settings: &str) -> String {
    format!(
        "name = \"{name}\"\npath = \"{path}\"\nstages = [\"{stage}\"]\ncapabilities = [{capabilities}]\n[plugin.settings]\n{settings}\n"
    )
}

/// The probe plugin, with every capability granted.
fn probe(name: &str, settings: &str) -> String {
    plugin(name, PROBE, "data", r#""dns", "kv", "metrics", "http""#, settings).replacen(
        "[plugin.settings]",
        "http_allow = [\"127.0.0.1\"]\n[plugin.settings]",
        1,
    )
}

/// Every lookup type answers from the loopback DNS server, repeated
/// lookups in a transaction are answered from the cache, a kv counter
/// survives a restart of the gateway (the embedded store is on disk), and
/// plugin-defined metrics are exported with the plugin's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_answer_through_the_gateway() -> Result<()> {
    let dns = DnsServer::start().await?;
    dns.address("host.test", ip("192.0.2.1"));
    dns.address("host.test", ip("2001:db8::1"));
    dns.mx("x.test", 10, "mx.x.test")?;
    dns.txt("x.test", "v=spf1 -all");
    dns.ptr(ip("192.0.2.1"), "host.test")?;
    let sink = SinkServer::start().await?;
    let settings = r#"lookups = [["a", "host.test"], ["aaaa", "host.test"], ["mx", "x.test"], ["txt", "x.test"], ["ptr", "192.0.2.1"], ["a", "missing.test"], ["a", "bad..name"], ["mx", "host.test"]]
repeat = 3
counter = "messages"
metrics = true
"#;
    let setup = Setup::new()
        .dns(dns.addr())
        .route_all_to(sink.addr())
        .admin()?
        .plugin(&probe("probe-cap", settings));
    let gw = setup.clone().start().await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for n in 0..2 {
        let content = format!("Subject: {n}\r\n\r\nhello\r\n");
        client
            .send_message("a@x.test", &["b@y.test"], content.as_bytes())
            .await?;
    }
    client.command("QUIT").await?;
    wait_until(WAIT, || sink.count() == 2).await?;
    // The two may be relayed at once and arrive in either order.
    let by_subject = |n: usize| {
        sink.messages()
            .iter()
            .map(|m| m.text())
            .find(|t| t.contains(&format!("Subject: {n}\r\n")))
            .unwrap_or_default()
    };
    let first = by_subject(0);
    assert_eq!(
        headers(&first, "X-Dns"),
        [
            "a host.test = 192.0.2.1",
            "aaaa host.test = 2001:db8::1",
            "mx x.test = 10:mx.x.test",
            "txt x.test = v=spf1 -all",
            "ptr 192.0.2.1 = host.test",
            "a missing.test = NXDOMAIN",
            "a bad..name = INVALID",
            "mx host.test = ",
        ],
        "{first}"
    );
    // Three lookups in each of two transactions: one query on the wire
    // (the transaction's cache, then the resolver's own, by TTL).
    assert_eq!(dns.queries("host.test", RecordType::A), 1);
    assert_eq!(dns.queries("x.test", RecordType::TXT), 1);
    assert_eq!(headers(&first, "X-Kv"), ["messages = 1"]);
    assert_eq!(headers(&by_subject(1), "X-Kv"), ["messages = 2"]);

    let admin = gw.admin.ok_or_else(|| anyhow::anyhow!("no admin"))?;
    let (_, metrics) = http(admin, "GET", "/metrics").await?;
    for line in [
        r#"mailgate_plugin_probe_messages_total{listener="test",plugin="probe-cap"} 2"#,
        r#"mailgate_plugin_probe_size_kib_count{plugin="probe-cap"} 2"#,
        r#"mailgate_dns_lookups_total{result="found",type="txt"}"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains("Bad-Name"), "an invalid metric name is ignored");

    let dir = gw.stop().await?;
    let gw = Gateway::start_in(setup, dir).await?;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: 3\r\n\r\nhello\r\n").await?;
    wait_until(WAIT, || sink.count() == 3).await?;
    assert_eq!(
        headers(&sink.messages()[2].text(), "X-Kv"),
        ["messages = 3"],
        "the counter survived the restart"
    );
    Ok(())
}

/// A plugin that imports a capability it was not granted does not load,
/// and the error names the plugin and the capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_not_granted_stops_start_up() -> Result<()> {
    let body = plugin(
        "dnsbl",
        DNSBL,
        "connect",
        r#""log", "metrics""#,
        r#"zones = ["bl.test"]"#,
    );
    let error = Setup::new().plugin(&body).start().await.err().map(|e| e.to_string());
    let error = error.unwrap_or_default();
    assert!(error.contains("plugin `dnsbl`"), "{error}");
    assert!(
        error.contains("imports `mailgate:plugin/dns@0.2.0`, but its capabilities are [log, metrics]"),
        "{error}"
    );
    Ok(())
}

fn dnsbl(settings: &str) -> String {
    plugin("dnsbl", DNSBL, "connect", r#""dns", "log", "metrics""#, settings)
}

/// dnsbl: a client listed by a zone is refused at connect with 554 5.7.1
/// naming the list and its TXT reason; lists that do not list it, or that
/// fail, let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_refuses_listed_clients_naming_the_list() -> Result<()> {
    let dns = DnsServer::start().await?;
    dns.address("1.0.0.127.bl.test", ip("127.0.0.2"));
    dns.txt("1.0.0.127.bl.test", "Listed for spam, see https://bl.test/?127.0.0.1");
    dns.servfail("1.0.0.127.broken.test");

    let gw = Setup::new()
        .dns(dns.addr())
        .plugin(&dnsbl(r#"zones = ["clean.test", "broken.test", "bl.test"]"#))
        .start()
        .await?;
    let mut client = SmtpClient::connect(gw.addr).await?;
    let greeting = client.reply().await?;
    assert_eq!(greeting.code, 554, "{greeting:?}");
    assert_eq!(
        greeting.text(),
        "5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test; Listed for spam, see https://bl.test/?127.0.0.1"
    );
    assert!(client.read_to_close().await.is_ok(), "the connection is closed");

    let clean = Setup::new()
        .dns(dns.addr())
        .plugin(&dnsbl(r#"zones = ["clean.test", "broken.test"]"#))
        .start()
        .await?;
    let mut client = SmtpClient::connect(clean.addr).await?;
    assert_eq!(client.reply().await?.code, 220);
    Ok(())
}

fn greylist(settings: &str) -> String {
    plugin(
        "greylist",
        GREYLIST,
        "rcpt",
        r#""kv", "clock", "log", "metrics""#,
        settings,
    )
}

/// Sends MAIL and RCPT and returns the RCPT reply's code and text; the
/// transaction is reset afterwards.
async fn rcpt(addr: std::net::SocketAddr, from: &str, to: &str) -> Result<(u16, String)> {
    let mut client = SmtpClient::greeted(addr).await?;
    client.expect(&format!("MAIL FROM:<{from}>"), 250).await?;
    let reply = client.command(&format!("RCPT TO:<{to}>")).await?;
    client.command("QUIT").await?;
    Ok((reply.code, reply.text().to_owned()))
}

/// greylist: the first attempt of a triplet is deferred with 451 4.7.1, a
/// retry before the delay too, a retry after it passes and the message is
/// delivered; the embedded store remembers the triplet across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylisting_defers_the_first_attempt_and_passes_a_retry() -> Result<()> {
    let sink = SinkServer::start().await?;
    let setup = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&greylist(r#"delay = "1s""#));
    let gw = setup.clone().start().await?;
    let (code, text) = rcpt(gw.addr, "a@x.test", "b@y.test").await?;
    assert_eq!(
        (code, text.as_str()),
        (451, "4.7.1 Greylisted, please try again in 1 seconds")
    );
    assert_eq!(rcpt(gw.addr, "a@x.test", "b@y.test").await?.0, 451, "too early");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: retried\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(rcpt(gw.addr, "a@x.test", "c@y.test").await?.0, 451, "a new triplet");

    let dir = gw.stop().await?;
    let gw = Gateway::start_in(setup, dir).await?;
    assert_eq!(
        rcpt(gw.addr, "a@x.test", "b@y.test").await?.0,
        250,
        "known after the restart"
    );
    Ok(())
}

fn rate_limit(limit: u32) -> String {
    let limits = format!("limits = [{{ by = \"ip\", limit = {limit}, window = \"1h\" }}]");
    plugin(
        "rate-limit",
        RATE_LIMIT,
        "mail",
        r#""kv", "clock", "log", "metrics""#,
        &limits,
    )
}

/// rate-limit on the embedded store: the fourth message of a client in the
/// window is deferred at MAIL with 451 4.7.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_defers_a_client_over_its_limit() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&rate_limit(3))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    for _ in 0..3 {
        client
            .send_message("a@x.test", &["b@y.test"], b"Subject: r\r\n\r\nhi\r\n")
            .await?;
    }
    let refused = client.command("MAIL FROM:<a@x.test>").await?;
    assert_eq!(refused.code, 451, "{refused:?}");
    assert_eq!(
        refused.text(),
        "4.7.1 Rate limit exceeded: at most 3 messages per 3600 s per ip; please try again later"
    );
    wait_until(WAIT, || sink.count() == 3).await?;
    Ok(())
}

/// One gateway of a fleet: its own process, directory and spool.
struct Member {
    process: GatewayProcess,
    admin: std::net::SocketAddr,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Gateways on loopback, each its own process with its own spool, sharing
/// one Redis, with the rate-limit or greylist plugin: each has a listener
/// `lb` taking the client from PROXY headers (the load balancer's side)
/// for mail to `y.test`, and its admin API for Prometheus, as in the
/// README's "Running a fleet".
async fn fleet(redis: &RedisServer, sink: &SinkServer, plugin: &str, size: usize) -> Result<Vec<Member>> {
    let mut fleet = Vec::new();
    for _ in 0..size {
        let setup = Setup::new()
            .admin()?
            .listener("lb", "proxy_protocol = true")
            .relay("accepted_domains = [\"y.test\"]")
            .route_all_to(sink.addr())
            .kv("backend = \"redis\"")
            .kv(&format!("url = \"{}\"", redis.url()))
            .kv("key_prefix = \"fleet:\"")
            .plugin(plugin);
        let dir = tempfile::tempdir()?;
        let config = setup.write(dir.path())?;
        let process = GatewayProcess::start(&crate::binary(), &config).await?;
        let admin = setup.admin_address().context("no admin address")?;
        fleet.push(Member {
            process,
            admin,
            config,
            _dir: dir,
        });
    }
    Ok(fleet)
}

/// The fleet: three gateways behind a load balancer (PROXY protocol) share
/// one Redis. A client limited to 5 messages an hour gets exactly 5
/// through, whichever gateway it reaches, counted by its own address from
/// the PROXY header; each gateway's metrics count its share; and a
/// greylisting retry passes on another gateway than the one that saw the
/// first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_one_rate_limit_through_redis() -> Result<()> {
    let redis = RedisServer::start().await?;
    let sink = SinkServer::start().await?;
    let limited = fleet(&redis, &sink, &rate_limit(5), 3).await?;
    let mut accepted = 0;
    let mut deferred = 0;
    for n in 0..12 {
        let lb = limited[n % 3].process.listener("lb").context("no lb listener")?;
        let mut client = SmtpClient::connect(lb).await?;
        client.send(b"PROXY TCP4 192.0.2.7 192.0.2.25 40000 25\r\n").await?;
        client.expect_reply(220).await?;
        client.expect("EHLO client.test", 250).await?;
        let reply = client.command("MAIL FROM:<a@x.test>").await?;
        match reply.code {
            250 => {
                client.expect("RCPT TO:<b@y.test>", 250).await?;
                client.expect("DATA", 354).await?;
                client.send(b"Subject: fleet\r\n\r\nhi\r\n.\r\n").await?;
                client.expect_reply(250).await?;
                accepted += 1;
            }
            451 => deferred += 1,
            other => anyhow::bail!("MAIL answered {other}: {reply:?}"),
        }
        client.command("QUIT").await?;
    }
    assert_eq!((accepted, deferred), (5, 7), "the limit holds across the fleet");
    wait_until(WAIT, || sink.count() == 5).await?;
    let keys = redis.keys("fleet:rate-limit:ip:3600:192.0.2.7:*").await?;
    assert_eq!(
        keys.len(),
        1,
        "one shared counter, for the client behind the balancer: {keys:?}"
    );
    // `mailgate kv` shows the shared counter through any member (a Redis
    // SCAN behind its admin API).
    let (ok, listed) = crate::mailgate_cli("kv", &limited[1].config, &["list", "rate-limit"]).await?;
    assert!(ok, "{listed}");
    let line = listed
        .lines()
        .find(|l| l.starts_with("ip:3600:192.0.2.7:"))
        .with_context(|| format!("no counter in {listed}"))?;
    assert!(line.ends_with("  12"), "every attempt counted: {line}");
    let mut queued = 0.0;
    for gw in &limited {
        let scrape = Scrape::take(gw.admin).await?;
        let share = scrape.value("mailgate_messages_total", &[("stage", "data"), ("result", "queued")]);
        assert!(share >= 1.0, "every gateway took its share: {share}");
        queued += share;
    }
    assert_eq!(queued, 5.0, "the fleet's metrics add up to what was accepted");

    let greylisting = fleet(&redis, &sink, &greylist(r#"delay = "1s""#), 2).await?;
    let (code, _) = rcpt(greylisting[0].process.addr, "g@x.test", "b@y.test").await?;
    ensure!(code == 451, "the first attempt is greylisted, got {code}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        rcpt(greylisting[1].process.addr, "g@x.test", "b@y.test").await?.0,
        250,
        "the retry passes on the other gateway"
    );
    assert_eq!(redis.keys("fleet:greylist:*").await?.len(), 1);
    Ok(())
}

/// A store that cannot be reached: greylisting fails open by default and
/// fails closed (451 4.3.0) when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_open_or_closed_as_configured() -> Result<()> {
    let closed = mailgate_tests::unused_port()?;
    for (settings, expected) in [("", 250), ("on_store_error = \"tempfail\"", 451)] {
        let gw = Setup::new()
            .kv("backend = \"redis\"")
            .kv(&format!("url = \"redis://{closed}/0\""))
            .kv("timeout = \"300ms\"")
            .relay("accepted_domains = [\"y.test\"]")
            .plugin(&greylist(settings))
            .start()
            .await?;
        let (code, text) = rcpt(gw.addr, "a@x.test", "b@y.test").await?;
        assert_eq!(code, expected, "{settings}: {text}");
        if expected == 451 {
            assert_eq!(text, "4.3.0 Greylisting is unavailable, please try again later");
        }
    }
    Ok(())
}

/// The `count` transcripts a recording listener writes into `dir`, once
/// all are there, in the order they were written.
pub(crate) async fn transcripts(dir: &Path, count: usize) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    wait_until(WAIT, || {
        files = std::fs::read_dir(dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.len() == count
    })
    .await?;
    files.sort();
    Ok(files)
}

/// Runs `mailgate plugin test`; its exit code, standard output and error.
pub(crate) fn plugin_test(
    plugin: &str,
    settings: Option<&Path>,
    transcript: &Path,
    expect: &[&str],
) -> Result<(Option<i32>, String, String)> {
    let mut command = std::process::Command::new(crate::binary());
    command.args(["plugin", "test", "--plugin", plugin]);
    if let Some(settings) = settings {
        command.arg("--settings").arg(settings);
    }
    command.arg("--transcript").arg(transcript);
    for e in expect {
        command.args(["--expect", e]);
    }
    let out = command.output()?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

/// Record and replay: a listener with `record` writes one transcript per
/// transaction (and one for a connection refused at connect), with the
/// host's answers; `mailgate plugin test` replays them against a plugin
/// with no DNS server running, prints the verdicts, and exits 1 when an
/// expectation fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_transactions_replay_deterministically() -> Result<()> {
    let dns = DnsServer::start().await?;
    dns.address("1.0.0.127.bl.test", ip("127.0.0.2"));
    let sink = SinkServer::start().await?;
    let record = tempfile::tempdir()?;
    let gw = Setup::new()
        .dns(dns.addr())
        .route_all_to(sink.addr())
        .listener("recorded", &format!("record = \"{}\"", record.path().display()))
        .plugin(&dnsbl("zones = [\"bl.test\"]\naction = \"tag\""))
        .plugin(&greylist(r#"delay = "1s""#))
        .start()
        .await?;
    let addr = gw.listener("recorded");
    assert_eq!(rcpt(addr, "a@x.test", "b@y.test").await?.0, 451, "greylisted");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    SmtpClient::deliver(addr, "a@x.test", &["b@y.test"], b"Subject: recorded\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    drop(gw);
    drop(dns);
    let files = transcripts(record.path(), 2).await?;
    let first: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0])?)?;
    let stages: Vec<&str> = first["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stage"].as_str())
        .collect();
    assert_eq!(stages, ["connect", "helo", "mail", "rcpt"], "{first:#}");
    let calls = first["host_calls"].to_string();
    assert!(
        calls.contains("1.0.0.127.bl.test"),
        "the DNS answer is recorded: {calls}"
    );
    assert!(calls.contains("kv_get") && calls.contains("\"now\""), "{calls}");

    // Replay with the binary: the greylist sees the first attempt as new
    // and the retry (recorded 1.1 s later, its kv read included) as passed.
    let settings = record.path().join("greylist.toml");
    std::fs::write(&settings, "delay = \"1s\"\n")?;
    let greylist = |transcript: &Path, expect: &[&str]| plugin_test(GREYLIST, Some(&settings), transcript, expect);
    let (code, stdout, stderr) = greylist(&files[0], &["rcpt=tempfail", "tempfail"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("451 4.7.1 Greylisted"), "{stdout}");
    let (code, stdout, _) = greylist(&files[1], &["continue"])?;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("data (") && stdout.contains("result: continue"),
        "{stdout}"
    );
    // A wrong expectation fails, naming what happened instead.
    let (code, stdout, _) = greylist(&files[1], &["rcpt=tempfail"])?;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: expected rcpt=tempfail, got continue"),
        "{stdout}"
    );

    // The dnsbl replays from the recorded DNS answer, with no server running.
    let (code, stdout, _) = plugin_test(DNSBL, None, record.path(), &["connect=reject"])?;
    assert_eq!(code, Some(64), "settings are required: {stdout}");
    let dnsbl_settings = record.path().join("dnsbl.json");
    std::fs::write(&dnsbl_settings, r#"{"zones": ["bl.test"]}"#)?;
    let (code, stdout, stderr) = plugin_test(DNSBL, Some(&dnsbl_settings), &files[0], &["connect=reject"])?;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("blocked using bl.test"), "{stdout}");
    assert!(
        stdout.contains("not reached: the client was turned away at connect"),
        "the replay stops where the client was turned away: {stdout}"
    );
    Ok(())
}

/// The sandbox, proven: whatever its capabilities, a plugin opens no file,
/// no socket, resolves no name and sees no environment variable through
/// WASI. The WASI
/// clocks and randomness are there (language runtimes need them to start);
/// the README says what a plugin learns from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reaches_nothing_outside_its_capabilities() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&probe("sandboxed", "sandbox = true"))
        .start()
        .await?;
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: sandbox\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let text = sink.messages()[0].text();
    let seen = mailgate_tests::header(&text, "X-Sandbox").unwrap_or_default();
    for denied in ["file=denied(", "socket=denied(", "resolve=denied("] {
        assert!(seen.contains(denied), "{denied}: {seen}");
    }
    assert!(seen.contains("env=0"), "{seen}");
    assert!(
        seen.contains("clock=allowed(true)") && seen.contains("random=allowed(true)"),
        "{seen}"
    );
    Ok(())
}
