//! The `http` capability: a plugin's requests reach the URLs its
//! `http_allow` names and nothing else (a denied URL makes no connection),
//! are cut at `http_timeout` and `http_max_response_bytes`, go over HTTPS
//! with `[plugins] http_ca_file`, and are recorded and replayed by
//! `mailgate plugin test` with no server running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use mailgate_tests::plugins::PROBE;
use mailgate_tests::{HttpsServer, Setup, SinkServer, SmtpClient, TestCa, header_values, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::WAIT;
use crate::capabilities::transcripts;

/// A plain HTTP server: `/ok` answers `hello`, `/big` 10 KB, `/slow` after
/// 3 s, anything else 404; it counts requests by path.
async fn web() -> Result<(SocketAddr, Arc<Mutex<HashMap<String, usize>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let counts = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                *counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(path.clone())
                    .or_default() += 1;
                let (status, body) = match path.as_str() {
                    "/ok" => ("200 OK", "hello".to_owned()),
                    "/big" => ("200 OK", "x".repeat(10_000)),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        ("200 OK", "late".to_owned())
                    }
                    _ => ("404 Not Found", "no".to_owned()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok((addr, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_only_allowed_urls_within_limits_and_replay() -> Result<()> {
    let (web, seen) = web().await?;
    let ca = TestCa::new()?;
    let secure = HttpsServer::start(ca.server_config(&["127.0.0.1"])?).await?;
    secure.respond(200, "text/plain", "secret hello");
    let dir = tempfile::tempdir()?;
    ca.write(&dir.path().join("ca.pem"))?;
    let record = tempfile::tempdir()?;
    let base = format!("http://{web}");
    let tls_url = format!("https://127.0.0.1:{}/s", secure.addr().port());
    let urls = [
        format!("{base}/ok"),
        format!("{base}/big"),
        format!("{base}/slow"),
        format!("{base}/secret"),
        tls_url.clone(),
    ];
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let plugin = format!(
        "name = \"fetcher\"\npath = \"{PROBE}\"\nstages = [\"data\"]\ncapabilities = [\"dns\", \"kv\", \"metrics\", \"http\"]\n\
         http_allow = [\"{base}/ok\", \"{base}/big\", \"{base}/slow\", \"https://127.0.0.1:{port}/\"]\n\
         http_timeout = \"500ms\"\nhttp_max_response_bytes = 1000\ntime_budget = \"5s\"\n\
         [plugin.settings]\nfetch = [{}]\n",
        quoted.join(", "),
        port = secure.addr().port()
    );
    let sink = SinkServer::start().await?;
    let setup = Setup::new()
        .route_all_to(sink.addr())
        .listener("recorded", &format!("record = \"{}\"", record.path().display()))
        .plugin(&plugin);
    let text = setup
        .render(dir.path())
        .replacen("[plugins]\n", "[plugins]\nhttp_ca_file = \"ca.pem\"\n", 1);
    let config = dir.path().join("mailgate.toml");
    std::fs::write(&config, &text)?;
    let gw = mailgate_tests::GatewayProcess::start(&crate::binary(), &config).await?;
    let addr = gw.listener("recorded").unwrap_or(gw.addr);
    SmtpClient::deliver(addr, "a@x.test", &["b@y.test"], b"Subject: fetch\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = sink.messages()[0].text();
    let shown = header_values(&message, "X-Http");
    assert_eq!(shown.len(), 5, "{message}");
    assert_eq!(shown[0], format!("GET {base}/ok = 200 hello"));
    assert_eq!(shown[1], format!("GET {base}/big = error response too large"));
    assert_eq!(shown[2], format!("GET {base}/slow = error timeout"));
    assert_eq!(
        shown[3],
        format!("GET {base}/secret = error denied: {base}/secret is not in this plugin's http_allow")
    );
    assert_eq!(shown[4], format!("GET {tls_url} = 200 secret hello"));
    let counts = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert_eq!(counts.get("/secret"), None, "a denied URL makes no request: {counts:?}");
    assert_eq!(counts.get("/ok"), Some(&1), "{counts:?}");
    assert!(
        gw.log()
            .iter()
            .any(|l| l.contains("plugin HTTP request failed") && l.contains("/secret")),
        "a denied request is logged"
    );
    drop(gw);

    // The transcript replays with no server running.
    let files = transcripts(record.path(), 1).await?;
    let settings = record.path().join("settings.toml");
    std::fs::write(&settings, format!("fetch = [{}]\n", quoted.join(", ")))?;
    let expected = format!("X-Http: GET {base}/ok = 200 hello");
    let output = std::process::Command::new(crate::binary())
        .args(["plugin", "test", "--plugin", PROBE, "--settings"])
        .arg(&settings)
        .arg("--transcript")
        .arg(&files[0])
        .args(["--expect", "continue", "--expect-header", &expected])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("secret hello"),
        "the HTTPS answer replays too: {stdout}"
    );
    Ok(())
}

#[test]
fn http_needs_its_allow_list_and_the_list_needs_http() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mailgate.toml");
    let base = "[server]\nspool_dir = \"spool\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstages = [\"data\"]\n";
    for (extra, error) in [
        (
            "capabilities = [\"http\"]\n",
            "the `http` capability needs `http_allow`",
        ),
        (
            "http_allow = [\"api.test\"]\n",
            "`http_allow` without the `http` capability",
        ),
        (
            "capabilities = [\"http\"]\nhttp_allow = [\"ftp://x.test/\"]\n",
            "an http_allow entry is a host name",
        ),
    ] {
        std::fs::write(&config, format!("{base}{extra}"))?;
        let output = crate::mailgate_check(&config, None)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(error), "{extra}: {stderr}");
    }
    Ok(())
}
