//! The log lines of the decisions a connection makes about mail (STYLE
//! section 7): one info line per message outcome, and one per refusal
//! before DATA, each naming who decided.

use tracing::{field, info};

use crate::queue::SpoolWriter;
use crate::smtp::Reply;
use crate::smtp::session::Session;

/// `mailgate_messages_total`'s result for a refusal.
pub(super) fn refusal(reply: &Reply) -> &'static str {
    if reply.code() >= 500 { "rejected" } else { "tempfailed" }
}

/// The one info line per message outcome (STYLE section 7): the only log
/// line that names envelope addresses.
pub(super) struct MessageLog {
    pub(super) id: String,
    pub(super) size: u64,
    pub(super) from: String,
    pub(super) rcpts: usize,
    pub(super) outcome: &'static str,
    /// Why it was quarantined or refused.
    pub(super) reason: Option<String>,
    /// Who refused it: a plugin, a policy or a limit.
    pub(super) decided_by: Option<String>,
}

impl MessageLog {
    pub(super) fn new(writer: &SpoolWriter, session: &Session, outcome: &'static str) -> Self {
        let txn = session.transaction();
        Self {
            id: writer.id().to_string(),
            size: writer.len(),
            from: txn.map(|t| t.reverse_path.to_string()).unwrap_or_default(),
            rcpts: txn.map_or(0, |t| t.recipients.len()),
            outcome,
            reason: None,
            decided_by: None,
        }
    }

    pub(super) fn emit(&self, reply: &Reply) {
        let Self {
            id,
            size,
            from,
            rcpts,
            outcome,
            reason,
            decided_by,
        } = self;
        info!(
            queue_id = %id,
            from = %from,
            rcpts,
            size,
            outcome,
            reply = %reply,
            reason = reason.as_ref().map(field::display),
            decided_by = decided_by.as_deref(),
            "message {outcome}"
        );
    }
}

/// The log line for a refusal before DATA (Postfix's `NOQUEUE: reject`):
/// the stage, the client, the envelope so far, the reply and who decided.
pub(super) fn log_refusal(stage: &str, session: &Session, to: Option<&str>, reply: &Reply, decided_by: &str) {
    let txn = session.transaction();
    info!(
        stage,
        client = %session.connection().peer.ip(),
        helo = session.hello().map(|h| field::display(&h.name)),
        from = txn.map(|t| field::display(&t.reverse_path)),
        to = to.map(field::display),
        rcpts = txn.map_or(0, |t| t.recipients.len()),
        outcome = refusal(reply),
        reply = %reply,
        decided_by,
        "refused"
    );
}

/// Who refuses a command the session itself refused: the limit behind its
/// status code, else the protocol.
pub(super) fn session_decider(reply: &Reply) -> &'static str {
    match reply.enhanced().map(|e| e.to_string()).as_deref() {
        Some("4.5.3") => "limit max_recipients",
        Some("5.3.4") => "limit max_message_bytes",
        Some("5.4.6") => "limit max_hops",
        Some("5.7.10") => "policy requiretls",
        Some("5.6.0") => "policy bare_line_endings or long_lines",
        _ => "protocol",
    }
}
