//! `[admin]`: who may use the control endpoints (tokens, client
//! certificates), HTTPS on the admin listeners, and what the CLI presents.

use std::sync::Arc;

use super::Checker;
use super::raw::RawConfig;
use crate::admin::AdminAuth;
use crate::admin::tls::ClientTls;
use crate::server::tls::ServerTls;

impl Checker<'_> {
    /// `[admin]`'s credentials and certificate, and the rule that control
    /// endpoints outside loopback need credentials.
    pub(super) fn admin_auth(&mut self, raw: &RawConfig) -> AdminAuth {
        let admin = &raw.admin;
        let tokens_file = admin.tokens_file.as_ref().map(|file| {
            let path = self.resolve(file.get_ref());
            if let Err(e) = crate::admin::Tokens::load(&path) {
                self.problem(file, e);
            }
            path
        });
        let tls = match (&admin.tls_cert_file, &admin.tls_key_file) {
            (Some(cert), Some(key)) => {
                let ca = admin.client_ca_file.as_ref().and_then(|at| {
                    let path = self.resolve(at.get_ref());
                    match crate::delivery::tls::roots(Some(&path)) {
                        Ok(_) => Some(path),
                        Err(e) => {
                            self.problem(at, e);
                            None
                        }
                    }
                });
                let (cert_path, key_path) = (self.resolve(cert.get_ref()), self.resolve(key.get_ref()));
                match ServerTls::verifying_clients(&cert_path, &key_path, ca.as_deref()) {
                    Ok(tls) => Some(Arc::new(tls)),
                    Err(e) => {
                        self.problem(cert, e);
                        None
                    }
                }
            }
            (Some(cert), None) => {
                self.problem(cert, "a certificate needs its key file too (`admin.tls_key_file`)");
                None
            }
            (None, Some(key)) => {
                self.problem(key, "a key needs its certificate file too (`admin.tls_cert_file`)");
                None
            }
            (None, None) => None,
        };
        if let (Some(ca), None) = (&admin.client_ca_file, &admin.tls_cert_file) {
            self.problem(
                ca,
                "client certificates need HTTPS on the admin listeners: set `admin.tls_cert_file` and `admin.tls_key_file`",
            );
        }
        // The control endpoints are on `control_address`, else on `address`.
        let control = admin.control_address.as_ref().or(admin.address.as_ref());
        let authenticated = admin.tokens_file.is_some() || admin.client_ca_file.is_some();
        if let Some(at) = control
            && !authenticated
            && !at.get_ref().0.ip().is_loopback()
        {
            self.problem(
                at,
                "the control endpoints (queue, quarantine, reload) would be reachable from the network \
                 without authentication: set `admin.tokens_file` (`mailgate admin token add`) or \
                 `admin.client_ca_file`, or bind to loopback",
            );
        }
        AdminAuth {
            tokens_file,
            protect_metrics: admin.protect_metrics,
            client_token_file: admin.client_token_file.as_ref().map(|f| self.resolve(f)),
            client_certificates: admin.client_ca_file.is_some() && tls.is_some(),
            tls,
            client_tls: ClientTls {
                cert_file: admin.client_cert_file.as_ref().map(|f| self.resolve(f)),
                key_file: admin.client_key_file.as_ref().map(|f| self.resolve(f)),
                server_ca_file: admin.server_ca_file.as_ref().map(|f| self.resolve(f)),
            },
        }
    }
}
