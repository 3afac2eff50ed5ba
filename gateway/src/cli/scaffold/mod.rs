//! `mailgate plugin new` and `mailgate plugin wit`: a ready plugin
//! project outside any mailgate checkout, in Rust (with the SDK), Python
//! (componentize-py), JavaScript (componentize-js) or C (`wit-bindgen c`,
//! clang with wasi-libc, wasm-tools; in `c.rs`). The WIT package, and
//! for Rust the SDK's source, are embedded in this binary, so the project
//! needs nothing from a checkout. Each project has a hook skeleton for the
//! stages asked for, its own world importing only the capabilities asked
//! for (Python, JavaScript, C; a Rust component imports only what it calls),
//! `build.sh`, `test.sh` with a `mailgate plugin test` line that passes on
//! the sample transcripts in `tests/`, `plugin.toml` (the `[[plugin]]`
//! entry to add to a configuration) and a README.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::plugin::transcript;

mod c;

/// The WIT package `mailgate:plugin@0.2.0`, file by file.
pub const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../../../wit/world.wit")),
    ("types.wit", include_str!("../../../../wit/types.wit")),
    ("hooks.wit", include_str!("../../../../wit/hooks.wit")),
    ("log.wit", include_str!("../../../../wit/log.wit")),
    ("clock.wit", include_str!("../../../../wit/clock.wit")),
    ("dns.wit", include_str!("../../../../wit/dns.wit")),
    ("kv.wit", include_str!("../../../../wit/kv.wit")),
    ("metrics.wit", include_str!("../../../../wit/metrics.wit")),
    ("dkim.wit", include_str!("../../../../wit/dkim.wit")),
    ("http.wit", include_str!("../../../../wit/http.wit")),
    ("outbound.wit", include_str!("../../../../wit/outbound.wit")),
    ("defaults.wit", include_str!("../../../../wit/defaults.wit")),
];

/// The Rust SDK's sources, for a Rust project's `mailgate-plugin-sdk/`.
const SDK: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../../../plugin-sdk/src/lib.rs")),
    ("clock.rs", include_str!("../../../../plugin-sdk/src/clock.rs")),
    ("dkim.rs", include_str!("../../../../plugin-sdk/src/dkim.rs")),
    ("dns.rs", include_str!("../../../../plugin-sdk/src/dns.rs")),
    ("http.rs", include_str!("../../../../plugin-sdk/src/http.rs")),
    ("kv.rs", include_str!("../../../../plugin-sdk/src/kv.rs")),
    ("log.rs", include_str!("../../../../plugin-sdk/src/log.rs")),
    ("message.rs", include_str!("../../../../plugin-sdk/src/message.rs")),
    ("metrics.rs", include_str!("../../../../plugin-sdk/src/metrics.rs")),
    ("outbound.rs", include_str!("../../../../plugin-sdk/src/outbound.rs")),
    ("settings.rs", include_str!("../../../../plugin-sdk/src/settings.rs")),
    (
        "transaction.rs",
        include_str!("../../../../plugin-sdk/src/transaction.rs"),
    ),
    ("types.rs", include_str!("../../../../plugin-sdk/src/types.rs")),
];

const SDK_MANIFEST: &str = r#"[package]
name = "mailgate-plugin-sdk"
description = "Guest-side SDK for writing mailgate filter plugins (written by `mailgate plugin new`)"
version = "0.2.0"
edition = "2024"
rust-version = "1.95"
license = "Apache-2.0"
publish = false

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc", "bitflags"] }
"#;

/// The capabilities a plugin may be granted.
pub const CAPABILITIES: [&str; 7] = ["log", "clock", "dns", "kv", "metrics", "dkim", "http"];
/// The stages, in order.
pub const STAGES: [&str; 5] = ["connect", "helo", "mail", "rcpt", "data"];

/// A plugin's language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with mailgate's SDK (`cargo`, target wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
    /// C with `wit-bindgen c`, clang and wasi-libc, and wasm-tools.
    C,
}

