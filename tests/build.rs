//! Builds every plugin from source before the tests compile: the Rust ones
//! (plugins/ and tests/plugins/, one workspace) for wasm32-wasip2 into the
//! shared `target/wasm-plugins`, the Python one with componentize-py, the
//! JavaScript one with componentize-js and the C one with `wit-bindgen c`,
//! clang and wasm-tools (all installed by `tests/setup`).
//! The tests get one constant per plugin with the path of its `.wasm`.
//! Nothing built here is checked in.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Rust plugins: (constant, crate name).
const RUST_PLUGINS: &[(&str, &str)] = &[
    ("SMARTHOST_ROUTER", "smarthost_router"),
    ("HEADER_REWRITE", "header_rewrite"),
    ("SPAM_SCORE", "spam_score"),
    ("DNSBL", "dnsbl"),
    ("GREYLIST", "greylist"),
    ("RATE_LIMIT", "rate_limit"),
    ("SPF", "spf"),
    ("DKIM", "dkim"),
    ("WEBHOOK", "webhook"),
    ("SUPPRESSION", "suppression"),
    ("SCRIPTED", "test_scripted"),
    ("FAULTY", "test_faulty"),
    ("WRONG_WORLD", "test_wrong_world"),
    ("PROBE", "test_probe"),
    ("LEGACY", "test_legacy"),
    ("OUTBOUND", "test_outbound"),
];

fn main() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest.parent().ok_or("no repository root")?.to_owned();
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_dir = root.join("target").join("wasm-plugins");
    // Sources only: build outputs (plugins/target) must not retrigger this.
    let mut watched = vec![
        root.join("plugins/Cargo.toml"),
        root.join("plugins/Cargo.lock"),
        root.join("plugins/external-tagger/app.py"),
        root.join("plugins/external-tagger/wit/world.wit"),
        root.join("plugins/attachment-filter/app.js"),
        root.join("plugins/attachment-filter/wit/world.wit"),
        root.join("plugins/attachment-filter/package-lock.json"),
        root.join("plugins/rfc5322-check/app.c"),
        root.join("plugins/rfc5322-check/wit/world.wit"),
        root.join("plugin-sdk/src"),
        root.join("plugin-sdk/Cargo.toml"),
        root.join("wit"),
        root.join("wit/v0.1.0"),
    ];
    for parent in [root.join("plugins"), root.join("tests/plugins")] {
        for entry in std::fs::read_dir(&parent).map_err(|e| e.to_string())?.flatten() {
            let crate_dir = entry.path();
            if crate_dir.join("Cargo.toml").exists() {
                watched.extend([
                    crate_dir.join("Cargo.toml"),
                    crate_dir.join("src"),
                    crate_dir.join("wit"),
                ]);
            }
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    build_rust_plugins(&root, &target_dir)?;
    let python = build_python_plugin(&root, &target_dir)?;
    let javascript = build_javascript_plugin(&root, &target_dir)?;
    let c = build_c_plugin(&root, &target_dir)?;

    let release = target_dir.join("wasm32-wasip2").join("release");
    let mut constants = String::new();
    for (constant, krate) in RUST_PLUGINS {
        let path = release.join(format!("{krate}.wasm"));
        writeln!(
            constants,
            "/// `{krate}.wasm`\npub const {constant}: &str = {:?};",
            path.display().to_string()
        )
        .map_err(|e| e.to_string())?;
    }
    writeln!(
        constants,
        "/// The Python plugin.\npub const EXTERNAL_TAGGER: &str = {:?};",
        python.display().to_string()
    )
    .map_err(|e| e.to_string())?;
    writeln!(
        constants,
        "/// The JavaScript plugin.\npub const ATTACHMENT_FILTER: &str = {:?};",
        javascript.display().to_string()
    )
    .map_err(|e| e.to_string())?;
    writeln!(
        constants,
        "/// The C plugin.\npub const RFC5322_CHECK: &str = {:?};",
        c.display().to_string()
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(out.join("plugins.rs"), constants).map_err(|e| e.to_string())
}

fn build_rust_plugins(root: &Path, target_dir: &Path) -> Result<(), String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--locked",
            "--workspace",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings must not leak into the nested one.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo for the plugins: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("building the plugins for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)".into())
    }
}

