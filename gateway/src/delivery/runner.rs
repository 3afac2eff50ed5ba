//! The queue runner: takes newly spooled messages and recovered ones,
//! starts attempts up to the concurrency limit, schedules retries, and
//! carries out operators' queue commands (list, show, retry, delete,
//! bounce) so that they never race an attempt in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use super::DeliverySettings;
use super::attempt::{AttemptResult, Next, attempt, give_up};
use super::pool::ConnectionPool;
use crate::metrics::metrics;
use crate::queue::{DeliveryState, Envelope, QueueId, QueueReceiver, Spool, StoredMessage};

mod holds;
mod quarantine;
mod tls_reports;

pub use holds::HoldTarget;
pub use quarantine::QuarantineCommand;

/// How often idle outbound connections are checked for expiry.
const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Queue commands waiting for the runner; operators are few.
const COMMAND_CAPACITY: usize = 64;

/// Where a queued message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatus {
    /// Waiting for its next attempt.
    Waiting,
    /// Due, waiting for a delivery slot.
    Ready,
    /// An attempt is in flight.
    Delivering,
    /// On hold: not attempted until released.
    Held,
}

/// One queued message, as operators see it.
#[derive(Clone, Debug, Serialize)]
pub struct QueueEntry {
    /// Its id.
    pub id: QueueId,
    /// Where it stands.
    pub status: QueueStatus,
    /// Content length in octets.
    pub size: u64,
    /// Its envelope.
    pub envelope: Envelope,
    /// Its delivery state.
    pub state: DeliveryState,
}

/// What an operator can ask of the queue.
#[derive(Debug)]
pub enum QueueCommand {
    /// Every queued message.
    List(oneshot::Sender<Vec<QueueEntry>>),
    /// One message.
    Show(QueueId, oneshot::Sender<Option<QueueEntry>>),
    /// Try these (or all, for `None`) now; answers how many were moved.
    Retry(Option<QueueId>, oneshot::Sender<usize>),
    /// Remove a message without notice.
    Delete(QueueId, oneshot::Sender<Result<String, String>>),
    /// Fail a message's pending recipients and bounce it to the sender.
    Bounce(QueueId, oneshot::Sender<Result<String, String>>),
    /// Act on the quarantine (see `quarantine.rs`).
    Quarantine(QuarantineCommand),
    /// Put messages on hold, with a reason; answers how many.
    Hold(HoldTarget, String, oneshot::Sender<usize>),
    /// Release held messages; answers how many.
    Release(HoldTarget, oneshot::Sender<usize>),
}

/// Sends commands to the runner.
pub type QueueControl = mpsc::Sender<QueueCommand>;

/// The runner's end of the command channel.
pub type QueueCommands = mpsc::Receiver<QueueCommand>;

/// A command channel for `run`.
pub fn control() -> (QueueControl, QueueCommands) {
    mpsc::channel(COMMAND_CAPACITY)
}

/// An operator's action waiting for an attempt in flight to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Delete,
    Bounce,
}

/// The runner's queues.
struct Runner {
    spool: Arc<Spool>,
    settings: Arc<DeliverySettings>,
    pool: Arc<ConnectionPool>,
    /// By due time, then arrival order.
    waiting: BTreeMap<(Instant, u64), StoredMessage>,
    ready: VecDeque<StoredMessage>,
    /// On hold, in the order they were held.
    held: Vec<StoredMessage>,
    in_flight: JoinSet<AttemptResult>,
    /// Messages with an attempt in flight, and what to do after it.
    busy: HashMap<QueueId, Option<Pending>>,
    seq: u64,
    /// Offline (the queue CLI on a stopped gateway's spool): no deliveries.
    paused: bool,
}

