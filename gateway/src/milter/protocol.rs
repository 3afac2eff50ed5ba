//! The Sendmail milter protocol, version 6 (as libmilter 1.0.1 and
//! Postfix speak it): packets are a 32-bit big-endian length, a command or
//! response byte, and data; strings are NUL-terminated.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version offered.
pub const VERSION: u32 = 6;

/// The largest packet accepted from a milter (a body replacement chunk is
/// at most 64 KiB; headers are far smaller).
pub const MAX_PACKET: u32 = 1 << 20;

/// Largest SMFIC_BODY chunk.
pub const BODY_CHUNK: usize = 65535;

/// Commands (MTA to milter).
pub mod command {
    /// Abort the current message.
    pub const ABORT: u8 = b'A';
    /// A body chunk.
    pub const BODY: u8 = b'B';
    /// The connection.
    pub const CONNECT: u8 = b'C';
    /// Macros for the next command.
    pub const MACRO: u8 = b'D';
    /// End of the body.
    pub const BODYEOB: u8 = b'E';
    /// HELO/EHLO.
    pub const HELO: u8 = b'H';
    /// A header field.
    pub const HEADER: u8 = b'L';
    /// MAIL FROM.
    pub const MAIL: u8 = b'M';
    /// End of the header section.
    pub const EOH: u8 = b'N';
    /// Option negotiation.
    pub const OPTNEG: u8 = b'O';
    /// Quit.
    pub const QUIT: u8 = b'Q';
    /// RCPT TO.
    pub const RCPT: u8 = b'R';
    /// DATA.
    pub const DATA: u8 = b'T';
}

/// Responses (milter to MTA).
pub mod response {
    /// Add a recipient.
    pub const ADDRCPT: u8 = b'+';
    /// Remove a recipient.
    pub const DELRCPT: u8 = b'-';
    /// Add a recipient with ESMTP arguments.
    pub const ADDRCPT_PAR: u8 = b'2';
    /// Accept: no more callbacks for this message (or connection).
    pub const ACCEPT: u8 = b'a';
    /// A body replacement chunk.
    pub const REPLBODY: u8 = b'b';
    /// Continue.
    pub const CONTINUE: u8 = b'c';
    /// Discard the message.
    pub const DISCARD: u8 = b'd';
    /// Change the envelope sender.
    pub const CHGFROM: u8 = b'e';
    /// Add a header field.
    pub const ADDHEADER: u8 = b'h';
    /// Insert a header field at a position.
    pub const INSHEADER: u8 = b'i';
    /// Change or delete a header field.
    pub const CHGHEADER: u8 = b'm';
    /// Still working: reset the timer.
    pub const PROGRESS: u8 = b'p';
    /// Quarantine the message.
    pub const QUARANTINE: u8 = b'q';
    /// Reject (5xx).
    pub const REJECT: u8 = b'r';
    /// Skip the rest of the body.
    pub const SKIP: u8 = b's';
    /// Tempfail (4xx).
    pub const TEMPFAIL: u8 = b't';
    /// A specific reply.
    pub const REPLYCODE: u8 = b'y';
    /// Option negotiation.
    pub const OPTNEG: u8 = b'O';
}

/// Actions (SMFIF_*) the MTA offers.
pub mod action {
    /// Add headers.
    pub const ADDHDRS: u32 = 0x01;
    /// Replace the body.
    pub const CHGBODY: u32 = 0x02;
    /// Add recipients.
    pub const ADDRCPT: u32 = 0x04;
    /// Remove recipients.
    pub const DELRCPT: u32 = 0x08;
    /// Change or delete headers.
    pub const CHGHDRS: u32 = 0x10;
    /// Quarantine.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the envelope sender.
    pub const CHGFROM: u32 = 0x40;
    /// Add recipients with arguments.
    pub const ADDRCPT_PAR: u32 = 0x80;
    /// Macro lists in the negotiation.
    pub const SETSYMLIST: u32 = 0x100;
    /// Everything the gateway supports.
    pub const ALL: u32 = 0x1ff;
}

/// Protocol flags (SMFIP_*).
pub mod flag {
    /// Skip CONNECT.
    pub const NOCONNECT: u32 = 0x1;
    /// Skip HELO.
    pub const NOHELO: u32 = 0x2;
    /// Skip MAIL.
    pub const NOMAIL: u32 = 0x4;
    /// Skip RCPT.
    pub const NORCPT: u32 = 0x8;
    /// Skip the body.
    pub const NOBODY: u32 = 0x10;
    /// Skip the headers.
    pub const NOHDRS: u32 = 0x20;
    /// Skip EOH.
    pub const NOEOH: u32 = 0x40;
    /// No reply to HEADER.
    pub const NR_HDR: u32 = 0x80;
    /// No UNKNOWN commands.
    pub const NOUNKNOWN: u32 = 0x100;
    /// Skip DATA.
    pub const NODATA: u32 = 0x200;
    /// The MTA understands SKIP.
    pub const SKIP: u32 = 0x400;
    /// No reply to CONNECT.
    pub const NR_CONN: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to UNKNOWN (never sent by the gateway).
    pub const NR_UNKN: u32 = 0x20000;
    /// No reply to EOH.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to body chunks.
    pub const NR_BODY: u32 = 0x80000;
    /// Header values are sent with their leading space.
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// What the gateway offers: every skip and no-reply flag (it never
    /// sends UNKNOWN or rejected recipients, and strips the space after
    /// the colon).
    pub const OFFERED: u32 = NOCONNECT
        | NOHELO
        | NOMAIL
        | NORCPT
        | NOBODY
        | NOHDRS
        | NOEOH
        | NR_HDR
        | NOUNKNOWN
        | NODATA
        | SKIP
        | NR_CONN
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKN
        | NR_EOH
        | NR_BODY;
}

