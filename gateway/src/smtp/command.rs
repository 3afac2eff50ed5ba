//! The SMTP command parser (RFC 5321 section 4.1): one command line, without
//! its CRLF, in; a typed command or a `ProtocolError` out. Verbs and
//! parameter keywords are case-insensitive.

use super::address::{AddressError, Mailbox, ReversePath, parse_path};
use super::dsn::{self, MailDsn, RcptDsn};
use super::reply::{EnhancedCode, Reply};

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`
    Ehlo(String),
    /// `HELO domain`
    Helo(String),
    /// `MAIL FROM:<reverse-path> [parameters]`
    Mail(ReversePath, MailParameters),
    /// `RCPT TO:<forward-path> [parameters]`
    Rcpt(ForwardPath, RcptParameters),
    /// `DATA`
    Data,
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY string`
    Vrfy,
    /// `HELP [string]`
    Help,
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954); the mechanism upper case.
    Auth(String, Option<String>),
    /// `BDAT size [LAST]` (RFC 3030): a chunk of `size` octets follows the line.
    Bdat(Bdat),
    /// A command RFC 5321 or an extension defines that this server does not
    /// offer (EXPN, TURN, ETRN).
    NotImplemented,
}

/// The arguments of `BDAT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdat {
    /// The chunk's size in octets.
    pub size: u64,
    /// `LAST`: the chunk ends the message.
    pub last: bool,
}

/// The forward-path of RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (any letter case): RFC 5321 section
    /// 4.5.1 says it must be accepted; the session puts in the configured
    /// postmaster address.
    Postmaster,
    /// A mailbox.
    Mailbox(Mailbox),
}
/// The body type declared by `BODY=` (RFC 6152).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BodyType {
    /// No `BODY=` or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Parameters of MAIL FROM that this server offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParameters {
    /// `SIZE=n` (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531): the transaction may use UTF-8 addresses and headers.
    pub smtputf8: bool,
    /// `RET=` and `ENVID=` (RFC 3461).
    pub dsn: MailDsn,
    /// `REQUIRETLS` (RFC 8689): relay only over verified TLS.
    pub requiretls: bool,
}

impl MailParameters {
    /// The parameters as ESMTP arguments (`SIZE=1000`, `RET=HDRS`...), as
    /// a milter is told them.
    pub fn esmtp_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(size) = self.size {
            args.push(format!("SIZE={size}"));
        }
        if self.body == BodyType::EightBitMime {
            args.push("BODY=8BITMIME".to_owned());
        }
        if self.smtputf8 {
            args.push("SMTPUTF8".to_owned());
        }
        if self.requiretls {
            args.push("REQUIRETLS".to_owned());
        }
        args.extend(self.dsn.wire().split_whitespace().map(str::to_owned));
        args
    }
}

/// Parameters of RCPT TO: DSN's `NOTIFY=` and `ORCPT=` (RFC 3461).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParameters {
    /// `NOTIFY=` and `ORCPT=`.
    pub dsn: RcptDsn,
}

/// A command that cannot be carried out as sent. Each variant maps to one
/// reply; none of them ends the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The verb is not known (500 5.5.2).
    #[error("unrecognized command")]
    Unrecognized,
    /// The arguments do not follow the command's syntax (501 5.5.4).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The reverse-path of MAIL is malformed (501 5.1.7).
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The forward-path of RCPT is malformed (501 5.1.3).
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A MAIL or RCPT parameter this server does not offer (555 5.5.4).
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A MAIL or RCPT parameter given twice (555 5.5.4).
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
}

impl ProtocolError {
    /// The reply that answers this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Unrecognized => Reply::unknown_command(),
            Self::Syntax(text) => Reply::syntax(text),
            Self::BadSender(e) => Reply::new(
                501,
                EnhancedCode::new(5, 1, 7),
                format!("Bad sender address syntax: {e}"),
            ),
            Self::BadRecipient(e) => Reply::new(
                501,
                EnhancedCode::new(5, 1, 3),
                format!("Bad recipient address syntax: {e}"),
            ),
            Self::UnknownParameter(name) => Reply::unknown_parameter(name),
            Self::DuplicateParameter(name) => Reply::duplicate_parameter(name),
        }
    }
}

