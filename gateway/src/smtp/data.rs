//! The DATA reader (RFC 5321 sections 4.1.1.4 and 4.5.2) and its inverse,
//! dot-stuffing for output.
//!
//! Only `<CRLF>.<CRLF>` ends the data, where the first CRLF is a real CRLF
//! pair on the wire (or the line start right after the 354). A CR or LF that
//! is not part of a CRLF pair ("bare") never starts or ends a line as far as
//! end-of-data detection goes, so `\n.\n`, `\r.\r`, `\r\n.\n`, `\n.\r\n` and
//! `\r\r\n.\r\r\n` cannot end the message: the SMTP smuggling class of
//! CVE-2023-51764 is impossible by construction. Bare line endings are then
//! either normalised to CRLF in the content or make the message rejected,
//! per policy. The content handed on is canonical (every line ends in CRLF,
//! no bare CR or LF), so dot-stuffing it on output is exact and no
//! downstream server can be tricked by what we relay.

use serde::Deserialize;

/// The longest text line RFC 5321 section 4.5.3.1.6 allows, without CRLF.
pub const MAX_TEXT_LINE: usize = 998;

/// What to do with a CR or LF that is not part of a CRLF pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BareLineEndings {
    /// Treat it as a line break and store CRLF (what Postfix's
    /// `smtpd_forbid_bare_newline = normal` does for LF).
    #[default]
    Normalize,
    /// Reject the message with 550 5.6.0 after the final dot.
    Reject,
}

/// What to do with a text line longer than 998 octets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongLines {
    /// Reject the message with 550 5.6.0 after the final dot (what Exim does).
    #[default]
    Reject,
    /// Break the line: CRLF plus a space in the header section (a folded
    /// header), CRLF in the body (what Postfix does on output).
    Fold,
}

/// The limits and policies one DATA transfer runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPolicy {
    /// The largest message, in octets of content after dot-unstuffing.
    pub max_bytes: u64,
    /// Bare CR and LF handling.
    pub bare_line_endings: BareLineEndings,
    /// Over-long line handling.
    pub long_lines: LongLines,
    /// The most `Received:` fields a message may carry when it arrives;
    /// more is a mail loop (RFC 5321 section 6.3).
    pub max_hops: usize,
}

