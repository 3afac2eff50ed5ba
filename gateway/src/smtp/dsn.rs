//! The DSN extension's parameters (RFC 3461): `RET` and `ENVID` on MAIL,
//! `NOTIFY` and `ORCPT` on RCPT, with xtext (section 4) decoding and
//! encoding. They travel with the envelope through the spool, are passed
//! to next hops that offer DSN, and govern the reports this server writes.

use serde::{Deserialize, Serialize};

use super::command::ProtocolError;

/// The longest `ENVID` value, decoded (RFC 3461 section 4.4: 100 octets).
pub const MAX_ENVID: usize = 100;
/// The longest `ORCPT` address, decoded (RFC 3461 section 4.2: the 500
/// octets of the whole parameter minus its keyword and type).
pub const MAX_ORCPT: usize = 490;

/// What a failure report returns of the message (`RET=`, section 4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: its header section only.
    Hdrs,
}

impl Ret {
    /// The keyword as sent on the wire.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Hdrs => "HDRS",
        }
    }
}

/// The `MAIL` side of DSN: absent values mean the client sent none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailDsn {
    /// `RET=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

impl MailDsn {
    /// True when neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none()
    }

    /// The parameters as they go on a `MAIL` command to a next hop that
    /// offers DSN (each with its leading space).
    pub fn wire(&self) -> String {
        let mut out = String::new();
        if let Some(ret) = self.ret {
            out.push_str(" RET=");
            out.push_str(ret.keyword());
        }
        if let Some(envid) = &self.envid {
            out.push_str(" ENVID=");
            out.push_str(&xtext_encode(envid));
        }
        out
    }
}

/// When the sender wants to hear about a recipient (`NOTIFY=`, section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// `NOTIFY=NEVER`: no report at all.
    Never,
    /// Some of SUCCESS, FAILURE and DELAY.
    On {
        /// `SUCCESS`: report delivery (or relay to a next hop without DSN).
        success: bool,
        /// `FAILURE`: report a failure.
        failure: bool,
        /// `DELAY`: report a delay.
        delay: bool,
    },
}

impl Notify {
    /// The keyword list as sent on the wire.
    pub fn keywords(self) -> String {
        match self {
            Self::Never => "NEVER".to_owned(),
            Self::On {
                success,
                failure,
                delay,
            } => [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, k)| *k)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    fn parse(value: &str) -> Result<Self, ProtocolError> {
        let bad = ProtocolError::Syntax("NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY");
        let words: Vec<String> = value.split(',').map(str::to_ascii_uppercase).collect();
        if words.len() == 1 && words[0] == "NEVER" {
            return Ok(Self::Never);
        }
        let (mut success, mut failure, mut delay) = (false, false, false);
        for word in &words {
            let slot = match word.as_str() {
                "SUCCESS" => &mut success,
                "FAILURE" => &mut failure,
                "DELAY" => &mut delay,
                // NEVER with anything else, an empty or an unknown keyword.
                _ => return Err(bad),
            };
            if *slot {
                return Err(bad);
            }
            *slot = true;
        }
        Ok(Self::On {
            success,
            failure,
            delay,
        })
    }
}

/// `ORCPT=addr-type;xtext` (section 4.2): the recipient as the original
/// sender gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822` (as given).
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

impl OriginalRecipient {
    /// The `Original-Recipient` field value of a report (RFC 3464 section 2.3.1).
    pub fn field(&self) -> String {
        format!("{};{}", self.addr_type, self.address)
    }

    fn parse(value: &str) -> Result<Self, ProtocolError> {
        let bad = ProtocolError::Syntax("ORCPT=addr-type;xtext");
        let (addr_type, text) = value.split_once(';').ok_or(bad.clone())?;
        let valid_type = !addr_type.is_empty() && addr_type.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_type {
            return Err(bad);
        }
        let address = xtext_decode(text).ok_or(ProtocolError::Syntax("ORCPT: invalid xtext"))?;
        if address.is_empty() || address.len() > MAX_ORCPT {
            return Err(bad);
        }
        Ok(Self {
            addr_type: addr_type.to_owned(),
            address,
        })
    }
}

/// The `RCPT` side of DSN.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptDsn {
    /// `NOTIFY=`; absent means the default (failures and, at our choice, delays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
}

impl RcptDsn {
    /// True when neither parameter was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// The sender wants a failure report (the default without NOTIFY).
    pub fn wants_failure(&self) -> bool {
        match self.notify {
            None => true,
            Some(Notify::Never) => false,
            Some(Notify::On { failure, .. }) => failure,
        }
    }

    /// The sender wants a delay warning. Without NOTIFY this server sends
    /// them (RFC 3461 section 4.1 leaves it to the MTA); with NOTIFY only
    /// when DELAY is listed.
    pub fn wants_delay(&self) -> bool {
        match self.notify {
            None => true,
            Some(Notify::Never) => false,
            Some(Notify::On { delay, .. }) => delay,
        }
    }

    /// The sender asked for a success report.
    pub fn wants_success(&self) -> bool {
        matches!(self.notify, Some(Notify::On { success: true, .. }))
    }

    /// The parameters as they go on a `RCPT` command to a next hop that
    /// offers DSN (each with its leading space).
    pub fn wire(&self) -> String {
        let mut out = String::new();
        if let Some(notify) = self.notify {
            out.push_str(" NOTIFY=");
            out.push_str(&notify.keywords());
        }
        if let Some(orcpt) = &self.orcpt {
            out.push_str(" ORCPT=");
            out.push_str(&orcpt.addr_type);
            out.push(';');
            out.push_str(&xtext_encode(&orcpt.address));
        }
        out
    }
}

