//! Loading plugins: start-up refused with a clear message for a broken
//! plugin or bad settings, `mailgate check` compiling them, and pinned
//! plugins loading only with their digest. Plugins are compiled from
//! source by `build.rs`.

use std::path::Path;

use anyhow::Result;
use mailgate_tests::plugins::{FAULTY, SCRIPTED};
use mailgate_tests::{Setup, SinkServer, SmtpClient, wait_until};

use crate::WAIT;
use crate::plugins::scripted;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_with_a_clear_message_for_broken_plugins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let corrupt = dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 definitely not a component")?;
    let cases = [
        (
            corrupt.display().to_string(),
            "",
            "is not a valid WebAssembly component",
        ),
        (dir.path().join("missing.wasm").display().to_string(), "", "cannot read"),
        (
            mailgate_tests::plugins::WRONG_WORLD.to_owned(),
            "",
            "does not match the mailgate:plugin@0.2.0 world (nor @0.1.0)",
        ),
        (
            FAULTY.to_owned(),
            "mode = \"refuse-settings\"",
            "init refused the settings: these settings are refused on purpose",
        ),
        (
            SCRIPTED.to_owned(),
            "rcpt = { verdict = 42 }",
            "init refused the settings: invalid settings",
        ),
    ];
    for (path, settings, expected) in cases {
        let setup = Setup::new().plugin(&format!(
            "name = \"broken\"\npath = \"{path}\"\nstages = [\"rcpt\"]\n[plugin.settings]\n{settings}\n"
        ));
        let error = match setup.start().await {
            Ok(_) => anyhow::bail!("{path} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{path}: {error}");
        // Refused settings are located at the settings table, the rest at the path.
        let key = if expected.starts_with("init") {
            "`plugin[0].settings"
        } else {
            "`plugin[0].path`"
        };
        assert!(error.contains(key), "names the key {key}: {error}");
        assert!(error.contains("plugin `broken`"), "names the plugin: {error}");
        if !expected.starts_with("init") {
            assert!(error.contains(&path), "names the file: {error}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_command_compiles_plugins() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mailgate.toml");
    let write = |path: &str| {
        std::fs::write(
            &config,
            format!(
                "[server]\nspool_dir = \"{}\"\n[[listener]]\nname = \"x\"\naddress = \"127.0.0.1:0\"\n[plugins]\ncache_dir = \"{}\"\n[[plugin]]\nname = \"p\"\npath = \"{path}\"\nstages = [\"data\"]\n",
                dir.path().join("spool").display(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/plugin-cache")
                    .display()
            ),
        )
    };
    write(mailgate_tests::plugins::WRONG_WORLD)?;
    let output = crate::mailgate_check(&config, None)?;
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("does not match the mailgate:plugin@0.2.0 world (nor @0.1.0)")
    );
    write(SCRIPTED)?;
    let output = crate::mailgate_check(&config, None)?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 plugin(s)"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_plugins_load_only_with_their_digest() -> Result<()> {
    let output = std::process::Command::new(crate::binary())
        .args(["plugin", "hash", SCRIPTED])
        .output()?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout)?;
    let digest = line
        .trim()
        .strip_prefix("sha256 = \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| anyhow::anyhow!("not a sha256 line: {line}"))?
        .to_owned();
    assert_eq!(digest.len(), 64, "{line}");
    let pinned = |digest: &str| scripted("pinned", "\"rcpt\"", &format!("sha256 = \"{digest}\""));

    // The right digest loads; a wrong one stops start-up naming both.
    let sink = SinkServer::start().await?;
    let wrong = "0".repeat(64);
    let error = match Setup::new().plugin(&pinned(&wrong)).start().await {
        Ok(_) => anyhow::bail!("a plugin with the wrong digest loaded"),
        Err(e) => e.to_string(),
    };
    for part in ["plugin `pinned`", SCRIPTED, &digest, &wrong, "`plugin[0].path`"] {
        assert!(error.contains(part), "{part}: {error}");
    }
    let setup = Setup::new().admin()?.plugin(&pinned(&digest)).route_all_to(sink.addr());
    let gw = setup.start().await?;

    // A reload with a wrong digest fails and the running chain keeps serving.
    let admin = gw.admin.ok_or_else(|| anyhow::anyhow!("no admin address"))?;
    let rewritten = std::fs::read_to_string(gw.config())?.replace(&digest, &wrong);
    std::fs::write(gw.config(), rewritten)?;
    let (status, body) = mailgate_tests::http(admin, "POST", "/reload").await?;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains(&wrong) && body.contains(&digest), "{body}");
    SmtpClient::deliver(gw.addr, "a@x.test", &["b@y.test"], b"Subject: pinned\r\n\r\nhi\r\n").await?;
    wait_until(WAIT, || sink.count() == 1).await?;
    Ok(())
}
