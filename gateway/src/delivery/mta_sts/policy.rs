//! The MTA-STS policy text (RFC 8461 section 3.2) and the TXT record
//! that announces it (section 3.1).

use serde::{Deserialize, Serialize};

/// The longest `max_age` a policy may ask for (about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts, over TLS with a valid certificate.
    Enforce,
    /// Deliver as before; report what enforcing would have refused.
    Testing,
    /// No policy.
    None,
}

impl Mode {
    /// The mode as the policy names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `mx` patterns, lower case: `mail.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    /// `max_age`, seconds.
    pub max_age: u64,
}

impl Policy {
    /// Parses a policy body: `key: value` lines (CRLF or LF), `version:
    /// STSv1` first, `mode`, `max_age`, and `mx` (at least one unless the
    /// mode is `none`). Unknown keys are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty());
        let field = |line: &str| -> Result<(String, String), String> {
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a `key: value` line: {line:?}"))?;
            Ok((key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        };
        match lines.next().map(field).transpose()? {
            Some((key, value)) if key == "version" && value == "STSv1" => {}
            _ => return Err("the policy does not start with `version: STSv1`".into()),
        }
        let (mut mode, mut max_age, mut mx) = (None, None, Vec::new());
        for line in lines {
            let (key, value) = field(line)?;
            match key.as_str() {
                "mode" => {
                    mode = Some(match value.as_str() {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    });
                }
                "max_age" => {
                    let seconds: u64 = value
                        .parse()
                        .ok()
                        .filter(|_| value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("max_age {value:?} is not a number of seconds"))?;
                    max_age = Some(seconds.min(MAX_AGE_LIMIT));
                }
                "mx" => {
                    let pattern = value.to_ascii_lowercase();
                    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
                    if name.is_empty() || name.contains('*') || name.starts_with('.') {
                        return Err(format!("bad mx pattern {value:?}"));
                    }
                    mx.push(pattern.trim_end_matches('.').to_owned());
                }
                _ => {}
            }
        }
        let mode = mode.ok_or("the policy has no mode")?;
        let max_age = max_age.ok_or("the policy has no max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("the policy names no mx".into());
        }
        Ok(Self { mode, mx, max_age })
    }

    /// Whether MX host `host` matches one of the patterns: exactly, or
    /// `*.example.com` for one more leftmost label (section 4.1).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *pattern == host,
        })
    }
}

/// The `id` of a `v=STSv1; id=...;` TXT record, when exactly one of the
/// records is one (section 3.1: several are an error, like none).
pub fn record_id(records: &[String]) -> Option<String> {
    let mut ids = records.iter().filter_map(|record| {
        let mut fields = record.split(';').map(str::trim);
        if fields.next() != Some("v=STSv1") {
            return None;
        }
        fields.find_map(|f| f.strip_prefix("id=")).map(str::to_owned)
    });
    let id = ids.next()?;
    let valid = !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    (valid && ids.next().is_none()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_is_parsed_and_its_patterns_match_one_label() {
        let policy = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net\r\nmax_age: 86400\r\nfuture: ignored\r\n",
        )
        .unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 86400);
        assert!(policy.matches("mail.example.com"));
        assert!(policy.matches("MAIL.example.com."));
        assert!(policy.matches("mx1.example.net"));
        assert!(!policy.matches("example.net"), "the wildcard needs a label");
        assert!(!policy.matches("a.b.example.net"), "and only one");
        assert!(!policy.matches("mail.example.org"));
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, why) in [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
            ("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n", "version"),
            ("version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n", "unknown mode"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "no max_age"),
            ("version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n", "max_age"),
            ("version: STSv1\nmode: enforce\nmx: *.*.test\nmax_age: 1\n", "bad mx"),
            ("version: STSv1\nmode enforce\n", "key: value"),
        ] {
            let error = Policy::parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
        let none = Policy::parse("version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert!(none.is_err(), "an 11-digit max_age is refused");
        let capped = Policy::parse("version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(capped.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn the_record_id_is_read_from_exactly_one_sts_record() {
        let records = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            record_id(&records(&["v=spf1 -all", "v=STSv1; id=20261204T1;"])).as_deref(),
            Some("20261204T1")
        );
        assert_eq!(record_id(&records(&["v=STSv1; id=a;", "v=STSv1; id=b;"])), None);
        assert_eq!(record_id(&records(&["v=STSv1;"])), None);
        assert_eq!(record_id(&records(&["v=STSv1; id=has-dash;"])), None);
    }
}
