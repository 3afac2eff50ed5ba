//! What an operator greps for: one info line for every refusal at every
//! stage (who decided it, the envelope so far, the reply), and a 4xx at the
//! data stage logged as `tempfailed`, as the metric counts it.

use anyhow::Result;
use mailgate_tests::plugins::FAULTY;
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient, stuff, wait_until};

use crate::plugins::scripted;
use crate::{WAIT, binary};

/// The log lines containing every one of `parts`.
fn lines_with(gateway: &GatewayProcess, parts: &[&str]) -> Vec<String> {
    gateway
        .log()
        .into_iter()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_an_info_line_naming_who_decided() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gate = scripted(
        "gate",
        "\"mail\", \"data\"",
        "[plugin.settings.mail]\nwhen = \"spammer\"\nverdict = \"reject\"\ncode = 550\nenhanced = \"5.7.1\"\ntext = \"sender refused\"\n\
         [plugin.settings.data]\nwhen = \"later\"\nverdict = \"tempfail\"\ncode = 451\nenhanced = \"4.7.1\"\ntext = \"try later\"\n",
    );
    let setup = Setup::new()
        .relay("trusted_networks = []")
        .relay("accepted_domains = [\"y.test\"]")
        .smtp("max_recipients = 100")
        .plugin(&gate)
        .route_all_to(sink.addr());
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;

    let mut client = SmtpClient::greeted(gateway.addr).await?;
    client.expect("MAIL FROM:<spammer@x.test>", 550).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<victim@elsewhere.test>", 554).await?;
    for n in 0..101 {
        let code = if n < 100 { 250 } else { 452 };
        client.expect(&format!("RCPT TO:<r{n}@y.test>"), code).await?;
    }
    client.expect("DATA", 354).await?;
    client.send(&stuff(b"Subject: later\r\n\r\nhello\r\n")).await?;
    client.expect_reply(451).await?;

    let found = |parts: &[&str]| !lines_with(&gateway, parts).is_empty();
    wait_until(WAIT, || found(&["message tempfailed"])).await?;
    let log = gateway.log().join("\n");
    assert!(
        found(&[
            "refused",
            "stage=\"mail\"",
            "from=spammer@x.test",
            "550 5.7.1 sender refused",
            "decided_by=\"plugin gate\""
        ]),
        "{log}"
    );
    assert!(
        found(&[
            "refused",
            "stage=\"rcpt\"",
            "to=victim@elsewhere.test",
            "554 5.7.1",
            "decided_by=\"policy relay\""
        ]),
        "{log}"
    );
    assert!(
        found(&[
            "refused",
            "stage=\"rcpt\"",
            "rcpts=100",
            "outcome=\"tempfailed\"",
            "452 4.5.3",
            "decided_by=\"limit max_recipients\""
        ]),
        "{log}"
    );
    assert!(
        found(&[
            "message tempfailed",
            "outcome=\"tempfailed\"",
            "451 4.7.1 try later",
            "decided_by=\"plugin gate\""
        ]),
        "{log}"
    );
    assert!(!found(&["message rejected", "451 4.7.1"]), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_panic_is_logged_with_its_message_and_backtrace() -> Result<()> {
    let setup = Setup::new().plugin(&format!(
        "name = \"faulty\"\npath = \"{FAULTY}\"\nstages = [\"rcpt\"]\n[plugin.settings]\nmode = \"panic\"\nstage = \"rcpt\"\n"
    ));
    let dir = tempfile::tempdir()?;
    let config = setup.write(dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let mut client = SmtpClient::greeted(gateway.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    client.expect("RCPT TO:<b@y.test>", 451).await?;
    wait_until(WAIT, || !lines_with(&gateway, &["plugin fault"]).is_empty()).await?;
    let fault = lines_with(&gateway, &["plugin fault"]).join("\n");
    assert!(
        fault.contains("plugin output: ")
            && fault.contains("panicked at")
            && fault.contains("faulty plugin panicked on purpose at rcpt"),
        "{fault}"
    );
    assert!(fault.contains("wasm backtrace: #0 "), "{fault}");
    assert!(
        fault.contains("panic_at"),
        "function names from the name section: {fault}"
    );
    Ok(())
}
