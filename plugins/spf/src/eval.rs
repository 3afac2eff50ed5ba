//! An SPF evaluator (RFC 7208): `check_host()` over any [`Resolver`], with
//! every mechanism and modifier, macros, and the limits of section 4.6.4
//! (10 DNS-querying terms, 10 MX or PTR names each, 2 void lookups).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mailgate_plugin_sdk::dns::{Error, Resolver};

/// An SPF result (RFC 7208 section 2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfResult {
    /// No record, or no domain to check.
    None,
    /// `?`: the domain makes no assertion.
    Neutral,
    /// `+`: the client is authorised.
    Pass,
    /// `-`: the client is not authorised.
    Fail,
    /// `~`: probably not authorised.
    Softfail,
    /// A transient DNS error.
    Temperror,
    /// A broken record or a limit exceeded.
    Permerror,
}

impl SpfResult {
    /// Its name in Received-SPF and Authentication-Results.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Neutral => "neutral",
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Softfail => "softfail",
            Self::Temperror => "temperror",
            Self::Permerror => "permerror",
        }
    }
}

/// What evaluation found: the result, why, and on `fail` the domain's
/// explanation (`exp=`), if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The result.
    pub result: SpfResult,
    /// The matching mechanism or the problem, for logs and headers.
    pub reason: String,
    /// The expanded `exp=` text, on fail.
    pub explanation: Option<String>,
}

/// The identity being checked.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// The client's address (IPv4-mapped IPv6 addresses count as IPv4).
    pub ip: IpAddr,
    /// The sender, `local@domain` (`postmaster@helo` for the null path).
    pub sender: &'a str,
    /// The EHLO name.
    pub helo: &'a str,
    /// The receiving host's name, for the `%{r}` macro.
    pub receiver: &'a str,
}

const MAX_TERMS: u32 = 10;
const MAX_NAMES: usize = 10;
const MAX_VOIDS: u32 = 2;

enum Stop {
    Temp(String),
    Perm(String),
}

type Step<T> = Result<T, Stop>;

fn perm<T>(reason: impl Into<String>) -> Step<T> {
    Err(Stop::Perm(reason.into()))
}

struct Evaluator<'a, R: Resolver> {
    resolver: &'a R,
    query: &'a Query<'a>,
    ip: IpAddr,
    terms: u32,
    voids: u32,
}

/// `check_host(ip, domain, sender)` for the sender's domain.
pub fn check_host(resolver: &impl Resolver, query: &Query<'_>) -> Outcome {
    let domain = query.sender.rsplit_once('@').map_or(query.sender, |(_, d)| d);
    let ip = match query.ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(query.ip, IpAddr::V4),
        v4 => v4,
    };
    let mut evaluator = Evaluator {
        resolver,
        query,
        ip,
        terms: 0,
        voids: 0,
    };
    if !valid_domain(domain) {
        return Outcome {
            result: SpfResult::None,
            reason: format!("{domain:?} is not a domain name"),
            explanation: None,
        };
    }
    match evaluator.evaluate(&domain.to_ascii_lowercase()) {
        Ok(outcome) => outcome,
        Err(Stop::Temp(reason)) => Outcome {
            result: SpfResult::Temperror,
            reason,
            explanation: None,
        },
        Err(Stop::Perm(reason)) => Outcome {
            result: SpfResult::Permerror,
            reason,
            explanation: None,
        },
    }
}