fn build_python_plugin(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let output = target_dir.join("external_tagger.wasm");
    let status = Command::new("componentize-py")
        // No __pycache__ in the source tree (it would retrigger this script).
        .env("PYTHONDONTWRITEBYTECODE", "1")
        // Its own world (wit/world.wit, with mailgate's wit/ as a
        // dependency): the hooks plus only the capabilities it uses, since
        // componentize-py imports the whole world whatever the code calls.
        .arg("-d")
        .arg(root.join("plugins/external-tagger/wit"))
        .args(["-w", "tagger", "componentize", "-p"])
        .arg(root.join("plugins").join("external-tagger"))
        .arg("app")
        .arg("-o")
        .arg(&output)
        .status()
        .map_err(|e| {
            format!("cannot run componentize-py ({e}); install it with `pip install componentize-py==0.25.1`")
        })?;
    if status.success() {
        Ok(output)
    } else {
        Err("componentize-py failed to build plugins/external-tagger".into())
    }
}

fn build_javascript_plugin(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let dir = root.join("plugins").join("attachment-filter");
    let output = target_dir.join("attachment_filter.wasm");
    let builder = dir.join("node_modules").join(".bin").join("componentize-js");
    // Its own world, for the same reason as the Python plugin's; `-d http
    // fetch-event` keeps wasi:http out of the component.
    let status = Command::new(&builder)
        .current_dir(&dir)
        .args(["app.js", "--wit", "wit", "-n", "attachment-filter"])
        .args(["-d", "http", "fetch-event", "-o"])
        .arg(&output)
        .status()
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); install it with `npm install --no-save` in plugins/attachment-filter (tests/setup does)",
                builder.display()
            )
        })?;
    if status.success() {
        Ok(output)
    } else {
        Err("componentize-js failed to build plugins/attachment-filter".into())
    }
}

/// `wit-bindgen c` for the plugin's own world, clang (Debian's, with
/// wasi-libc) for a wasm32-wasi reactor module, `wasm-tools component new`
/// for the component. The plugin uses no libc I/O, so the module imports
/// nothing from WASI and needs no preview1 adapter.
fn build_c_plugin(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let dir = root.join("plugins").join("rfc5322-check");
    let bindings = target_dir.join("c-bindings").join("rfc5322-check");
    let core = target_dir.join("rfc5322_check.core.wasm");
    let output = target_dir.join("rfc5322_check.wasm");
    let steps: [(&str, Vec<std::ffi::OsString>); 3] = [
        (
            "wit-bindgen",
            vec![
                "c".into(),
                "wit".into(),
                "--world".into(),
                "rfc5322-check".into(),
                "--out-dir".into(),
                bindings.clone().into(),
            ],
        ),
        (
            "clang",
            vec![
                "--target=wasm32-wasi".into(),
                "--sysroot=/usr".into(),
                "-O2".into(),
                "-mexec-model=reactor".into(),
                "-Wall".into(),
                "-Wextra".into(),
                "-Werror".into(),
                "-I".into(),
                bindings.clone().into(),
                "app.c".into(),
                bindings.join("rfc5322_check.c").into(),
                bindings.join("rfc5322_check_component_type.o").into(),
                "-o".into(),
                core.clone().into(),
            ],
        ),
        (
            "wasm-tools",
            vec![
                "component".into(),
                "new".into(),
                core.into(),
                "-o".into(),
                output.clone().into(),
            ],
        ),
    ];
    for (program, args) in steps {
        let status = Command::new(program)
            .current_dir(&dir)
            .args(&args)
            .status()
            .map_err(|e| format!("cannot run {program} ({e}); tests/setup installs it"))?;
        if !status.success() {
            return Err(format!("{program} failed building plugins/rfc5322-check"));
        }
    }
    Ok(output)
}
