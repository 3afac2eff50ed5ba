//! The AUTH exchange of the session (RFC 4954): PLAIN (RFC 4616) and
//! LOGIN, only inside TLS on listeners that take it. The driver checks the
//! credentials and reports back with `Session::auth_checked`.

use std::mem;

use super::{Hello, Pending, Reply, Session, State, Step};

/// A user name and password from an AUTH exchange, to be checked by the
/// driver. The password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthAttempt {
    /// `PLAIN` or `LOGIN`.
    pub mechanism: &'static str,
    /// The authentication identity.
    pub username: String,
    /// The password, as sent.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for AuthAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthAttempt")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What checking an `AuthAttempt` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password is right.
    Success,
    /// Unknown user or wrong password: 535 5.7.8.
    Failure,
    /// Too many failures from this client: 421 and close.
    Blocked,
    /// The check itself failed: 454 4.7.0.
    Unavailable,
}

/// Where an AUTH exchange stands.
#[derive(Debug)]
pub(super) enum AuthStep {
    /// `AUTH PLAIN` sent without an initial response.
    Plain,
    /// `AUTH LOGIN`: waiting for the user name.
    LoginUser,
    /// `AUTH LOGIN`: waiting for this user's password.
    LoginPassword(String),
}

impl Session {
    /// The outcome of checking an `AuthAttempt`.
    pub fn auth_checked(&mut self, outcome: AuthOutcome) -> Step {
        let State::Pending(Pending::Auth(hello, user)) = mem::replace(&mut self.state, State::Closing) else {
            return Step::Reply(Reply::local_error());
        };
        let reply = match outcome {
            AuthOutcome::Success => {
                self.user = Some(user);
                Reply::auth_succeeded()
            }
            AuthOutcome::Failure => Reply::auth_failed(),
            AuthOutcome::Unavailable => Reply::auth_unavailable(),
            AuthOutcome::Blocked => {
                return Step::Close(Reply::abuse_limit(
                    &self.config.hostname,
                    "too many failed authentication attempts",
                ));
            }
        };
        self.state = State::Ready(hello);
        self.counted(Step::Reply(reply))
    }

    /// `AUTH mechanism [initial-response]` in the Ready state (RFC 4954).
    pub(super) fn auth(&self, hello: Hello, mechanism: &str, initial: Option<&str>) -> (State, Step) {
        let refusal = if !self.security.auth {
            Some(Reply::bad_sequence("authentication not enabled"))
        } else if self.tls.is_none() {
            Some(Reply::auth_needs_tls())
        } else if self.user.is_some() {
            Some(Reply::bad_sequence("already authenticated"))
        } else {
            None
        };
        if let Some(reply) = refusal {
            return (State::Ready(hello), Step::Reply(reply));
        }
        match (mechanism, initial) {
            ("PLAIN", None) => (
                State::Auth(hello, AuthStep::Plain),
                Step::Reply(Reply::auth_challenge("")),
            ),
            ("PLAIN", Some(response)) => self.auth_response(hello, AuthStep::Plain, response.as_bytes()),
            ("LOGIN", None) => (
                State::Auth(hello, AuthStep::LoginUser),
                Step::Reply(Reply::auth_challenge(LOGIN_USERNAME)),
            ),
            ("LOGIN", Some(response)) => self.auth_response(hello, AuthStep::LoginUser, response.as_bytes()),
            _ => (State::Ready(hello), Step::Reply(Reply::auth_unknown_mechanism())),
        }
    }

    /// One client response inside an AUTH exchange.
    pub(super) fn auth_response(&self, hello: Hello, step: AuthStep, line: &[u8]) -> (State, Step) {
        if line == b"*" {
            return (State::Ready(hello), Step::Reply(Reply::auth_cancelled()));
        }
        let Some(decoded) = decode_base64(line) else {
            return (State::Ready(hello), Step::Reply(Reply::auth_bad_encoding()));
        };
        let attempt = match step {
            AuthStep::Plain => match split_plain(&decoded) {
                Some(attempt) => attempt,
                None => return (State::Ready(hello), Step::Reply(Reply::auth_bad_encoding())),
            },
            AuthStep::LoginUser => {
                return match String::from_utf8(decoded) {
                    Ok(user) if !user.is_empty() => (
                        State::Auth(hello, AuthStep::LoginPassword(user)),
                        Step::Reply(Reply::auth_challenge(LOGIN_PASSWORD)),
                    ),
                    _ => (State::Ready(hello), Step::Reply(Reply::auth_bad_encoding())),
                };
            }
            AuthStep::LoginPassword(username) => AuthAttempt {
                mechanism: "LOGIN",
                username,
                password: decoded,
            },
        };
        (
            State::Pending(Pending::Auth(hello, attempt.username.clone())),
            Step::Authenticate(attempt),
        )
    }
}

/// The LOGIN mechanism's prompts, base64 of `Username:` and `Password:`.
const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A SASL response: base64, or `=` for an empty one (RFC 4954 section 4).
fn decode_base64(line: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    if line == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(line).ok()
}

/// A PLAIN message: `authzid NUL authcid NUL passwd` (RFC 4616). Acting
/// for another identity is not offered: an authzid must name the user.
fn split_plain(message: &[u8]) -> Option<AuthAttempt> {
    let mut parts = message.split(|&b| b == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() || !(authzid.is_empty() || authzid == authcid) {
        return None;
    }
    Some(AuthAttempt {
        mechanism: "PLAIN",
        username: String::from_utf8(authcid.to_vec()).ok()?,
        password: password.to_vec(),
    })
}
