//! The plugin host: WebAssembly components compiled at config load, run
//! at each SMTP stage in chain order under a memory limit and a per-call
//! time budget, with their outcomes checked and turned into the gateway's
//! decisions and modifications. A fault is answered by the plugin's
//! `on_error` policy and never affects another connection.

mod bindings;
mod chain;
mod compat;
mod convert;
mod defaults;
mod edit;
mod engine;
mod error;
mod hooks;
mod host;
mod http;
mod imports;
mod load;
mod message;
mod outbound;
mod outcome;
mod output;
mod replay;
mod snapshot;
mod state;
mod ticker;
pub mod transcript;

pub use replay::replay_outbound;

pub(crate) use bindings::mailgate::plugin::http::Request as HttpRequest;
pub(crate) use bindings::mailgate::plugin::types::Header as HttpHeader;
pub use chain::{Chain, ChainSession, StageCall};
pub use convert::Verdict;
pub(crate) use convert::{canonical_line_endings, header_name, mailbox};
pub(crate) use edit::fields_and_body;
pub use edit::rewrite;
pub use engine::{Runtime, RuntimeSettings};
pub use error::{Fault, PluginError};
pub use host::{
    ArcSet, AuthEnvelope, AuthStatus, BoxFuture, ClockService, DkimService, DmarcPolicy, DnsAnswer, DnsFailure,
    DnsKind, DnsRecord, DnsService, HostServices, KvError, KvService, NoDkim, NoDns, NoKv, SealRequest, SignatureCheck,
    SystemClock, Verification,
};
pub use http::{HttpClient, HttpPolicy, HttpResponse, HttpService, NoHttp, ReplayHttp};
pub use load::{Capability, EntryKind, EntryMode, InstanceMode, OnError, PluginConfig, sha256_hex};
pub use message::ParsedMessage;
pub use outbound::{
    Answer, BounceDecision, DeferDecision, DeliverDecision, DeliveryFacts, Described, FailureFacts, OutboundStage,
};
pub use outcome::{Decision, HeaderField, HookContext, Modification, StageResult};
