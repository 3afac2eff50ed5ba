//! Queue ids: unique, roughly time-ordered, safe as file names.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The id of a spooled message: 18 upper-case hex digits (seconds since the
/// epoch, a per-process counter, random bits), so ids sort by arrival time
/// and never collide across restarts in practice.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl QueueId {
    /// A new id.
    pub fn generate() -> Self {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFF_FFFF;
        let random: u16 = rand::random();
        Self(format!("{:08X}{count:06X}{random:04X}", secs & 0xFFFF_FFFF))
    }

    /// Parses an id as printed; `None` unless it has the id's form, so a
    /// user-supplied id can never name a path outside the spool.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = text.len() == 18 && text.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        ok.then(|| Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for QueueId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value).ok_or_else(|| format!("invalid queue id {value:?}"))
    }
}

impl From<QueueId> for String {
    fn from(value: QueueId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = QueueId::generate();
        let b = QueueId::generate();
        assert_ne!(a, b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn only_well_formed_ids_parse() {
        for bad in [
            "",
            "../../etc/passwd",
            "0123456789abcdef01",
            "0123456789ABCDEF0",
            "0123456789ABCDEF012",
        ] {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }
}
