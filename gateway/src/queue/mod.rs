//! The durable spool: messages are on disk and fsynced before the 250 after
//! DATA, per-recipient delivery status, and the retry schedule. It knows no
//! sockets.

mod envelope;
mod id;
mod schedule;
mod spool;

use tokio::sync::mpsc;

pub use envelope::{Client, DeliveryState, Envelope, Hold, Recipient, RecipientStatus, RouteOverride};
pub use id::QueueId;
pub use schedule::RetrySchedule;
pub use spool::{Quarantined, Spool, SpoolError, SpoolSync, SpoolWriter, StoredMessage};

/// How many newly spooled messages may wait for the delivery engine before
/// the sessions that spooled them wait too (backpressure).
const HANDOFF_CAPACITY: usize = 4096;

/// Hands newly spooled messages to the delivery engine.
pub type QueueSender = mpsc::Sender<StoredMessage>;

/// The delivery engine's end of the handoff.
pub type QueueReceiver = mpsc::Receiver<StoredMessage>;

/// The handoff channel between the sessions and the delivery engine.
pub fn handoff() -> (QueueSender, QueueReceiver) {
    mpsc::channel(HANDOFF_CAPACITY)
}
