//! Who may use the admin API's control endpoints: bearer tokens, kept in
//! a file as `name:sha256-hex` lines (never the token itself). A token is
//! 32 random octets, so a plain SHA-256 is as good as a slow hash here;
//! `mailgate admin token add NAME` makes one, appends its digest and
//! prints it once.

use std::io::Write as _;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// The tokens allowed to use the control endpoints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Each token's name and the SHA-256 of the token.
    entries: Vec<(String, [u8; 32])>,
}

impl Tokens {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .split_once(':')
                .and_then(|(name, hex)| Some((name.to_owned(), digest_from_hex(hex)?)));
            match parsed {
                Some(entry) => entries.push(entry),
                None => {
                    return Err(format!(
                        "{}:{}: expected NAME:SHA256-HEX (see `mailgate admin token add`)",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
        Ok(Self { entries })
    }

    /// The name of the token an `Authorization: Bearer TOKEN` header
    /// carries, when it is one of these.
    pub fn check(&self, authorization: Option<&str>) -> Option<&str> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.entries
            .iter()
            .find(|(_, known)| constant_time_eq(known, &digest))
            .map(|(name, _)| name.as_str())
    }

    /// Makes a token named `name`, appends its digest to the file at
    /// `path` (created with mode 0600), and returns the token.
    pub fn add(path: &Path, name: &str) -> Result<String, String> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(format!("invalid token name {name:?}: letters, digits, - _ ."));
        }
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        let digest: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        writeln!(file, "{name}:{digest}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(token)
    }
}

fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_added_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let token = Tokens::add(&path, "ops").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "the file keeps only the digest");
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.check(Some(&format!("Bearer {token}"))), Some("ops"));
        assert_eq!(tokens.check(Some("Bearer wrong")), None);
        assert_eq!(tokens.check(Some(&token)), None, "the scheme is required");
        assert_eq!(tokens.check(None), None);
        assert!(Tokens::add(&path, "bad name").is_err());
        std::fs::write(&path, "ops:nothex\n").unwrap();
        assert!(
            Tokens::load(&path)
                .unwrap_err()
                .contains(":1: expected NAME:SHA256-HEX")
        );
    }
}
