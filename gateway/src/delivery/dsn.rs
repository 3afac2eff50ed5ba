//! Delivery status notifications (RFC 3464): a multipart/report with a
//! human-readable part, a message/delivery-status part and the returned
//! original (its header section, or the whole message for a failure when
//! the sender asked `RET=FULL`), sent from the null reverse-path so it can
//! never bounce back. The sender's DSN parameters (RFC 3461) show as
//! `Original-Envelope-Id` and `Original-Recipient`.

use std::time::SystemTime;

use super::error::Failure;
use crate::queue::{Envelope, QueueId, Recipient};
use crate::smtp::EnhancedCode;
use crate::smtp::ReversePath;
use crate::smtp::trace::rfc5322_date;

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
    /// The recipients were delivered or relayed (`NOTIFY=SUCCESS`).
    Success,
}

/// The `Action` of one recipient (RFC 3464 section 2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Failed for good.
    Failed,
    /// Still being retried.
    Delayed,
    /// Delivered here (a maildir).
    Delivered,
    /// Relayed to a next hop that does not offer DSN.
    Relayed,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Delayed => "delayed",
            Self::Delivered => "delivered",
            Self::Relayed => "relayed",
        }
    }
}

/// One recipient's line in a report.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// The recipient, with its `ORCPT`.
    pub recipient: &'a Recipient,
    /// What happened.
    pub action: Action,
    /// Why, for failures and delays.
    pub failure: Option<&'a Failure>,
}

/// What of the original message a report carries.
#[derive(Clone, Copy, Debug)]
pub enum Returned<'a> {
    /// The header section of this start of the message.
    Headers(&'a [u8]),
    /// The whole message.
    Full(&'a [u8]),
}

/// A DSN about some recipients of one message.
#[derive(Debug)]
pub struct Report<'a> {
    /// Failure, delay or success.
    pub kind: DsnKind,
    /// Our host name (Reporting-MTA).
    pub reporting_mta: &'a str,
    /// The original message's id.
    pub queue_id: &'a QueueId,
    /// The original envelope.
    pub original: &'a Envelope,
    /// The recipients reported on.
    pub entries: Vec<Entry<'a>>,
    /// The returned original.
    pub returned: Returned<'a>,
}

