//! One connection's use of the plugin chain: the chain session (its
//! instances), the metadata plugins set, and the edits they asked for in
//! the current transaction, applied to the envelope and content at commit.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use crate::plugin::transcript::Recorder;
use crate::plugin::{
    Chain, ChainSession, Decision, DeliveryFacts, HookContext, Modification, OutboundStage, ParsedMessage, StageCall,
    StageResult,
};
use crate::queue::{Envelope, Recipient, RouteOverride};
use crate::smtp::Mailbox;
use crate::smtp::session::{Decision as SessionDecision, Session, Stage};

/// What happens to an accepted message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Disposition {
    /// Spool and deliver.
    #[default]
    Deliver,
    /// Answer 250 and drop.
    Discard,
    /// Answer 250 and keep in the quarantine: the reason, and the entry
    /// that decided.
    Quarantine(String, Option<String>),
    /// Answer 250 and queue on hold, with the reason.
    Hold(String),
}

/// What plugins asked for during the current transaction.
#[derive(Debug, Default)]
pub struct TransactionEdits {
    metadata: Vec<(String, String)>,
    /// Routes chosen at RCPT, by (rewritten) recipient address.
    rcpt_routes: Vec<(Mailbox, RouteOverride)>,
    /// The data stage's modifications, in chain order.
    pub data: Vec<Modification>,
    /// The data stage's verdict for an accepted message.
    pub disposition: Disposition,
    /// The parse plugins saw at the data stage.
    pub message: Option<Arc<ParsedMessage>>,
    /// The chain (its services: the ARC sealer; its outbound stages: the
    /// quarantine notice), once the transaction is taken.
    pub chain: Option<Arc<Chain>>,
}

impl TransactionEdits {
    /// The content as it leaves, or `None` when the plugins left it as
    /// received: the data stage's header and body changes applied, then
    /// the ARC set a plugin asked for (`dkim.seal`) on top, so that the
    /// seal covers every change. A seal that cannot be made leaves the
    /// message unsealed, with a log line.
    pub async fn content(&self) -> Option<Vec<u8>> {
        let message = self.message.as_ref()?;
        let edited = crate::plugin::rewrite(message.raw(), &self.data);
        let request = self.data.iter().rev().find_map(|m| match m {
            Modification::ArcSeal(request) => Some(request),
            _ => None,
        });
        let (Some(request), Some(chain)) = (request, &self.chain) else {
            return edited;
        };
        let host = chain.host();
        let content = edited.as_deref().unwrap_or(message.raw());
        match host.dkim.seal(message.raw(), content, request).await {
            Ok(set) => {
                info!(domain = %request.domain, instance = set.instance, cv = set.cv, "ARC sealed");
                let mut sealed = set.fields.into_bytes();
                sealed.extend_from_slice(content);
                Some(sealed)
            }
            Err(e) => {
                warn!(domain = %request.domain, error = %e, "ARC seal not made; the message goes unsealed");
                edited
            }
        }
    }

    /// Applies routes and the data stage's envelope modifications.
    pub fn apply_to(&self, envelope: &mut Envelope) {
        for recipient in &mut envelope.recipients {
            recipient.route = self
                .rcpt_routes
                .iter()
                .rev()
                .find(|(address, _)| *address == recipient.address)
                .map(|(_, route)| route.clone());
        }
        for m in &self.data {
            match m {
                Modification::SetReversePath(path) => envelope.reverse_path = path.clone(),
                Modification::Route(route) => {
                    for recipient in &mut envelope.recipients {
                        recipient.route = Some(route.clone());
                    }
                }
                Modification::RouteRecipient(address, route) => {
                    for recipient in envelope.recipients.iter_mut().filter(|r| r.address == *address) {
                        recipient.route = Some(route.clone());
                    }
                }
                Modification::AddRecipient(address, notify)
                    if !envelope.recipients.iter().any(|r| r.address == *address) =>
                {
                    let mut recipient = Recipient::new(address.clone());
                    recipient.dsn.notify = *notify;
                    envelope.recipients.push(recipient);
                }
                Modification::RemoveRecipient(address) => envelope.recipients.retain(|r| r.address != *address),
                _ => {}
            }
        }
        // Rewrites may have made two recipients one mailbox: deliver once.
        let mut seen: Vec<Mailbox> = Vec::with_capacity(envelope.recipients.len());
        envelope.recipients.retain(|r| {
            let fresh = !seen.iter().any(|m| m.same_mailbox(&r.address));
            if fresh {
                seen.push(r.address.clone());
            }
            fresh
        });
    }
}

