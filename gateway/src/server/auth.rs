//! SMTP AUTH for clients (RFC 4954): users from a file of argon2 password
//! hashes, checked off the async runtime, with a per-client-address
//! failure count that slows down and then shuts out password guessing.
//!
//! The users file has one `name:hash` per line, the hash a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$...`) as `mailgate user add` writes
//! it; blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::limits::client_key;
use crate::smtp::session::{AuthAttempt, AuthOutcome};

/// Hashes a password for the users file (argon2id, the crate's default
/// parameters: 19 MiB, 2 passes, as OWASP recommends).
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// The users and their password hashes.
#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Reads a users file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|(line, reason)| format!("{}:{line}: {reason}", path.display()))
    }

    /// Parses the text of a users file; an error carries its line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut hashes = HashMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or((number, "expected `name:hash`".to_owned()))?;
            check_name(name).map_err(|e| (number, e))?;
            let parsed = PasswordHash::new(hash).map_err(|e| (number, format!("invalid hash: {e}")))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err((number, format!("{} is not an argon2 hash", parsed.algorithm)));
            }
            if hashes.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err((number, format!("user {name:?} appears twice")));
            }
        }
        Ok(Self { hashes })
    }

    /// The user names, in no order.
    pub fn names(&self) -> Vec<&str> {
        self.hashes.keys().map(String::as_str).collect()
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// True when `password` is `username`'s. Slow on purpose (argon2):
    /// call it off the async runtime. An unknown user costs the same as a
    /// known one, so timing does not tell which names exist.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        let hash = self
            .hashes
            .get(username)
            .map_or_else(|| dummy_hash().as_str(), String::as_str);
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        Argon2::default().verify_password(password, &parsed).is_ok() && self.hashes.contains_key(username)
    }
}

/// A hash of nothing in particular, to spend the time of a check on.
fn dummy_hash() -> &'static String {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"mailgate: no such user").unwrap_or_default())
}

/// A user name as the users file allows it: no colon, space or control.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid user name {name:?}: 1 to 256 characters, no colon or white space"
        ));
    }
    Ok(())
}

/// Sets `name`'s hash in the users file at `path`, creating the file
/// (mode 0600) if needed and keeping every other line; returns true when
/// the user was there before. The file is replaced atomically.
pub fn set_user(path: &Path, name: &str, hash: &str) -> std::io::Result<bool> {
    edit_users(path, name, Some(hash))
}

/// Removes `name` from the users file; returns true when it was there.
pub fn remove_user(path: &Path, name: &str) -> std::io::Result<bool> {
    edit_users(path, name, None)
}

