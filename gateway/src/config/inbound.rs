//! The inbound side of the configuration: the `[[listener]]`s with their
//! TLS, `[auth]`, and the server and session settings of `[server]`,
//! `[smtp]` and `[relay]`.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::Arc;

use toml::Spanned;

use super::raw::{self, RawConfig};
use super::{Checker, Problem};
use crate::server::auth::{AuthSettings, Authenticator};
use crate::server::policy::RelayPolicy;
use crate::server::tls::ServerTls;
use crate::server::{ListenerConfig, ListenerRole, ServerSettings};
use crate::smtp::Mailbox;
use crate::smtp::address::DomainPattern;
use crate::smtp::data::DataPolicy;
use crate::smtp::session::SessionConfig;

impl Checker<'_> {
    pub(super) fn listeners(&mut self, raw: &RawConfig) -> Vec<ListenerConfig> {
        if raw.listeners.is_empty() {
            self.problems
                .push(Problem::at(self.source, None, "at least one [[listener]] is required"));
        }
        let mut names = HashSet::new();
        let mut listeners = Vec::new();
        for listener in &raw.listeners {
            let inner = listener.get_ref();
            if !names.insert(inner.name.clone()) {
                self.problem(listener, format!("duplicate listener name {:?}", inner.name));
            }
            let role = inner.role.as_ref().map_or(ListenerRole::Relay, |r| *r.get_ref());
            // A certificate that is set but broken is reported where it is set.
            let (tls, broken) = match self.listener_tls(raw, inner) {
                Ok(tls) => (tls, false),
                Err(()) => (None, true),
            };
            if role != ListenerRole::Relay {
                let at = inner.role.as_ref().map(Spanned::span);
                if tls.is_none() && !broken {
                    self.problems.push(Problem::at(
                        self.source,
                        at.clone(),
                        format!(
                            "the {} role needs a certificate: set `tls_cert_file` and `tls_key_file`, or [tls]",
                            role.name()
                        ),
                    ));
                }
                if raw.auth.users_file.is_none() {
                    self.problems.push(Problem::at(
                        self.source,
                        at,
                        format!("the {} role needs AUTH: set `auth.users_file`", role.name()),
                    ));
                }
            }
            listeners.push(ListenerConfig {
                name: Arc::from(inner.name.as_str()),
                address: inner.address.0,
                role,
                tls,
                proxy_protocol: inner.proxy_protocol,
                record: inner.record.as_deref().map(|dir| Arc::from(self.resolve(dir))),
            });
        }
        listeners
    }

    /// A listener's certificate: its own files, else `[tls]`'s; `Err` when
    /// they are set but unusable (the problem is recorded).
    pub(super) fn listener_tls(
        &mut self,
        raw: &RawConfig,
        listener: &raw::RawListener,
    ) -> Result<Option<Arc<ServerTls>>, ()> {
        let own = listener.tls_cert_file.is_some() || listener.tls_key_file.is_some();
        let (cert, key) = if own {
            (listener.tls_cert_file.as_ref(), listener.tls_key_file.as_ref())
        } else {
            (raw.tls.cert_file.as_ref(), raw.tls.key_file.as_ref())
        };
        let (cert, key) = match (cert, key) {
            (Some(cert), Some(key)) => (cert, key),
            (Some(cert), None) => {
                self.problem(cert, "a certificate needs its key file too");
                return Err(());
            }
            (None, Some(key)) => {
                self.problem(key, "a key needs its certificate file too");
                return Err(());
            }
            (None, None) => return Ok(None),
        };
        let files = (self.resolve(cert.get_ref()), self.resolve(key.get_ref()));
        if let Some(tls) = self.server_tls.get(&files) {
            return Ok(Some(Arc::clone(tls)));
        }
        match ServerTls::load(&files.0, &files.1) {
            Ok(tls) => {
                let tls = Arc::new(tls);
                self.server_tls.insert(files, Arc::clone(&tls));
                Ok(Some(tls))
            }
            Err(e) => {
                self.problem(cert, e);
                Err(())
            }
        }
    }

    /// `value` as a count that must be at least 1; `key` names it in the problem.
    pub(super) fn at_least_one(&mut self, value: usize, key: &str) -> NonZeroUsize {
        NonZeroUsize::new(value).unwrap_or_else(|| {
            self.problems
                .push(Problem::at(self.source, None, format!("`{key}` must be at least 1")));
            NonZeroUsize::MIN
        })
    }

    pub(super) fn authenticator(&mut self, raw: &RawConfig) -> Option<Arc<Authenticator>> {
        let auth = &raw.auth;
        if *auth.max_failures.get_ref() == 0 {
            self.problem(&auth.max_failures, "must be at least 1");
        }
        let file = auth.users_file.as_ref()?;
        let settings = AuthSettings {
            users_file: self.resolve(file.get_ref()),
            failure_delay: auth.failure_delay.0,
            max_failures: (*auth.max_failures.get_ref()).max(1),
            failure_window: auth.failure_window.0,
        };
        match Authenticator::new(settings) {
            Ok(authenticator) => Some(Arc::new(authenticator)),
            Err(e) => {
                self.problem(file, e);
                None
            }
        }
    }

    pub(super) fn server_settings(&mut self, raw: &RawConfig, hostname: String) -> ServerSettings {
        let smtp = &raw.smtp;
        let max_recipients = *smtp.max_recipients.get_ref();
        if max_recipients < 100 {
            self.problem(
                &smtp.max_recipients,
                "must be at least 100 (RFC 5321 section 4.5.3.1.8)",
            );
        }
        let mut accepted_domains = Vec::new();
        for pattern in &raw.relay.accepted_domains {
            match DomainPattern::parse(pattern.get_ref()) {
                Ok(p) => accepted_domains.push(p),
                Err(e) => self.problem(pattern, e),
            }
        }
        let max_connections = self.at_least_one(raw.server.max_connections, "server.max_connections");
        let max_connections_per_ip =
            self.at_least_one(raw.server.max_connections_per_ip, "server.max_connections_per_ip");
        let max_hops = *smtp.max_hops.get_ref();
        if max_hops < 10 {
            self.problem(
                &smtp.max_hops,
                "must be at least 10 (RFC 5321 section 6.3 asks for 100)",
            );
        }
        let postmaster = self.postmaster(raw, &hostname);
        let connection_limit_exempt = raw
            .server
            .connection_limit_exempt
            .as_ref()
            .unwrap_or(&raw.relay.trusted_networks)
            .iter()
            .map(|n| n.0)
            .collect();
        ServerSettings {
            chain: None,
            session: Arc::new(SessionConfig {
                hostname,
                max_recipients,
                data: DataPolicy {
                    max_bytes: smtp.max_message_bytes,
                    bare_line_endings: smtp.bare_line_endings,
                    long_lines: smtp.long_lines,
                    max_hops,
                },
                max_errors: smtp.max_errors,
                max_idle_commands: smtp.max_idle_commands,
                postmaster,
            }),
            connection_limit_exempt,
            command_timeout: smtp.command_timeout.0,
            data_timeout: smtp.data_timeout.0,
            max_connections,
            max_connections_per_ip,
            relay: RelayPolicy::new(
                accepted_domains,
                raw.relay.trusted_networks.iter().map(|n| n.0).collect(),
            ),
            auth: self.authenticator(raw),
            user_message_limit: raw.auth.user_message_limit,
            user_message_window: raw.auth.user_message_window.0,
        }
    }

    /// `server.postmaster`, or `postmaster@<hostname>`.
    pub(super) fn postmaster(&mut self, raw: &RawConfig, hostname: &str) -> Mailbox {
        match &raw.server.postmaster {
            Some(text) => Mailbox::parse(text.get_ref()).unwrap_or_else(|e| {
                self.problem(text, format!("invalid address: {e}"));
                Mailbox::local_postmaster()
            }),
            // An unusable host name is reported on its own key.
            None => Mailbox::parse(&format!("postmaster@{hostname}")).unwrap_or_else(|_| Mailbox::local_postmaster()),
        }
    }
}
