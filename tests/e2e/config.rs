//! Configuration: every invalid fixture fails with its snapshot error
//! (file, line, column, key), `mailgate check` exits 64 on a bad file, and
//! the quickstart configuration in the repository is valid.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mailgate::config::Config;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config")
}

/// Compares each `invalid/*.toml` error with `invalid/*.err`. Run with
/// `UPDATE_SNAPSHOTS=1` to rewrite the snapshots after a deliberate change.
#[tokio::test]
async fn invalid_configs_fail_with_their_snapshot_errors() -> Result<()> {
    let dir = fixtures().join("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let error = match Config::load(&path).await {
            Ok(_) => anyhow::bail!("{} loaded without error", path.display()),
            Err(e) => e.to_string().replace(&path.display().to_string(), "<file>"),
        };
        let snapshot = path.with_extension("err");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&snapshot, format!("{error}\n"))?;
        }
        let expected =
            std::fs::read_to_string(&snapshot).with_context(|| format!("missing snapshot {}", snapshot.display()))?;
        assert_eq!(error, expected.trim_end(), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures");
    Ok(())
}

#[tokio::test]
async fn quickstart_config_is_valid() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../quickstart/mailgate.toml");
    let config = Config::load(&path).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(config.listeners[0].address.to_string(), "127.0.0.1:2525");
    Ok(())
}

#[test]
fn check_command_reports_errors_and_exits_64() -> Result<()> {
    let bad = fixtures().join("invalid/unknown-key.toml");
    let output = crate::mailgate_check(&bad, None)?;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown-key.toml:"), "{stderr}");

    // As the README runs it: a relative path from the repository root; the
    // quickstart's plugins are compiled (build.rs built them).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = crate::mailgate_check("quickstart/mailgate.toml", Some(&root))?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("2 plugin(s)"));

    // A bare file name, from its own directory, with a relative spool: the
    // plugin cache under it is made absolute too.
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[server]\nspool_dir = \"spool\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2525\"\n\
         [[plugin]]\nname = \"scripted\"\npath = \"{}\"\nstages = [\"data\"]\n",
        mailgate_tests::plugins::SCRIPTED
    );
    std::fs::write(dir.path().join("mailgate.toml"), config)?;
    let output = crate::mailgate_check("mailgate.toml", Some(dir.path()))?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("spool/plugin-cache").is_dir());
    Ok(())
}