fn edit_users(path: &Path, name: &str, hash: Option<&str>) -> std::io::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut found = false;
    let mut out = String::with_capacity(text.len() + 128);
    for line in text.lines() {
        if line.trim().split_once(':').is_some_and(|(n, _)| n == name) {
            found = true;
            if let Some(hash) = hash {
                out.push_str(&format!("{name}:{hash}\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let (false, Some(hash)) = (found, hash) {
        out.push_str(&format!("{name}:{hash}\n"));
    }
    let mode = std::fs::metadata(path).map_or(0o600, |m| m.permissions().mode() & 0o777);
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(out.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(found)
}

/// `[auth]` settings, validated.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// The users file.
    pub users_file: PathBuf,
    /// The wait after a client's first failure; it doubles with each one.
    pub failure_delay: Duration,
    /// Failures per client address before it is disconnected and refused.
    pub max_failures: u32,
    /// How long failures are remembered after the last one.
    pub failure_window: Duration,
}

/// Checks credentials and keeps the failure counts.
#[derive(Debug)]
pub struct Authenticator {
    settings: AuthSettings,
    users: RwLock<Arc<Users>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Bounds the argon2 checks running at once, so that a flood of AUTH
    /// cannot take every CPU or the whole blocking pool.
    checking: Semaphore,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failure entries kept at most; past it the oldest are forgotten.
const MAX_TRACKED_CLIENTS: usize = 65_536;

impl Authenticator {
    /// Loads the users file.
    pub fn new(settings: AuthSettings) -> Result<Self, String> {
        let users = Users::load(&settings.users_file)?;
        let parallel = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Ok(Self {
            settings,
            users: RwLock::new(Arc::new(users)),
            failures: Mutex::new(HashMap::new()),
            checking: Semaphore::new(parallel),
        })
    }

    /// Takes over the failures `old` remembers (a reload replaces the
    /// authenticator; a guesser must not get a fresh start from it).
    pub fn inherit_failures(&self, old: &Self) {
        if std::ptr::eq(self, old) {
            return;
        }
        let remembered = old.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(remembered);
    }

    /// How many users the file named.
    pub fn users(&self) -> usize {
        self.users.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Checks `attempt` from a client at `ip`. A failure is answered only
    /// after a delay that doubles with each failure from that address;
    /// at `max_failures` the client is disconnected, and while its
    /// failures are remembered every further attempt is refused unchecked.
    pub async fn check(&self, ip: IpAddr, attempt: AuthAttempt) -> AuthOutcome {
        let key = client_key(ip);
        if self.failures_of(key) >= self.settings.max_failures {
            return AuthOutcome::Blocked;
        }
        let Ok(permit) = self.checking.acquire().await else {
            return AuthOutcome::Unavailable;
        };
        let users = Arc::clone(&self.users.read().unwrap_or_else(PoisonError::into_inner));
        let (username, mechanism) = (attempt.username.clone(), attempt.mechanism);
        let verified = tokio::task::spawn_blocking(move || users.verify(&attempt.username, &attempt.password)).await;
        // Free the slot before any failure delay: a guesser waits alone.
        drop(permit);
        match verified {
            Ok(true) => {
                self.failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&key);
                info!(user = %username, mechanism, "authenticated");
                AuthOutcome::Success
            }
            Ok(false) => {
                let count = self.record_failure(key);
                warn!(user = %username, mechanism, failures = count, "authentication failed");
                if count >= self.settings.max_failures {
                    return AuthOutcome::Blocked;
                }
                let factor = 1u32 << (count - 1).min(16);
                tokio::time::sleep(self.settings.failure_delay.saturating_mul(factor)).await;
                AuthOutcome::Failure
            }
            Err(_) => AuthOutcome::Unavailable,
        }
    }

    /// Remembered failures of a client (0 once the window has passed).
    fn failures_of(&self, key: IpAddr) -> u32 {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures
            .get(&key)
            .filter(|f| f.last.elapsed() < self.settings.failure_window)
            .map_or(0, |f| f.count)
    }

    fn record_failure(&self, key: IpAddr) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.settings.failure_window;
        if failures.len() >= MAX_TRACKED_CLIENTS {
            failures.retain(|_, f| f.last.elapsed() < window);
            if failures.len() >= MAX_TRACKED_CLIENTS
                && let Some(oldest) = failures.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k)
            {
                failures.remove(&oldest);
            }
        }
        let now = Instant::now();
        let entry = failures.entry(key).or_insert(Failures { count: 0, last: now });
        if now.duration_since(entry.last) >= window {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
        entry.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(user: &str, password: &str) -> AuthAttempt {
        AuthAttempt {
            mechanism: "PLAIN",
            username: user.into(),
            password: password.as_bytes().to_vec(),
        }
    }

    fn authenticator(dir: &Path) -> Authenticator {
        let file = dir.join("users");
        let hash = hash_password(b"s3cret").unwrap();
        std::fs::write(&file, format!("# users\n\nalice:{hash}\n")).unwrap();
        Authenticator::new(AuthSettings {
            users_file: file,
            failure_delay: Duration::from_millis(10),
            max_failures: 3,
            failure_window: Duration::from_secs(60),
        })
        .unwrap()
    }

    #[test]
    fn users_file_errors_name_the_line() {
        assert_eq!(Users::parse("# c\n\nbob\n").unwrap_err().0, 3);
        assert!(Users::parse("bob:plaintext\n").unwrap_err().1.contains("invalid hash"));
        let hash = hash_password(b"x").unwrap();
        let twice = format!("bob:{hash}\nbob:{hash}\n");
        assert_eq!(
            Users::parse(&twice).unwrap_err(),
            (2, "user \"bob\" appears twice".to_owned())
        );
    }

    #[tokio::test]
    async fn right_password_passes_and_failures_slow_then_block() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authenticator(dir.path());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(auth.check(ip, attempt("alice", "s3cret")).await, AuthOutcome::Success);
        assert_eq!(auth.check(ip, attempt("alice", "wrong")).await, AuthOutcome::Failure);
        let started = Instant::now();
        assert_eq!(auth.check(ip, attempt("nobody", "s3cret")).await, AuthOutcome::Failure);
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "the second failure waits twice as long"
        );
        assert_eq!(auth.check(ip, attempt("alice", "wrong")).await, AuthOutcome::Blocked);
        // Blocked now, even with the right password; other clients are not.
        assert_eq!(auth.check(ip, attempt("alice", "s3cret")).await, AuthOutcome::Blocked);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            auth.check(other, attempt("alice", "s3cret")).await,
            AuthOutcome::Success
        );
    }

    #[test]
    fn users_are_added_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users");
        std::fs::write(&file, "# staff\n").unwrap();
        assert!(!set_user(&file, "alice", "$argon2id$a").unwrap());
        assert!(!set_user(&file, "bob", "$argon2id$b").unwrap());
        assert!(set_user(&file, "alice", "$argon2id$c").unwrap());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# staff\nalice:$argon2id$c\nbob:$argon2id$b\n"
        );
        assert!(remove_user(&file, "alice").unwrap());
        assert!(!remove_user(&file, "alice").unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# staff\nbob:$argon2id$b\n");
    }

    #[tokio::test]
    async fn a_reloaded_authenticator_remembers_failures() {
        let dir = tempfile::tempdir().unwrap();
        let old = authenticator(dir.path());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            old.check(ip, attempt("alice", "wrong")).await;
        }
        assert_eq!(old.check(ip, attempt("alice", "s3cret")).await, AuthOutcome::Blocked);
        let new = authenticator(dir.path());
        new.inherit_failures(&old);
        assert_eq!(new.check(ip, attempt("alice", "s3cret")).await, AuthOutcome::Blocked);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(new.check(other, attempt("alice", "s3cret")).await, AuthOutcome::Success);
    }
}