impl Report<'_> {
    /// The report's envelope and content, or `None` when the original
    /// sender is the null path (no DSN for a DSN: RFC 5321 section 4.5.5)
    /// or nobody is reported on.
    pub fn build(&self, now: SystemTime) -> Option<(Envelope, Vec<u8>)> {
        let ReversePath::Mailbox(sender) = &self.original.reverse_path else {
            return None;
        };
        if self.entries.is_empty() {
            return None;
        }
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
        let subject = match self.kind {
            DsnKind::Failure => "Undelivered Mail Returned to Sender",
            DsnKind::Delay { .. } => "Delayed Mail (still being retried)",
            DsnKind::Success => "Successful Mail Delivery Report",
        };
        text.push_str(&format!("Subject: {subject}\r\n"));
        text.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
        text.push_str(&format!(
            "Message-ID: <{}.{}@{host}>\r\n",
            self.queue_id,
            kind_tag(self.kind)
        ));
        text.push_str("Auto-Submitted: auto-replied\r\n");
        text.push_str("MIME-Version: 1.0\r\n");
        text.push_str(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
        ));
        text.push_str("This is a MIME-encapsulated message.\r\n\r\n");
        text.push_str(&format!(
            "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ));
        self.human_part(&mut text);
        text.push_str(&format!(
            "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
        ));
        self.status_part(&mut text);

        let mut content = text.into_bytes();
        match self.returned {
            Returned::Full(message) => {
                content.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n"
                    )
                    .as_bytes(),
                );
                content.extend_from_slice(message);
                if !message.ends_with(b"\r\n") {
                    content.extend_from_slice(b"\r\n");
                }
            }
            Returned::Headers(head) => {
                let description = match self.kind {
                    DsnKind::Failure => "Undelivered Message Headers",
                    DsnKind::Delay { .. } | DsnKind::Success => "Message Headers",
                };
                content.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Description: {description}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
                    )
                    .as_bytes(),
                );
                content.extend_from_slice(header_section(head));
            }
        }
        content.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

        let envelope = Envelope::generated(ReversePath::Null, sender.clone(), &content, now);
        Some((envelope, content))
    }

    fn human_part(&self, text: &mut String) {
        text.push_str(&format!(
            "This is the mail system at host {}.\r\n\r\n",
            self.reporting_mta
        ));
        match self.kind {
            DsnKind::Failure => {
                text.push_str("Your message could not be delivered to one or more recipients.\r\n");
                match self.returned {
                    Returned::Full(_) => text.push_str("It is attached below.\r\n\r\n"),
                    Returned::Headers(_) => text.push_str("Its headers are attached below.\r\n\r\n"),
                }
            }
            DsnKind::Delay { until } => {
                text.push_str("Your message could not be delivered yet to one or more recipients.\r\n");
                text.push_str(&format!(
                    "Delivery will be retried until {}; you need not send it again.\r\n\r\n",
                    rfc5322_date(until)
                ));
            }
            DsnKind::Success => {
                text.push_str("Your message was successfully delivered to the recipients below,\r\n");
                text.push_str("or relayed to a system that does not report further.\r\n\r\n");
            }
        }
        for entry in &self.entries {
            let address = &entry.recipient.address;
            match entry.failure {
                Some(failure) => text.push_str(&format!("<{address}>: {}\r\n", failure.diagnostic)),
                None => text.push_str(&format!("<{address}>: {}\r\n", entry.action.name())),
            }
        }
        text.push_str("\r\n");
    }

    fn status_part(&self, text: &mut String) {
        text.push_str(&format!("Reporting-MTA: dns; {}\r\n", self.reporting_mta));
        if let Some(envid) = &self.original.dsn.envid {
            text.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
        }
        text.push_str(&format!("X-Mailgate-Queue-ID: {}\r\n", self.queue_id));
        text.push_str(&format!(
            "Arrival-Date: {}\r\n",
            rfc5322_date(self.original.received_at)
        ));
        for entry in &self.entries {
            text.push_str("\r\n");
            if let Some(orcpt) = &entry.recipient.dsn.orcpt {
                text.push_str(&format!("Original-Recipient: {}\r\n", orcpt.field()));
            }
            text.push_str(&format!("Final-Recipient: rfc822; {}\r\n", entry.recipient.address));
            text.push_str(&format!("Action: {}\r\n", entry.action.name()));
            let status = entry.failure.map_or(EnhancedCode::new(2, 0, 0), |f| f.status);
            text.push_str(&format!("Status: {status}\r\n"));
            if let Some(failure) = entry.failure {
                if let Some(remote) = &failure.remote {
                    text.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
                }
                let kind = if failure.smtp_reply { "smtp" } else { "x-mailgate" };
                text.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", failure.diagnostic));
            }
            if let DsnKind::Delay { until } = self.kind {
                text.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
            }
        }
        text.push_str("\r\n");
    }
}

