//! Conversions between the WIT types and the gateway's, and the checks
//! that make a plugin's outcome legal: reply codes that fit the verdict,
//! enhanced codes of the right class, and modifications allowed at the
//! stage with well-formed values. Anything else is a plugin fault.

use std::collections::HashSet;

use super::bindings::mailgate::plugin::types as wit;
use super::outcome::{HeaderField, HookContext, Modification};
use crate::queue::RouteOverride;
use crate::smtp::command::{BodyType, MailParameters};
use crate::smtp::dsn::{Notify, RcptDsn, Ret};
use crate::smtp::session::Stage;
use crate::smtp::{EnhancedCode, Mailbox, Reply, ReversePath};

/// Longest metadata key and value, header value, in octets.
const MAX_KEY: usize = 256;
const MAX_VALUE: usize = 64 * 1024;

/// One plugin's verdict, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No opinion.
    Continue,
    /// The stage succeeds; stop asking plugins.
    Accept,
    /// Refuse with a 5xx.
    Reject(Reply),
    /// Refuse with a 4xx.
    Tempfail(Reply),
    /// Reply 421 or 554 and close.
    Disconnect(Reply),
    /// Accept and drop (data).
    Discard,
    /// Accept and quarantine (data).
    Quarantine(String),
    /// Accept and queue on hold (data).
    Hold(String),
}

impl Verdict {
    /// Its name, as `mailgate_plugin_calls_total` labels it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Accept => "accept",
            Self::Reject(_) => "reject",
            Self::Tempfail(_) => "tempfail",
            Self::Disconnect(_) => "disconnect",
            Self::Discard => "discard",
            Self::Quarantine(_) => "quarantine",
            Self::Hold(_) => "hold",
        }
    }
}