/// Delivers until `shutdown`; then waits for the attempts in flight (the
/// caller bounds that wait with the grace period). `recovered` are the
/// messages found in the spool at start-up. New settings published on
/// `settings` (a reload) apply to the attempts started after them.
pub async fn run(
    spool: Arc<Spool>,
    mut settings: watch::Receiver<Arc<DeliverySettings>>,
    mut inbox: QueueReceiver,
    mut commands: QueueCommands,
    recovered: Vec<StoredMessage>,
    shutdown: CancellationToken,
) {
    let first = Arc::clone(&settings.borrow_and_update());
    let mut runner = Runner::new(spool, first, recovered, false);
    let mut settings_open = true;
    let mut inbox_open = true;
    let mut commands_open = true;
    let mut reap = tokio::time::interval(REAP_INTERVAL);
    let mut tend = tokio::time::interval(quarantine::TEND_INTERVAL);
    let mut flush = tokio::time::interval(tls_reports::FLUSH_INTERVAL);
    loop {
        runner.dispatch();
        runner.gauge();
        let next_due = runner.waiting.keys().next().map(|(due, _)| *due);
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = settings.changed(), if settings_open => match changed {
                Ok(()) => {
                    let next = Arc::clone(&settings.borrow_and_update());
                    runner.reconfigure(next);
                }
                Err(_) => settings_open = false,
            },
            message = inbox.recv(), if inbox_open => match message {
                Some(message) => runner.admit(message),
                None => inbox_open = false,
            },
            command = commands.recv(), if commands_open => match command {
                Some(command) => runner.command(command).await,
                None => commands_open = false,
            },
            Some(joined) = runner.in_flight.join_next(), if !runner.in_flight.is_empty() => match joined {
                Ok(result) => runner.finished(result).await,
                Err(e) => error!(error = %e, "delivery task failed; its message is retried after restart"),
            },
            () = sleep_until(next_due), if next_due.is_some() => runner.promote_due(),
            _ = reap.tick() => runner.pool.reap(),
            _ = tend.tick() => runner.tend_quarantine().await,
            _ = flush.tick() => runner.send_tls_reports().await,
        }
    }
    runner.flush_tls_reports().await;
    let in_flight = runner.in_flight.len();
    if in_flight > 0 {
        info!(in_flight, "waiting for deliveries in flight");
    }
    while runner.in_flight.join_next().await.is_some() {}
}