impl Command {
    /// Parses one command line (without CRLF).
    pub fn parse(line: &[u8]) -> Result<Self, ProtocolError> {
        let (verb, args) = split_verb(line);
        let verb = verb.to_ascii_uppercase();
        let args = std::str::from_utf8(args).map_err(|_| ProtocolError::Syntax("invalid UTF-8"))?;
        match verb.as_slice() {
            b"EHLO" => parse_hello(args, "EHLO hostname").map(Self::Ehlo),
            b"HELO" => parse_hello(args, "HELO hostname").map(Self::Helo),
            b"MAIL" => parse_mail(args),
            b"RCPT" => parse_rcpt(args),
            b"DATA" => no_args(args, "DATA takes no arguments").map(|()| Self::Data),
            b"RSET" => no_args(args, "RSET takes no arguments").map(|()| Self::Rset),
            b"QUIT" => no_args(args, "QUIT takes no arguments").map(|()| Self::Quit),
            b"NOOP" => Ok(Self::Noop),
            b"HELP" => Ok(Self::Help),
            b"VRFY" if args.trim().is_empty() => Err(ProtocolError::Syntax("VRFY address")),
            b"VRFY" => Ok(Self::Vrfy),
            b"STARTTLS" => no_args(args, "STARTTLS takes no arguments").map(|()| Self::StartTls),
            b"AUTH" => parse_auth(args),
            b"BDAT" => parse_bdat(args),
            b"EXPN" | b"TURN" | b"ETRN" | b"SEND" | b"SOML" | b"SAML" => Ok(Self::NotImplemented),
            _ => Err(ProtocolError::Unrecognized),
        }
    }
}

/// The verb of a command line, upper case, for logs and metrics labels: one
/// of a bounded set (`OTHER` for anything unknown), even when the rest of
/// the line does not parse.
pub fn verb(line: &[u8]) -> &'static str {
    const KNOWN: [&str; 14] = [
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH",
        "BDAT",
    ];
    let (word, _) = split_verb(line);
    KNOWN
        .into_iter()
        .find(|known| word.eq_ignore_ascii_case(known.as_bytes()))
        .unwrap_or("OTHER")
}

fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

fn no_args(args: &str, message: &'static str) -> Result<(), ProtocolError> {
    if args.trim().is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::Syntax(message))
    }
}

/// EHLO/HELO take one domain or address literal. Real clients send odd
/// names (bare hostnames, underscores); anything printable in one word is
/// taken, as Postfix does.
fn parse_hello(args: &str, usage: &'static str) -> Result<String, ProtocolError> {
    let name = args.trim();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ProtocolError::Syntax(usage));
    }
    Ok(name.to_owned())
}

/// Strips a case-insensitive keyword such as `FROM:`.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| &args[keyword.len()..])
}

/// Splits `<path> params` or a bare `path params` into the path text and
/// the parameter text. A space after the colon is tolerated (common in
/// practice, accepted by Postfix); `>` inside a quoted local part does not
/// end the path.
fn split_path(rest: &str) -> Result<(&str, &str), &'static str> {
    let rest = rest.trim_start_matches(' ');
    let Some(inner) = rest.strip_prefix('<') else {
        let end = rest.find(' ').unwrap_or(rest.len());
        return Ok((&rest[..end], &rest[end..]));
    };
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Ok((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    Err("unterminated <path>")
}

/// Splits ESMTP parameters (`KEYWORD[=value]`, RFC 5321 section 4.1.2).
fn parameters(text: &str) -> Result<Vec<(String, Option<&str>)>, ProtocolError> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(ProtocolError::Syntax("expected a space after the path"));
    }
    let mut params = Vec::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let (keyword, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let valid_keyword = keyword.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_keyword {
            return Err(ProtocolError::Syntax("bad parameter"));
        }
        if value.is_some_and(|v| v.is_empty() || v.bytes().any(|b| !(33..=126).contains(&b))) {
            return Err(ProtocolError::Syntax("bad parameter value"));
        }
        let keyword = keyword.to_ascii_uppercase();
        if params.iter().any(|(k, _)| *k == keyword) {
            return Err(ProtocolError::DuplicateParameter(keyword));
        }
        params.push((keyword, value));
    }
    Ok(params)
}