/// A name that can be looked up: labels of 1 to 63 octets, at most 253 in
/// all, at least two labels (RFC 7208 section 4.3).
fn valid_domain(domain: &str) -> bool {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.len() <= 253
        && domain.contains('.')
        && domain
            .split('.')
            .all(|l| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_graphic()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    Softfail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Self::Pass => SpfResult::Pass,
            Self::Fail => SpfResult::Fail,
            Self::Softfail => SpfResult::Softfail,
            Self::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    directives: Vec<(Qualifier, Mechanism, String)>,
    redirect: Option<String>,
    exp: Option<String>,
}

/// The one `v=spf1` record among `texts`: none, or an error when several.
fn select(texts: &[String]) -> Result<Option<&str>, String> {
    let mut records = texts.iter().filter(|t| {
        let lower = t.to_ascii_lowercase();
        lower == "v=spf1" || lower.starts_with("v=spf1 ")
    });
    match (records.next(), records.next()) {
        (None, _) => Ok(None),
        (Some(one), None) => Ok(Some(one.as_str())),
        (Some(_), Some(_)) => Err("more than one v=spf1 record".into()),
    }
}

fn cidr(text: &str, max: u8) -> Result<u8, String> {
    match text.parse::<u8>() {
        // No leading zeros (RFC 7208 section 5.6: 1*DIGIT without them).
        Ok(len) if len <= max && (text == "0" || !text.starts_with('0')) => Ok(len),
        _ => Err(format!("bad prefix length /{text}")),
    }
}

/// Splits `domain/cidr4//cidr6` (each part optional).
fn dual_cidr(spec: &str) -> Result<(Option<String>, u8, u8), String> {
    let (rest, v6) = match spec.split_once("//") {
        Some((rest, v6)) => (rest, cidr(v6, 128)?),
        None => (spec, 128),
    };
    let (domain, v4) = match rest.split_once('/') {
        Some((domain, v4)) => (domain, cidr(v4, 32)?),
        None => (rest, 32),
    };
    let domain = match domain {
        "" => None,
        d => Some(
            d.strip_prefix(':')
                .ok_or_else(|| format!("bad term {spec:?}"))?
                .to_owned(),
        ),
    };
    if domain.as_deref() == Some("") {
        return Err(format!("empty domain in {spec:?}"));
    }
    Ok((domain, v4, v6))
}

fn parse(record: &str) -> Result<Record, String> {
    let mut parsed = Record::default();
    for term in record.split_ascii_whitespace().skip(1) {
        let lower = term.to_ascii_lowercase();
        // A modifier: name=value, with a name of ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
        if let Some((name, value)) = term.split_once('=')
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            match name.to_ascii_lowercase().as_str() {
                "redirect" if parsed.redirect.is_some() => return Err("two redirect= modifiers".into()),
                "redirect" => parsed.redirect = Some(value.to_owned()),
                "exp" if parsed.exp.is_some() => return Err("two exp= modifiers".into()),
                "exp" => parsed.exp = Some(value.to_owned()),
                _ => {} // Unknown modifiers are ignored (section 6).
            }
            continue;
        }
        let (qualifier, rest) = match lower.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, &term[1..]),
            Some(b'-') => (Qualifier::Fail, &term[1..]),
            Some(b'~') => (Qualifier::Softfail, &term[1..]),
            Some(b'?') => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let split = rest.find([':', '/']).unwrap_or(rest.len());
        let (name, arg) = rest.split_at(split);
        let value = |arg: &str| -> Result<String, String> {
            match arg.strip_prefix(':') {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(format!("{term:?} needs a domain")),
            }
        };
        let mechanism = match name.to_ascii_lowercase().as_str() {
            "all" if arg.is_empty() => Mechanism::All,
            "include" => Mechanism::Include(value(arg)?),
            "exists" => Mechanism::Exists(value(arg)?),
            "a" => {
                let (d, v4, v6) = dual_cidr(arg)?;
                Mechanism::A(d, v4, v6)
            }
            "mx" => {
                let (d, v4, v6) = dual_cidr(arg)?;
                Mechanism::Mx(d, v4, v6)
            }
            "ptr" if arg.is_empty() => Mechanism::Ptr(None),
            "ptr" => Mechanism::Ptr(Some(value(arg)?)),
            "ip4" => {
                let spec = value(arg)?;
                let (addr, len) = spec
                    .split_once('/')
                    .map_or((spec.as_str(), Ok(32)), |(a, l)| (a, cidr(l, 32)));
                Mechanism::Ip4(addr.parse().map_err(|_| format!("bad address in {term:?}"))?, len?)
            }
            "ip6" => {
                let spec = value(arg)?;
                let (addr, len) = spec
                    .split_once('/')
                    .map_or((spec.as_str(), Ok(128)), |(a, l)| (a, cidr(l, 128)));
                Mechanism::Ip6(addr.parse().map_err(|_| format!("bad address in {term:?}"))?, len?)
            }
            _ => return Err(format!("unknown term {term:?}")),
        };
        parsed.directives.push((qualifier, mechanism, term.to_owned()));
    }
    Ok(parsed)
}