fn kind_tag(kind: DsnKind) -> &'static str {
    match kind {
        DsnKind::Failure => "bounce",
        DsnKind::Delay { .. } => "delay",
        DsnKind::Success => "success",
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
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;
    use crate::smtp::Mailbox;
    use crate::smtp::command::BodyType;
    use crate::smtp::dsn::{MailDsn, OriginalRecipient, RcptDsn, Ret};

    fn original(reverse_path: ReversePath) -> Envelope {
        let mut bad = Recipient::new(Mailbox::parse("bad@y.test").unwrap());
        bad.dsn = RcptDsn {
            notify: None,
            orcpt: Some(OriginalRecipient {
                addr_type: "rfc822".into(),
                address: "Bad@Y.test".into(),
            }),
        };
        Envelope {
            reverse_path,
            recipients: vec![Recipient::new(Mailbox::parse("ok@y.test").unwrap()), bad],
            received_at: SystemTime::UNIX_EPOCH,
            size: 10,
            body: BodyType::SevenBit,
            smtputf8: false,
            eight_bit: false,
            client: None,
            quarantine: None,
            quarantined_by: None,
            hold: None,
            dsn: MailDsn {
                ret: Some(Ret::Full),
                envid: Some("QQ314159".into()),
            },
            requiretls: false,
            tls_optional: false,
        }
    }

    fn failure() -> Failure {
        Failure {
            status: EnhancedCode::new(5, 1, 1),
            diagnostic: "550 5.1.1 no such user".into(),
            remote: Some("mx.y.test".into()),
            smtp_reply: true,
        }
    }

    /// The three parts of a report, parsed with a real MIME parser.
    fn parts(content: &[u8]) -> (String, String, Vec<u8>, String) {
        let message = MessageParser::default().parse(content).unwrap();
        let content_type = message.content_type().unwrap();
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(content_type.attribute("report-type"), Some("delivery-status"));
        let part = |n: usize| message.part(message.parts[0].sub_parts().unwrap()[n]).unwrap();
        let third = part(2);
        let third_type = third.content_type().unwrap();
        (
            part(0).text_contents().unwrap().to_owned(),
            String::from_utf8_lossy(part(1).contents()).into_owned(),
            third.contents().to_vec(),
            format!("{}/{}", third_type.ctype(), third_type.subtype().unwrap_or("")),
        )
    }

    #[test]
    fn a_failure_report_names_the_recipient_and_returns_the_headers() {
        let id = QueueId::generate();
        let env = original(ReversePath::Mailbox(Mailbox::parse("sender@x.test").unwrap()));
        let failure = failure();
        let report = Report {
            kind: DsnKind::Failure,
            reporting_mta: "gw.test",
            queue_id: &id,
            original: &env,
            entries: vec![Entry {
                recipient: &env.recipients[1],
                action: Action::Failed,
                failure: Some(&failure),
            }],
            returned: Returned::Headers(b"Subject: original\r\nFrom: sender@x.test\r\n\r\nsecret body\r\n"),
        };
        let (envelope, content) = report.build(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(envelope.reverse_path, ReversePath::Null);
        assert_eq!(
            envelope.recipients,
            vec![Recipient::new(Mailbox::parse("sender@x.test").unwrap())]
        );
        let (human, status, returned, returned_type) = parts(&content);
        assert!(human.contains("<bad@y.test>: 550 5.1.1 no such user"), "{human}");
        assert!(
            status.starts_with("Reporting-MTA: dns; gw.test\r\nOriginal-Envelope-Id: QQ314159\r\n"),
            "{status}"
        );
        assert!(status.contains("Original-Recipient: rfc822;Bad@Y.test\r\nFinal-Recipient: rfc822; bad@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.y.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"), "{status}");
        assert_eq!(returned_type, "text/rfc822-headers");
        assert_eq!(returned, b"Subject: original\r\nFrom: sender@x.test\r\n");
        assert!(!String::from_utf8_lossy(&content).contains("ok@y.test"));
    }

    #[test]
    fn full_return_and_success_reports() {
        let id = QueueId::generate();
        let env = original(ReversePath::Mailbox(Mailbox::parse("sender@x.test").unwrap()));
        let failure = failure();
        let message = b"Subject: original\r\n\r\nthe body\r\n";
        let full = Report {
            kind: DsnKind::Failure,
            reporting_mta: "gw.test",
            queue_id: &id,
            original: &env,
            entries: vec![Entry {
                recipient: &env.recipients[1],
                action: Action::Failed,
                failure: Some(&failure),
            }],
            returned: Returned::Full(message),
        };
        let (_, content) = full.build(SystemTime::UNIX_EPOCH).unwrap();
        let (_, _, returned, returned_type) = parts(&content);
        assert_eq!(returned_type, "message/rfc822");
        assert!(String::from_utf8_lossy(&returned).contains("the body"));

        let success = Report {
            kind: DsnKind::Success,
            entries: vec![
                Entry {
                    recipient: &env.recipients[0],
                    action: Action::Delivered,
                    failure: None,
                },
                Entry {
                    recipient: &env.recipients[1],
                    action: Action::Relayed,
                    failure: None,
                },
            ],
            returned: Returned::Headers(message),
            ..full
        };
        let (_, content) = success.build(SystemTime::UNIX_EPOCH).unwrap();
        let (_, status, _, _) = parts(&content);
        assert!(
            status.contains("Final-Recipient: rfc822; ok@y.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n"),
            "{status}"
        );
        assert!(
            status.contains("Final-Recipient: rfc822; bad@y.test\r\nAction: relayed\r\nStatus: 2.0.0\r\n"),
            "{status}"
        );
    }

    #[test]
    fn no_report_for_the_null_sender_or_nobody() {
        let id = QueueId::generate();
        let env = original(ReversePath::Null);
        let report = Report {
            kind: DsnKind::Failure,
            reporting_mta: "gw.test",
            queue_id: &id,
            original: &env,
            entries: vec![],
            returned: Returned::Headers(b""),
        };
        assert!(report.build(SystemTime::now()).is_none());
        let env = original(ReversePath::Mailbox(Mailbox::parse("sender@x.test").unwrap()));
        let nobody = Report {
            original: &env,
            ..report
        };
        assert!(nobody.build(SystemTime::now()).is_none());
    }
}
