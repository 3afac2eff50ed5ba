//! SMTP replies: a reply code (RFC 5321 section 4.2), an optional enhanced
//! status code (RFC 3463) and one or more lines of text, built by named
//! constructors so that reply bytes are never spelled out in handlers.

use std::fmt;

/// An enhanced mail system status code, `class.subject.detail` (RFC 3463).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts; `class` must be 2, 4 or 5.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self { class, subject, detail }
    }

    /// Parses `"5.7.1"`; `None` unless the class is 2, 4 or 5 and the other
    /// parts are numbers of at most three digits.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject = parse_part(parts.next()?)?;
        let detail = parse_part(parts.next()?)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Self::new(class, subject, detail))
    }

    /// The class digit: 2 success, 4 transient, 5 permanent.
    pub fn class(self) -> u8 {
        self.class
    }
}

fn parse_part(part: &str) -> Option<u16> {
    if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Which kind of outcome a reply code reports (its first digit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyClass {
    /// 2xx and 3xx: the command succeeded or more input is expected.
    Positive,
    /// 4xx: try again later.
    Transient,
    /// 5xx: do not try again.
    Permanent,
}

/// The longest reply line, CRLF included (RFC 5321 section 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status code. Text is sanitised: CR, LF and
    /// other control characters never reach the wire.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![sanitize(text.into())],
        }
    }

    /// A reply without an enhanced status code (the greeting and EHLO reply,
    /// RFC 2034 section 3).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    /// A reply as read from a server: its code, the enhanced code if the
    /// first line starts with one of the same class, and the text lines.
    pub fn parsed(code: u16, mut lines: Vec<String>) -> Self {
        let first = lines.first().map(String::as_str).unwrap_or("");
        let (word, rest) = first.split_once(' ').unwrap_or((first, ""));
        let enhanced = EnhancedCode::parse(word).filter(|e| u16::from(e.class()) == code / 100);
        if enhanced.is_some() {
            let rest = rest.to_owned();
            if let Some(line) = lines.first_mut() {
                *line = rest;
            }
        }
        Self {
            code,
            enhanced,
            lines: if lines.is_empty() {
                vec![String::new()]
            } else {
                lines.into_iter().map(sanitize).collect()
            },
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text lines, without code prefixes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Positive, transient or permanent, from the first digit.
    pub fn class(&self) -> ReplyClass {
        match self.code / 100 {
            4 => ReplyClass::Transient,
            5 => ReplyClass::Permanent,
            _ => ReplyClass::Positive,
        }
    }

    /// The reply as one line of text, e.g. `550 5.7.1 refused`, for logs and
    /// delivery status notifications.
    pub fn one_line(&self) -> String {
        let text = self.lines.join(" ");
        match self.enhanced {
            Some(code) => format!("{} {} {}", self.code, code, text),
            None => format!("{} {}", self.code, text),
        }
    }

    /// Appends the wire form, every line ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let mut text = String::with_capacity(line.len() + 16);
            text.push_str(&self.code.to_string());
            text.push(sep);
            if let Some(code) = self.enhanced {
                text.push_str(&code.to_string());
                if !line.is_empty() {
                    text.push(' ');
                }
            }
            // RFC 5321 section 4.5.3.1.5: a reply line is at most 512
            // octets with its CRLF; text that echoes the client is cut.
            let mut end = line.len().min(MAX_REPLY_LINE - 2 - text.len());
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            text.push_str(&line[..end]);
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    // ---- named constructors, grouped by where they are used ----

    /// `220 host ESMTP mailgate`
    pub fn greeting(host: &str) -> Self {
        Self::plain(220, vec![format!("{host} ESMTP mailgate")])
    }

    /// The EHLO reply: our name, then one line per extension.
    pub fn ehlo(host: &str, client: &str, extensions: Vec<String>) -> Self {
        let mut lines = vec![format!("{host} greets {client}")];
        lines.extend(extensions);
        Self::plain(250, lines)
    }

    /// The HELO reply.
    pub fn helo(host: &str) -> Self {
        Self::plain(250, vec![host.to_owned()])
    }

    /// `221 2.0.0 Bye`
    pub fn closing() -> Self {
        Self::new(221, EnhancedCode::new(2, 0, 0), "Bye")
    }

    /// `250 2.0.0 Ok`
    pub fn ok() -> Self {
        Self::new(250, EnhancedCode::new(2, 0, 0), "Ok")
    }

    /// `250 2.1.0 Ok` after MAIL.
    pub fn sender_ok() -> Self {
        Self::new(250, EnhancedCode::new(2, 1, 0), "Ok")
    }

    /// `250 2.1.5 Ok` after RCPT.
    pub fn recipient_ok() -> Self {
        Self::new(250, EnhancedCode::new(2, 1, 5), "Ok")
    }

    /// `354` go-ahead for DATA.
    pub fn start_data() -> Self {
        Self::plain(354, vec!["End data with <CR><LF>.<CR><LF>".to_owned()])
    }

    /// `250 2.0.0 Ok: queued as ID`
    pub fn queued(id: &str) -> Self {
        Self::new(250, EnhancedCode::new(2, 0, 0), format!("Ok: queued as {id}"))
    }

    /// `252 2.0.0`: VRFY is not answered (RFC 5321 section 3.5.3).
    pub fn cannot_verify() -> Self {
        Self::new(
            252,
            EnhancedCode::new(2, 0, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `214 2.0.0` help text.
    pub fn help() -> Self {
        Self::new(
            214,
            EnhancedCode::new(2, 0, 0),
            "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
        )
    }

    /// `500 5.5.2`: the command verb is not known.
    pub fn unknown_command() -> Self {
        Self::new(500, EnhancedCode::new(5, 5, 2), "Error: command not recognized")
    }

    /// `502 5.5.1`: a known command this server does not offer.
    pub fn not_implemented() -> Self {
        Self::new(502, EnhancedCode::new(5, 5, 1), "Error: command not implemented")
    }

    /// `500 5.5.6`: a command line over the limit (RFC 5321 section 4.5.3.1.4).
    pub fn line_too_long() -> Self {
        Self::new(500, EnhancedCode::new(5, 5, 6), "Error: line too long")
    }

    /// `501 5.5.4`: bad arguments.
    pub fn syntax(text: &str) -> Self {
        Self::new(501, EnhancedCode::new(5, 5, 4), format!("Syntax error: {text}"))
    }

    /// `555 5.5.4`: a MAIL or RCPT parameter that is not offered (RFC 5321 section 4.1.1.11).
    pub fn unknown_parameter(name: &str) -> Self {
        Self::new(
            555,
            EnhancedCode::new(5, 5, 4),
            format!("Unsupported parameter: {name}"),
        )
    }

    /// `250 2.0.0` for a BDAT chunk that is not the last (RFC 3030).
    pub fn chunk_received(octets: u64) -> Self {
        Self::new(250, EnhancedCode::new(2, 0, 0), format!("{octets} octets received"))
    }

    /// `530 5.7.10`: `MAIL ... REQUIRETLS` outside TLS (RFC 8689 section 2:
    /// the extension is offered only inside TLS).
    pub fn requiretls_needs_tls() -> Self {
        Self::new(
            530,
            EnhancedCode::new(5, 7, 10),
            "REQUIRETLS needs a TLS session: STARTTLS first",
        )
    }

    /// `555 5.5.4`: a MAIL or RCPT parameter given twice.
    pub fn duplicate_parameter(name: &str) -> Self {
        Self::new(555, EnhancedCode::new(5, 5, 4), format!("Duplicate parameter: {name}"))
    }

    /// `554 5.4.6`: the message has been through too many relays (a mail
    /// loop, RFC 5321 section 6.3).
    pub fn too_many_hops(hops: usize) -> Self {
        Self::new(
            554,
            EnhancedCode::new(5, 4, 6),
            format!("Too many hops ({hops} Received header fields): mail loop?"),
        )
    }

    /// `503 5.5.1`: a command out of sequence.
    pub fn bad_sequence(text: &str) -> Self {
        Self::new(503, EnhancedCode::new(5, 5, 1), format!("Error: {text}"))
    }

    /// `554 5.5.1`: DATA after every recipient was refused (RFC 2920 section 3.1).
    pub fn no_valid_recipients() -> Self {
        Self::new(554, EnhancedCode::new(5, 5, 1), "Error: no valid recipients")
    }

    /// `553 5.6.7`: a non-ASCII address without SMTPUTF8 (RFC 6531 section 3.5).
    pub fn needs_smtputf8() -> Self {
        Self::new(
            553,
            EnhancedCode::new(5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }

    /// `552 5.3.4`: the message is over the size limit.
    pub fn message_too_big() -> Self {
        Self::new(
            552,
            EnhancedCode::new(5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// `452 4.5.3`: too many recipients (RFC 5321 section 4.5.3.1.10).
    pub fn too_many_recipients() -> Self {
        Self::new(452, EnhancedCode::new(4, 5, 3), "Error: too many recipients")
    }

    /// `550 5.6.0`: the message has bare CR or LF characters and policy rejects them.
    pub fn bare_line_ending() -> Self {
        Self::new(
            550,
            EnhancedCode::new(5, 6, 0),
            "Message contains bare CR or LF characters; lines must end in CRLF",
        )
    }

    /// `550 5.6.0`: a text line over 998 octets and policy rejects them.
    pub fn line_too_long_in_data() -> Self {
        Self::new(
            550,
            EnhancedCode::new(5, 6, 0),
            "Message contains a line longer than 998 octets",
        )
    }

    /// `554 5.7.1`: relaying refused.
    pub fn relay_denied() -> Self {
        Self::new(554, EnhancedCode::new(5, 7, 1), "Relay access denied")
    }

    /// `421 4.4.2`: the client was silent for too long.
    pub fn timeout(host: &str) -> Self {
        Self::new(
            421,
            EnhancedCode::new(4, 4, 2),
            format!("{host} Error: timeout exceeded"),
        )
    }

    /// `421 4.3.2`: the gateway is shutting down or is full.
    pub fn unavailable(host: &str) -> Self {
        Self::new(
            421,
            EnhancedCode::new(4, 3, 2),
            format!("{host} Service not available, closing transmission channel"),
        )
    }

    /// `220 2.0.0`: go ahead with the TLS handshake (RFC 3207).
    pub fn start_tls() -> Self {
        Self::new(220, EnhancedCode::new(2, 0, 0), "Ready to start TLS")
    }

    /// `334 challenge`: the next step of an AUTH exchange (RFC 4954).
    pub fn auth_challenge(base64: &str) -> Self {
        Self::plain(334, vec![base64.to_owned()])
    }

    /// `235 2.7.0`: authenticated.
    pub fn auth_succeeded() -> Self {
        Self::new(235, EnhancedCode::new(2, 7, 0), "Authentication successful")
    }

    /// `535 5.7.8`: wrong user name or password.
    pub fn auth_failed() -> Self {
        Self::new(535, EnhancedCode::new(5, 7, 8), "Authentication credentials invalid")
    }

    /// `538 5.7.11`: AUTH before STARTTLS where it is offered after it.
    pub fn auth_needs_tls() -> Self {
        Self::new(
            538,
            EnhancedCode::new(5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }

    /// `530 5.7.0`: MAIL on a submission listener before AUTH.
    pub fn auth_required() -> Self {
        Self::new(530, EnhancedCode::new(5, 7, 0), "Authentication required")
    }

    /// `501 5.7.0`: the client answered a challenge with `*`.
    pub fn auth_cancelled() -> Self {
        Self::new(501, EnhancedCode::new(5, 7, 0), "Authentication aborted")
    }

    /// `501 5.5.2`: an AUTH response that is not base64.
    pub fn auth_bad_encoding() -> Self {
        Self::new(501, EnhancedCode::new(5, 5, 2), "Cannot decode response")
    }

    /// `504 5.5.4`: a SASL mechanism that is not offered.
    pub fn auth_unknown_mechanism() -> Self {
        Self::new(504, EnhancedCode::new(5, 5, 4), "Unrecognized authentication type")
    }

    /// `454 4.7.0`: authentication could not be checked just now.
    pub fn auth_unavailable() -> Self {
        Self::new(454, EnhancedCode::new(4, 7, 0), "Temporary authentication failure")
    }

    /// `421 4.7.0`: an abuse limit was reached; the connection is closed.
    pub fn abuse_limit(host: &str, text: &str) -> Self {
        Self::new(421, EnhancedCode::new(4, 7, 0), format!("{host} Error: {text}"))
    }

    /// `450 4.7.1`: the authenticated user sent too many messages lately.
    pub fn user_rate_limited() -> Self {
        Self::new(
            450,
            EnhancedCode::new(4, 7, 1),
            "Error: too many messages from this user; try again later",
        )
    }

    /// `451 4.3.0`: a local error, e.g. the spool write failed.
    pub fn local_error() -> Self {
        Self::new(451, EnhancedCode::new(4, 3, 0), "Error: local error in processing")
    }
}

/// Keeps reply text on one line of printable characters.
fn sanitize(text: String) -> String {
    if text.chars().all(|c| !c.is_control()) {
        return text;
    }
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_carries_enhanced_code() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn multi_line_uses_dash_continuation() {
        let reply = Reply::ehlo("mx.test", "client", vec!["PIPELINING".into(), "8BITMIME".into()]);
        assert_eq!(
            wire(&reply),
            "250-mx.test greets client\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
    }

    #[test]
    fn text_with_line_breaks_is_sanitised() {
        let reply = Reply::new(550, EnhancedCode::new(5, 7, 1), "a\r\n250 ok");
        assert_eq!(wire(&reply), "550 5.7.1 a  250 ok\r\n");
    }

    #[test]
    fn enhanced_code_parses_only_valid_forms() {
        assert_eq!(EnhancedCode::parse("5.7.1"), Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(EnhancedCode::parse("4.4.20"), Some(EnhancedCode::new(4, 4, 20)));
        for bad in ["3.1.1", "5.7", "5.7.1.1", "5..1", "5.7.1000", "x.y.z"] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad}");
        }
    }
}
