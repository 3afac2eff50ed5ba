//! The ESMTP extensions this server offers in its EHLO reply (RFC 5321
//! section 4.1.1.1), in the order they are listed.

/// What the listener and the connection's state allow to be offered.
#[derive(Clone, Copy, Debug)]
pub struct Offered {
    /// The message size limit (RFC 1870 SIZE).
    pub max_message_bytes: u64,
    /// RFC 3207 STARTTLS (the connection is in clear and a certificate is set).
    pub starttls: bool,
    /// RFC 4954 AUTH (inside TLS, on a listener that takes it).
    pub auth: bool,
    /// RFC 8689 REQUIRETLS (inside TLS only).
    pub requiretls: bool,
}

/// The EHLO keyword lines: RFC 2920 PIPELINING, SIZE, STARTTLS and AUTH
/// when offered, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 2034
/// ENHANCEDSTATUSCODES, RFC 3461 DSN, RFC 3030 CHUNKING, REQUIRETLS when
/// offered.
pub fn ehlo_keywords(offered: Offered) -> Vec<String> {
    let mut keywords = vec!["PIPELINING".to_owned(), format!("SIZE {}", offered.max_message_bytes)];
    if offered.starttls {
        keywords.push("STARTTLS".to_owned());
    }
    if offered.auth {
        keywords.push("AUTH PLAIN LOGIN".to_owned());
    }
    keywords.extend(["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "CHUNKING"].map(str::to_owned));
    if offered.requiretls {
        keywords.push("REQUIRETLS".to_owned());
    }
    keywords
}