/// One packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The command or response byte.
    pub code: u8,
    /// The data.
    pub data: Vec<u8>,
}

impl Packet {
    /// A packet of `code` with no data.
    pub fn empty(code: u8) -> Self {
        Self { code, data: Vec::new() }
    }

    /// A packet of `code` with the NUL-terminated `strings` as data.
    pub fn strings<S: AsRef<[u8]>>(code: u8, strings: &[S]) -> Self {
        let mut data = Vec::new();
        for s in strings {
            data.extend_from_slice(s.as_ref());
            data.push(0);
        }
        Self { code, data }
    }
}

/// Writes `packet`.
pub async fn write(stream: &mut (impl AsyncWrite + Unpin), packet: &Packet) -> io::Result<()> {
    let len = u32::try_from(packet.data.len() + 1).map_err(|_| io::Error::other("packet too large"))?;
    let mut buf = Vec::with_capacity(packet.data.len() + 5);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.push(packet.code);
    buf.extend_from_slice(&packet.data);
    stream.write_all(&buf).await
}

/// Reads one packet.
pub async fn read(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Packet> {
    let len = stream.read_u32().await?;
    if len == 0 || len > MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("milter sent a packet of {len} octets"),
        ));
    }
    let code = stream.read_u8().await?;
    let mut data = vec![0; (len - 1) as usize];
    stream.read_exact(&mut data).await?;
    Ok(Packet { code, data })
}

/// Splits data into its NUL-terminated strings (a missing final NUL is
/// tolerated).
pub fn split_strings(data: &[u8]) -> Vec<String> {
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The negotiated options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// The version the milter speaks.
    pub version: u32,
    /// The actions it may take.
    pub actions: u32,
    /// The protocol steps it skips or does not answer.
    pub protocol: u32,
}

impl Options {
    /// The gateway's offer.
    pub fn offer() -> Packet {
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&VERSION.to_be_bytes());
        data.extend_from_slice(&action::ALL.to_be_bytes());
        data.extend_from_slice(&flag::OFFERED.to_be_bytes());
        Packet {
            code: command::OPTNEG,
            data,
        }
    }

    /// The milter's answer, checked against the offer. Macro lists after
    /// the three words (SETSYMLIST) are ignored: the gateway sends its
    /// fixed Postfix-like set.
    pub fn parse(packet: &Packet) -> Result<Self, String> {
        if packet.code != response::OPTNEG || packet.data.len() < 12 {
            return Err(format!(
                "expected an option negotiation, got {:?} ({} octets)",
                char::from(packet.code),
                packet.data.len()
            ));
        }
        let word = |i: usize| {
            u32::from_be_bytes([
                packet.data[i],
                packet.data[i + 1],
                packet.data[i + 2],
                packet.data[i + 3],
            ])
        };
        let options = Self {
            version: word(0),
            actions: word(4),
            protocol: word(8),
        };
        if !(2..=VERSION).contains(&options.version) {
            return Err(format!("unsupported milter protocol version {}", options.version));
        }
        if options.actions & !action::ALL != 0 {
            return Err(format!("milter asks for unknown actions {:#x}", options.actions));
        }
        // Flags beyond the offer (rspamd answers with its own set whatever
        // it is offered) are ignored, as Postfix does: the gateway keeps
        // to what it offered.
        Ok(Self {
            protocol: options.protocol & flag::OFFERED,
            ..options
        })
    }

    /// True when the milter set `flag`.
    pub fn has(&self, flag: u32) -> bool {
        self.protocol & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn packets_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let packet = Packet::strings(command::MAIL, &["<a@example.com>", "SIZE=10"]);
        write(&mut a, &packet).await.unwrap_or_else(|e| unreachable!("{e}"));
        let read_back = read(&mut b).await.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(read_back, packet);
        assert_eq!(split_strings(&read_back.data), ["<a@example.com>", "SIZE=10"]);
        assert_eq!(split_strings(b"x"), ["x"]);
        assert!(split_strings(b"").is_empty());
    }

    #[tokio::test]
    async fn oversized_and_empty_packets_are_refused() {
        for len in [0u32, MAX_PACKET + 1] {
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(&len.to_be_bytes())
                .await
                .unwrap_or_else(|e| unreachable!("{e}"));
            assert!(read(&mut b).await.is_err(), "{len}");
        }
    }

    #[test]
    fn negotiation_is_checked() {
        let answer = |version: u32, actions: u32, protocol: u32| {
            let mut data = Vec::new();
            for w in [version, actions, protocol] {
                data.extend_from_slice(&w.to_be_bytes());
            }
            Options::parse(&Packet {
                code: response::OPTNEG,
                data,
            })
        };
        let ok = answer(6, action::ADDHDRS, flag::NOCONNECT | flag::NR_HDR).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(ok.has(flag::NR_HDR) && !ok.has(flag::NOHELO));
        assert!(answer(7, 0, 0).is_err());
        assert!(answer(6, 0x1000, 0).is_err());
        let masked = answer(6, 0, flag::HDR_LEADSPC | flag::NR_HDR).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(masked.protocol, flag::NR_HDR, "flags not offered are dropped");
    }
}
