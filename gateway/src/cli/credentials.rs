//! The commands that make secrets on this host: `mailgate dkim keygen`
//! (a DKIM key pair) and `mailgate user` (the SMTP AUTH users file).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::EXIT_CONFIG;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

#[derive(Debug, Subcommand)]
pub(super) enum UserAction {
    /// Add a user, or set a new password for one. The password is asked
    /// for on a terminal, else read from the first line of standard input.
    Add {
        /// The user name, as given in AUTH.
        name: String,
    },
    /// Remove a user.
    Delete {
        /// The user name.
        name: String,
    },
    /// List the user names.
    List,
}

pub(super) fn dkim_keygen(
    domain: &str,
    selector: &str,
    algorithm: KeyAlgorithm,
    bits: usize,
    out: &std::path::Path,
) -> ExitCode {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let algorithm = match algorithm {
        KeyAlgorithm::Rsa if !(1024..=8192).contains(&bits) => {
            eprintln!("mailgate: --bits must be between 1024 and 8192 (2048 is usual)");
            return ExitCode::from(EXIT_CONFIG);
        }
        KeyAlgorithm::Rsa => crate::dkim::Algorithm::Rsa,
        KeyAlgorithm::Ed25519 => crate::dkim::Algorithm::Ed25519,
    };
    let written = crate::dkim::generate(algorithm, bits).and_then(|(pem, record)| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .and_then(|mut file| file.write_all(pem.as_bytes()))
            .map(|()| record)
            .map_err(|e| format!("{}: {e}", out.display()))
    });
    match written {
        Ok(record) => {
            // TXT strings are at most 255 octets: long keys are split.
            let strings: Vec<String> = record
                .as_bytes()
                .chunks(250)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            println!("; publish in DNS:");
            println!("{selector}._domainkey.{domain}. IN TXT ( {} )", strings.join(" "));
            println!();
            println!("# and configure:");
            println!("[[dkim.key]]");
            println!("domain = {domain:?}");
            println!("selector = {selector:?}");
            println!("private_key = {:?}", out.display().to_string());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailgate: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn user(config: Option<&std::path::Path>, file: Option<PathBuf>, action: UserAction) -> ExitCode {
    use crate::server::auth;
    let file = match (file, config) {
        (Some(file), _) => file,
        (None, Some(config)) => match crate::config::users_file(config) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => return ExitCode::from(EXIT_CONFIG),
    };
    let result = match action {
        UserAction::Add { name } => auth::check_name(&name)
            .and_then(|()| read_new_password())
            .and_then(|password| auth::hash_password(password.as_bytes()))
            .and_then(|hash| auth::set_user(&file, &name, &hash).map_err(|e| format!("{}: {e}", file.display())))
            .map(|existed| {
                let verb = if existed { "updated" } else { "added" };
                format!(
                    "user {name:?} {verb} in {}; send SIGHUP to a running gateway",
                    file.display()
                )
            }),
        UserAction::Delete { name } => match auth::remove_user(&file, &name) {
            Ok(true) => Ok(format!("user {name:?} removed from {}", file.display())),
            Ok(false) => Err(format!("no user {name:?} in {}", file.display())),
            Err(e) => Err(format!("{}: {e}", file.display())),
        },
        UserAction::List => auth::Users::load(&file).map(|users| {
            let mut names = users.names();
            names.sort_unstable();
            names.join("\n")
        }),
    };
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A new password: asked twice on a terminal, else the first line of stdin.
fn read_new_password() -> Result<String, String> {
    let password = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}
