//! Plugins built against `mailgate:plugin@0.1.0`, served beside the
//! current package version (the promise of DESIGN section 4: a new version
//! adds, and an old plugin keeps loading and working).
//!
//! The 0.1.0 capabilities are the current ones under their old names: each
//! import here converts its values and delegates to the current host code
//! in `imports.rs`. The 0.1.0 hooks see the stages as 0.1.0 described them:
//! MAIL's parameters without the DSN and REQUIRETLS fields, RCPT without
//! its parameters; recipients they add or set keep the default NOTIFY.

use wasmtime::component::Resource;

use super::bindings::mailgate::plugin as now;
use super::bindings::v0_1::exports::mailgate::plugin::hooks as old_hooks;
use super::bindings::v0_1::mailgate::plugin as old;
use super::message::MessageHandle;
use super::state::State;

/// `From` between an enum of one version and the same enum of the other.
macro_rules! same_enum {
    ($from:ident :: $m:ident => $to:ident, $t:ident { $($case:ident),* $(,)? }) => {
        impl From<$from::$m::$t> for $to::$m::$t {
            fn from(value: $from::$m::$t) -> Self {
                match value {
                    $($from::$m::$t::$case => Self::$case),*
                }
            }
        }
    };
}

/// `From` between a record of one version and the same record of the
/// other, field by field.
macro_rules! same_record {
    ($from:ident :: $m:ident => $to:ident, $t:ident { $($field:ident),* $(,)? }) => {
        impl From<$from::$m::$t> for $to::$m::$t {
            fn from(value: $from::$m::$t) -> Self {
                Self { $($field: value.$field.into()),* }
            }
        }
    };
}

same_enum!(old::log => now, Level { Trace, Debug, Info, Warn, Error });
same_enum!(now::dkim => old, Status { None, Pass, Fail, Softfail, Neutral, Temperror, Permerror });
same_enum!(old::dkim => now, Status { None, Pass, Fail, Softfail, Neutral, Temperror, Permerror });
same_enum!(now::dkim => old, Policy { Unspecified, None, Quarantine, Reject });
same_enum!(now::types => old, BodyType { SevenBit, EightBitMime });
same_record!(now::dns => old, MxRecord { preference, exchange });
same_record!(now::types => old, Header { name, value });
same_record!(old::types => now, Header { name, value });
same_record!(now::types => old, MetadataEntry { key, value });
same_record!(old::types => now, MetadataEntry { key, value });
same_record!(old::types => now, HeaderIndex { name, index });
same_record!(old::types => now, Reply { code, enhanced, text });
same_record!(now::types => old, Client { ip, port, listener, tls, helo, authenticated });
same_record!(now::dkim => old, Signature { domain, selector, status, reason });
same_record!(
    now::types => old,
    Part { index, content_type, filename, size, raw_offset, raw_length, transfer_encoding, is_attachment }
);

impl From<now::dns::Error> for old::dns::Error {
    fn from(error: now::dns::Error) -> Self {
        match error {
            now::dns::Error::NoSuchName => Self::NoSuchName,
            now::dns::Error::Invalid(reason) => Self::Invalid(reason),
            now::dns::Error::Temporary(reason) => Self::Temporary(reason),
        }
    }
}

impl From<now::types::Context> for old::types::Context {
    fn from(ctx: now::types::Context) -> Self {
        Self {
            client: ctx.client.into(),
            reverse_path: ctx.reverse_path,
            recipients: ctx.recipients,
            metadata: converted(ctx.metadata),
        }
    }
}

impl From<now::types::MailParameters> for old::types::MailParameters {
    fn from(parameters: now::types::MailParameters) -> Self {
        Self {
            size: parameters.size,
            body: parameters.body.into(),
            smtputf8: parameters.smtputf8,
        }
    }
}

impl From<old::types::NextHop> for now::types::NextHop {
    fn from(hop: old::types::NextHop) -> Self {
        match hop {
            old::types::NextHop::Route(name) => Self::Route(name),
            old::types::NextHop::Smarthost(host) => Self::Smarthost(host),
        }
    }
}

impl From<old::types::Verdict> for now::types::Verdict {
    fn from(verdict: old::types::Verdict) -> Self {
        use old::types::Verdict as V;
        match verdict {
            V::Continue => Self::Continue,
            V::Accept => Self::Accept,
            V::Reject(reply) => Self::Reject(reply.into()),
            V::Tempfail(reply) => Self::Tempfail(reply.into()),
            V::Disconnect(reply) => Self::Disconnect(reply.into()),
            V::Discard => Self::Discard,
            V::Quarantine(reason) => Self::Quarantine(reason),
        }
    }
}

/// A recipient as 0.1.0 names one: with the default NOTIFY.
fn recipient(address: String) -> now::types::NewRecipient {
    now::types::NewRecipient { address, notify: None }
}

impl From<old::types::Modification> for now::types::Modification {
    fn from(m: old::types::Modification) -> Self {
        use old::types::Modification as M;
        match m {
            M::SetReversePath(path) => Self::SetReversePath(path),
            M::SetRecipient(address) => Self::SetRecipient(recipient(address)),
            M::Route(hop) => Self::Route(hop.into()),
            M::RouteRecipient(r) => Self::RouteRecipient(now::types::RecipientRoute {
                recipient: r.recipient,
                next_hop: r.next_hop.into(),
            }),
            M::AddRecipient(address) => Self::AddRecipient(recipient(address)),
            M::RemoveRecipient(address) => Self::RemoveRecipient(address),
            M::AddHeader(h) => Self::AddHeader(h.into()),
            M::RemoveHeader(name) => Self::RemoveHeader(name),
            M::RemoveHeaderAt(at) => Self::RemoveHeaderAt(at.into()),
            M::SetHeader(h) => Self::SetHeader(h.into()),
            M::ReplaceBody(body) => Self::ReplaceBody(body),
            M::SetMetadata(entry) => Self::SetMetadata(entry.into()),
        }
    }
}

