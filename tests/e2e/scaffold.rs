//! `mailgate plugin new` and `mailgate plugin wit`: each template (Rust,
//! Python, JavaScript, C) is
//! generated outside the checkout, built with its own `build.sh` and
//! replay-tested with its own `test.sh`; the Rust one is then hot-swapped
//! into a running gateway through its `plugin.toml`.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result};
use mailgate_tests::{GatewayProcess, Setup, SinkServer, SmtpClient};

use crate::{WAIT, binary, mailgate_cli};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(command: &mut std::process::Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    eprintln!(
        "{command:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// `mailgate plugin new NAME --lang LANG ARGS... --dir DIR/NAME`, then its
/// `build.sh` and `test.sh`; returns the project and `test.sh`'s output.
fn generate_build_and_test(dir: &Path, name: &str, lang: &str, args: &[&str]) -> Result<(PathBuf, String)> {
    let project = dir.join(name);
    let made = run(std::process::Command::new(binary())
        .args(["plugin", "new", name, "--lang", lang])
        .args(args)
        .arg("--dir")
        .arg(&project))?;
    anyhow::ensure!(made.status.success(), "plugin new failed");
    let mut build = std::process::Command::new(project.join("build.sh"));
    // The Rust template builds offline against the crates the plugins'
    // build fetched, and shares their target directory so that its
    // dependencies are compiled once.
    build
        .env("CARGO_TARGET_DIR", root().join("target").join("wasm-plugins"))
        .env("CARGO_NET_OFFLINE", "true");
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
    ] {
        build.env_remove(var);
    }
    if lang == "js" {
        // componentize-js as `tests/setup` installed it for the example.
        std::os::unix::fs::symlink(
            root().join("plugins/attachment-filter/node_modules"),
            project.join("node_modules"),
        )?;
    }
    anyhow::ensure!(run(&mut build)?.status.success(), "{name}: build.sh failed");
    let tested = run(std::process::Command::new(project.join("test.sh")).env("MAILGATE", binary()))?;
    let output = String::from_utf8_lossy(&tested.stdout).into_owned();
    anyhow::ensure!(tested.status.success(), "{name}: test.sh failed:\n{output}");
    Ok((project, output))
}

#[test]
fn the_python_javascript_and_c_templates_build_and_pass_their_tests() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (project, output) = generate_build_and_test(
        dir.path(),
        "py-filter",
        "python",
        &["--stages", "connect,rcpt,data", "--capabilities", "log,kv"],
    )?;
    let world = std::fs::read_to_string(project.join("wit/world.wit"))?;
    assert!(
        world.contains("import mailgate:plugin/log@0.2.0;")
            && world.contains("import mailgate:plugin/kv@0.2.0;")
            && !world.contains("dns"),
        "the world imports exactly the capabilities asked for: {world}"
    );
    let entry = std::fs::read_to_string(project.join("plugin.toml"))?;
    assert!(
        entry.contains("stages = [\"connect\", \"rcpt\", \"data\"]")
            && entry.contains("capabilities = [\"log\", \"kv\"]"),
        "{entry}"
    );
    assert!(
        output.contains("result: continue") && output.contains("result: reject"),
        "{output}"
    );
    assert!(output.contains("X-py-filter"), "{output}");

    let (_, output) = generate_build_and_test(dir.path(), "js-filter", "js", &["--stages", "data"])?;
    assert!(
        output.contains("result: continue") && output.contains("X-js-filter"),
        "{output}"
    );
    assert!(
        !output.contains("result: reject"),
        "no rcpt sample without the rcpt stage: {output}"
    );

    let (project, output) = generate_build_and_test(dir.path(), "c-filter", "c", &[])?;
    assert!(
        output.contains("result: continue") && output.contains("X-c-filter") && output.contains("result: reject"),
        "{output}"
    );
    let world = std::fs::read_to_string(project.join("wit/world.wit"))?;
    assert!(world.contains("import mailgate:plugin/log@0.2.0;"), "{world}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_template_builds_passes_its_tests_and_hot_swaps_into_a_gateway() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (project, output) = generate_build_and_test(dir.path(), "my-filter", "rust", &[])?;
    assert!(
        output.contains("result: continue") && output.contains("result: reject"),
        "{output}"
    );
    assert!(
        !std::fs::read_to_string(project.join("Cargo.toml"))?.contains("/work"),
        "nothing points into a checkout"
    );

    // A running gateway takes it by appending plugin.toml and reloading.
    let sink = SinkServer::start().await?;
    let gw_dir = tempfile::tempdir()?;
    let config = Setup::new().admin()?.route_all_to(sink.addr()).write(gw_dir.path())?;
    let gateway = GatewayProcess::start(&binary(), &config).await?;
    let mut text = std::fs::read_to_string(&config)?;
    text.push('\n');
    text.push_str(&std::fs::read_to_string(project.join("plugin.toml"))?);
    std::fs::write(&config, text)?;
    let (ok, reloaded) = mailgate_cli("reload", &config, &[]).await?;
    assert!(ok, "{reloaded}");

    let mut client = SmtpClient::greeted(gateway.addr).await?;
    client.expect("EHLO client.test", 250).await?;
    client.expect("MAIL FROM:<a@x.test>", 250).await?;
    let refused = client.command("RCPT TO:<someone@blocked.invalid>").await?;
    assert_eq!(refused.code, 550, "{refused:?}");
    assert!(refused.text().contains("recipient refused by my-filter"), "{refused:?}");
    drop(client);
    SmtpClient::deliver(gateway.addr, "a@x.test", &["b@y.test"], b"Subject: hi\r\n\r\nhello\r\n").await?;
    mailgate_tests::wait_until(WAIT, || sink.count() == 1).await?;
    let message = sink.messages()[0].text();
    assert!(message.contains("X-my-filter: checked"), "{message}");
    Ok(())
}

#[test]
fn plugin_new_refuses_bad_names_and_occupied_directories_and_wit_writes_the_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for bad in ["My-Filter", "my_filter", "1filter", "my--filter"] {
        let output = run(std::process::Command::new(binary())
            .current_dir(dir.path())
            .args(["plugin", "new", bad, "--lang", "rust"]))?;
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("invalid plugin name"),
            "{output:?}"
        );
    }
    std::fs::write(dir.path().join("taken"), "")?;
    let occupied = run(std::process::Command::new(binary())
        .args(["plugin", "new", "taken", "--lang", "js", "--dir"])
        .arg(dir.path()))?;
    assert!(!occupied.status.success());
    assert!(String::from_utf8_lossy(&occupied.stderr).contains("exists and is not empty"));

    let out = dir.path().join("contract");
    let wrote = run(std::process::Command::new(binary())
        .args(["plugin", "wit", "--out"])
        .arg(&out))?;
    assert!(wrote.status.success());
    let mut files = 0;
    for entry in std::fs::read_dir(root().join("wit"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name();
            assert_eq!(
                std::fs::read(out.join(&name))?,
                std::fs::read(entry.path())?,
                "{name:?} is the checkout's"
            );
            files += 1;
        }
    }
    assert!(files >= 9, "every file of the package: {files}");
    Ok(())
}