fn in_network(ip: IpAddr, network: IpAddr, len: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl<R: Resolver> Evaluator<'_, R> {
    /// Counts a DNS-querying term (section 4.6.4).
    fn term(&mut self) -> Step<()> {
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return perm(format!("more than {MAX_TERMS} DNS-querying terms"));
        }
        Ok(())
    }

    /// A lookup's answer; NXDOMAIN and empty answers count as void.
    fn answer<T>(&mut self, name: &str, answer: Result<Vec<T>, Error>) -> Step<Vec<T>> {
        let records = match answer {
            Ok(records) => records,
            Err(Error::NoSuchName | Error::Invalid(_)) => Vec::new(),
            Err(Error::Temporary(e)) => return Err(Stop::Temp(format!("{name}: {e}"))),
        };
        if records.is_empty() {
            self.voids += 1;
            if self.voids > MAX_VOIDS {
                return perm(format!("more than {MAX_VOIDS} void lookups"));
            }
        }
        Ok(records)
    }

    fn addresses(&mut self, name: &str, count_void: bool) -> Step<Vec<IpAddr>> {
        let answer: Result<Vec<IpAddr>, Error> = match self.ip {
            IpAddr::V4(_) => self.resolver.a(name).map(|v| v.into_iter().map(IpAddr::V4).collect()),
            IpAddr::V6(_) => self
                .resolver
                .aaaa(name)
                .map(|v| v.into_iter().map(IpAddr::V6).collect()),
        };
        if count_void {
            self.answer(name, answer)
        } else {
            match answer {
                Ok(found) => Ok(found),
                Err(Error::Temporary(e)) => Err(Stop::Temp(format!("{name}: {e}"))),
                Err(_) => Ok(Vec::new()),
            }
        }
    }

    fn matches_any(&self, addresses: &[IpAddr], v4: u8, v6: u8) -> bool {
        let len = if self.ip.is_ipv4() { v4 } else { v6 };
        addresses.iter().any(|a| in_network(self.ip, *a, len))
    }

    /// The validated names of the client's address (section 5.5), for
    /// `ptr` and `%{p}`.
    fn validated_names(&mut self) -> Step<Vec<String>> {
        let names = match self.resolver.ptr(self.ip) {
            Ok(names) => names,
            Err(Error::Temporary(_)) | Err(_) => return Ok(Vec::new()),
        };
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_NAMES) {
            if self.addresses(&name, false)?.contains(&self.ip) {
                valid.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        Ok(valid)
    }

    fn evaluate(&mut self, domain: &str) -> Step<Outcome> {
        let texts = match self.resolver.txt(domain) {
            Ok(texts) => texts,
            Err(Error::NoSuchName | Error::Invalid(_)) => Vec::new(),
            Err(Error::Temporary(e)) => return Err(Stop::Temp(format!("{domain}: {e}"))),
        };
        let record = match select(&texts) {
            Ok(Some(record)) => record.to_owned(),
            Ok(None) => {
                return Ok(Outcome {
                    result: SpfResult::None,
                    reason: format!("{domain} has no SPF record"),
                    explanation: None,
                });
            }
            Err(e) => return perm(format!("{domain}: {e}")),
        };
        let record = parse(&record).or_else(|e| perm(format!("{domain}: {e}")))?;
        for (qualifier, mechanism, text) in &record.directives {
            if self.matches(domain, mechanism)? {
                let result = qualifier.result();
                let explanation = match (&record.exp, result) {
                    (Some(exp), SpfResult::Fail) => self.explanation(domain, exp),
                    _ => None,
                };
                return Ok(Outcome {
                    result,
                    reason: format!("{domain}: matched {text}"),
                    explanation,
                });
            }
        }
        if let Some(redirect) = &record.redirect {
            self.term()?;
            let target = self.expand(redirect, domain, false)?;
            if !valid_domain(&target) {
                return perm(format!("{domain}: redirect to {target:?}, not a domain"));
            }
            let outcome = self.evaluate(&target)?;
            if outcome.result == SpfResult::None {
                return perm(format!("{domain}: redirect to {target}, which has no SPF record"));
            }
            return Ok(outcome);
        }
        Ok(Outcome {
            result: SpfResult::Neutral,
            reason: format!("{domain}: no mechanism matched"),
            explanation: None,
        })
    }

    fn target(&mut self, spec: Option<&String>, domain: &str) -> Step<String> {
        match spec {
            Some(spec) => self.expand(spec, domain, false),
            None => Ok(domain.to_owned()),
        }
    }

    fn matches(&mut self, domain: &str, mechanism: &Mechanism) -> Step<bool> {
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(in_network(self.ip, IpAddr::V4(*net), *len)),
            Mechanism::Ip6(net, len) => Ok(in_network(self.ip, IpAddr::V6(*net), *len)),
            Mechanism::A(spec, v4, v6) => {
                self.term()?;
                let target = self.target(spec.as_ref(), domain)?;
                let addresses = self.addresses(&target, true)?;
                Ok(self.matches_any(&addresses, *v4, *v6))
            }
            Mechanism::Mx(spec, v4, v6) => {
                self.term()?;
                let target = self.target(spec.as_ref(), domain)?;
                let answer = self.resolver.mx(&target);
                let exchanges = self.answer(&target, answer)?;
                if exchanges.len() > MAX_NAMES {
                    return perm(format!("{target}: more than {MAX_NAMES} MX records"));
                }
                for mx in exchanges.iter().filter(|mx| !mx.exchange.is_empty()) {
                    let addresses = self.addresses(&mx.exchange, false)?;
                    if self.matches_any(&addresses, *v4, *v6) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.term()?;
                let target = self.target(spec.as_ref(), domain)?.to_ascii_lowercase();
                let names = self.validated_names()?;
                Ok(names.iter().any(|n| *n == target || n.ends_with(&format!(".{target}"))))
            }
            Mechanism::Exists(spec) => {
                self.term()?;
                let target = self.expand(spec, domain, false)?;
                // Always an A query, whatever the client's address family.
                let answer = self.resolver.a(&target);
                Ok(!self.answer(&target, answer)?.is_empty())
            }
            Mechanism::Include(spec) => {
                self.term()?;
                let target = self.expand(spec, domain, false)?;
                if !valid_domain(&target) {
                    return perm(format!("include:{target} is not a domain"));
                }
                let outcome = self.evaluate(&target)?;
                match outcome.result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::Softfail | SpfResult::Neutral => Ok(false),
                    SpfResult::Temperror => Err(Stop::Temp(outcome.reason)),
                    SpfResult::None | SpfResult::Permerror => perm(format!("include:{target}: {}", outcome.reason)),
                }
            }
        }
    }

    /// The `exp=` explanation: a TXT record, macro-expanded; none when
    /// anything goes wrong (section 6.2).
    fn explanation(&mut self, domain: &str, exp: &str) -> Option<String> {
        let target = self.expand(exp, domain, false).ok()?;
        let texts = self.resolver.txt(&target).ok()?;
        let [text] = texts.as_slice() else {
            return None;
        };
        let expanded = self.expand(text, domain, true).ok()?;
        expanded.is_ascii().then_some(expanded)
    }

    /// Expands the macros of `spec` (section 7); `exp` allows c, r and t.
    fn expand(&mut self, spec: &str, domain: &str, exp: bool) -> Step<String> {
        let mut out = String::new();
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('_') => out.push(' '),
                Some('-') => out.push_str("%20"),
                Some('{') => {
                    let mut body = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => body.push(c),
                            None => return perm(format!("unterminated macro in {spec:?}")),
                        }
                    }
                    out.push_str(&self.macro_value(&body, domain, exp)?);
                }
                _ => return perm(format!("bad macro in {spec:?}")),
            }
        }
        if exp {
            return Ok(out);
        }
        // A domain-spec longer than 253 octets loses labels on the left.
        let mut name = out.trim_end_matches('.').to_owned();
        while name.len() > 253 {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_owned(),
                None => return perm(format!("{spec:?} expands to an overlong name")),
            }
        }
        Ok(name)
    }

    fn macro_value(&mut self, body: &str, domain: &str, exp: bool) -> Step<String> {
        let mut chars = body.chars();
        let Some(letter) = chars.next() else {
            return perm("empty macro");
        };
        let rest: String = chars.collect();
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let rest = &rest[digits.len()..];
        let (reverse, delimiters) = match rest.strip_prefix(['r', 'R']) {
            Some(d) => (true, d),
            None => (false, rest),
        };
        if !delimiters.chars().all(|c| ".-+,/_=".contains(c)) {
            return perm(format!("bad macro %{{{body}}}"));
        }
        let (local, sender_domain) = self
            .query
            .sender
            .rsplit_once('@')
            .unwrap_or(("postmaster", self.query.sender));
        let value = match letter.to_ascii_lowercase() {
            's' => self.query.sender.to_owned(),
            'l' => local.to_owned(),
            'o' => sender_domain.to_owned(),
            'd' => domain.to_owned(),
            'i' => match self.ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => nibbles(v6),
            },
            'p' => {
                let names = self.validated_names()?;
                names
                    .iter()
                    .find(|n| **n == domain || n.ends_with(&format!(".{domain}")))
                    .or(names.first())
                    .cloned()
                    .unwrap_or_else(|| "unknown".into())
            }
            'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_owned(),
            'h' => self.query.helo.to_owned(),
            'c' if exp => self.ip.to_string(),
            'r' if exp => self.query.receiver.to_owned(),
            't' if exp => "0".to_owned(),
            _ => return perm(format!("bad macro letter in %{{{body}}}")),
        };
        let delimiters = if delimiters.is_empty() { "." } else { delimiters };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if reverse {
            parts.reverse();
        }
        if !digits.is_empty() {
            let keep: usize = digits.parse().unwrap_or(0);
            if keep == 0 {
                return perm(format!("bad macro %{{{body}}}"));
            }
            let skip = parts.len().saturating_sub(keep);
            parts.drain(..skip);
        }
        let joined = parts.join(".");
        Ok(if letter.is_ascii_uppercase() {
            url_escape(&joined)
        } else {
            joined
        })
    }
}

