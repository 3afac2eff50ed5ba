//! The `Received:` trace header a relay prepends to each message (RFC 5321
//! section 4.4), and RFC 5322 dates.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::address::Mailbox;
use crate::net::TlsInfo;

/// What goes into one `Received:` header.
#[derive(Debug)]
pub struct Trace<'a> {
    /// The name the client gave in EHLO/HELO.
    pub helo: &'a str,
    /// The client's address.
    pub peer: IpAddr,
    /// Our host name.
    pub host: &'a str,
    /// The `with` protocol: SMTP, ESMTP, ESMTPSA, UTF8SMTP... (RFC 3848, RFC 6531).
    pub protocol: &'static str,
    /// The TLS parameters, when the connection is encrypted.
    pub tls: Option<&'a TlsInfo>,
    /// The queue id of the message.
    pub id: &'a str,
    /// The recipient, named only when there is exactly one (RFC 5321
    /// section 4.4 warns that more reveals bcc recipients).
    pub recipient: Option<&'a Mailbox>,
    /// When the message was received.
    pub date: SystemTime,
}

impl Trace<'_> {
    /// The header with its CRLF, folded with tabs so that no line is long.
    pub fn header(&self) -> String {
        let literal = match self.peer {
            IpAddr::V4(ip) => format!("[{ip}]"),
            IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
        };
        let mut header = format!("Received: from {} ({})", self.helo, literal);
        if let Some(tls) = self.tls {
            header.push_str(&format!("\r\n\t(using {} with cipher {})", tls.version, tls.cipher));
        }
        header.push_str(&format!(
            "\r\n\tby {} (mailgate) with {} id {}",
            self.host, self.protocol, self.id
        ));
        if let Some(rcpt) = self.recipient {
            header.push_str(&format!("\r\n\tfor <{rcpt}>"));
        }
        header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.date)));
        header
    }
}

/// Formats a time as an RFC 5322 date in UTC, e.g. `Sun, 22 Nov 2026 14:41:00 +0000`.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    mail_parser::DateTime::from_timestamp(secs).to_rfc822()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn formats_a_folded_header() {
        let rcpt = Mailbox::parse("to@example.test").unwrap();
        let trace = Trace {
            helo: "client.test",
            peer: "192.0.2.7".parse().unwrap(),
            host: "mx.example.test",
            protocol: "ESMTP",
            tls: None,
            id: "ABC123",
            recipient: Some(&rcpt),
            date: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        assert_eq!(
            trace.header(),
            "Received: from client.test ([192.0.2.7])\r\n\tby mx.example.test (mailgate) with ESMTP id ABC123\r\n\tfor <to@example.test>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn names_the_tls_parameters() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        };
        let trace = Trace {
            helo: "client.test",
            peer: "192.0.2.7".parse().unwrap(),
            host: "mx.example.test",
            protocol: "ESMTPSA",
            tls: Some(&tls),
            id: "ABC123",
            recipient: None,
            date: UNIX_EPOCH,
        };
        assert_eq!(
            trace.header(),
            "Received: from client.test ([192.0.2.7])\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tby mx.example.test (mailgate) with ESMTPSA id ABC123;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
