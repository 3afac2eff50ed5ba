//! Mailbox addresses and SMTP paths (RFC 5321 section 4.1.2), with the
//! UTF-8 forms of RFC 6531 accepted syntactically; whether a transaction may
//! use them is the session's call.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest path RFC 5321 section 4.5.3.1.3 allows, in octets.
pub const MAX_PATH_OCTETS: usize = 256;

/// A mailbox, `local-part@domain`, as the client spelled it (a quoted local
/// part keeps its quotes so relaying is transparent).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mailbox {
    local: String,
    domain: String,
}

/// Why an address failed to parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The text is not a mailbox.
    #[error("{0}")]
    Syntax(&'static str),
    /// The path is longer than RFC 5321 allows.
    #[error("address longer than 256 octets")]
    TooLong,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets, no source route).
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        if text.len() > MAX_PATH_OCTETS {
            return Err(AddressError::TooLong);
        }
        let (local, rest) = split_local_part(text)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::Syntax("missing @domain"))?;
        check_domain(domain)?;
        Ok(Self {
            local: local.to_owned(),
            domain: domain.to_owned(),
        })
    }

    /// `postmaster@localhost`, which needs no parsing.
    pub fn local_postmaster() -> Self {
        Self {
            local: "postmaster".to_owned(),
            domain: "localhost".to_owned(),
        }
    }

    /// The local part, exactly as received.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain (or address literal), exactly as received.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True when the address needs SMTPUTF8 to be sent (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The domain in lower case, for routing and comparisons.
    pub fn domain_key(&self) -> String {
        self.domain.to_lowercase()
    }

    /// True when both name the same mailbox: the domain compared without
    /// regard to case, the local part exactly (RFC 5321 section 2.4).
    pub fn same_mailbox(&self, other: &Self) -> bool {
        self.local == other.local && self.domain.to_lowercase() == other.domain.to_lowercase()
    }
}

/// Splits a dot-string or quoted-string local part off the front of `text`.
fn split_local_part(text: &str) -> Result<(&str, &str), AddressError> {
    if let Some(inner) = text.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let end = i + 2; // the opening and closing quotes
                    return Ok((&text[..end], &text[end..]));
                }
                c if c.is_control() => return Err(AddressError::Syntax("bad quoted local part")),
                _ => {}
            }
        }
        return Err(AddressError::Syntax("unterminated quoted local part"));
    }
    let end = text.find('@').unwrap_or(text.len());
    let local = &text[..end];
    if local.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    // Dot-string (RFC 5321 section 4.1.2). Consecutive or edge dots are not
    // strictly legal, but real senders use them and Postfix accepts them.
    if !local.chars().all(|c| is_atext(c) || c == '.') {
        return Err(AddressError::Syntax("bad character in local part"));
    }
    Ok((local, &text[end..]))
}

/// atext of RFC 5322 section 3.2.3, widened to UTF-8 per RFC 6531 section 3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (!c.is_ascii() && !c.is_control())
}

/// Checks a domain name or address literal.
fn check_domain(domain: &str) -> Result<(), AddressError> {
    if let Some(literal) = domain.strip_prefix('[') {
        let inner = literal
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("unterminated address literal"))?;
        return check_address_literal(inner);
    }
    if domain.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (!c.is_ascii() && !c.is_control()));
        if !ok {
            return Err(AddressError::Syntax("bad domain"));
        }
    }
    Ok(())
}

/// An IPv4 literal or `IPv6:` literal (RFC 5321 section 4.1.3).
fn check_address_literal(inner: &str) -> Result<(), AddressError> {
    let ok = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<std::net::Ipv6Addr>().is_ok(),
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(AddressError::Syntax("bad address literal"))
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl TryFrom<String> for Mailbox {
    type Error = AddressError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Mailbox> for String {
    fn from(value: Mailbox) -> Self {
        value.to_string()
    }
}

/// The reverse-path of MAIL FROM: a mailbox, or the null path `<>` used by
/// bounces (RFC 5321 section 4.5.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ReversePath {
    /// `<>`: no bounce may be sent for this message.
    Null,
    /// A mailbox to which delivery status notifications go.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// The mailbox, unless this is the null path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Null => None,
            Self::Mailbox(m) => Some(m),
        }
    }

    /// True when the address needs SMTPUTF8.
    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => Ok(()),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

