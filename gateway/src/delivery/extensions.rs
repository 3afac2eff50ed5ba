//! What a next hop offers in its EHLO reply (RFC 5321 section 4.1.1.1),
//! as the outbound client needs it.

use crate::smtp::Reply;

/// What the server offered in its EHLO reply.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extensions {
    /// RFC 2920 PIPELINING.
    pub pipelining: bool,
    /// RFC 6152 8BITMIME.
    pub eight_bit_mime: bool,
    /// RFC 6531 SMTPUTF8.
    pub smtputf8: bool,
    /// RFC 3207 STARTTLS.
    pub starttls: bool,
    /// RFC 4954 AUTH PLAIN.
    pub auth_plain: bool,
    /// RFC 4954 AUTH LOGIN.
    pub auth_login: bool,
    /// RFC 1870 SIZE, when it names a limit.
    pub size: Option<u64>,
    /// RFC 3461 DSN: the next hop takes NOTIFY, ORCPT, RET and ENVID.
    pub dsn: bool,
    /// RFC 3030 CHUNKING: BDAT.
    pub chunking: bool,
    /// RFC 8689 REQUIRETLS.
    pub requiretls: bool,
}

impl Extensions {
    /// Reads the keywords of an EHLO reply.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut ext = Self::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "DSN" => ext.dsn = true,
                "CHUNKING" => ext.chunking = true,
                "REQUIRETLS" => ext.requiretls = true,
                "AUTH" => {
                    for mechanism in words.by_ref() {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            _ => {}
                        }
                    }
                }
                "SIZE" => ext.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                _ => {}
            }
        }
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_read_from_ehlo() {
        let reply = Reply::plain(
            250,
            vec![
                "mx".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8BITMIME".into(),
                "smtputf8".into(),
                "STARTTLS".into(),
                "AUTH LOGIN plain".into(),
                "dsn".into(),
                "CHUNKING".into(),
                "REQUIRETLS".into(),
            ],
        );
        let ext = Extensions::from_ehlo(&reply);
        assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8);
        assert!(ext.starttls && ext.auth_plain && ext.auth_login);
        assert_eq!(ext.size, Some(1000));
        assert!(ext.dsn && ext.chunking && ext.requiretls);
        assert!(!Extensions::from_ehlo(&Reply::plain(250, vec!["mx".into(), "DSNX".into()])).dsn);
    }
}
