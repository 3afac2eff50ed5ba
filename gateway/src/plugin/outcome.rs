//! What the chain hands back to the server, in the gateway's own types:
//! the decision for the stage and the validated modifications.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::queue::RouteOverride;
use crate::smtp::dsn::Notify;
use crate::smtp::{Mailbox, Reply, ReversePath};

/// What the server knows at a hook, in the gateway's types.
#[derive(Clone, Debug)]
pub struct HookContext {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The listener it connected to.
    pub listener: Arc<str>,
    /// The connection is encrypted.
    pub tls: bool,
    /// The EHLO/HELO name, once given.
    pub helo: Option<String>,
    /// The authenticated user, once authenticated.
    pub authenticated: Option<String>,
    /// MAIL FROM, once given.
    pub reverse_path: Option<ReversePath>,
    /// Recipients accepted so far.
    pub recipients: Vec<Mailbox>,
    /// Metadata set so far (later entries win).
    pub metadata: Vec<(String, String)>,
}

/// What the chain decided for a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No plugin refused: the stage goes on (the built-in policy was applied before).
    Proceed,
    /// Refuse with this 4xx or 5xx reply.
    Refuse(Reply),
    /// Send this reply and close.
    Disconnect(Reply),
    /// Data stage: answer 250 and deliver nothing.
    Discard,
    /// Data stage: answer 250 and keep the message in the quarantine.
    Quarantine(String),
    /// Data stage: answer 250 and queue the message on hold.
    Hold(String),
}

/// A header field to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name.
    pub name: String,
    /// The value: one line, or lines joined by CRLF, each continuation
    /// starting with whitespace (folding a milter chose, kept as is).
    pub value: String,
}

/// A validated modification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Modification {
    /// Replace the reverse-path.
    SetReversePath(ReversePath),
    /// Replace the recipient being decided (rcpt); with a NOTIFY, that
    /// replaces the client's (RFC 3461), else the client's stays.
    SetRecipient(Mailbox, Option<Notify>),
    /// Route the recipient being decided (rcpt) or every recipient (data).
    Route(RouteOverride),
    /// Route one recipient (data).
    RouteRecipient(Mailbox, RouteOverride),
    /// Add a recipient (data), with its NOTIFY (none: the default).
    AddRecipient(Mailbox, Option<Notify>),
    /// Remove a recipient (data).
    RemoveRecipient(Mailbox),
    /// Append a header field (data).
    AddHeader(HeaderField),
    /// Insert a header field before the n-th field (0: at the top), or at
    /// the end when there are fewer (data; milters).
    InsertHeader(u32, HeaderField),
    /// Replace the n-th field (0-based) with this name, or add it when
    /// there are fewer (data; milters).
    ChangeHeader(u32, HeaderField),
    /// Remove every field with this name (data).
    RemoveHeader(String),
    /// Remove the n-th field (0-based) with this name (data).
    RemoveHeaderAt(String, u32),
    /// Replace every field with this name by one (data).
    SetHeader(HeaderField),
    /// Replace the body (data), line endings already CRLF.
    ReplaceBody(Vec<u8>),
    /// Set a metadata value (any stage).
    SetMetadata(String, String),
    /// ARC-seal the message once the chain's modifications are applied
    /// (data; asked for through `dkim.seal`).
    ArcSeal(super::host::SealRequest),
}

/// The chain's result for one stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageResult {
    /// The decision.
    pub decision: Decision,
    /// Modifications of every plugin that continued or accepted, in order.
    pub modifications: Vec<Modification>,
    /// The faults on the way ("plugin: what happened"), answered by each
    /// plugin's `on_error`.
    pub faults: Vec<String>,
    /// The entry whose verdict (or fault) ended the stage, for the log:
    /// none when every entry continued.
    pub decided_by: Option<String>,
}