fn parse_mail(args: &str) -> Result<Command, ProtocolError> {
    let rest = strip_keyword(args, "FROM:").ok_or(ProtocolError::Syntax("MAIL FROM:<address>"))?;
    // Only `<>` is the null path: `MAIL FROM:` with nothing after the
    // colon is a syntax error, not a sender that can never be bounced to.
    if !rest.trim_start_matches(' ').starts_with('<') && rest.trim().is_empty() {
        return Err(ProtocolError::Syntax(
            "MAIL FROM:<address> (use <> for the null sender)",
        ));
    }
    let (path, params) = split_path(rest).map_err(ProtocolError::Syntax)?;
    let reverse_path = if path.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(parse_path(path).map_err(ProtocolError::BadSender)?)
    };
    let mut parsed = MailParameters::default();
    for (keyword, value) in parameters(params)? {
        match (keyword.as_str(), value) {
            ("SIZE", Some(v)) => {
                let size = v.parse().map_err(|_| ProtocolError::Syntax("SIZE=<octets>"))?;
                parsed.size = Some(size);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => parsed.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                parsed.body = BodyType::EightBitMime;
            }
            ("BODY", Some(v)) => return Err(ProtocolError::UnknownParameter(format!("BODY={v}"))),
            ("SMTPUTF8", None) => parsed.smtputf8 = true,
            ("REQUIRETLS", None) => parsed.requiretls = true,
            ("RET", Some(v)) => dsn::parse_ret(&mut parsed.dsn, v)?,
            ("ENVID", Some(v)) => dsn::parse_envid(&mut parsed.dsn, v)?,
            ("SIZE" | "BODY" | "RET" | "ENVID", None) => return Err(ProtocolError::Syntax("parameter needs a value")),
            ("SMTPUTF8", Some(_)) => return Err(ProtocolError::Syntax("SMTPUTF8 takes no value")),
            ("REQUIRETLS", Some(_)) => return Err(ProtocolError::Syntax("REQUIRETLS takes no value")),
            // RFC 4954 section 5: the submitter's identity as a relay saw
            // it. Accepted and not trusted (nothing here relays for another
            // MTA's users), as Postfix does by default.
            ("AUTH", Some(_)) => {}
            ("AUTH", None) => return Err(ProtocolError::Syntax("parameter needs a value")),
            _ => return Err(ProtocolError::UnknownParameter(keyword)),
        }
    }
    Ok(Command::Mail(reverse_path, parsed))
}

/// `AUTH mechanism [initial-response]`: the mechanism is a SASL name
/// (RFC 4422 section 3.1), the response base64 or `=` for an empty one.
fn parse_auth(args: &str) -> Result<Command, ProtocolError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let usage = "AUTH mechanism [initial-response]";
    let mechanism = words.next().ok_or(ProtocolError::Syntax(usage))?;
    let valid = mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(ProtocolError::Syntax(usage));
    }
    let initial = words.next().map(str::to_owned);
    if words.next().is_some() {
        return Err(ProtocolError::Syntax(usage));
    }
    Ok(Command::Auth(mechanism.to_ascii_uppercase(), initial))
}

fn parse_rcpt(args: &str) -> Result<Command, ProtocolError> {
    let rest = strip_keyword(args, "TO:").ok_or(ProtocolError::Syntax("RCPT TO:<address>"))?;
    let (path, params) = split_path(rest).map_err(ProtocolError::Syntax)?;
    // RFC 5321 section 4.5.1: <Postmaster> without a domain must be accepted.
    let forward_path = if path.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else if path.is_empty() {
        return Err(ProtocolError::BadRecipient(AddressError::Syntax("empty forward-path")));
    } else {
        ForwardPath::Mailbox(parse_path(path).map_err(ProtocolError::BadRecipient)?)
    };
    let mut parsed = RcptParameters::default();
    for (keyword, value) in parameters(params)? {
        match (keyword.as_str(), value) {
            ("NOTIFY", Some(v)) => dsn::parse_notify(&mut parsed.dsn, v)?,
            ("ORCPT", Some(v)) => dsn::parse_orcpt(&mut parsed.dsn, v)?,
            ("NOTIFY" | "ORCPT", None) => return Err(ProtocolError::Syntax("parameter needs a value")),
            _ => return Err(ProtocolError::UnknownParameter(keyword)),
        }
    }
    Ok(Command::Rcpt(forward_path, parsed))
}