/// An IPv6 address as dot-separated nibbles (section 7.3).
fn nibbles(ip: Ipv6Addr) -> String {
    let hex: Vec<String> = ip
        .octets()
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .map(|n| format!("{n:x}"))
        .collect();
    hex.join(".")
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailgate_plugin_sdk::dns::StaticZone;

    fn check(zone: &StaticZone, ip: &str, sender: &str) -> Outcome {
        check_host(
            zone,
            &Query {
                ip: ip.parse().unwrap(),
                sender,
                helo: "mta.client.example",
                receiver: "mx.example.com",
            },
        )
    }

    fn evaluator<'a>(zone: &'a StaticZone, query: &'a Query<'a>) -> Evaluator<'a, StaticZone> {
        Evaluator {
            resolver: zone,
            query,
            ip: query.ip,
            terms: 0,
            voids: 0,
        }
    }

    fn result(zone: &StaticZone, ip: &str, sender: &str) -> SpfResult {
        check(zone, ip, sender).result
    }

    #[test]
    fn ip_mechanisms_and_qualifiers() {
        let zone = StaticZone::new()
            .with_txt(
                "example.com",
                "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~ip4:198.51.100.7 ?ip4:203.0.113.1 -all",
            )
            .with_txt("example.com", "some other text");
        assert_eq!(result(&zone, "192.0.2.77", "a@example.com"), SpfResult::Pass);
        assert_eq!(result(&zone, "::ffff:192.0.2.77", "a@example.com"), SpfResult::Pass);
        assert_eq!(result(&zone, "2001:db8::25", "a@example.com"), SpfResult::Pass);
        assert_eq!(result(&zone, "198.51.100.7", "a@example.com"), SpfResult::Softfail);
        assert_eq!(result(&zone, "203.0.113.1", "a@example.com"), SpfResult::Neutral);
        let fail = check(&zone, "203.0.113.2", "a@example.com");
        assert_eq!(
            (fail.result, fail.reason.as_str()),
            (SpfResult::Fail, "example.com: matched -all")
        );
        assert_eq!(result(&zone, "203.0.113.2", "a@other.example"), SpfResult::None);
        assert_eq!(result(&zone, "203.0.113.2", "a@nodots"), SpfResult::None);
    }

    #[test]
    fn a_mx_include_exists_and_redirect() {
        let zone = StaticZone::new()
            .with_txt("example.com", "v=spf1 a mx:mail.example.com/28 include:_spf.partner.example exists:%{i}.allow.example redirect=_spf.example.com")
            .with_ip("example.com", "192.0.2.1".parse().unwrap())
            .with_mx("mail.example.com", 10, "mx1.example.com")
            .with_ip("mx1.example.com", "198.51.100.16".parse().unwrap())
            .with_txt("_spf.partner.example", "v=spf1 ip4:203.0.113.0/24 -all")
            .with_ip("198.51.100.200.allow.example", "127.0.0.2".parse().unwrap())
            .with_txt("_spf.example.com", "v=spf1 ip4:192.0.2.128/25 -all");
        for (ip, expected, how) in [
            ("192.0.2.1", SpfResult::Pass, "a"),
            ("198.51.100.20", SpfResult::Pass, "mx /28"),
            ("203.0.113.9", SpfResult::Pass, "include"),
            ("198.51.100.200", SpfResult::Pass, "exists"),
            ("192.0.2.200", SpfResult::Pass, "redirect"),
            ("192.0.2.100", SpfResult::Fail, "redirect's -all"),
        ] {
            assert_eq!(result(&zone, ip, "a@example.com"), expected, "{how}");
        }
    }

    #[test]
    fn errors_and_limits() {
        let loops = StaticZone::new().with_txt("loop.example", "v=spf1 include:loop.example -all");
        let outcome = check(&loops, "192.0.2.1", "a@loop.example");
        assert_eq!(outcome.result, SpfResult::Permerror);
        assert!(
            outcome.reason.contains("more than 10 DNS-querying terms"),
            "{}",
            outcome.reason
        );

        let voids = StaticZone::new().with_txt("v.example", "v=spf1 a:n1.v.example a:n2.v.example a:n3.v.example -all");
        let outcome = check(&voids, "192.0.2.1", "a@v.example");
        assert_eq!(outcome.result, SpfResult::Permerror);
        assert!(outcome.reason.contains("void lookups"), "{}", outcome.reason);

        let two = StaticZone::new()
            .with_txt("two.example", "v=spf1 -all")
            .with_txt("two.example", "v=spf1 +all");
        assert_eq!(result(&two, "192.0.2.1", "a@two.example"), SpfResult::Permerror);
        for broken in [
            "v=spf1 ip4:300.1.1.1 -all",
            "v=spf1 frobnicate -all",
            "v=spf1 a/33",
            "v=spf1 include -all",
        ] {
            let zone = StaticZone::new().with_txt("b.example", broken);
            assert_eq!(
                result(&zone, "192.0.2.1", "a@b.example"),
                SpfResult::Permerror,
                "{broken}"
            );
        }
        let missing = StaticZone::new().with_txt("m.example", "v=spf1 include:none.example -all");
        assert_eq!(result(&missing, "192.0.2.1", "a@m.example"), SpfResult::Permerror);

        let down = StaticZone::new().with_failure("down.example");
        assert_eq!(result(&down, "192.0.2.1", "a@down.example"), SpfResult::Temperror);
        let include_down = StaticZone::new()
            .with_txt("i.example", "v=spf1 include:down.example -all")
            .with_failure("down.example");
        assert_eq!(result(&include_down, "192.0.2.1", "a@i.example"), SpfResult::Temperror);
        let unknown_modifier = StaticZone::new().with_txt("u.example", "v=spf1 foo=bar ip4:192.0.2.1 -all");
        assert_eq!(result(&unknown_modifier, "192.0.2.1", "a@u.example"), SpfResult::Pass);
        let nothing = StaticZone::new().with_txt("n.example", "v=spf1 ip4:192.0.2.9");
        assert_eq!(result(&nothing, "192.0.2.1", "a@n.example"), SpfResult::Neutral);
    }

    #[test]
    fn macros_expand_as_rfc_7208_section_7_4_shows() {
        let zone = StaticZone::new();
        let query = Query {
            ip: "192.0.2.3".parse().unwrap(),
            sender: "strong-bad@email.example.com",
            helo: "mta.example",
            receiver: "mx.example.com",
        };
        let mut ipv4 = evaluator(&zone, &query);
        let domain = "email.example.com";
        for (spec, expected) in [
            ("%{s}", "strong-bad@email.example.com"),
            ("%{o}", "email.example.com"),
            ("%{d}", "email.example.com"),
            ("%{d4}", "email.example.com"),
            ("%{d3}", "email.example.com"),
            ("%{d2}", "example.com"),
            ("%{d1}", "com"),
            ("%{dr}", "com.example.email"),
            ("%{d2r}", "example.email"),
            ("%{l}", "strong-bad"),
            ("%{l-}", "strong.bad"),
            ("%{lr}", "strong-bad"),
            ("%{lr-}", "bad.strong"),
            ("%{l1r-}", "strong"),
            ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
            ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
            (
                "%{d2}.trusted-domains.example.net",
                "example.com.trusted-domains.example.net",
            ),
        ] {
            assert_eq!(
                ipv4.expand(spec, domain, false).ok().as_deref(),
                Some(expected),
                "{spec}"
            );
        }
        assert_eq!(
            ipv4.expand("%{S}", domain, true).ok().as_deref(),
            Some("strong-bad%40email.example.com")
        );
        assert!(ipv4.expand("%{x}", domain, false).is_err());
        assert!(ipv4.expand("%{c}", domain, false).is_err(), "c only in exp");
        let v6 = Query {
            ip: "2001:db8::cb01".parse().unwrap(),
            ..query.clone()
        };
        let mut ipv6 = evaluator(&zone, &v6);
        assert_eq!(
            ipv6.expand("%{ir}.%{v}._spf.%{d2}", domain, false).ok().as_deref(),
            Some("1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
        );
    }

    #[test]
    fn explanations_are_expanded_on_fail() {
        let zone = StaticZone::new()
            .with_txt("example.com", "v=spf1 ip4:192.0.2.1 -all exp=explain._spf.%{d}")
            .with_txt(
                "explain._spf.example.com",
                "%{i} is not one of %{d}'s designated mail servers.",
            );
        let outcome = check(&zone, "192.0.2.9", "a@example.com");
        assert_eq!(outcome.result, SpfResult::Fail);
        assert_eq!(
            outcome.explanation.as_deref(),
            Some("192.0.2.9 is not one of example.com's designated mail servers.")
        );
    }

    #[test]
    fn ptr_uses_validated_names() {
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        let zone = StaticZone::new()
            .with_txt("example.com", "v=spf1 ptr -all")
            .with_ptr(ip, "mail.example.com")
            .with_ip("mail.example.com", ip);
        assert_eq!(result(&zone, "192.0.2.5", "a@example.com"), SpfResult::Pass);
        let forged = StaticZone::new()
            .with_txt("example.com", "v=spf1 ptr -all")
            .with_ptr(ip, "mail.example.com")
            .with_ip("mail.example.com", "192.0.2.6".parse().unwrap());
        assert_eq!(result(&forged, "192.0.2.5", "a@example.com"), SpfResult::Fail);
    }
}