/// Tells the plugins of the outbound stage `quarantined` that `envelope`
/// (queue id `id`) went to the quarantine, without holding up the reply.
pub fn notify_quarantined(chain: Option<&Arc<Chain>>, id: &str, envelope: &Envelope) {
    let Some(chain) = chain.filter(|c| c.runs_outbound(OutboundStage::Quarantined)) else {
        return;
    };
    let facts = DeliveryFacts {
        queue_id: id.to_owned(),
        reverse_path: envelope.reverse_path.to_string(),
        recipients: envelope.recipients.iter().map(|r| r.address.to_string()).collect(),
        destination: "quarantine".to_owned(),
        route: None,
        attempt: 0,
        age_seconds: 0,
        size: envelope.size,
    };
    let reason = match (&envelope.quarantine, &envelope.quarantined_by) {
        (Some(reason), Some(by)) => format!("{reason} ({by})"),
        (Some(reason), None) => reason.clone(),
        (None, _) => String::new(),
    };
    let chain = Arc::clone(chain);
    tokio::spawn(async move {
        chain.on_quarantined(&facts, &reason, None).await;
    });
}

/// A connection's plugin state.
#[derive(Debug)]
pub struct Filters {
    chain: Arc<Chain>,
    session: ChainSession,
    recorder: Option<Recorder>,
    connection_metadata: Vec<(String, String)>,
    txn: TransactionEdits,
    in_transaction: bool,
    /// The connection's listener: entries may run for some listeners only.
    listener: Arc<str>,
}

impl Filters {
    /// Starts using `chain` for a connection; with `record`, every stage
    /// and the host's answers are written to transcripts there.
    pub fn new(chain: &Arc<Chain>, record: Option<&Arc<Path>>, listener: &Arc<str>) -> Self {
        let recorder = record.map(|dir| Recorder::new(Arc::clone(dir), chain.host().clock.now_millis()));
        let mut session = chain.session();
        if let Some(recorder) = &recorder {
            session.record(Arc::clone(recorder.journal()));
        }
        Self {
            session,
            recorder,
            chain: Arc::clone(chain),
            connection_metadata: Vec::new(),
            txn: TransactionEdits::default(),
            in_transaction: false,
            listener: Arc::clone(listener),
        }
    }

    /// Moves to `chain` (after a reload) between transactions: what the
    /// connect and helo stages set stays; the old chain's instances go.
    pub fn rechain(&mut self, chain: &Arc<Chain>) {
        if !Arc::ptr_eq(&self.chain, chain) {
            self.session = chain.session();
            if let Some(recorder) = &self.recorder {
                self.session.record(Arc::clone(recorder.journal()));
            }
            self.chain = Arc::clone(chain);
        }
    }

    /// True when some plugin runs at `stage`, or the stage is recorded.
    pub fn runs_at(&self, stage: Stage) -> bool {
        self.recorder.is_some() || self.chain.runs_at(stage, &self.listener)
    }

    /// Follows the session: when its transaction has ended (queued,
    /// refused, RSET, EHLO), the plugins' instances and the edits go.
    pub fn follow(&mut self, session: &Session) {
        let open = session.transaction().is_some();
        if self.in_transaction && !open {
            self.session.end_transaction();
            self.txn = TransactionEdits::default();
            if let Some(recorder) = &mut self.recorder {
                recorder.end_transaction();
            }
        }
        self.in_transaction = open;
    }

    /// The edits of the transaction being committed.
    pub fn take_transaction(&mut self) -> TransactionEdits {
        TransactionEdits {
            chain: Some(Arc::clone(&self.chain)),
            ..std::mem::take(&mut self.txn)
        }
    }

