//! The runner's side of the quarantine: operators' commands (list, show,
//! release into the queue, delete), expiry after `quarantine_max_age`, and
//! the quarantine gauges. Every action is logged.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tracing::{error, info};

use super::Runner;
use crate::metrics::metrics;
use crate::queue::{Quarantined, QueueId};

/// How often expiry runs and the gauges are set.
pub(super) const TEND_INTERVAL: Duration = Duration::from_secs(60);

/// What an operator can ask of the quarantine.
#[derive(Debug)]
pub enum QuarantineCommand {
    /// Every quarantined message, oldest first.
    List(oneshot::Sender<Result<Vec<Quarantined>, String>>),
    /// One message and its content.
    Show(QueueId, oneshot::Sender<Result<(Quarantined, Vec<u8>), String>>),
    /// Move it into the queue, as it was accepted.
    Release(QueueId, oneshot::Sender<Result<String, String>>),
    /// Remove it.
    Delete(QueueId, oneshot::Sender<Result<String, String>>),
}

impl Runner {
    pub(super) async fn quarantine(&mut self, command: QuarantineCommand) {
        let not_found = |id: &QueueId| format!("no message {id} in the quarantine");
        match command {
            QuarantineCommand::List(reply) => {
                let _ = reply.send(self.spool.quarantined().await.map_err(|e| e.to_string()));
            }
            QuarantineCommand::Show(id, reply) => {
                let shown = self.spool.quarantined_message(&id).await.map_err(|_| not_found(&id));
                let _ = reply.send(shown);
            }
            QuarantineCommand::Release(id, reply) => {
                let answer = match self.spool.release(&id).await {
                    Ok(message) => {
                        info!(queue_id = %id, action = "release", "quarantined message released into the queue");
                        self.ready.push_back(message);
                        Ok(format!("{id} released into the queue"))
                    }
                    Err(_) => Err(not_found(&id)),
                };
                let _ = reply.send(answer);
            }
            QuarantineCommand::Delete(id, reply) => {
                let answer = match self.spool.delete_quarantined(&id).await {
                    Ok(()) => {
                        info!(queue_id = %id, action = "delete", "quarantined message deleted");
                        Ok(format!("{id} deleted"))
                    }
                    Err(_) => Err(not_found(&id)),
                };
                let _ = reply.send(answer);
            }
        }
        self.tend_quarantine().await;
    }

    /// Expires old quarantined messages and sets the gauges, from one
    /// reading of the quarantine.
    pub(super) async fn tend_quarantine(&mut self) {
        let entries = match self.spool.quarantined().await {
            Ok(entries) => entries,
            Err(e) => return error!(error = %e, "cannot read the quarantine"),
        };
        let now = SystemTime::now();
        let age = |q: &Quarantined| now.duration_since(q.envelope.received_at).unwrap_or_default();
        let max_age = self.settings.quarantine_max_age;
        let (expired, kept): (Vec<_>, Vec<_>) = entries.into_iter().partition(|q| age(q) > max_age);
        for q in expired {
            match self.spool.delete_quarantined(&q.id).await {
                Ok(()) => info!(queue_id = %q.id, action = "expire", "quarantined message expired"),
                Err(e) => error!(queue_id = %q.id, error = %e, "cannot expire a quarantined message"),
            }
        }
        let [count, oldest] = &metrics().quarantine;
        count.set(i64::try_from(kept.len()).unwrap_or(i64::MAX));
        // Oldest first.
        let oldest_age = kept.first().map_or(0, |q| age(q).as_secs());
        oldest.set(i64::try_from(oldest_age).unwrap_or(i64::MAX));
    }
}
