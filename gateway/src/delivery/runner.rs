//! The queue runner: takes newly spooled messages and recovered ones,
//! starts attempts up to the concurrency limit, and schedules retries.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};

use super::DeliverySettings;
use super::attempt::{AttemptResult, Next, attempt};
use super::pool::ConnectionPool;
use crate::queue::{QueueReceiver, Spool, StoredMessage};

/// A message waiting for its next attempt.
#[derive(Debug)]
struct Scheduled {
    due: Instant,
    seq: u64,
    message: StoredMessage,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The runner's queues.
struct Runner {
    spool: Arc<Spool>,
    settings: Arc<DeliverySettings>,
    pool: Arc<ConnectionPool>,
    waiting: BinaryHeap<Reverse<Scheduled>>,
    ready: VecDeque<StoredMessage>,
    in_flight: JoinSet<AttemptResult>,
    seq: u64,
}

/// Delivers until `shutdown`; then waits for the attempts in flight (the
/// caller bounds that wait with the grace period). `recovered` are the
/// messages found in the spool at start-up.
pub async fn run(
    spool: Arc<Spool>,
    settings: Arc<DeliverySettings>,
    mut inbox: QueueReceiver,
    recovered: Vec<StoredMessage>,
    shutdown: CancellationToken,
) {
    let mut runner = Runner {
        spool,
        pool: Arc::new(ConnectionPool::new(settings.timeouts.idle)),
        settings,
        waiting: BinaryHeap::new(),
        ready: VecDeque::new(),
        in_flight: JoinSet::new(),
        seq: 0,
    };
    for message in recovered {
        let due = message.state.next_attempt.map_or_else(Instant::now, |at| {
            Instant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
        });
        runner.schedule(due, message);
    }
    let mut inbox_open = true;
    loop {
        runner.dispatch();
        let next_due = runner.waiting.peek().map(|Reverse(s)| s.due);
        tokio::select! {
            () = shutdown.cancelled() => break,
            message = inbox.recv(), if inbox_open => match message {
                Some(message) => runner.ready.push_back(message),
                None => inbox_open = false,
            },
            Some(joined) = runner.in_flight.join_next(), if !runner.in_flight.is_empty() => match joined {
                Ok(result) => runner.finished(result),
                Err(e) => error!(error = %e, "delivery task failed; its message is retried after restart"),
            },
            () = sleep_until(next_due), if next_due.is_some() => runner.promote_due(),
        }
    }
    let in_flight = runner.in_flight.len();
    if in_flight > 0 {
        info!(in_flight, "waiting for deliveries in flight");
    }
    while runner.in_flight.join_next().await.is_some() {}
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

impl Runner {
    fn schedule(&mut self, due: Instant, message: StoredMessage) {
        self.seq += 1;
        self.waiting.push(Reverse(Scheduled {
            due,
            seq: self.seq,
            message,
        }));
    }

    fn promote_due(&mut self) {
        let now = Instant::now();
        while self.waiting.peek().is_some_and(|Reverse(s)| s.due <= now) {
            if let Some(Reverse(scheduled)) = self.waiting.pop() {
                self.ready.push_back(scheduled.message);
            }
        }
    }

    fn dispatch(&mut self) {
        while self.in_flight.len() < self.settings.concurrency.get() {
            let Some(message) = self.ready.pop_front() else { break };
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

    fn finished(&mut self, result: AttemptResult) {
        if let Some(bounce) = result.bounce {
            self.ready.push_back(bounce);
        }
        if let Next::RetryAt(due) = result.next {
            self.schedule(due, result.message);
        }
    }
}