    /// Runs `stage` through the chain and applies what it decided to the
    /// session; returns the decision for the session and, when an entry
    /// ended the stage, which one (for the log).
    pub async fn check(
        &mut self,
        stage: Stage,
        session: &mut Session,
        message: Option<&Arc<ParsedMessage>>,
    ) -> (SessionDecision, Option<String>) {
        let ctx = self.context(session);
        // The call borrows from the session only until the chain returns;
        // the modifications are applied to it afterwards.
        let call = match (
            stage,
            session.hello(),
            session.transaction(),
            session.pending_rcpt(),
            message,
        ) {
            (Stage::Connect, ..) => StageCall::Connect,
            (Stage::Helo, Some(hello), ..) => StageCall::Helo(&hello.name),
            (Stage::Mail, _, Some(txn), ..) => StageCall::Mail(&txn.reverse_path, &txn.parameters),
            (Stage::Rcpt, _, _, Some(rcpt), _) => StageCall::Rcpt(&rcpt.address, &rcpt.dsn),
            (Stage::Data, .., Some(message)) => StageCall::Data(message),
            _ => return (SessionDecision::Proceed, None),
        };
        let StageResult {
            decision,
            modifications,
            decided_by,
            ..
        } = self.session.run(call, &ctx).await;
        if let Some(recorder) = &mut self.recorder {
            recorder.stage(call, &ctx, &decision);
        }
        if stage == Stage::Data {
            // No hook of this transaction runs after the data stage: free
            // the instances now rather than after the spool commit.
            self.session.end_transaction();
        }
        match decision {
            Decision::Proceed => {}
            Decision::Refuse(reply) => return (SessionDecision::Refuse(reply), decided_by),
            Decision::Disconnect(reply) => return (SessionDecision::Disconnect(reply), decided_by),
            Decision::Discard => self.txn.disposition = Disposition::Discard,
            Decision::Quarantine(reason) => {
                self.txn.disposition = Disposition::Quarantine(reason, decided_by.clone());
            }
            Decision::Hold(reason) => {
                let by = decided_by.as_deref().unwrap_or("a plugin");
                self.txn.disposition = Disposition::Hold(format!("{reason} ({by})"));
            }
        }
        self.apply(stage, session, modifications);
        if stage == Stage::Data {
            self.txn.message = message.cloned();
        }
        (SessionDecision::Proceed, decided_by)
    }

    fn apply(&mut self, stage: Stage, session: &mut Session, modifications: Vec<Modification>) {
        for m in modifications {
            match m {
                Modification::SetMetadata(key, value) if matches!(stage, Stage::Connect | Stage::Helo) => {
                    self.connection_metadata.push((key, value));
                }
                Modification::SetMetadata(key, value) => self.txn.metadata.push((key, value)),
                Modification::SetReversePath(path) if stage == Stage::Mail => {
                    session.rewrite_reverse_path(path);
                }
                Modification::SetRecipient(address, notify) => {
                    session.rewrite_pending_recipient(address, notify);
                }
                Modification::Route(route) if stage == Stage::Rcpt => {
                    if let Some(rcpt) = session.pending_recipient() {
                        self.txn.rcpt_routes.push((rcpt.clone(), route));
                    }
                }
                // The data stage's changes are applied at commit.
                other => self.txn.data.push(other),
            }
        }
    }

    fn context(&self, session: &Session) -> HookContext {
        let connection = session.connection();
        let txn = session.transaction();
        let mut metadata = self.connection_metadata.clone();
        metadata.extend(self.txn.metadata.iter().cloned());
        HookContext {
            client: connection.peer,
            listener: Arc::clone(&connection.listener),
            tls: session.tls().is_some(),
            helo: session.hello().map(|h| h.name.clone()),
            authenticated: session.authenticated().map(str::to_owned),
            reverse_path: txn.map(|t| t.reverse_path.clone()),
            recipients: txn.map(|t| t.addresses().cloned().collect()).unwrap_or_default(),
            metadata,
        }
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        if let Some(recorder) = &mut self.recorder {
            recorder.end_connection();
        }
    }
}
