//! The commands that act on a gateway or its spool: `mailgate reload`,
//! `queue` and `quarantine`. They go through the running gateway's admin
//! API (with the CLI's token), or, when no gateway holds the spool, open
//! the spool and ask an offline queue runner.

use std::path::PathBuf;
use std::process::ExitCode;

use hyper::StatusCode;

use super::{KvAction, QuarantineAction, QueueAction, Selection, validated};
use crate::admin::QueueRequest;
use crate::config::Config;
use crate::queue::QueueId;

/// A queue id given on the command line.
fn parse_id(text: &str) -> Result<QueueId, String> {
    QueueId::parse(text).ok_or_else(|| format!("invalid queue id {text:?}"))
}

/// Checks the file here (without plugins), makes sure it is the file the
/// gateway runs, then asks the gateway to reload it. Exit 64 when the file
/// is invalid, 1 when it is another file than the gateway's, the gateway
/// refused it, or it cannot be reached.
pub(super) async fn reload(path: &std::path::Path) -> ExitCode {
    let config = match validated(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let Some(address) = config.admin_control.or(config.admin) else {
        eprintln!(
            "mailgate: {} has no `[admin] address` to reach the gateway; send it SIGHUP instead",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    match admin_request(&config, address, hyper::Method::GET, "/config").await {
        Ok((status, body)) if status.is_success() => {
            let given = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            let running = PathBuf::from(body["path"].as_str().unwrap_or_default());
            if given != running {
                eprintln!(
                    "mailgate: the gateway at {address} runs {}, not {}; `mailgate reload` reloads the gateway's own \
                     file (edit that one, or restart the gateway with --config {})",
                    running.display(),
                    given.display(),
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        }
        Ok((status, _)) => {
            eprintln!("mailgate: the admin API at {address} answered {status} when asked for its configuration file");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("mailgate: asking the admin API at {address}: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    match admin_request(&config, address, hyper::Method::POST, "/reload").await {
        Ok((status, body)) if status.is_success() => {
            println!("reloaded: generation {}", body["generation"]);
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprintln!("mailgate: {}", body["error"].as_str().unwrap_or("reload failed"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mailgate: asking the admin API at {address}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(super) async fn queue(path: &std::path::Path, action: QueueAction) -> ExitCode {
    let config = match validated(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (request, json) = match &action {
        QueueAction::List { json } => (Ok(QueueRequest::List), *json),
        QueueAction::Show { id } => (parse_id(id).map(QueueRequest::Show), true),
        QueueAction::Retry { id: Some(id), .. } => (parse_id(id).map(|id| QueueRequest::Retry(Some(id))), false),
        QueueAction::Retry { id: None, .. } => (Ok(QueueRequest::Retry(None)), false),
        QueueAction::Delete { id } => (parse_id(id).map(QueueRequest::Delete), false),
        QueueAction::Bounce { id } => (parse_id(id).map(QueueRequest::Bounce), false),
        QueueAction::Hold(selection) => (hold_target(selection).map(QueueRequest::Hold), false),
        QueueAction::Release(selection) => (hold_target(selection).map(QueueRequest::Release), false),
    };
    let Some((request, body)) = spool_request(&config, request).await else {
        return ExitCode::FAILURE;
    };
    match (&request, json) {
        (_, true) => println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default()),
        (QueueRequest::List, false) => print_queue(&body),
        (QueueRequest::Retry(_), _) => println!("{} message(s) scheduled for delivery now", body["retried"]),
        (QueueRequest::Hold(_), _) => println!("{} message(s) held", body["held"]),
        (QueueRequest::Release(_), _) => println!("{} message(s) released", body["released"]),
        _ => println!("{}", body["result"].as_str().unwrap_or_default()),
    }
    ExitCode::SUCCESS
}

/// What `queue hold` and `queue release` name: an id, a domain or all.
fn hold_target(selection: &Selection) -> Result<crate::delivery::HoldTarget, String> {
    use crate::delivery::HoldTarget;
    match (&selection.id, &selection.domain) {
        (Some(id), _) => parse_id(id).map(HoldTarget::One),
        (None, Some(domain)) => Ok(HoldTarget::Domain(domain.to_ascii_lowercase())),
        (None, None) => Ok(HoldTarget::All),
    }
}

pub(super) async fn quarantine(path: &std::path::Path, action: QuarantineAction) -> ExitCode {
    let config = match validated(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (request, json) = match &action {
        QuarantineAction::List { json } => (Ok(QueueRequest::QuarantineList), *json),
        QuarantineAction::Show { id, body } => (parse_id(id).map(|id| QueueRequest::QuarantineShow(id, *body)), true),
        QuarantineAction::Release { id } => (parse_id(id).map(QueueRequest::QuarantineRelease), false),
        QuarantineAction::Delete { id } => (parse_id(id).map(QueueRequest::QuarantineDelete), false),
    };
    let Some((request, body)) = spool_request(&config, request).await else {
        return ExitCode::FAILURE;
    };
    match (&request, json) {
        (_, true) => println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default()),
        (QueueRequest::QuarantineList, false) => print_quarantine(&body),
        _ => println!("{}", body["result"].as_str().unwrap_or_default()),
    }
    ExitCode::SUCCESS
}

/// One line per quarantined message: id, age, size, reason, who decided,
/// sender and recipients.
fn print_quarantine(body: &serde_json::Value) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for entry in body.as_array().map(Vec::as_slice).unwrap_or_default() {
        let envelope = &entry["envelope"];
        let received = envelope["received_at"]["secs_since_epoch"].as_u64().unwrap_or(now);
        let rcpts: Vec<&str> = envelope["recipients"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["address"].as_str())
            .collect();
        println!(
            "{}  {}s  {} octets  {:?} by {}  from <{}> to {}",
            entry["id"].as_str().unwrap_or_default(),
            now.saturating_sub(received),
            entry["size"],
            envelope["quarantine"].as_str().unwrap_or_default(),
            envelope["quarantined_by"].as_str().unwrap_or("-"),
            envelope["reverse_path"].as_str().unwrap_or_default(),
            rcpts.join(", ")
        );
    }
}

/// `mailgate kv`: through the running gateway's admin API, or directly
/// in the store when no gateway holds the spool.
pub(super) async fn kv(path: &std::path::Path, action: KvAction) -> ExitCode {
    use crate::kv::control::{KvRequest, answer};
    let config = match validated(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let (request, json) = match action {
        KvAction::List { plugin, json } => (KvRequest::List(plugin), json),
        KvAction::Delete { plugin, key } => (KvRequest::Delete(plugin, key), false),
    };
    let answered = match crate::queue::Spool::open_with(&config.spool_dir, config.spool_sync) {
        // Held while the store is used, so no gateway starts meanwhile.
        Ok(_spool) => {
            let answered = answer(&config.kv, &request).await;
            if let Err(e) = config.kv.flush().await {
                eprintln!("mailgate: {e}");
                return ExitCode::FAILURE;
            }
            Ok(answered)
        }
        Err(crate::queue::SpoolError::Locked { .. }) => match config.admin_control.or(config.admin) {
            Some(address) => {
                let (method, path) = request.http();
                admin_request(&config, address, method, &path).await
            }
            None => Err(anyhow::anyhow!(
                "a gateway is running on this spool and the configuration has no `[admin] address` to reach it"
            )),
        },
        Err(e) => Err(e.into()),
    };
    let (status, body) = match answered {
        Ok(answered) => answered,
        Err(e) => {
            eprintln!("mailgate: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if !status.is_success() {
        eprintln!("mailgate: {}", body["error"].as_str().unwrap_or("request failed"));
        return ExitCode::FAILURE;
    }
    match (&request, json) {
        (KvRequest::List(_), true) => println!("{body}"),
        (KvRequest::List(_), false) => {
            let entries = body.as_array().map(Vec::as_slice).unwrap_or_default();
            for entry in entries {
                println!(
                    "{}  {}",
                    entry["key"].as_str().unwrap_or("?"),
                    entry["value"].as_str().unwrap_or("")
                );
            }
            println!("{} key(s)", entries.len());
        }
        (KvRequest::Delete(_, key), _) => println!("deleted {key}"),
    }
    ExitCode::SUCCESS
}

/// Carries out a queue or quarantine request (see `queue_answer`); the
/// request and the answer's body, or `None` once the error is printed.
async fn spool_request(
    config: &Config,
    request: Result<QueueRequest, String>,
) -> Option<(QueueRequest, serde_json::Value)> {
    let request = request.map_err(|e| eprintln!("mailgate: {e}")).ok()?;
    let (status, body) = queue_answer(config, request.clone())
        .await
        .map_err(|e| eprintln!("mailgate: {e:#}"))
        .ok()?;
    if !status.is_success() {
        eprintln!("mailgate: {}", body["error"].as_str().unwrap_or("request failed"));
        return None;
    }
    Some((request, body))
}

/// Asks the running gateway over its admin API, or, when no gateway holds
/// the spool, opens the spool and asks an offline queue runner.
async fn queue_answer(config: &Config, request: QueueRequest) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    use anyhow::Context as _;
    match crate::queue::Spool::open_with(&config.spool_dir, config.spool_sync) {
        Ok(spool) => {
            let spool = std::sync::Arc::new(spool);
            let (recovered, problems) = {
                let spool = std::sync::Arc::clone(&spool);
                tokio::task::spawn_blocking(move || spool.scan()).await??
            };
            for problem in problems {
                eprintln!("mailgate: spool entry set aside in corrupt/: {problem}");
            }
            let (control, commands) = crate::delivery::control();
            let runner = tokio::spawn(crate::delivery::offline(
                spool,
                std::sync::Arc::new(config.delivery.clone()),
                recovered,
                commands,
            ));
            let answer = crate::admin::execute(&control, request).await;
            drop(control);
            runner.await?;
            Ok(answer)
        }
        Err(crate::queue::SpoolError::Locked { .. }) => {
            let address = config.admin_control.or(config.admin).context(
                "a gateway is running on this spool and the configuration has no `[admin] address` to reach it",
            )?;
            let (method, path) = request.http();
            admin_request(config, address, method, &path)
                .await
                .with_context(|| format!("asking the admin API at {address}"))
        }
        Err(e) => Err(e.into()),
    }
}

/// One request to the gateway's control endpoints at `address`, with the
/// CLI's token (`MAILGATE_ADMIN_TOKEN` or `[admin] client_token_file`),
/// over HTTPS with its client certificate when the admin API has TLS.
async fn admin_request(
    config: &Config,
    address: std::net::SocketAddr,
    method: hyper::Method,
    path: &str,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    use http_body_util::BodyExt as _;
    let stream: Box<dyn crate::admin::tls::Stream> = match config.admin_auth.tls {
        Some(_) => config.admin_auth.client_tls.connect(address).await?,
        None => Box::new(tokio::net::TcpStream::connect(address).await?),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, address.to_string());
    if let Some(token) = config.admin_auth.client_token() {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body)?))
}

/// One line per message: id, status, age, size, attempts, sender, then
/// each pending recipient with its last error.
fn print_queue(body: &serde_json::Value) {
    let entries = body.as_array().map(Vec::as_slice).unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for entry in entries {
        let received = entry["envelope"]["received_at"]["secs_since_epoch"]
            .as_u64()
            .unwrap_or(now);
        let from = entry["envelope"]["reverse_path"].as_str().unwrap_or("");
        println!(
            "{}  {:<10}  {:>6}s  {:>9}B  attempts={}  from=<{}>",
            entry["id"].as_str().unwrap_or("?"),
            entry["status"].as_str().unwrap_or("?"),
            now.saturating_sub(received),
            entry["size"],
            entry["state"]["attempts"],
            from
        );
        let recipients = entry["envelope"]["recipients"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let statuses = entry["state"]["recipients"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (rcpt, status) in recipients.iter().zip(statuses) {
            if status["status"] == "pending" {
                let error = status["last_error"].as_str().unwrap_or("not tried yet");
                println!("    <{}>: {error}", rcpt["address"].as_str().unwrap_or("?"));
            }
        }
    }
    println!("{} message(s) queued", entries.len());
}
