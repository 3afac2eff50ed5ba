//! Delivery status notifications (RFC 3464): a multipart/report with a
//! human-readable part, a message/delivery-status part and the original
//! headers, sent from the null reverse-path so it can never bounce back.

use std::time::SystemTime;

use super::error::Failure;
use crate::queue::{Envelope, QueueId, Recipient};
use crate::smtp::command::BodyType;
use crate::smtp::trace::rfc5322_date;
use crate::smtp::{Mailbox, ReversePath};

/// What a DSN reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnKind {
    /// The recipients failed for good (`Action: failed`).
    Failure,
    /// The recipients are still being retried (`Action: delayed`), until
    /// the given time.
    Delay {
        /// When the message will be given up.
        until: SystemTime,
    },
}

/// A DSN for some recipients of one message.
#[derive(Debug)]
pub struct Bounce<'a> {
    /// Failure or delay.
    pub kind: DsnKind,
    /// Our host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The original message's id.
    pub queue_id: &'a QueueId,
    /// The original envelope.
    pub original: &'a Envelope,
    /// The recipients that failed, and why.
    pub failures: Vec<(&'a Mailbox, &'a Failure)>,
    /// The start of the original content; its header section is quoted.
    pub original_head: &'a [u8],
}

impl Bounce<'_> {
    /// The bounce's envelope and content, or `None` when the original
    /// sender is the null path (no DSN for a DSN: RFC 5321 section 4.5.5).
    pub fn build(&self, now: SystemTime) -> Option<(Envelope, Vec<u8>)> {
        let ReversePath::Mailbox(sender) = &self.original.reverse_path else {
            return None;
        };
        let host = self.reporting_mta;
        let boundary = format!(
            "{}.{}/{}",
            self.queue_id,
            now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            host
        );
        let mut text = String::new();
        text.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"));
        text.push_str(&format!("To: <{sender}>\r\n"));
        let (subject, action) = match self.kind {
            DsnKind::Failure => ("Undelivered Mail Returned to Sender", "failed"),
            DsnKind::Delay { .. } => ("Delayed Mail (still being retried)", "delayed"),
        };
        text.push_str(&format!("Subject: {subject}\r\n"));
        text.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
        text.push_str(&format!("Message-ID: <{}.bounce@{host}>\r\n", self.queue_id));
        text.push_str("Auto-Submitted: auto-replied\r\n");
        text.push_str("MIME-Version: 1.0\r\n");
        text.push_str(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
        ));
        text.push_str("This is a MIME-encapsulated message.\r\n\r\n");

        text.push_str(&format!(
            "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ));
        text.push_str(&format!("This is the mail system at host {host}.\r\n\r\n"));
        match self.kind {
            DsnKind::Failure => {
                text.push_str("Your message could not be delivered to one or more recipients.\r\n");
                text.push_str("Its headers are attached below.\r\n\r\n");
            }
            DsnKind::Delay { until } => {
                text.push_str("Your message could not be delivered yet to one or more recipients.\r\n");
                text.push_str(&format!(
                    "Delivery will be retried until {}; you need not send it again.\r\n\r\n",
                    rfc5322_date(until)
                ));
            }
        }
        for (rcpt, failure) in &self.failures {
            text.push_str(&format!("<{rcpt}>: {}\r\n", failure.diagnostic));
        }
        text.push_str("\r\n");

        text.push_str(&format!(
            "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        ));
        text.push_str(&format!("Reporting-MTA: dns; {host}\r\n"));
        text.push_str(&format!("X-Mailgate-Queue-ID: {}\r\n", self.queue_id));
        text.push_str(&format!(
            "Arrival-Date: {}\r\n",
            rfc5322_date(self.original.received_at)
        ));
        for (rcpt, failure) in &self.failures {
            text.push_str("\r\n");
            text.push_str(&format!("Final-Recipient: rfc822; {rcpt}\r\n"));
            text.push_str(&format!("Action: {action}\r\n"));
            text.push_str(&format!("Status: {}\r\n", failure.status));
            if let Some(remote) = &failure.remote {
                text.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
            }
            let kind = if failure.smtp_reply { "smtp" } else { "x-mailgate" };
            text.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", failure.diagnostic));
            if let DsnKind::Delay { until } = self.kind {
                text.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
            }
        }
        text.push_str("\r\n");

        text.push_str(&format!(
            "--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        ));
        let mut content = text.into_bytes();
        content.extend_from_slice(header_section(self.original_head));
        content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

        let eight_bit = content.iter().any(|&b| b >= 0x80);
        let envelope = Envelope {
            reverse_path: ReversePath::Null,
            recipients: vec![Recipient::new(sender.clone())],
            received_at: now,
            size: content.len() as u64,
            body: if eight_bit {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8: !sender.is_ascii(),
            eight_bit,
            client: None,
            quarantine: None,
            dsn: crate::smtp::dsn::MailDsn::default(),
            requiretls: false,
            tls_optional: false,
        };
        Some((envelope, content))
    }
}

/// The header section of a message: up to and including the CRLF before the
/// blank line, or all of `head` when no blank line is in it.
fn header_section(head: &[u8]) -> &[u8] {
    if head.starts_with(b"\r\n") {
        return &[];
    }
    match head.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &head[..end + 2],
        None => match head.iter().rposition(|&b| b == b'\n') {
            Some(end) => &head[..=end],
            None => &[],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::EnhancedCode;

    fn original(reverse_path: ReversePath) -> Envelope {
        Envelope {
            reverse_path,
            recipients: vec![
                Recipient::new(Mailbox::parse("ok@y.test").unwrap()),
                Recipient::new(Mailbox::parse("bad@y.test").unwrap()),
            ],
            received_at: SystemTime::UNIX_EPOCH,
            size: 10,
            body: BodyType::SevenBit,
            smtputf8: false,
            eight_bit: false,
            client: None,
            quarantine: None,
            dsn: crate::smtp::dsn::MailDsn::default(),
            requiretls: false,
            tls_optional: false,
        }
    }

    #[test]
    fn builds_a_multipart_report_to_the_sender() {
        let id = QueueId::generate();
        let env = original(ReversePath::Mailbox(Mailbox::parse("sender@x.test").unwrap()));
        let failure = Failure {
            status: EnhancedCode::new(5, 1, 1),
            diagnostic: "550 5.1.1 no such user".into(),
            remote: Some("mx.y.test".into()),
            smtp_reply: true,
        };
        let bounce = Bounce {
            kind: DsnKind::Failure,
            reporting_mta: "gw.test",
            queue_id: &id,
            original: &env,
            failures: vec![(&env.recipients[1].address, &failure)],
            original_head: b"Subject: original\r\nFrom: sender@x.test\r\n\r\nsecret body\r\n",
        };
        let (envelope, content) = bounce.build(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(envelope.reverse_path, ReversePath::Null);
        assert_eq!(
            envelope.recipients,
            vec![Recipient::new(Mailbox::parse("sender@x.test").unwrap())]
        );
        let text = String::from_utf8(content).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; gw.test\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bad@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(
            text.contains(
                "Content-Type: text/rfc822-headers\r\n\r\nSubject: original\r\nFrom: sender@x.test\r\n\r\n--"
            )
        );
        assert!(!text.contains("secret body"));
        assert!(!text.contains("ok@y.test"));
    }

    #[test]
    fn no_bounce_for_the_null_sender() {
        let id = QueueId::generate();
        let env = original(ReversePath::Null);
        let bounce = Bounce {
            kind: DsnKind::Failure,
            reporting_mta: "gw.test",
            queue_id: &id,
            original: &env,
            failures: vec![],
            original_head: b"",
        };
        assert!(bounce.build(SystemTime::now()).is_none());
    }
}
