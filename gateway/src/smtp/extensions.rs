//! The ESMTP extensions this server offers in its EHLO reply (RFC 5321
//! section 4.1.1.1), in the order they are listed.

/// The EHLO keyword lines for a server whose message size limit is
/// `max_message_bytes` (RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 6152
/// 8BITMIME, RFC 6531 SMTPUTF8, RFC 2034 ENHANCEDSTATUSCODES), with
/// RFC 3207 STARTTLS and RFC 4954 AUTH when they are offered.
pub fn ehlo_keywords(max_message_bytes: u64, starttls: bool, auth: bool) -> Vec<String> {
    let mut keywords = vec!["PIPELINING".to_owned(), format!("SIZE {max_message_bytes}")];
    if starttls {
        keywords.push("STARTTLS".to_owned());
    }
    if auth {
        keywords.push("AUTH PLAIN LOGIN".to_owned());
    }
    keywords.extend(["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"].map(str::to_owned));
    keywords
}