/// Parses `RET=` into `dsn`.
pub fn parse_ret(dsn: &mut MailDsn, value: &str) -> Result<(), ProtocolError> {
    dsn.ret = Some(match value.to_ascii_uppercase().as_str() {
        "FULL" => Ret::Full,
        "HDRS" => Ret::Hdrs,
        _ => return Err(ProtocolError::Syntax("RET=FULL or RET=HDRS")),
    });
    Ok(())
}

/// Parses `ENVID=` into `dsn`.
pub fn parse_envid(dsn: &mut MailDsn, value: &str) -> Result<(), ProtocolError> {
    let envid = xtext_decode(value).ok_or(ProtocolError::Syntax("ENVID: invalid xtext"))?;
    // The decoded value must be printable US-ASCII (section 4.4).
    if envid.len() > MAX_ENVID || !envid.bytes().all(|b| (32..=126).contains(&b)) {
        return Err(ProtocolError::Syntax("ENVID: at most 100 printable characters"));
    }
    dsn.envid = Some(envid);
    Ok(())
}

/// Parses `NOTIFY=` into `dsn`.
pub fn parse_notify(dsn: &mut RcptDsn, value: &str) -> Result<(), ProtocolError> {
    dsn.notify = Some(Notify::parse(value)?);
    Ok(())
}

/// Parses `ORCPT=` into `dsn`.
pub fn parse_orcpt(dsn: &mut RcptDsn, value: &str) -> Result<(), ProtocolError> {
    dsn.orcpt = Some(OriginalRecipient::parse(value)?);
    Ok(())
}

/// Decodes xtext (RFC 3461 section 4): `+XX` with two upper-case hex
/// digits stands for that octet; `+` and `=` may not appear otherwise.
/// `None` when malformed or when the result is not UTF-8.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let digit = |b: u8| match b {
                    b'0'..=b'9' => Some(b - b'0'),
                    b'A'..=b'F' => Some(b - b'A' + 10),
                    _ => None,
                };
                out.push(digit(hex[0])? << 4 | digit(hex[1])?);
                i += 3;
            }
            b'=' => return None,
            b @ 33..=126 => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext: octets outside `!`..`~`, and `+` and `=`, as `+XX`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn xtext_round_trips(text in "\\PC{0,40}") {
            prop_assert_eq!(xtext_decode(&xtext_encode(&text)), Some(text));
        }
    }

    #[test]
    fn xtext_decodes_and_refuses_malformed_input() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_decode("rfc822+3Bx").as_deref(), Some("rfc822;x"));
        for bad in ["a+2", "a+2b", "a+GG", "a=b", "a b", "+"] {
            assert_eq!(xtext_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn notify_takes_never_alone_or_a_set_without_repeats() {
        let mut dsn = RcptDsn::default();
        parse_notify(&mut dsn, "never").unwrap();
        assert_eq!(dsn.notify, Some(Notify::Never));
        parse_notify(&mut dsn, "DELAY,Success").unwrap();
        assert_eq!(
            dsn.notify,
            Some(Notify::On {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(dsn.wire(), " NOTIFY=SUCCESS,DELAY");
        for bad in ["NEVER,SUCCESS", "SUCCESS,SUCCESS", "", "SOMETIMES", "SUCCESS,"] {
            assert!(parse_notify(&mut dsn, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn report_wishes_follow_notify() {
        let default = RcptDsn::default();
        assert!(default.wants_failure() && default.wants_delay() && !default.wants_success());
        let never = RcptDsn {
            notify: Some(Notify::Never),
            orcpt: None,
        };
        assert!(!never.wants_failure() && !never.wants_delay() && !never.wants_success());
        let failure_only = RcptDsn {
            notify: Some(Notify::On {
                success: false,
                failure: true,
                delay: false,
            }),
            orcpt: None,
        };
        assert!(failure_only.wants_failure() && !failure_only.wants_delay());
    }

    #[test]
    fn orcpt_and_envid_parse_and_go_back_on_the_wire() {
        let mut rcpt = RcptDsn::default();
        parse_orcpt(&mut rcpt, "rfc822;a+2Bb@x.test").unwrap();
        assert_eq!(rcpt.orcpt.as_ref().unwrap().address, "a+b@x.test");
        assert_eq!(rcpt.orcpt.as_ref().unwrap().field(), "rfc822;a+b@x.test");
        assert_eq!(rcpt.wire(), " ORCPT=rfc822;a+2Bb@x.test");
        for bad in ["rfc822", ";a@x.test", "rfc822;", "rfc 822;a", "rfc822;a+zz"] {
            assert!(parse_orcpt(&mut rcpt, bad).is_err(), "{bad}");
        }
        let mut mail = MailDsn::default();
        parse_envid(&mut mail, "QQ+2B1").unwrap();
        parse_ret(&mut mail, "hdrs").unwrap();
        assert_eq!(mail.envid.as_deref(), Some("QQ+1"));
        assert_eq!(mail.wire(), " RET=HDRS ENVID=QQ+2B1");
        assert!(parse_ret(&mut mail, "SOME").is_err());
        assert!(parse_envid(&mut mail, &"x".repeat(101)).is_err());
        assert!(parse_envid(&mut mail, "a+0Ab").is_err());
    }
}
