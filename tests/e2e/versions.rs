//! The plugin contract's versions: a plugin built from source against
//! `mailgate:plugin@0.1.0` keeps loading and working beside plugins built
//! against the current 0.2.0, which see the DSN parameters and set the
//! NOTIFY of the recipients they add or replace.

use anyhow::{Context, Result};
use mailgate_tests::plugins::LEGACY;
use mailgate_tests::{Setup, SinkServer, SmtpClient, dsn_parts, header, stuff, wait_until};

use crate::WAIT;
use crate::plugins::scripted;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_0_1_0_loads_and_works() -> Result<()> {
    let sink = SinkServer::start().await?;
    let legacy = format!(
        "name = \"legacy\"\npath = \"{LEGACY}\"\nstages = [\"mail\", \"rcpt\", \"data\"]\ncapabilities = [\"log\", \"kv\"]\n"
    );
    // A current plugin in the same chain, after it.
    let current = scripted(
        "current",
        "\"data\"",
        "[plugin.settings.data]\nmodifications = [{ kind = \"add-header\", name = \"X-Current\", value = \"0.2.0\" }]\n",
    );
    let gw = Setup::new()
        .plugin(&legacy)
        .plugin(&current)
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client.expect("MAIL FROM:<a@x.test> SIZE=99", 250).await?;
    let refused = client.expect("RCPT TO:<refuse-me@y.test>", 550).await?;
    assert_eq!(refused.text(), "5.7.1 refused by a 0.1.0 plugin");
    client.expect("RCPT TO:<rename-me@y.test> NOTIFY=NEVER", 250).await?;
    client.expect("DATA", 354).await?;
    client.send(&stuff(b"Subject: old and new\r\n\r\nhello\r\n")).await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    let message = &sink.messages()[0];
    assert_eq!(message.rcpt_to, ["renamed@y.test"]);
    let text = message.text();
    let tagged = header(&text, "X-Legacy").context("no X-Legacy header")?;
    assert!(tagged.starts_with("size="), "{tagged}");
    assert!(tagged.contains("subject=old and new mail-size=99 count=1"), "{tagged}");
    assert_eq!(header(&text, "X-Current").as_deref(), Some("0.2.0"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_plugins_see_dsn_parameters_and_set_notify() -> Result<()> {
    let sink = SinkServer::start().await?;
    let settings = "\
[plugin.settings.mail]
modifications = [{ kind = \"metadata-from-parameters\", key = \"mail-parameters\" }]
[plugin.settings.rcpt]
modifications = [{ kind = \"metadata-from-parameters\", key = \"rcpt-parameters\" }]
[plugin.settings.data]
modifications = [
    { kind = \"header-from-metadata\", name = \"X-Mail-Parameters\", key = \"mail-parameters\" },
    { kind = \"header-from-metadata\", name = \"X-Rcpt-Parameters\", key = \"rcpt-parameters\" },
    { kind = \"add-recipient-notify\", value = \"added@y.test\", notify = \"success\" },
]
";
    let gw = Setup::new()
        .plugin(&scripted("dsn", "\"mail\", \"rcpt\", \"data\"", settings))
        .route_all_to(sink.addr())
        .start()
        .await?;
    let mut client = SmtpClient::greeted(gw.addr).await?;
    client
        .expect("MAIL FROM:<a@x.test> RET=HDRS ENVID=env+2B7", 250)
        .await?;
    client
        .expect("RCPT TO:<b@y.test> NOTIFY=DELAY,FAILURE ORCPT=rfc822;B@y.test", 250)
        .await?;
    client.expect("DATA", 354).await?;
    client.send(&stuff(b"Subject: parameters\r\n\r\nhello\r\n")).await?;
    client.expect_reply(250).await?;
    wait_until(WAIT, || sink.count() >= 2 && gw.queued() == 0).await?;
    let messages = sink.messages();
    let original = messages
        .iter()
        .find(|m| m.mail_from == "a@x.test")
        .context("no original")?;
    let text = original.text();
    assert_eq!(
        header(&text, "X-Mail-Parameters").as_deref(),
        Some("ret=Some(Hdrs) envid=env+7 requiretls=false")
    );
    let rcpt = header(&text, "X-Rcpt-Parameters").context("no X-Rcpt-Parameters")?;
    assert!(rcpt.contains("success: false, failure: true, delay: true"), "{rcpt}");
    assert!(rcpt.ends_with("orcpt=rfc822;B@y.test"), "{rcpt}");
    assert_eq!(original.rcpt_to, ["b@y.test", "added@y.test"]);
    // The added recipient asked for a success report: the sink offers no
    // DSN, so mailgate reports it relayed.
    let report = messages.iter().find(|m| m.mail_from.is_empty()).context("no report")?;
    let (status, _) = dsn_parts(&report.content)?;
    assert!(
        status.contains("Final-Recipient: rfc822; added@y.test\r\nAction: relayed\r\n"),
        "{status}"
    );
    assert!(!status.contains("b@y.test"), "{status}");
    Ok(())
}
