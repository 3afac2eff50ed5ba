//! The ESMTP extensions this server offers in its EHLO reply (RFC 5321
//! section 4.1.1.1), in the order they are listed.

/// The EHLO keyword lines for a server whose message size limit is
/// `max_message_bytes` (RFC 1870 SIZE, RFC 2920 PIPELINING, RFC 6152
/// 8BITMIME, RFC 6531 SMTPUTF8, RFC 2034 ENHANCEDSTATUSCODES).
pub fn ehlo_keywords(max_message_bytes: u64) -> Vec<String> {
    vec![
        "PIPELINING".to_owned(),
        format!("SIZE {max_message_bytes}"),
        "8BITMIME".to_owned(),
        "SMTPUTF8".to_owned(),
        "ENHANCEDSTATUSCODES".to_owned(),
    ]
}