/// The WIT context for a hook.
pub fn context(ctx: &HookContext) -> wit::Context {
    wit::Context {
        client: wit::Client {
            ip: ctx.client.ip().to_canonical().to_string(),
            port: ctx.client.port(),
            listener: ctx.listener.to_string(),
            tls: ctx.tls,
            helo: ctx.helo.clone(),
            authenticated: ctx.authenticated.clone(),
        },
        reverse_path: ctx.reverse_path.as_ref().map(ToString::to_string),
        recipients: ctx.recipients.iter().map(ToString::to_string).collect(),
        metadata: ctx
            .metadata
            .iter()
            .map(|(key, value)| wit::MetadataEntry {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

/// The WIT form of MAIL FROM's parameters.
pub fn mail_parameters(parameters: &MailParameters) -> wit::MailParameters {
    wit::MailParameters {
        size: parameters.size,
        body: match parameters.body {
            BodyType::SevenBit => wit::BodyType::SevenBit,
            BodyType::EightBitMime => wit::BodyType::EightBitMime,
        },
        smtputf8: parameters.smtputf8,
        ret: parameters.dsn.ret.map(|ret| match ret {
            Ret::Full => wit::DsnRet::Full,
            Ret::Hdrs => wit::DsnRet::Hdrs,
        }),
        envid: parameters.dsn.envid.clone(),
        requiretls: parameters.requiretls,
    }
}

/// The WIT form of RCPT TO's parameters.
pub fn rcpt_parameters(dsn: &RcptDsn) -> wit::RcptParameters {
    wit::RcptParameters {
        notify: dsn.notify.map(notify_to_wit),
        orcpt: dsn.orcpt.as_ref().map(|orcpt| wit::OriginalRecipient {
            addr_type: orcpt.addr_type.clone(),
            address: orcpt.address.clone(),
        }),
    }
}

fn notify_to_wit(notify: Notify) -> wit::Notify {
    match notify {
        Notify::Never => wit::Notify::empty(),
        Notify::On {
            success,
            failure,
            delay,
        } => [
            (success, wit::Notify::SUCCESS),
            (failure, wit::Notify::FAILURE),
            (delay, wit::Notify::DELAY),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(wit::Notify::empty(), |all, (_, flag)| all | flag),
    }
}

fn notify_from_wit(notify: wit::Notify) -> Notify {
    if notify == wit::Notify::empty() {
        return Notify::Never;
    }
    Notify::On {
        success: notify.contains(wit::Notify::SUCCESS),
        failure: notify.contains(wit::Notify::FAILURE),
        delay: notify.contains(wit::Notify::DELAY),
    }
}

fn new_recipient(rcpt: wit::NewRecipient) -> Result<(Mailbox, Option<Notify>), String> {
    Ok((mailbox(&rcpt.address)?, rcpt.notify.map(notify_from_wit)))
}

/// Checks an outcome returned at `stage`. `routes` are the configured
/// route names a plugin may route to.
pub fn outcome(
    outcome: wit::Outcome,
    stage: Stage,
    routes: &HashSet<String>,
) -> Result<(Verdict, Vec<Modification>), String> {
    let verdict = verdict(outcome.verdict, stage)?;
    let modifications = outcome
        .modifications
        .into_iter()
        .map(|m| modification(m, stage, routes))
        .collect::<Result<_, _>>()?;
    Ok((verdict, modifications))
}

fn verdict(verdict: wit::Verdict, stage: Stage) -> Result<Verdict, String> {
    Ok(match verdict {
        wit::Verdict::Continue => Verdict::Continue,
        wit::Verdict::Accept => Verdict::Accept,
        wit::Verdict::Reject(r) => Verdict::Reject(reply(r, "reject", |code| (500..600).contains(&code))?),
        wit::Verdict::Tempfail(r) => Verdict::Tempfail(reply(r, "tempfail", |code| (400..500).contains(&code))?),
        wit::Verdict::Disconnect(r) => Verdict::Disconnect(reply(r, "disconnect", |code| code == 421 || code == 554)?),
        wit::Verdict::Discard if stage == Stage::Data => Verdict::Discard,
        wit::Verdict::Quarantine(reason) if stage == Stage::Data => Verdict::Quarantine(reason),
        wit::Verdict::Hold(reason) if stage == Stage::Data => Verdict::Hold(reason),
        wit::Verdict::Discard | wit::Verdict::Quarantine(_) | wit::Verdict::Hold(_) => {
            return Err(format!(
                "discard, quarantine and hold are for the data stage, not {}",
                stage.name()
            ));
        }
    })
}

fn reply(reply: wit::Reply, verdict: &str, allowed: impl Fn(u16) -> bool) -> Result<Reply, String> {
    if !allowed(reply.code) {
        return Err(format!("a {verdict} verdict cannot carry reply code {}", reply.code));
    }
    let class = u8::try_from(reply.code / 100).unwrap_or(0);
    let enhanced = match reply.enhanced.as_deref() {
        Some(text) => EnhancedCode::parse(text)
            .filter(|e| e.class() == class)
            .ok_or_else(|| format!("enhanced status code {text:?} does not fit reply code {}", reply.code))?,
        None if class == 5 => EnhancedCode::new(5, 7, 1),
        None => EnhancedCode::new(4, 7, 0),
    };
    Ok(Reply::new(reply.code, enhanced, reply.text))
}

fn modification(m: wit::Modification, stage: Stage, routes: &HashSet<String>) -> Result<Modification, String> {
    use wit::Modification as M;
    // Which modification is legal at which stage (DESIGN section 3).
    let legal = matches!(
        (&m, stage),
        (M::SetMetadata(_), _)
            | (M::SetReversePath(_), Stage::Mail | Stage::Data)
            | (M::SetRecipient(_), Stage::Rcpt)
            | (M::Route(_), Stage::Rcpt | Stage::Data)
            | (
                M::RouteRecipient(_)
                    | M::AddRecipient(_)
                    | M::RemoveRecipient(_)
                    | M::AddHeader(_)
                    | M::RemoveHeader(_)
                    | M::RemoveHeaderAt(_)
                    | M::SetHeader(_)
                    | M::ReplaceBody(_),
                Stage::Data,
            )
    );
    if !legal {
        return Err(format!(
            "modification {} is not allowed at the {} stage",
            name(&m),
            stage.name()
        ));
    }
    Ok(match m {
        M::SetReversePath(path) => Modification::SetReversePath(reverse_path(&path)?),
        M::SetRecipient(rcpt) => {
            let (address, notify) = new_recipient(rcpt)?;
            Modification::SetRecipient(address, notify)
        }
        M::Route(hop) => Modification::Route(next_hop(hop, routes)?),
        M::RouteRecipient(r) => Modification::RouteRecipient(mailbox(&r.recipient)?, next_hop(r.next_hop, routes)?),
        M::AddRecipient(rcpt) => {
            let (address, notify) = new_recipient(rcpt)?;
            Modification::AddRecipient(address, notify)
        }
        M::RemoveRecipient(rcpt) => Modification::RemoveRecipient(mailbox(&rcpt)?),
        M::AddHeader(h) => Modification::AddHeader(header(h)?),
        M::SetHeader(h) => Modification::SetHeader(header(h)?),
        M::RemoveHeader(name) => Modification::RemoveHeader(header_name(name)?),
        M::RemoveHeaderAt(at) => Modification::RemoveHeaderAt(header_name(at.name)?, at.index),
        M::ReplaceBody(body) => Modification::ReplaceBody(canonical_line_endings(&body)),
        M::SetMetadata(entry) => {
            if entry.key.is_empty() || entry.key.len() > MAX_KEY || entry.value.len() > MAX_VALUE {
                return Err("metadata key must be 1 to 256 octets and the value at most 64 KiB".into());
            }
            Modification::SetMetadata(entry.key, entry.value)
        }
    })
}

fn name(m: &wit::Modification) -> &'static str {
    use wit::Modification as M;
    match m {
        M::SetReversePath(_) => "set-reverse-path",
        M::SetRecipient(_) => "set-recipient",
        M::Route(_) => "route",
        M::RouteRecipient(_) => "route-recipient",
        M::AddRecipient(_) => "add-recipient",
        M::RemoveRecipient(_) => "remove-recipient",
        M::AddHeader(_) => "add-header",
        M::RemoveHeader(_) => "remove-header",
        M::RemoveHeaderAt(_) => "remove-header-at",
        M::SetHeader(_) => "set-header",
        M::ReplaceBody(_) => "replace-body",
        M::SetMetadata(_) => "set-metadata",
    }
}

pub(crate) fn mailbox(text: &str) -> Result<Mailbox, String> {
    Mailbox::parse(text).map_err(|e| format!("invalid address {text:?}: {e}"))
}

fn reverse_path(text: &str) -> Result<ReversePath, String> {
    if text.is_empty() {
        Ok(ReversePath::Null)
    } else {
        mailbox(text).map(ReversePath::Mailbox)
    }
}

pub(super) fn next_hop(hop: wit::NextHop, routes: &HashSet<String>) -> Result<RouteOverride, String> {
    match hop {
        wit::NextHop::Route(name) if routes.contains(&name) => Ok(RouteOverride::Named(name)),
        wit::NextHop::Route(name) => Err(format!("no route named {name:?} in the configuration")),
        wit::NextHop::Smarthost(text) => RouteOverride::parse_smarthost(&text),
    }
}

pub(crate) fn header_name(name: String) -> Result<String, String> {
    let valid = !name.is_empty() && name.len() <= MAX_KEY && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if valid {
        Ok(name)
    } else {
        Err(format!("invalid header field name {name:?}"))
    }
}

fn header(h: wit::Header) -> Result<HeaderField, String> {
    let name = header_name(h.name)?;
    if h.value.len() > MAX_VALUE || h.value.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "invalid value for header {name}: no CR, LF or NUL, at most 64 KiB"
        ));
    }
    Ok(HeaderField { name, value: h.value })
}

/// Makes every line end in CRLF, so that relaying stays exact.
pub(crate) fn canonical_line_endings(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> HashSet<String> {
        HashSet::from(["relay".to_owned()])
    }

    fn with(verdict: wit::Verdict, modifications: Vec<wit::Modification>) -> wit::Outcome {
        wit::Outcome { verdict, modifications }
    }

    fn wit_reply(code: u16, enhanced: Option<&str>) -> wit::Reply {
        wit::Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: "text".into(),
        }
    }

    #[test]
    fn reply_codes_must_fit_the_verdict() {
        let ok = outcome(
            with(wit::Verdict::Reject(wit_reply(550, Some("5.7.1"))), vec![]),
            Stage::Rcpt,
            &routes(),
        );
        assert_eq!(
            ok.unwrap().0,
            Verdict::Reject(Reply::new(550, EnhancedCode::new(5, 7, 1), "text"))
        );
        for bad in [
            wit::Verdict::Reject(wit_reply(250, None)),
            wit::Verdict::Reject(wit_reply(451, None)),
            wit::Verdict::Tempfail(wit_reply(550, None)),
            wit::Verdict::Reject(wit_reply(550, Some("4.7.1"))),
            wit::Verdict::Reject(wit_reply(550, Some("5.7"))),
            wit::Verdict::Disconnect(wit_reply(450, None)),
        ] {
            assert!(
                outcome(with(bad.clone(), vec![]), Stage::Rcpt, &routes()).is_err(),
                "{bad:?}"
            );
        }
        let defaulted = outcome(
            with(wit::Verdict::Tempfail(wit_reply(451, None)), vec![]),
            Stage::Mail,
            &routes(),
        );
        assert_eq!(
            defaulted.unwrap().0,
            Verdict::Tempfail(Reply::new(451, EnhancedCode::new(4, 7, 0), "text"))
        );
    }

    #[test]
    fn discard_and_quarantine_only_at_data() {
        assert!(outcome(with(wit::Verdict::Discard, vec![]), Stage::Rcpt, &routes()).is_err());
        assert!(
            outcome(
                with(wit::Verdict::Quarantine("x".into()), vec![]),
                Stage::Mail,
                &routes()
            )
            .is_err()
        );
        assert!(outcome(with(wit::Verdict::Discard, vec![]), Stage::Data, &routes()).is_ok());
    }

    #[test]
    fn modifications_are_checked_per_stage() {
        let header = || {
            wit::Modification::AddHeader(wit::Header {
                name: "X-Test".into(),
                value: "1".into(),
            })
        };
        assert!(outcome(with(wit::Verdict::Continue, vec![header()]), Stage::Rcpt, &routes()).is_err());
        assert!(outcome(with(wit::Verdict::Continue, vec![header()]), Stage::Data, &routes()).is_ok());
        let rewrite = wit::Modification::SetRecipient(wit::NewRecipient {
            address: "new@y.test".into(),
            notify: Some(wit::Notify::SUCCESS | wit::Notify::FAILURE),
        });
        assert!(
            outcome(
                with(wit::Verdict::Continue, vec![rewrite.clone()]),
                Stage::Rcpt,
                &routes()
            )
            .is_ok()
        );
        assert!(outcome(with(wit::Verdict::Continue, vec![rewrite]), Stage::Mail, &routes()).is_err());
        let meta = wit::Modification::SetMetadata(wit::MetadataEntry {
            key: "k".into(),
            value: "v".into(),
        });
        for stage in [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data] {
            assert!(outcome(with(wit::Verdict::Continue, vec![meta.clone()]), stage, &routes()).is_ok());
        }
    }

    #[test]
    fn notify_crosses_the_boundary_both_ways() {
        for notify in [
            Notify::Never,
            Notify::On {
                success: true,
                failure: false,
                delay: true,
            },
            Notify::On {
                success: false,
                failure: true,
                delay: false,
            },
        ] {
            assert_eq!(notify_from_wit(notify_to_wit(notify)), notify);
        }
        let added = wit::Modification::AddRecipient(wit::NewRecipient {
            address: "x@y.test".into(),
            notify: Some(wit::Notify::empty()),
        });
        let (_, modifications) = outcome(with(wit::Verdict::Continue, vec![added]), Stage::Data, &routes()).unwrap();
        assert_eq!(
            modifications,
            [Modification::AddRecipient(
                Mailbox::parse("x@y.test").unwrap(),
                Some(Notify::Never)
            )]
        );
    }

    #[test]
    fn values_are_checked() {
        let bad = [
            wit::Modification::SetRecipient(wit::NewRecipient {
                address: "not an address".into(),
                notify: None,
            }),
            wit::Modification::Route(wit::NextHop::Route("unknown".into())),
            wit::Modification::Route(wit::NextHop::Smarthost("host:99999".into())),
            wit::Modification::SetHeader(wit::Header {
                name: "Bad:Name".into(),
                value: "v".into(),
            }),
            wit::Modification::SetHeader(wit::Header {
                name: "X-Inject".into(),
                value: "v\r\nBcc: victim@x.test".into(),
            }),
        ];
        for m in bad {
            assert!(
                outcome(with(wit::Verdict::Continue, vec![m.clone()]), Stage::Data, &routes()).is_err(),
                "{m:?}"
            );
        }
        let (_, mods) = outcome(
            with(
                wit::Verdict::Continue,
                vec![
                    wit::Modification::Route(wit::NextHop::Route("relay".into())),
                    wit::Modification::SetReversePath(String::new()),
                ],
            ),
            Stage::Data,
            &routes(),
        )
        .unwrap();
        assert_eq!(mods[0], Modification::Route(RouteOverride::Named("relay".into())));
        assert_eq!(mods[1], Modification::SetReversePath(ReversePath::Null));
    }

    #[test]
    fn replaced_bodies_get_crlf_line_endings() {
        assert_eq!(canonical_line_endings(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(canonical_line_endings(b""), b"");
    }
}
