//! The SMTP protocol with no I/O: command parser, replies and status codes,
//! the session state machine, the DATA reader and the EHLO extensions. It
//! imports nothing from `server`, `plugin`, `queue` or `delivery`, so it can
//! be tested from byte transcripts and fuzzed.

pub mod address;
pub mod chunking;
pub mod command;
pub mod data;
pub mod dsn;
pub mod extensions;
pub mod reply;
pub mod session;
pub mod trace;

pub use address::{Mailbox, ReversePath};
pub use reply::{EnhancedCode, Reply, ReplyClass};