/// `BDAT chunk-size [LAST]` (RFC 3030 section 3).
fn parse_bdat(args: &str) -> Result<Command, ProtocolError> {
    let usage = ProtocolError::Syntax("BDAT size [LAST]");
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next().ok_or(usage.clone())?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(usage);
    }
    let size = size.parse().map_err(|_| usage.clone())?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(usage),
    };
    if words.next().is_some() {
        return Err(usage);
    }
    Ok(Command::Bdat(Bdat { size, last }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn no_input_panics_the_parser(line in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Command::parse(&line);
        }

        #[test]
        fn rendered_mail_parses_back(
            local in "[a-z0-9][a-z0-9.+_-]{0,20}",
            domain in "[a-z0-9]{1,10}(\\.[a-z]{2,5}){1,2}",
            size in proptest::option::of(0u64..1 << 40),
            eight_bit in any::<bool>(),
            smtputf8 in any::<bool>(),
        ) {
            let mut line = format!("MAIL FROM:<{local}@{domain}>");
            if let Some(size) = size {
                line.push_str(&format!(" SIZE={size}"));
            }
            if eight_bit {
                line.push_str(" BODY=8BITMIME");
            }
            if smtputf8 {
                line.push_str(" SMTPUTF8");
            }
            let expected = Command::Mail(
                ReversePath::Mailbox(Mailbox::parse(&format!("{local}@{domain}")).unwrap()),
                MailParameters {
                    size,
                    body: if eight_bit { BodyType::EightBitMime } else { BodyType::SevenBit },
                    smtputf8,
                    ..MailParameters::default()
                },
            );
            prop_assert_eq!(Command::parse(line.as_bytes()), Ok(expected));
        }
    }

    fn mailbox(text: &str) -> Mailbox {
        Mailbox::parse(text).unwrap()
    }

    fn rcpt(text: &str) -> Command {
        Command::Rcpt(ForwardPath::Mailbox(mailbox(text)), RcptParameters::default())
    }

    #[test]
    fn parses_valid_commands() {
        let cases: Vec<(&str, Command)> = vec![
            ("EHLO client.test", Command::Ehlo("client.test".into())),
            ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            ("HeLo x", Command::Helo("x".into())),
            (
                "MAIL FROM:<>",
                Command::Mail(ReversePath::Null, MailParameters::default()),
            ),
            (
                "mail from:<a@b.test>",
                Command::Mail(ReversePath::Mailbox(mailbox("a@b.test")), MailParameters::default()),
            ),
            (
                "MAIL FROM: <a@b.test>",
                Command::Mail(ReversePath::Mailbox(mailbox("a@b.test")), MailParameters::default()),
            ),
            (
                "MAIL FROM:a@b.test",
                Command::Mail(ReversePath::Mailbox(mailbox("a@b.test")), MailParameters::default()),
            ),
            (
                "MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8",
                Command::Mail(
                    ReversePath::Mailbox(mailbox("a@b.test")),
                    MailParameters {
                        size: Some(1000),
                        body: BodyType::EightBitMime,
                        smtputf8: true,
                        ..MailParameters::default()
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.test> body=7bit",
                Command::Mail(ReversePath::Mailbox(mailbox("a@b.test")), MailParameters::default()),
            ),
            ("RCPT TO:<c@d.test>", rcpt("c@d.test")),
            (
                "rcpt to:<Postmaster>",
                Command::Rcpt(ForwardPath::Postmaster, RcptParameters::default()),
            ),
            (
                "RCPT TO:<POSTMASTER>",
                Command::Rcpt(ForwardPath::Postmaster, RcptParameters::default()),
            ),
            ("RCPT TO:<@hop.test:c@d.test>", rcpt("c@d.test")),
            ("RCPT TO:<\"odd>name\"@d.test>", rcpt("\"odd>name\"@d.test")),
            (
                "RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;C+2B1@d.test",
                Command::Rcpt(
                    ForwardPath::Mailbox(mailbox("c@d.test")),
                    RcptParameters {
                        dsn: RcptDsn {
                            notify: Some(crate::smtp::dsn::Notify::On {
                                success: true,
                                failure: true,
                                delay: false,
                            }),
                            orcpt: Some(crate::smtp::dsn::OriginalRecipient {
                                addr_type: "rfc822".into(),
                                address: "C+1@d.test".into(),
                            }),
                        },
                    },
                ),
            ),
            (
                "MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ314159 REQUIRETLS",
                Command::Mail(
                    ReversePath::Mailbox(mailbox("a@b.test")),
                    MailParameters {
                        dsn: MailDsn {
                            ret: Some(crate::smtp::dsn::Ret::Hdrs),
                            envid: Some("QQ314159".into()),
                        },
                        requiretls: true,
                        ..MailParameters::default()
                    },
                ),
            ),
            ("BDAT 10 LAST", Command::Bdat(Bdat { size: 10, last: true })),
            ("bdat 0", Command::Bdat(Bdat { size: 0, last: false })),
            ("DATA", Command::Data),
            ("rset", Command::Rset),
            ("NOOP", Command::Noop),
            ("NOOP anything here", Command::Noop),
            ("QUIT", Command::Quit),
            ("VRFY someone", Command::Vrfy),
            ("HELP", Command::Help),
            ("HELP MAIL", Command::Help),
            ("EXPN list", Command::NotImplemented),
            ("starttls", Command::StartTls),
            ("AUTH plain", Command::Auth("PLAIN".into(), None)),
            (
                "AUTH PLAIN AGFAAHA=",
                Command::Auth("PLAIN".into(), Some("AGFAAHA=".into())),
            ),
            ("AUTH LOGIN =", Command::Auth("LOGIN".into(), Some("=".into()))),
            (
                "MAIL FROM:<a@b.test> AUTH=<>",
                Command::Mail(ReversePath::Mailbox(mailbox("a@b.test")), MailParameters::default()),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(Command::parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn reports_each_error_with_its_reply() {
        let cases: Vec<(&[u8], u16, &str)> = vec![
            (b"FOO", 500, "5.5.2"),
            (b"", 500, "5.5.2"),
            (b"EHLO", 501, "5.5.4"),
            (b"EHLO a b", 501, "5.5.4"),
            (b"MAIL <a@b.test>", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test>SIZE=1", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE=abc", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2", 555, "5.5.4"),
            (b"MAIL FROM:", 501, "5.5.4"),
            (b"MAIL FROM:   ", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> RET=HDRS RET=FULL", 555, "5.5.4"),
            (b"MAIL FROM:<a@b.test> RET=SOME", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> RET", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> ENVID=a+zz", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> REQUIRETLS=yes", 501, "5.5.4"),
            (b"RCPT TO:<c@d.test> NOTIFY=NEVER,DELAY", 501, "5.5.4"),
            (b"RCPT TO:<c@d.test> NOTIFY=NEVER NOTIFY=NEVER", 555, "5.5.4"),
            (b"RCPT TO:<c@d.test> ORCPT=rfc822", 501, "5.5.4"),
            (b"RCPT TO:<c@d.test> FOO=bar", 555, "5.5.4"),
            (b"BDAT", 501, "5.5.4"),
            (b"BDAT x", 501, "5.5.4"),
            (b"BDAT 10 FIRST", 501, "5.5.4"),
            (b"BDAT 10 LAST more", 501, "5.5.4"),
            (b"BDAT 99999999999999999999", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> SMTPUTF8=yes", 501, "5.5.4"),
            (b"MAIL FROM:<not an address>", 501, "5.1.7"),
            (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", 555, "5.5.4"),
            (b"RCPT TO:<>", 501, "5.1.3"),
            (b"RCPT TO:<user>", 501, "5.1.3"),
            (b"RCPT <c@d.test>", 501, "5.5.4"),
            (b"DATA now", 501, "5.5.4"),
            (b"QUIT x", 501, "5.5.4"),
            (b"VRFY", 501, "5.5.4"),
            (b"STARTTLS now", 501, "5.5.4"),
            (b"AUTH", 501, "5.5.4"),
            (b"AUTH PLAIN a b", 501, "5.5.4"),
            (b"AUTH PL@IN", 501, "5.5.4"),
            (b"MAIL FROM:<a@b.test> AUTH", 501, "5.5.4"),
            (b"EHLO \xff\xfe", 501, "5.5.4"),
        ];
        for (line, code, enhanced) in cases {
            let error = Command::parse(line).expect_err(&String::from_utf8_lossy(line));
            let reply = error.reply();
            assert_eq!(
                (reply.code(), reply.enhanced().map(|e| e.to_string())),
                (code, Some(enhanced.to_owned())),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
