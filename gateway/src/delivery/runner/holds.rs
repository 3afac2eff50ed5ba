//! Holds: messages an operator (or a plugin, at the data stage) keeps back
//! from delivery until released. A held message is not attempted and does
//! not expire: the time it spends held does not count toward `max_age`.
//! The hold is in the message's delivery state, so it survives a restart.

use std::time::{Instant, SystemTime};

use tracing::{error, info};

use super::Runner;
use crate::queue::{Hold, QueueId, StoredMessage};

/// Which messages a hold or release is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldTarget {
    /// One message.
    One(QueueId),
    /// Every message with a pending recipient in this domain (lower case).
    Domain(String),
    /// Every message.
    All,
}

impl HoldTarget {
    fn matches(&self, message: &StoredMessage) -> bool {
        match self {
            Self::One(id) => &message.id == id,
            Self::All => true,
            Self::Domain(domain) => message
                .envelope
                .recipients
                .iter()
                .zip(&message.state.recipients)
                .any(|(r, s)| {
                    matches!(s, crate::queue::RecipientStatus::Pending { .. }) && r.address.domain_key() == *domain
                }),
        }
    }
}

impl Runner {
    /// A message that arrived (new, or released from the quarantine): held
    /// when its state says so, else ready.
    pub(super) fn admit(&mut self, message: StoredMessage) {
        if message.state.held.is_some() {
            info!(queue_id = %message.id, action = "hold", "message held on arrival");
            self.spool.forget_content(&message.id);
            self.held.push(message);
        } else {
            self.ready.push_back(message);
        }
    }

    /// Holds the waiting and ready messages `target` names (one being
    /// delivered finishes its attempt first); how many.
    pub(super) async fn hold(&mut self, target: &HoldTarget, reason: &str) -> usize {
        let mut taken = Vec::new();
        let keys: Vec<_> = self
            .waiting
            .iter()
            .filter(|(_, m)| target.matches(m))
            .map(|(k, _)| *k)
            .collect();
        taken.extend(keys.into_iter().filter_map(|k| self.waiting.remove(&k)));
        let (matching, rest): (Vec<_>, Vec<_>) = self.ready.drain(..).partition(|m| target.matches(m));
        self.ready.extend(rest);
        taken.extend(matching);
        let count = taken.len();
        for mut message in taken {
            message.state.held = Some(Hold {
                reason: reason.to_owned(),
                since: SystemTime::now(),
            });
            self.save(&message).await;
            info!(queue_id = %message.id, action = "hold", reason, "message held");
            self.spool.forget_content(&message.id);
            self.held.push(message);
        }
        count
    }

    /// Releases the held messages `target` names into the queue, due at
    /// their scheduled time; how many.
    pub(super) async fn release(&mut self, target: &HoldTarget) -> usize {
        let (matching, rest): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|m| target.matches(m));
        self.held = rest;
        let count = matching.len();
        for mut message in matching {
            message.state.release(SystemTime::now());
            self.save(&message).await;
            info!(queue_id = %message.id, action = "release", "message released from hold");
            let due = message.state.next_attempt.map_or_else(Instant::now, |at| {
                Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
            });
            self.schedule(due, message);
        }
        count
    }

    async fn save(&self, message: &StoredMessage) {
        if let Err(e) = self.spool.save_state(&message.id, &message.state).await {
            error!(queue_id = %message.id, error = %e, "cannot save the hold");
        }
    }
}
