//! The plugin chain end to end: verdicts, modifications, faults and
//! start-up errors, with plugins compiled from source by `build.rs`.

use anyhow::Result;
use mailgate_tests::plugins::SCRIPTED;
use mailgate_tests::{Setup, SinkServer, SmtpClient, wait_until};

use crate::WAIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rejects_a_recipient() -> Result<()> {
    let sink = SinkServer::start().await?;
    let gw = Setup::new()
        .route_all_to(sink.addr())
        .plugin(&format!(
            "name = \"scripted\"\npath = \"{SCRIPTED}\"\nstages = [\"rcpt\"]\n[plugin.settings.rcpt]\nwhen = \"blocked\"\nverdict = \"reject\"\ncode = 550\nenhanced = \"5.7.1\"\ntext = \"no thanks\"\n"
        ))
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    let reply = client.command("RCPT TO:<blocked@y.test>").await?;
    assert_eq!(reply.first_line(), "550 5.7.1 no thanks");
    client.expect("RCPT TO:<fine@y.test>", 250).await?;
    client.expect("DATA", 354).await?;
    client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    assert_eq!(sink.messages()[0].rcpt_to, ["fine@y.test"]);
    Ok(())
}