/// Where the reader is on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    /// At the start of a line: after a real CRLF or right after the 354.
    Start,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` then CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, saw CR.
    Cr,
    /// Saw the final `<CRLF>.<CRLF>`.
    Done,
}

/// Result of feeding bytes to the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// All input consumed; the message goes on.
    More,
    /// The end of data was found after `consumed` bytes of this input; the
    /// rest is the client's next commands (pipelining).
    Done {
        /// Bytes of the input that belonged to the message.
        consumed: usize,
    },
}

/// How a DATA transfer ended, once the final dot was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message is acceptable.
    Complete(MessageInfo),
    /// Over the size limit (552 5.3.4); the content was discarded while streaming.
    TooBig,
    /// Bare CR or LF under the reject policy (550 5.6.0).
    BareLineEnding,
    /// A line over 998 octets under the reject policy (550 5.6.0).
    LineTooLong,
    /// More `Received:` fields than `max_hops` (554 5.4.6); how many.
    TooManyHops(usize),
}

impl DataOutcome {
    /// Why the message was refused, for the log; `None` when it was not.
    pub fn refusal_reason(&self) -> Option<String> {
        match self {
            Self::Complete(_) => None,
            Self::TooBig => Some("message too big".into()),
            Self::BareLineEnding => Some("bare CR or LF".into()),
            Self::LineTooLong => Some("line longer than 998 octets".into()),
            Self::TooManyHops(n) => Some(format!("too many hops: {n} Received fields (mail loop)")),
        }
    }
}

/// Facts about accepted content that delivery needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    /// Content size in octets.
    pub size: u64,
    /// True when some octet has the high bit set (8BITMIME rules on output).
    pub eight_bit: bool,
    /// `Received:` fields in the header section as it arrived.
    pub hops: usize,
    /// The header section has `TLS-Required: No` (RFC 8689 section 5).
    pub tls_optional: bool,
}

/// Streams the DATA section: undoes dot-stuffing, finds the end, enforces
/// the size limit and line policies, and writes canonical content to `out`.
/// Memory use is bounded by the input chunk size.
#[derive(Clone, Debug)]
pub struct DataReader {
    policy: DataPolicy,
    wire: Wire,
    line_len: usize,
    in_header: bool,
    size: u64,
    eight_bit: bool,
    too_big: bool,
    saw_bare: bool,
    saw_long: bool,
    /// The first octets of the current header line, to count `Received:`
    /// and find `TLS-Required:`.
    head: [u8; HEAD_LEN],
    hops: usize,
    tls_optional: bool,
    /// DATA: dots are stuffing and `<CRLF>.<CRLF>` ends the message. BDAT
    /// chunks (RFC 3030) are sized and carry content as it is.
    dots: bool,
}

/// The trace field counted for loop detection.
const RECEIVED: &[u8] = b"received:";
/// RFC 8689 section 5's header field.
const TLS_REQUIRED: &[u8] = b"tls-required:";
/// How much of each header line is kept to recognise those two.
const HEAD_LEN: usize = 32;

impl DataReader {
    /// A reader positioned right after the 354 reply.
    pub fn new(policy: DataPolicy) -> Self {
        Self {
            policy,
            wire: Wire::Start,
            line_len: 0,
            in_header: true,
            size: 0,
            eight_bit: false,
            too_big: false,
            saw_bare: false,
            saw_long: false,
            head: [0; HEAD_LEN],
            hops: 0,
            tls_optional: false,
            dots: true,
        }
    }

    /// A reader for the content of BDAT chunks: no dot-stuffing and no
    /// end marker, the same line policies and limits as DATA, so that the
    /// stored message is the one DATA would have stored.
    pub fn chunked(policy: DataPolicy) -> Self {
        Self {
            dots: false,
            ..Self::new(policy)
        }
    }

    /// Ends chunked content: a CR left pending is bare, and content that
    /// does not end with CRLF gets one (as it would have through DATA).
    pub fn finish_chunks(&mut self, out: &mut Vec<u8>) {
        match self.wire {
            Wire::Cr => self.bare_break(out),
            Wire::Mid => self.line_break(out),
            _ => {}
        }
        self.wire = Wire::Done;
    }

    /// Consumes input, appending content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let mut i = 0;
        while i < input.len() {
            if self.wire == Wire::Done {
                return Feed::Done { consumed: i };
            }
            if self.wire == Wire::Mid {
                // Fast path: copy a run of ordinary line bytes in one go.
                let rest = &input[i..];
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.emit(&rest[..run], out);
                    i += run;
                    continue;
                }
            }
            let byte = input[i];
            i += 1;
            self.step(byte, out);
            if self.wire == Wire::Done {
                return Feed::Done { consumed: i };
            }
        }
        Feed::More
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        self.wire = match (self.wire, byte) {
            (Wire::Start, b'.') if self.dots => Wire::Dot,
            (Wire::Start | Wire::Mid, b'\r') => Wire::Cr,
            (Wire::Dot, b'\r') => Wire::DotCr,
            (Wire::DotCr, b'\n') => Wire::Done,
            (Wire::Cr, b'\n') => {
                self.line_break(out);
                Wire::Start
            }
            // A bare LF; the dot before it (if any) was stuffing and is dropped.
            (Wire::Start | Wire::Mid | Wire::Dot, b'\n') => {
                self.bare_break(out);
                Wire::Mid
            }
            // A CR not followed by LF is bare; the new CR may pair with what follows.
            (Wire::Cr | Wire::DotCr, b'\r') => {
                self.bare_break(out);
                Wire::Cr
            }
            (Wire::Cr | Wire::DotCr, other) => {
                self.bare_break(out);
                self.emit(&[other], out);
                Wire::Mid
            }
            // Dot-stuffing: a leading dot is removed (RFC 5321 section 4.5.2).
            (Wire::Start | Wire::Dot | Wire::Mid, other) => {
                self.emit(&[other], out);
                Wire::Mid
            }
            (Wire::Done, _) => Wire::Done,
        };
    }

    /// Appends line bytes (no CR or LF among them).
    fn emit(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if !self.eight_bit && bytes.iter().any(|&b| b >= 0x80) {
            self.eight_bit = true;
        }
        if self.in_header && self.line_len < HEAD_LEN {
            let take = (HEAD_LEN - self.line_len).min(bytes.len());
            self.head[self.line_len..self.line_len + take].copy_from_slice(&bytes[..take]);
        }
        while self.line_len + bytes.len() > MAX_TEXT_LINE {
            if self.policy.long_lines == LongLines::Reject {
                self.saw_long = true;
                break;
            }
            let fits = MAX_TEXT_LINE - self.line_len;
            self.push(&bytes[..fits], out);
            bytes = &bytes[fits..];
            let fold: &[u8] = if self.in_header { b"\r\n " } else { b"\r\n" };
            self.push(fold, out);
            self.line_len = fold.len() - 2;
        }
        self.line_len += bytes.len();
        self.push(bytes, out);
    }

    /// A real CRLF on the wire.
    fn line_break(&mut self, out: &mut Vec<u8>) {
        if self.line_len == 0 {
            self.in_header = false;
        } else if self.in_header {
            self.header_line();
        }
        self.line_len = 0;
        self.push(b"\r\n", out);
    }

    /// Looks at the start of a header line that just ended.
    fn header_line(&mut self) {
        let head = &self.head[..self.line_len.min(HEAD_LEN)];
        let starts = |name: &[u8]| head.len() >= name.len() && head[..name.len()].eq_ignore_ascii_case(name);
        if starts(RECEIVED) {
            self.hops += 1;
        } else if starts(TLS_REQUIRED) && self.line_len < HEAD_LEN {
            let value = head[TLS_REQUIRED.len()..].trim_ascii();
            self.tls_optional = value.eq_ignore_ascii_case(b"no");
        }
    }

    /// A bare CR or LF.
    fn bare_break(&mut self, out: &mut Vec<u8>) {
        self.saw_bare = true;
        self.line_break(out);
    }

    /// Appends content up to the size limit: what reaches `out` is the
    /// first `max_bytes` of the content however the input was chunked.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.too_big {
            let room = self.policy.max_bytes.saturating_sub(self.size);
            let fits = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
            out.extend_from_slice(&bytes[..fits]);
            self.too_big = fits < bytes.len();
        }
        self.size += bytes.len() as u64;
    }

    /// Content octets so far (after dot-unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True once the final dot has been read.
    pub fn is_done(&self) -> bool {
        self.wire == Wire::Done
    }

    /// How the transfer ended; call after `feed` returned `Done`.
    pub fn outcome(&self) -> DataOutcome {
        if self.too_big {
            DataOutcome::TooBig
        } else if self.saw_bare && self.policy.bare_line_endings == BareLineEndings::Reject {
            DataOutcome::BareLineEnding
        } else if self.saw_long {
            DataOutcome::LineTooLong
        } else if self.hops > self.policy.max_hops {
            DataOutcome::TooManyHops(self.hops)
        } else {
            DataOutcome::Complete(MessageInfo {
                size: self.size,
                eight_bit: self.eight_bit,
                hops: self.hops,
                tls_optional: self.tls_optional,
            })
        }
    }
}

/// Dot-stuffs canonical content for output (RFC 5321 section 4.5.2) and
/// writes the final `.` line. Streaming: content may come in any chunks.
#[derive(Clone, Debug)]
pub struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self { at_line_start: true }
    }
}

impl DotStuffer {
    /// Appends `chunk`, doubling every dot that starts a line.
    pub fn stuff(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                out.extend_from_slice(&chunk[start..i]);
                out.push(b'.');
                start = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&chunk[start..]);
    }

    /// Ends the data: CRLF if the content did not end with one, then `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.at_line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> DataPolicy {
        DataPolicy {
            max_bytes: 1 << 20,
            bare_line_endings: BareLineEndings::Normalize,
            long_lines: LongLines::Reject,
            max_hops: 100,
        }
    }

    /// Feeds `input` in chunks of `chunk` bytes; returns content, bytes
    /// consumed and the outcome (None if the end was never seen).
    fn read(policy: DataPolicy, input: &[u8], chunk: usize) -> (Vec<u8>, usize, Option<DataOutcome>) {
        let mut reader = DataReader::new(policy);
        let mut out = Vec::new();
        let mut offset = 0;
        for piece in input.chunks(chunk.max(1)) {
            match reader.feed(piece, &mut out) {
                Feed::More => offset += piece.len(),
                Feed::Done { consumed } => return (out, offset + consumed, Some(reader.outcome())),
            }
        }
        (out, offset, None)
    }

    #[test]
    fn unstuffs_and_stops_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        for chunk in [1, 2, 3, 7, 100] {
            let (out, consumed, outcome) = read(policy(), input, chunk);
            assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n", "chunk {chunk}");
            assert_eq!(&input[consumed..], b"QUIT\r\n");
            assert!(matches!(outcome, Some(DataOutcome::Complete(_))));
        }
    }

    #[test]
    fn empty_message_ends_at_once() {
        let (out, consumed, outcome) = read(policy(), b".\r\n", 1);
        assert_eq!((out.as_slice(), consumed), (&b""[..], 3));
        assert!(matches!(
            outcome,
            Some(DataOutcome::Complete(MessageInfo { size: 0, .. }))
        ));
    }

    /// Each smuggling variant from the SMTP smuggling research: none may end
    /// the data; only the real terminator at the end does.
    #[test]
    fn bare_line_endings_never_end_data() {
        for variant in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r\n.\n",
            b"\n.\r\n",
            b"\r\r\n.\r\r\n",
            b"\r\n.\r",
            b"\n.\r\r\n",
        ] {
            let mut input = b"Subject: one\r\n\r\nbody".to_vec();
            input.extend_from_slice(variant);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nsmuggled\r\n");
            input.extend_from_slice(b".\r\n");
            let (out, consumed, outcome) = read(policy(), &input, 1);
            assert_eq!(consumed, input.len(), "variant {variant:?} ended data early");
            assert!(matches!(outcome, Some(DataOutcome::Complete(_))));
            // The content is canonical: no bare CR or LF remains.
            assert!(is_canonical(&out), "variant {variant:?} left bare line endings");
            let strict = DataPolicy {
                bare_line_endings: BareLineEndings::Reject,
                ..policy()
            };
            let (_, _, outcome) = read(strict, &input, 5);
            assert_eq!(outcome, Some(DataOutcome::BareLineEnding), "variant {variant:?}");
        }
    }

    #[test]
    fn oversize_content_is_discarded_but_read_to_the_end() {
        let small = DataPolicy {
            max_bytes: 10,
            ..policy()
        };
        let (out, consumed, outcome) = read(small, b"0123456789abc\r\n.\r\nNOOP\r\n", 4);
        assert!(out.len() <= 10);
        assert_eq!(consumed, 18);
        assert_eq!(outcome, Some(DataOutcome::TooBig));
    }

    #[test]
    fn long_lines_are_rejected_or_folded() {
        let mut input = b"Subject: ".to_vec();
        input.extend(std::iter::repeat_n(b'Q', 1500));
        input.extend_from_slice(b"\r\n\r\n");
        input.extend(std::iter::repeat_n(b'Z', 2500));
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, _, outcome) = read(policy(), &input, 64);
        assert_eq!(outcome, Some(DataOutcome::LineTooLong));

        let fold = DataPolicy {
            long_lines: LongLines::Fold,
            ..policy()
        };
        let (out, _, outcome) = read(fold, &input, 64);
        assert!(matches!(outcome, Some(DataOutcome::Complete(_))));
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_TEXT_LINE + 1));
        // The header is folded (continuation starts with a space), the body is not.
        assert_eq!(lines[1].first(), Some(&b' '));
        let body_start = lines.iter().position(|l| *l == b"\r").unwrap() + 1;
        assert!(lines[body_start + 1].starts_with(b"Z"));
        let kept: usize = out.iter().filter(|&&b| b == b'Q' || b == b'Z').count();
        assert_eq!(kept, 4000);
    }

    #[test]
    fn detects_eight_bit_content() {
        let (_, _, outcome) = read(policy(), "caf\u{e9}\r\n.\r\n".as_bytes(), 2);
        assert!(matches!(
            outcome,
            Some(DataOutcome::Complete(MessageInfo { eight_bit: true, .. }))
        ));
        let (_, _, outcome) = read(policy(), b"cafe\r\n.\r\n", 2);
        assert!(matches!(
            outcome,
            Some(DataOutcome::Complete(MessageInfo { eight_bit: false, .. }))
        ));
    }

    #[test]
    fn counts_received_fields_in_the_header_section_only() {
        let mut input = Vec::new();
        for n in 0..3 {
            input.extend_from_slice(format!("Received: from hop{n}\r\n\tby x\r\n").as_bytes());
        }
        input.extend_from_slice(b"RECEIVED:from upper\r\nX-Received: no\r\nReceived-SPF: no\r\n\r\n");
        input.extend_from_slice(b"Received: in the body\r\n.\r\n");
        for chunk in [1, 4, 100] {
            let (_, _, outcome) = read(policy(), &input, chunk);
            assert!(
                matches!(outcome, Some(DataOutcome::Complete(MessageInfo { hops: 4, .. }))),
                "chunk {chunk}: {outcome:?}"
            );
        }
        let strict = DataPolicy {
            max_hops: 3,
            ..policy()
        };
        let (_, _, outcome) = read(strict, &input, 7);
        assert_eq!(outcome, Some(DataOutcome::TooManyHops(4)));
    }

    #[test]
    fn finds_tls_required_no_in_the_header_section() {
        for (header, optional) in [
            ("TLS-Required: No", true),
            ("tls-required:no  ", true),
            ("TLS-Required: Yes", false),
            ("X-TLS-Required: No", false),
        ] {
            let input = format!("Subject: a\r\n{header}\r\n\r\nTLS-Required: No\r\n.\r\n");
            let (_, _, outcome) = read(policy(), input.as_bytes(), 3);
            let Some(DataOutcome::Complete(info)) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(info.tls_optional, optional, "{header}");
        }
        let (_, _, outcome) = read(policy(), b"a: b\r\n\r\nTLS-Required: No\r\n.\r\n", 3);
        assert!(matches!(
            outcome,
            Some(DataOutcome::Complete(MessageInfo {
                tls_optional: false,
                ..
            }))
        ));
    }

    #[test]
    fn chunked_content_is_transparent_and_stored_as_data_would_store_it() {
        let message = b"Subject: x\r\n\r\n.leading dot\r\n.\r\nlast line";
        let mut reader = DataReader::chunked(policy());
        let mut out = Vec::new();
        for piece in message.chunks(3) {
            assert_eq!(reader.feed(piece, &mut out), Feed::More);
        }
        reader.finish_chunks(&mut out);
        assert_eq!(out, b"Subject: x\r\n\r\n.leading dot\r\n.\r\nlast line\r\n");
        let size = out.len() as u64;
        assert!(matches!(reader.outcome(), DataOutcome::Complete(info) if info.size == size));

        // The same message through DATA (dot-stuffed) stores the same content.
        let mut stuffed = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(&out, &mut stuffed);
        stuffer.finish(&mut stuffed);
        let (through_data, _, _) = read(policy(), &stuffed, 5);
        assert_eq!(through_data, out);

        // A CR at the very end of the last chunk is bare.
        let strict = DataPolicy {
            bare_line_endings: BareLineEndings::Reject,
            ..policy()
        };
        let mut reader = DataReader::chunked(strict);
        let mut out = Vec::new();
        let _ = reader.feed(b"a\r\nb\r", &mut out);
        reader.finish_chunks(&mut out);
        assert_eq!(reader.outcome(), DataOutcome::BareLineEnding);
    }

    #[test]
    fn stuffer_doubles_leading_dots_and_terminates() {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(b".a\r\nb.\r\n", &mut out);
        stuffer.stuff(b".", &mut out);
        stuffer.stuff(b"\r\n", &mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n.\r\n");

        let mut out = Vec::new();
        let mut stuffer = DotStuffer::default();
        stuffer.stuff(b"no newline", &mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, b"no newline\r\n.\r\n");
    }

    fn is_canonical(content: &[u8]) -> bool {
        content.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => content.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && content[i - 1] == b'\r',
            _ => true,
        })
    }

    /// Canonical content: CRLF-terminated lines of printable bytes and dots.
    fn canonical_content() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::collection::vec(prop_oneof![Just(b'.'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40),
            0..20,
        )
        .prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|mut l| {
                    l.extend_from_slice(b"\r\n");
                    l
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn stuffing_round_trips(content in canonical_content(), chunk in 1usize..50) {
            let mut wire = Vec::new();
            let mut stuffer = DotStuffer::default();
            for piece in content.chunks(chunk) {
                stuffer.stuff(piece, &mut wire);
            }
            stuffer.finish(&mut wire);
            wire.extend_from_slice(b"QUIT\r\n");
            let (out, consumed, outcome) = read(policy(), &wire, chunk);
            prop_assert_eq!(out, content);
            prop_assert_eq!(&wire[consumed..], b"QUIT\r\n");
            prop_assert!(matches!(outcome, Some(DataOutcome::Complete(_))));
        }

        #[test]
        fn ends_only_at_the_first_real_terminator(body in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..200), chunk in 1usize..30) {
            let mut input = body.clone();
            input.extend_from_slice(b"\r\n.\r\n");
            let first = if input.starts_with(b".\r\n") { 3 } else {
                input.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 5).unwrap()
            };
            let (out, consumed, outcome) = read(policy(), &input, chunk);
            prop_assert_eq!(consumed, first);
            prop_assert!(outcome.is_some());
            prop_assert!(is_canonical(&out));
        }
    }
}