impl TryFrom<String> for ReversePath {
    type Error = AddressError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        if value.is_empty() {
            Ok(Self::Null)
        } else {
            Mailbox::parse(&value).map(Self::Mailbox)
        }
    }
}

impl From<ReversePath> for String {
    fn from(value: ReversePath) -> Self {
        value.to_string()
    }
}

/// A pattern over domains, as routes and accepted domains use them:
/// `example.com` (that domain), `*.example.com` (its subdomains, not itself)
/// or `*` (every domain). Matching ignores ASCII case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainPattern {
    /// `*`
    Any,
    /// `example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Subdomains(String),
}

impl DomainPattern {
    /// Parses the pattern text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.to_lowercase();
        if lower == "*" {
            return Ok(Self::Any);
        }
        let (domain, pattern) = match lower.strip_prefix("*.") {
            Some(rest) => (rest.to_owned(), Self::Subdomains(format!(".{rest}"))),
            None => (lower.clone(), Self::Exact(lower.clone())),
        };
        check_domain(&domain).map_err(|e| format!("invalid domain pattern {text:?}: {e}"))?;
        Ok(pattern)
    }

    /// True when `domain` (lower case) matches.
    pub fn matches(&self, domain: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(d) => d == domain,
            Self::Subdomains(suffix) => domain.ends_with(suffix.as_str()),
        }
    }
}

/// Parses the inside of `<...>` of a path, dropping an RFC 5321 source route
/// (`@a,@b:`), which section 4.1.1.3 says to accept and ignore.
pub fn parse_path(inner: &str) -> Result<Mailbox, AddressError> {
    if inner.len() > MAX_PATH_OCTETS {
        return Err(AddressError::TooLong);
    }
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            let colon = inner.find(':').ok_or(AddressError::Syntax("bad source route"))?;
            &inner[colon + 1..]
        }
        None => inner,
    };
    Mailbox::parse(mailbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_and_unusual_mailboxes() {
        let cases = [
            ("user@example.com", "user", "example.com"),
            ("first.last+tag@sub.example.org", "first.last+tag", "sub.example.org"),
            ("\"john doe\"@example.com", "\"john doe\"", "example.com"),
            ("\"a\\\"b@c\"@example.com", "\"a\\\"b@c\"", "example.com"),
            ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
            ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
            ("josé@exämple.de", "josé", "exämple.de"),
        ];
        for (text, local, domain) in cases {
            let m = Mailbox::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((m.local_part(), m.domain()), (local, domain), "{text}");
            assert_eq!(m.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_mailboxes() {
        for text in [
            "",
            "user",
            "@example.com",
            "user@",
            "user@exa mple.com",
            "us er@example.com",
            "user@example..com",
            "user@[300.1.1.1]",
            "\"unterminated@example.com",
            "user@example.com>",
        ] {
            assert!(Mailbox::parse(text).is_err(), "{text:?} should not parse");
        }
    }

    #[test]
    fn source_route_is_ignored() {
        let m = parse_path("@relay.test,@other.test:user@example.com").unwrap();
        assert_eq!(m.to_string(), "user@example.com");
    }

    #[test]
    fn overlong_path_is_refused() {
        let text = format!("{}@example.com", "a".repeat(250));
        assert_eq!(parse_path(&text), Err(AddressError::TooLong));
    }

    #[test]
    fn domain_patterns_match() {
        let exact = DomainPattern::parse("Example.COM").unwrap();
        let subs = DomainPattern::parse("*.example.com").unwrap();
        let any = DomainPattern::parse("*").unwrap();
        assert!(exact.matches("example.com") && !exact.matches("a.example.com"));
        assert!(subs.matches("a.example.com") && subs.matches("b.a.example.com"));
        assert!(!subs.matches("example.com") && !subs.matches("badexample.com"));
        assert!(any.matches("anything.test"));
        assert!(DomainPattern::parse("bad domain").is_err());
        assert!(DomainPattern::parse("*.").is_err());
    }

    #[test]
    fn non_ascii_is_reported() {
        assert!(!Mailbox::parse("josé@example.com").unwrap().is_ascii());
        assert!(Mailbox::parse("jose@example.com").unwrap().is_ascii());
    }
}