/// What `mailgate plugin new` was asked for.
#[derive(Debug)]
pub struct NewPlugin {
    /// The plugin's name: lower-case words joined by `-`.
    pub name: String,
    /// Its language.
    pub lang: Lang,
    /// The stages it runs at.
    pub stages: Vec<String>,
    /// The capabilities it is granted.
    pub capabilities: Vec<String>,
    /// Where to write it (default `./NAME`).
    pub dir: Option<PathBuf>,
}

/// Writes the WIT package into `out`.
pub fn write_wit(out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for (file, text) in WIT {
        write(&out.join(file), text)?;
    }
    Ok(())
}

/// Writes a new project; returns its directory.
pub fn new_plugin(request: &NewPlugin) -> Result<PathBuf, String> {
    let name = request.name.as_str();
    let valid = name.split('-').all(|word| {
        word.starts_with(|c: char| c.is_ascii_lowercase())
            && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if !valid {
        return Err(format!(
            "invalid plugin name {name:?}: lower-case words of letters and digits joined by '-', each starting with a letter (my-filter)"
        ));
    }
    if request.stages.is_empty() {
        return Err("give at least one stage".into());
    }
    for stage in &request.stages {
        if !STAGES.contains(&stage.as_str()) {
            return Err(format!("unknown stage {stage:?}: {}", STAGES.join(", ")));
        }
    }
    for capability in &request.capabilities {
        if !CAPABILITIES.contains(&capability.as_str()) {
            return Err(format!(
                "unknown capability {capability:?}: {}",
                CAPABILITIES.join(", ")
            ));
        }
    }
    let dir = request.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    let occupied = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    std::fs::create_dir_all(dir.join("tests")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let project = Project {
        name,
        stages: STAGES
            .iter()
            .copied()
            .filter(|s| request.stages.iter().any(|asked| asked == s))
            .collect(),
        capabilities: request.capabilities.iter().map(String::as_str).collect(),
        dir: &dir,
    };
    match request.lang {
        Lang::Rust => project.rust()?,
        Lang::Python => project.python()?,
        Lang::Js => project.javascript()?,
        Lang::C => project.c()?,
    }
    project.common(request.lang)?;
    Ok(dir)
}

struct Project<'a> {
    name: &'a str,
    stages: Vec<&'static str>,
    capabilities: Vec<&'a str>,
    dir: &'a Path,
}

/// What a sample recipient that the rcpt skeleton refuses looks like.
const BLOCKED: &str = "someone@blocked.invalid";

impl Project<'_> {
    fn asks(&self, stage: &str) -> bool {
        self.stages.contains(&stage)
    }

    fn logs(&self) -> bool {
        self.capabilities.contains(&"log")
    }

    fn file(&self, path: &str, text: &str) -> Result<(), String> {
        write(&self.dir.join(path), text)
    }

    /// The header the data skeleton adds.
    fn header(&self) -> String {
        format!("X-{}", self.name)
    }

    fn rust(&self) -> Result<(), String> {
        let name = self.name;
        self.file(
            "Cargo.toml",
            &format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\nrust-version = \"1.95\"\npublish = false\n\n\
                 [lib]\ncrate-type = [\"cdylib\"]\n\n\
                 [dependencies]\nmailgate-plugin-sdk = {{ path = \"mailgate-plugin-sdk\" }}\n\n\
                 # A project of its own, even inside another workspace.\n[workspace]\n\n\
                 [profile.release]\nopt-level = 2\ncodegen-units = 16\ndebug = false\nstrip = \"debuginfo\"\n"
            ),
        )?;
        self.file("mailgate-plugin-sdk/Cargo.toml", SDK_MANIFEST)?;
        for (file, text) in SDK {
            self.file(&format!("mailgate-plugin-sdk/src/{file}"), text)?;
        }
        // The SDK reads the WIT package from `../wit`.
        write_wit(&self.dir.join("wit"))?;
        let mut code = format!(
            "//! {name}: a mailgate plugin. Build with `./build.sh`, test with `./test.sh`.\n\n\
             use mailgate_plugin_sdk::{{export_plugin, Plugin, Settings, Transaction, Verdict}};\n\n\
             /// The plugin's state, made by `init` on every new instance from the\n\
             /// `[plugin.settings]` table.\n\
             struct Filter;\n\n\
             impl Plugin for Filter {{\n    \
                 fn init(_settings: &Settings) -> Result<Self, String> {{\n        \
                     // `settings.parse::<MySettings>()` reads them with serde; an Err stops the gateway.\n        \
                     Ok(Filter)\n    \
                 }}\n"
        );
        let log = |message: &str, by: usize| match self.logs() {
            true => indent(&format!("mailgate_plugin_sdk::log::info(&{message});"), by),
            false => String::new(),
        };
        for stage in &self.stages {
            let body = match *stage {
                "connect" => "    fn on_connect(&self, txn: &Transaction) -> Verdict {\n        \
                     let _client = txn.client(); // its address, its name, the listener...\n        \
                     Verdict::Continue\n    }\n"
                    .to_owned(),
                "helo" => "    fn on_helo(&self, name: &str, _txn: &Transaction) -> Verdict {\n        \
                     let _ = name;\n        Verdict::Continue\n    }\n"
                    .to_owned(),
                "mail" => "    fn on_mail_from(\n        &self,\n        from: &mailgate_plugin_sdk::ReversePath,\n        \
                     _params: &mailgate_plugin_sdk::MailParameters,\n        _txn: &Transaction,\n    ) -> Verdict {\n        \
                     let _ = from;\n        Verdict::Continue\n    }\n"
                    .to_owned(),
                "rcpt" => format!(
                    "    fn on_rcpt_to(&self, rcpt: &mailgate_plugin_sdk::Mailbox, _txn: &Transaction) -> Verdict {{\n        \
                     if rcpt.domain().eq_ignore_ascii_case(\"blocked.invalid\") {{\n{}            \
                     return Verdict::reject(550, \"5.7.1\", \"recipient refused by {name}\");\n        }}\n        \
                     Verdict::Continue\n    }}\n",
                    log("format!(\"refused <{rcpt}>\")", 12)
                ),
                _ if !self.logs() => format!(
                    "    fn on_data(&self, message: &mailgate_plugin_sdk::Message, txn: &Transaction) -> Verdict {{\n        \
                     let _ = message; // message.first_header(\"Subject\"), message.parts(), message.size()...\n        \
                     txn.add_header(\"{}\", \"checked\");\n        Verdict::Continue\n    }}\n",
                    self.header()
                ),
                _ => format!(
                    "    fn on_data(&self, message: &mailgate_plugin_sdk::Message, txn: &Transaction) -> Verdict {{\n{}        \
                     txn.add_header(\"{}\", \"checked\");\n        Verdict::Continue\n    }}\n",
                    log("format!(\"checked a message of {} octets\", message.size())", 8),
                    self.header()
                ),
            };
            code.push('\n');
            code.push_str(&body);
        }
        code.push_str("}\n\nexport_plugin!(Filter);\n");
        self.file("src/lib.rs", &code)?;
        self.file(".gitignore", &format!("/target\n/Cargo.lock\n/{}.wasm\n", self.snake()))?;
        let build = format!(
            "cargo build --release --target wasm32-wasip2\n\
             cp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{}.wasm\" {}.wasm\n",
            self.snake(),
            self.snake()
        );
        self.script("build.sh", "rustup target add wasm32-wasip2 (once)", &build)
    }

    fn python(&self) -> Result<(), String> {
        self.own_world()?;
        let imports = if self.logs() {
            "from wit_world.imports import log, types\n"
        } else {
            "from wit_world.imports import types\n"
        };
        let mut code = format!(
            "\"\"\"{name}: a mailgate plugin in Python. Build with ./build.sh, test with ./test.sh.\"\"\"\n\n\
             import json\n\n\
             from componentize_py_types import Err\n\
             from wit_world import exports\n{imports}\n\
             # Set by `init` on every new instance from the [plugin.settings] table.\n\
             SETTINGS = {{}}\n\n\n\
             def outcome(verdict=None, modifications=()):\n    \
                 return types.Outcome(verdict or types.Verdict_Continue(), list(modifications))\n\n\n\
             class Hooks(exports.Hooks):\n    \
                 def init(self, settings):\n        \
                     try:\n            SETTINGS.update(json.loads(settings))\n        \
                     except ValueError as e:\n            raise Err(f\"settings are not JSON: {{e}}\")\n",
            name = self.name
        );
        let log = |message: &str| match self.logs() {
            true => format!("log.write(log.Level.INFO, {message})\n"),
            false => String::new(),
        };
        for (stage, signature) in [
            ("connect", "on_connect(self, ctx)"),
            ("helo", "on_helo(self, ctx, name)"),
            ("mail", "on_mail(self, ctx, reverse_path, parameters)"),
            ("rcpt", "on_rcpt(self, ctx, recipient, parameters)"),
            ("data", "on_data(self, ctx, message)"),
        ] {
            let body = match (self.asks(stage), stage) {
                (false, _) => "        return outcome()  # not configured for this stage\n".to_owned(),
                (true, "rcpt") => format!(
                    "        if recipient.lower().endswith(\"@blocked.invalid\"):\n{}            \
                     return outcome(types.Verdict_Reject(types.Reply(550, \"5.7.1\", \"recipient refused by {}\")))\n        \
                     return outcome()\n",
                    indent(&log("f\"refused <{recipient}>\""), 12),
                    self.name
                ),
                (true, "data") => format!(
                    "{}        header = types.Header(\"{}\", \"checked\")\n        \
                     return outcome(modifications=[types.Modification_AddHeader(header)])\n",
                    indent(&log("f\"checked a message of {message.size()} octets\""), 8),
                    self.header()
                ),
                (true, _) => {
                    "        return outcome()  # decide here: ctx.client, ctx.reverse_path, ctx.recipients...\n"
                        .to_owned()
                }
            };
            let _ = write!(code, "\n    def {signature}:\n{body}");
        }
        self.file("app.py", &code)?;
        self.file(
            ".gitignore",
            &format!("/{}.wasm\n/wit_world/\n__pycache__/\n", self.snake()),
        )?;
        let build = format!(
            "componentize-py -d wit -w {name} componentize -p . app -o {snake}.wasm\n",
            name = self.name,
            snake = self.snake()
        );
        self.script("build.sh", "pip install componentize-py==0.25.1 (once)", &build)
    }

    fn javascript(&self) -> Result<(), String> {
        self.own_world()?;
        let mut code = format!(
            "// {}: a mailgate plugin in JavaScript. Build with ./build.sh, test with ./test.sh.\n\n",
            self.name
        );
        if self.logs() {
            code.push_str("import { write as log } from \"mailgate:plugin/log@0.2.0\";\n\n");
        }
        code.push_str(
            "// Set by `init` on every new instance from the [plugin.settings] table.\n\
             let settings = {};\n\n\
             const cont = (modifications = []) => ({ verdict: { tag: \"continue\" }, modifications });\n\n\
             export const hooks = {\n  \
               init(text) {\n    settings = JSON.parse(text); // throw a string to refuse the settings\n  },\n",
        );
        let log = |message: &str| match self.logs() {
            true => format!("log(\"info\", {message});\n"),
            false => String::new(),
        };
        for (stage, signature) in [
            ("connect", "onConnect(ctx)"),
            ("helo", "onHelo(ctx, name)"),
            ("mail", "onMail(ctx, reversePath, parameters)"),
            ("rcpt", "onRcpt(ctx, recipient, parameters)"),
            ("data", "onData(ctx, message)"),
        ] {
            let body = match (self.asks(stage), stage) {
                (false, _) => "    return cont(); // not configured for this stage\n".to_owned(),
                (true, "rcpt") => format!(
                    "    if (recipient.toLowerCase().endsWith(\"@blocked.invalid\")) {{\n{}      \
                     const reply = {{ code: 550, enhanced: \"5.7.1\", text: \"recipient refused by {}\" }};\n      \
                     return {{ verdict: {{ tag: \"reject\", val: reply }}, modifications: [] }};\n    }}\n    \
                     return cont();\n",
                    indent(&log("`refused <${recipient}>`"), 6),
                    self.name
                ),
                (true, "data") => format!(
                    "{}    return cont([{{ tag: \"add-header\", val: {{ name: \"{}\", value: \"checked\" }} }}]);\n",
                    indent(&log("`checked a message of ${message.size()} octets`"), 4),
                    self.header()
                ),
                (true, _) => {
                    "    return cont(); // decide here: ctx.client, ctx.reversePath, ctx.recipients...\n".to_owned()
                }
            };
            let _ = write!(code, "  {signature} {{\n{body}  }},\n");
        }
        code.push_str("};\n");
        self.file("app.js", &code)?;
        self.file(
            "package.json",
            &format!(
                "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \
                 \"scripts\": {{ \"build\": \"./build.sh\", \"test\": \"./test.sh\" }},\n  \
                 \"devDependencies\": {{\n    \"@bytecodealliance/componentize-js\": \"0.23.0\",\n    \
                 \"@bytecodealliance/preview2-shim\": \"0.25.0\"\n  }}\n}}\n",
                name = self.name
            ),
        )?;
        self.file(".gitignore", &format!("/node_modules/\n/{}.wasm\n", self.snake()))?;
        let build = format!(
            "[ -d node_modules ] || npm install --no-audit --no-fund\n\
             npx componentize-js app.js --wit wit -n {name} -d http fetch-event -o {snake}.wasm\n",
            name = self.name,
            snake = self.snake()
        );
        self.script("build.sh", "Node.js and npm", &build)
    }

    /// `wit/world.wit` importing only the capabilities asked for, with the
    /// package as `wit/deps/mailgate-plugin`.
    fn own_world(&self) -> Result<(), String> {
        write_wit(&self.dir.join("wit").join("deps").join("mailgate-plugin"))?;
        let mut world = format!(
            "package local:{name};\n\n\
             /// componentize-py and componentize-js import every interface of the\n\
             /// world they build for, so it names exactly the capabilities granted\n\
             /// in plugin.toml.\n\
             world {name} {{\n",
            name = self.name
        );
        for capability in &self.capabilities {
            let _ = writeln!(world, "    import mailgate:plugin/{capability}@0.2.0;");
        }
        world.push_str("    export mailgate:plugin/hooks@0.2.0;\n}\n");
        self.file("wit/world.wit", &world)
    }

    fn snake(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The samples, `test.sh`, `plugin.toml` and the README.
    fn common(&self, lang: Lang) -> Result<(), String> {
        let (name, snake) = (self.name, self.snake());
        let sample = b"From: Sender <sender@example.com>\r\nTo: <someone@example.net>\r\n\
            Subject: a sample message\r\nMessage-ID: <sample@example.com>\r\n\r\nHello.\r\n";
        self.file("tests/sample.eml", &String::from_utf8_lossy(sample))?;
        let transcript = |to: &str| {
            let made = transcript::from_message(sample, "sender@example.com", &[to.to_owned()]);
            serde_json::to_string_pretty(&made).map_err(|e| e.to_string())
        };
        self.file("tests/sample.json", &transcript("someone@example.net")?)?;
        let mut test = format!(
            "\"$MAILGATE\" plugin test --plugin {snake}.wasm --settings settings.toml --transcript tests/sample.json --expect continue"
        );
        if self.asks("data") {
            let _ = write!(test, " --expect-header \"{}: checked\"", self.header());
        }
        test.push('\n');
        if self.asks("rcpt") {
            self.file("tests/blocked.json", &transcript(BLOCKED)?)?;
            test.push_str(&format!(
                "\"$MAILGATE\" plugin test --plugin {snake}.wasm --settings settings.toml --transcript tests/blocked.json --expect rcpt=reject\n"
            ));
        }
        self.script(
            "test.sh",
            "mailgate on the PATH, or MAILGATE=/path/to/mailgate",
            &format!("MAILGATE=\"${{MAILGATE:-mailgate}}\"\n{test}"),
        )?;
        self.file(
            "settings.toml",
            "# The plugin's settings: the keys of its [plugin.settings] table, handed to\n\
             # `init` as JSON (`mailgate plugin test --settings settings.toml` reads this).\n",
        )?;
        let quote = |list: &[&str]| list.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let mut entry = format!(
            "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\nstages = [{}]\ncapabilities = [{}]\n",
            self.dir.join(format!("{snake}.wasm")).display(),
            quote(&self.stages),
            quote(&self.capabilities)
        );
        if matches!(lang, Lang::Python | Lang::Js) {
            // The component carries an interpreter: more memory, warm instances.
            entry.push_str("memory_limit_bytes = 268435456\ninstances = \"reused\"\n");
        }
        if self.capabilities.contains(&"http") {
            entry.push_str(
                "# The hosts and URL prefixes its requests may reach:\nhttp_allow = [\"https://example.com/\"]\n",
            );
        }
        entry.push_str("# [plugin.settings]\n# key = \"value\"\n");
        self.file("plugin.toml", &entry)?;
        let (language, source, needs) = match lang {
            Lang::Rust => ("Rust", "src/lib.rs", "Rust 1.95 with `rustup target add wasm32-wasip2`"),
            Lang::Python => ("Python", "app.py", "`pip install componentize-py==0.25.1`"),
            Lang::Js => (
                "JavaScript",
                "app.js",
                "Node.js; `build.sh` runs `npm install` for componentize-js 0.23.0",
            ),
            Lang::C => (
                "C",
                "app.c",
                "clang with wasi-libc, `wit-bindgen` 0.63 (C generator) and `wasm-tools`",
            ),
        };
        let readme = format!(
            "# {name}\n\nA mailgate filter plugin in {language}, made by `mailgate plugin new`.\n\n\
             - `{source}`: the hooks; stages {stages}.\n\
             - `wit/`: the contract, `mailgate:plugin@0.2.0` (`mailgate plugin wit --out DIR` writes it again).\n\
             - `build.sh`: builds `{snake}.wasm` (needs {needs}).\n\
             - `test.sh`: replays `tests/*.json` (transcripts made from `tests/sample.eml`) with `mailgate plugin test`.\n\
             - `plugin.toml`: the `[[plugin]]` entry for your configuration.\n\n\
             ```sh\n./build.sh && ./test.sh\n```\n\n\
             To run it on a gateway, append `plugin.toml` to its configuration and reload:\n\n\
             ```sh\ncat plugin.toml >> /etc/mailgate/mailgate.toml\nmailgate reload --config /etc/mailgate/mailgate.toml\n```\n\n\
             Record real traffic with `record = \"DIR\"` on a listener and replay it with\n\
             `mailgate plugin test --plugin {snake}.wasm --transcript DIR`, or test a message file with\n\
             `mailgate plugin test --plugin {snake}.wasm --eml msg.eml --from a@example.com --to b@example.net`.\n\
             The gateway grants only the capabilities in `plugin.toml` ({capabilities}).\n",
            stages = self.stages.join(", "),
            capabilities = if self.capabilities.is_empty() {
                "none".to_owned()
            } else {
                self.capabilities.join(", ")
            },
        );
        self.file("README.md", &readme)
    }

    /// An executable shell script that runs from its own directory.
    fn script(&self, file: &str, needs: &str, body: &str) -> Result<(), String> {
        let path = self.dir.join(file);
        write(
            &path,
            &format!("#!/bin/sh\n# Needs: {needs}.\nset -eu\ncd \"$(dirname \"$0\")\"\n{body}"),
        )?;
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&path, mode).map_err(|e| format!("cannot chmod {}: {e}", path.display()))
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines().map(|line| format!("{:by$}{line}\n", "")).collect()
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