/// A 0.1.0 hook's outcome in the current types, for the same checks.
pub fn outcome(outcome: old_hooks::Outcome) -> now::types::Outcome {
    now::types::Outcome {
        verdict: outcome.verdict.into(),
        modifications: converted(outcome.modifications),
    }
}

fn converted<A, B: From<A>>(values: Vec<A>) -> Vec<B> {
    values.into_iter().map(Into::into).collect()
}

impl old::types::Host for State {}

impl old::types::HostMessage for State {
    async fn size(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<u64> {
        now::types::HostMessage::size(self, this).await
    }

    async fn headers(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<old::types::Header>> {
        Ok(converted(now::types::HostMessage::headers(self, this).await?))
    }

    async fn header(&mut self, this: Resource<MessageHandle>, name: String) -> wasmtime::Result<Vec<String>> {
        now::types::HostMessage::header(self, this, name).await
    }

    async fn parts(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<old::types::Part>> {
        Ok(converted(now::types::HostMessage::parts(self, this).await?))
    }

    async fn text(&mut self, this: Resource<MessageHandle>, index: u32) -> wasmtime::Result<Option<String>> {
        now::types::HostMessage::text(self, this, index).await
    }

    async fn read_body(
        &mut self,
        this: Resource<MessageHandle>,
        offset: u64,
        length: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        now::types::HostMessage::read_body(self, this, offset, length).await
    }

    async fn drop(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<()> {
        now::types::HostMessage::drop(self, this).await
    }
}

impl old::log::Host for State {
    async fn write(&mut self, level: old::log::Level, message: String) -> wasmtime::Result<()> {
        now::log::Host::write(self, level.into(), message).await
    }
}

impl old::clock::Host for State {
    async fn now_millis(&mut self) -> wasmtime::Result<u64> {
        now::clock::Host::now_millis(self).await
    }

    async fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        now::clock::Host::monotonic_nanos(self).await
    }
}

/// A current DNS result in 0.1.0's types.
fn dns_result<A, B: From<A>>(
    result: Result<Vec<A>, now::dns::Error>,
) -> wasmtime::Result<Result<Vec<B>, old::dns::Error>> {
    Ok(result.map(converted).map_err(Into::into))
}

impl old::dns::Host for State {
    async fn a(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, old::dns::Error>> {
        dns_result(now::dns::Host::a(self, name).await?)
    }

    async fn aaaa(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, old::dns::Error>> {
        dns_result(now::dns::Host::aaaa(self, name).await?)
    }

    async fn mx(&mut self, name: String) -> wasmtime::Result<Result<Vec<old::dns::MxRecord>, old::dns::Error>> {
        dns_result(now::dns::Host::mx(self, name).await?)
    }

    async fn txt(&mut self, name: String) -> wasmtime::Result<Result<Vec<String>, old::dns::Error>> {
        dns_result(now::dns::Host::txt(self, name).await?)
    }

    async fn ptr(&mut self, ip: String) -> wasmtime::Result<Result<Vec<String>, old::dns::Error>> {
        dns_result(now::dns::Host::ptr(self, ip).await?)
    }
}

impl old::kv::Host for State {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, String>> {
        now::kv::Host::get(self, key).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_seconds: u32) -> wasmtime::Result<Result<(), String>> {
        now::kv::Host::set(self, key, value, ttl_seconds).await
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_seconds: u32) -> wasmtime::Result<Result<i64, String>> {
        now::kv::Host::increment(self, key, delta, ttl_seconds).await
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), String>> {
        now::kv::Host::delete(self, key).await
    }
}

impl old::metrics::Host for State {
    async fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) -> wasmtime::Result<()> {
        now::metrics::Host::counter_add(self, name, labels, value).await
    }

    async fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<()> {
        now::metrics::Host::histogram_observe(self, name, labels, value).await
    }
}

impl old::dkim::Host for State {
    async fn sign(
        &mut self,
        message: Resource<MessageHandle>,
        domain: String,
    ) -> wasmtime::Result<Result<Vec<old::types::Header>, String>> {
        Ok(now::dkim::Host::sign(self, message, domain).await?.map(converted))
    }

    async fn verify(
        &mut self,
        message: Resource<MessageHandle>,
        envelope: old::dkim::Envelope,
    ) -> wasmtime::Result<old::dkim::Verification> {
        let envelope = now::dkim::Envelope {
            client_ip: envelope.client_ip,
            helo: envelope.helo,
            mail_from: envelope.mail_from,
            spf: envelope.spf.map(Into::into),
        };
        let v = now::dkim::Host::verify(self, message, envelope).await?;
        Ok(old::dkim::Verification {
            signatures: converted(v.signatures),
            spf: v.spf.into(),
            dmarc: v.dmarc.into(),
            dmarc_domain: v.dmarc_domain,
            dmarc_policy: v.dmarc_policy.into(),
            authserv_id: v.authserv_id,
            authentication_results: v.authentication_results,
        })
    }
}