/// Carries out commands on a spool no gateway is running on (the caller
/// holds the spool's lock) until the channel closes, delivering nothing.
pub async fn offline(
    spool: Arc<Spool>,
    settings: Arc<DeliverySettings>,
    recovered: Vec<StoredMessage>,
    mut commands: QueueCommands,
) {
    let mut runner = Runner::new(spool, settings, recovered, true);
    while let Some(command) = commands.recv().await {
        runner.command(command).await;
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

impl Runner {
    fn new(spool: Arc<Spool>, settings: Arc<DeliverySettings>, recovered: Vec<StoredMessage>, paused: bool) -> Self {
        let mut runner = Self {
            spool,
            pool: Arc::new(ConnectionPool::new(settings.timeouts.idle)),
            settings,
            waiting: BTreeMap::new(),
            ready: VecDeque::new(),
            held: Vec::new(),
            in_flight: JoinSet::new(),
            busy: HashMap::new(),
            seq: 0,
            paused,
        };
        for message in recovered {
            let due = message.state.next_attempt.map_or_else(Instant::now, |at| {
                Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
            });
            if message.state.held.is_some() {
                runner.held.push(message);
            } else {
                runner.schedule(due, message);
            }
        }
        runner
    }

    /// New settings for the attempts from now on. Idle outbound
    /// connections were opened under the old ones (TLS, credentials):
    /// they are let go.
    fn reconfigure(&mut self, settings: Arc<DeliverySettings>) {
        self.pool = Arc::new(ConnectionPool::new(settings.timeouts.idle));
        self.settings = settings;
    }

    /// Sets `mailgate_queue_messages`.
    fn gauge(&self) {
        let [waiting, ready, delivering, held] = &metrics().queue;
        held.set(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
        waiting.set(i64::try_from(self.waiting.len()).unwrap_or(i64::MAX));
        ready.set(i64::try_from(self.ready.len()).unwrap_or(i64::MAX));
        delivering.set(i64::try_from(self.in_flight.len()).unwrap_or(i64::MAX));
    }

    fn schedule(&mut self, due: Instant, message: StoredMessage) {
        self.seq += 1;
        self.waiting.insert((due, self.seq), message);
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
    }

    fn dispatch(&mut self) {
        if self.paused {
            return;
        }
        while self.in_flight.len() < self.settings.concurrency.get() {
            let Some(message) = self.ready.pop_front() else { break };
            self.busy.insert(message.id.clone(), None);
            let span = info_span!("delivery", queue_id = %message.id, attempt = message.state.attempts + 1);
            let (spool, settings, pool) = (
                Arc::clone(&self.spool),
                Arc::clone(&self.settings),
                Arc::clone(&self.pool),
            );
            self.in_flight
                .spawn(async move { attempt(&spool, &settings, &pool, message).await }.instrument(span));
        }
    }

    async fn finished(&mut self, result: AttemptResult) {
        self.ready.extend(result.notices);
        let pending = self.busy.remove(&result.message.id).flatten();
        if let Next::RetryAt(due) = result.next {
            match pending {
                // A plugin held it at `on-deliver`.
                None if result.message.state.held.is_some() => {
                    info!(queue_id = %result.message.id, action = "hold", "message held by a plugin");
                    self.held.push(result.message);
                }
                None => self.schedule(due, result.message),
                Some(action) => self.apply(action, result.message).await,
            }
        }
    }

    /// Takes a message out of the waiting and ready queues.
    fn take(&mut self, id: &QueueId) -> Option<StoredMessage> {
        if let Some(key) = self.waiting.iter().find(|(_, m)| &m.id == id).map(|(k, _)| *k) {
            return self.waiting.remove(&key);
        }
        let index = self.ready.iter().position(|m| &m.id == id)?;
        self.ready.remove(index)
    }

    async fn command(&mut self, command: QueueCommand) {
        match command {
            QueueCommand::List(reply) => {
                let _ = reply.send(self.entries(None).await);
            }
            QueueCommand::Show(id, reply) => {
                let _ = reply.send(self.entries(Some(&id)).await.into_iter().next());
            }
            QueueCommand::Retry(id, reply) => {
                let ids: Vec<QueueId> = match id {
                    Some(id) => vec![id],
                    None => self.waiting.values().map(|m| m.id.clone()).collect(),
                };
                let mut moved = 0;
                for id in ids {
                    let Some(mut message) = self.take(&id) else { continue };
                    message.state.next_attempt = None;
                    if let Err(e) = self.spool.save_state(&message.id, &message.state).await {
                        error!(queue_id = %message.id, error = %e, "cannot save delivery state");
                    }
                    info!(queue_id = %message.id, "retry requested by the operator");
                    self.ready.push_back(message);
                    moved += 1;
                }
                let _ = reply.send(moved);
            }
            QueueCommand::Delete(id, reply) => {
                let _ = reply.send(self.end(id, Pending::Delete).await);
            }
            QueueCommand::Bounce(id, reply) => {
                let _ = reply.send(self.end(id, Pending::Bounce).await);
            }
            QueueCommand::Quarantine(command) => self.quarantine(command).await,
            QueueCommand::Hold(target, reason, reply) => {
                let _ = reply.send(self.hold(&target, &reason).await);
            }
            QueueCommand::Release(target, reply) => {
                let _ = reply.send(self.release(&target).await);
            }
        }
    }

    /// Deletes or bounces a queued message now, or when its attempt in
    /// flight ends.
    async fn end(&mut self, id: QueueId, action: Pending) -> Result<String, String> {
        let done = match action {
            Pending::Delete => "deleted",
            Pending::Bounce => "bounced",
        };
        if let Some(message) = self.take(&id) {
            self.apply(action, message).await;
            Ok(format!("{id} {done}"))
        } else if let Some(pending) = self.busy.get_mut(&id) {
            *pending = Some(action);
            Ok(format!(
                "{id} is being delivered; {done} unless this attempt finishes it"
            ))
        } else {
            Err(format!("no message {id} in the queue"))
        }
    }

    async fn apply(&mut self, action: Pending, message: StoredMessage) {
        match action {
            Pending::Delete => self.delete(&message.id).await,
            Pending::Bounce => self.bounce(message).await,
        }
    }

    async fn delete(&mut self, id: &QueueId) {
        match self.spool.remove(id).await {
            Ok(()) => info!(queue_id = %id, status = "deleted", "message deleted by the operator"),
            Err(e) => error!(queue_id = %id, error = %e, "cannot delete the message"),
        }
    }

    async fn bounce(&mut self, message: StoredMessage) {
        let id = message.id.clone();
        match give_up(
            &self.spool,
            &self.settings,
            message,
            "delivery cancelled by the operator",
        )
        .await
        {
            Ok(notice) => self.ready.extend(notice),
            Err((message, e)) => {
                error!(queue_id = %id, error = %e, "cannot bounce the message; it stays queued");
                self.ready.push_back(message);
            }
        }
    }

    /// Queue entries (all, or one id), in due order; messages in flight
    /// are read from the spool.
    async fn entries(&self, only: Option<&QueueId>) -> Vec<QueueEntry> {
        let wanted = |id: &QueueId| only.is_none_or(|only| only == id);
        let entry = |message: &StoredMessage, status| QueueEntry {
            id: message.id.clone(),
            status,
            size: message.content_len,
            envelope: message.envelope.clone(),
            state: message.state.clone(),
        };
        let mut entries: Vec<QueueEntry> = Vec::new();
        for message in self.ready.iter().filter(|m| wanted(&m.id)) {
            entries.push(entry(message, QueueStatus::Ready));
        }
        for message in self.waiting.values().filter(|m| wanted(&m.id)) {
            entries.push(entry(message, QueueStatus::Waiting));
        }
        for message in self.held.iter().filter(|m| wanted(&m.id)) {
            entries.push(entry(message, QueueStatus::Held));
        }
        for id in self.busy.keys().filter(|id| wanted(id)) {
            let spool = Arc::clone(&self.spool);
            let id = id.clone();
            if let Ok(Ok(message)) = tokio::task::spawn_blocking(move || spool.load(&id)).await {
                entries.push(entry(&message, QueueStatus::Delivering));
            }
        }
        entries
    }
}
