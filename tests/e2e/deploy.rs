//! `deploy/` checked: the example configuration passes `mailgate check`,
//! the Dockerfile exposes exactly the ports that configuration serves off
//! loopback, and the systemd unit passes `systemd-analyze verify` (where
//! the machine has it). The Grafana dashboard's queries are checked
//! against the exported metric names by a unit test in `metrics.rs`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

#[test]
fn the_example_configuration_passes_check() -> Result<()> {
    let output = crate::mailgate_check(deploy("mailgate.toml"), None)?;
    assert!(output.status.success(), "{output:?}");
    Ok(())
}

/// The ports of the `address`es in the example configuration that are not
/// on loopback.
fn served_ports(config: &str) -> Result<Vec<u16>> {
    let value: toml::Table = toml::from_str(config)?;
    let mut addresses = Vec::new();
    for listener in value["listener"].as_array().into_iter().flatten() {
        addresses.extend(listener["address"].as_str());
    }
    if let Some(admin) = value.get("admin") {
        addresses.extend(
            ["address", "control_address"]
                .iter()
                .filter_map(|k| admin.get(*k)?.as_str()),
        );
    }
    Ok(addresses
        .iter()
        .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
        .filter(|a| !a.ip().is_loopback())
        .map(|a| a.port())
        .collect())
}

#[test]
fn the_dockerfile_exposes_the_ports_the_configuration_serves() -> Result<()> {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile"))?;
    let mut exposed: Vec<u16> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .context("no EXPOSE in the Dockerfile")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut served = served_ports(&std::fs::read_to_string(deploy("mailgate.toml"))?)?;
    exposed.sort_unstable();
    served.sort_unstable();
    assert_eq!(
        exposed, served,
        "EXPOSE against the example configuration's public ports"
    );
    assert!(
        dockerfile.contains("COPY deploy/mailgate.toml /etc/mailgate/mailgate.toml"),
        "the image runs the example configuration"
    );
    Ok(())
}

#[test]
fn the_systemd_unit_verifies() -> Result<()> {
    let Ok(probe) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped: systemd-analyze is not installed, so the unit is not verified");
        return Ok(());
    };
    assert!(probe.status.success(), "{probe:?}");
    // The unit names /usr/bin/mailgate, which verify requires to exist:
    // point it at the binary under test, and change nothing else.
    let dir = tempfile::tempdir()?;
    let unit = std::fs::read_to_string(deploy("mailgate.service"))?;
    assert!(unit.contains("ExecStart=/usr/bin/mailgate run --config /etc/mailgate/mailgate.toml"));
    let unit = unit.replace("/usr/bin/mailgate", &crate::binary().display().to_string());
    let path = dir.path().join("mailgate.service");
    std::fs::write(&path, unit)?;
    let output = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // verify exits 0 on warnings such as an unknown key: any output fails.
    assert!(output.status.success() && stderr.trim().is_empty(), "{stderr}");
    Ok(())
}

/// The README's "Running a fleet" configuration is a working one: with
/// the spool and plugin paths pointed at this build, and a route added,
/// `mailgate check` accepts it. (The fleet itself runs in
/// `capabilities::a_fleet_shares_one_rate_limit_through_redis`.)
#[test]
fn the_readme_fleet_example_passes_check() -> Result<()> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let section = &readme[readme.find("### Running a fleet").context("no fleet section")?..];
    let start = section.find("```toml\n").context("no example")? + "```toml\n".len();
    let end = start + section[start..].find("```").context("unterminated example")?;
    let dir = tempfile::tempdir()?;
    let plugins = Path::new(mailgate_tests::plugins::RATE_LIMIT)
        .parent()
        .context("plugin path")?
        .display()
        .to_string();
    let example = section[start..end]
        .replace("/var/spool/mailgate", &dir.path().join("spool").display().to_string())
        .replace("/usr/lib/mailgate/plugins", &plugins)
        .replace(
            "rate_limit.wasm",
            Path::new(mailgate_tests::plugins::RATE_LIMIT)
                .file_name()
                .context("name")?
                .to_str()
                .context("utf-8")?,
        );
    let config = dir.path().join("mailgate.toml");
    std::fs::write(&config, format!("{example}\n[[route]]\ndomains = [\"*\"]\nmx = true\n"))?;
    let output = crate::mailgate_check(&config, None)?;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("rate-limit [mail]"), "{stdout}");
    Ok(())
}
