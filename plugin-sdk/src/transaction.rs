//! The transaction as a hook sees it, and the modifications the hook asks for.

use std::cell::RefCell;

use crate::bindings::mailgate::plugin::types as wit;
use crate::types::{Client, Mailbox, NextHop, Notify, RcptParameters, ReversePath, Verdict};

/// What the gateway knows at a hook, plus the changes the hook asks for.
/// A change not allowed at the stage makes the gateway treat the plugin
/// as faulty, so each method says where it is allowed.
#[derive(Debug)]
pub struct Transaction {
    ctx: wit::Context,
    rcpt: Option<RcptParameters>,
    modifications: RefCell<Vec<wit::Modification>>,
}

impl Transaction {
    pub(crate) fn new(ctx: wit::Context) -> Self {
        Self {
            ctx,
            rcpt: None,
            modifications: RefCell::new(Vec::new()),
        }
    }

    pub(crate) fn with_rcpt(mut self, parameters: RcptParameters) -> Self {
        self.rcpt = Some(parameters);
        self
    }

    /// rcpt: the parameters of the RCPT being decided (DSN's NOTIFY and ORCPT).
    pub fn rcpt_parameters(&self) -> Option<&RcptParameters> {
        self.rcpt.as_ref()
    }

    pub(crate) fn into_outcome(self, verdict: Verdict) -> wit::Outcome {
        wit::Outcome {
            verdict: verdict.into(),
            modifications: self.modifications.into_inner(),
        }
    }

    fn push(&self, modification: wit::Modification) {
        self.modifications.borrow_mut().push(modification);
    }

    /// The SMTP client.
    pub fn client(&self) -> Client {
        let c = &self.ctx.client;
        Client {
            ip: c.ip.clone(),
            port: c.port,
            listener: c.listener.clone(),
            tls: c.tls,
            helo: c.helo.clone(),
            authenticated: c.authenticated.clone(),
        }
    }

    /// The reverse-path of MAIL FROM, once given.
    pub fn reverse_path(&self) -> Option<ReversePath> {
        self.ctx.reverse_path.as_deref().map(ReversePath::parse)
    }

    /// The recipients accepted so far.
    pub fn recipients(&self) -> Vec<Mailbox> {
        self.ctx.recipients.iter().cloned().map(Mailbox::new).collect()
    }

    /// A metadata value set by an earlier stage or plugin.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.ctx
            .metadata
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Any stage: sets a metadata value for later stages and plugins.
    pub fn set_metadata(&self, key: &str, value: &str) {
        self.push(wit::Modification::SetMetadata(wit::MetadataEntry {
            key: key.to_owned(),
            value: value.to_owned(),
        }));
    }

    /// mail, data: replaces the reverse-path ("" for the null path).
    pub fn set_reverse_path(&self, path: &str) {
        self.push(wit::Modification::SetReversePath(path.to_owned()));
    }

    /// rcpt: replaces the recipient being decided (its NOTIFY stays).
    pub fn set_recipient(&self, address: &str) {
        self.push(wit::Modification::SetRecipient(new_recipient(address, None)));
    }

    /// rcpt: replaces the recipient being decided and its DSN NOTIFY.
    pub fn set_recipient_notify(&self, address: &str, notify: Notify) {
        self.push(wit::Modification::SetRecipient(new_recipient(address, Some(notify))));
    }

    /// rcpt: routes the recipient being decided; data: routes every recipient.
    pub fn route(&self, hop: NextHop) {
        self.push(wit::Modification::Route(hop.into()));
    }

    /// data: routes one recipient.
    pub fn route_recipient(&self, recipient: &str, hop: NextHop) {
        self.push(wit::Modification::RouteRecipient(wit::RecipientRoute {
            recipient: recipient.to_owned(),
            next_hop: hop.into(),
        }));
    }

    /// data: adds a recipient (with the default NOTIFY: failures and delays).
    pub fn add_recipient(&self, address: &str) {
        self.push(wit::Modification::AddRecipient(new_recipient(address, None)));
    }

    /// data: adds a recipient with this DSN NOTIFY.
    pub fn add_recipient_notify(&self, address: &str, notify: Notify) {
        self.push(wit::Modification::AddRecipient(new_recipient(address, Some(notify))));
    }

    /// data: removes a recipient.
    pub fn remove_recipient(&self, address: &str) {
        self.push(wit::Modification::RemoveRecipient(address.to_owned()));
    }

    /// data: appends a header field.
    pub fn add_header(&self, name: &str, value: &str) {
        self.push(wit::Modification::AddHeader(wit::Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }));
    }

    /// data: removes every header field with this name.
    pub fn remove_header(&self, name: &str) {
        self.push(wit::Modification::RemoveHeader(name.to_owned()));
    }

    /// data: removes the `index`-th field (0-based) with this name, as
    /// [`crate::Message::header`] lists them.
    pub fn remove_header_at(&self, name: &str, index: u32) {
        self.push(wit::Modification::RemoveHeaderAt(wit::HeaderIndex {
            name: name.to_owned(),
            index,
        }));
    }

    /// data: replaces every header field with this name by one.
    pub fn set_header(&self, name: &str, value: &str) {
        self.push(wit::Modification::SetHeader(wit::Header {
            name: name.to_owned(),
            value: value.to_owned(),
        }));
    }

    /// data: replaces the body (everything after the header section).
    pub fn replace_body(&self, body: &[u8]) {
        self.push(wit::Modification::ReplaceBody(body.to_vec()));
    }
}
fn new_recipient(address: &str, notify: Option<Notify>) -> wit::NewRecipient {
    wit::NewRecipient {
        address: address.to_owned(),
        notify: notify.map(Into::into),
    }
}
