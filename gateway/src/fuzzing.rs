//! What the fuzz targets in `gateway/fuzz` run, and what the regression
//! tests below replay from their corpora on every `cargo test`.
//!
//! Each entry point takes arbitrary bytes and checks properties, not only
//! the absence of panics: replies never carry a bare CR or LF or exceed
//! RFC 5321's 512 octets, the DATA reader gives the same result however the
//! input is split and its output survives a dot-stuffing round trip, a
//! parsed address prints back to itself, and a configuration error names
//! the file and a line of it.

#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a fuzz target reports a broken property the only way libFuzzer sees: by panicking"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::net::TlsInfo;
use crate::server::connection::MAX_BUFFERED_LINE;
use crate::smtp::address::{DomainPattern, Mailbox, ReversePath, parse_path};
use crate::smtp::data::{BareLineEndings, DataOutcome, DataPolicy, DataReader, DotStuffer, Feed, LongLines};
use crate::smtp::reply::Reply;
use crate::smtp::session::{
    AuthOutcome, ConnectionInfo, Decision, QueueOutcome, Security, Session, SessionConfig, Step,
};

/// A tiny deterministic generator: the fuzzer's input picks every decision a
/// driver would make, so a crash reproduces from its input alone.
struct Choices(u32);

impl Choices {
    fn next(&mut self) -> u32 {
        // xorshift32
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    fn percent(&mut self) -> u32 {
        self.next() % 100
    }
}

fn check_reply(reply: &Reply) {
    assert!((200..600).contains(&reply.code()), "reply code {}", reply.code());
    let mut wire = Vec::new();
    reply.write_to(&mut wire);
    assert!(wire.ends_with(b"\r\n"), "reply does not end in CRLF: {wire:?}");
    for line in wire[..wire.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "control character in reply line {line:?}"
        );
        assert!(line.len() + 2 <= 512, "reply line of {} octets", line.len() + 2);
        assert!(
            line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit),
            "reply line {line:?}"
        );
    }
}

/// Drives the SMTP state machine (`smtp::session`) the way the connection
/// does: lines up to LF, DATA through the reader, every stage decision,
/// spool outcome and password check chosen by the input.
pub fn session(data: &[u8]) {
    let Some((&flags, mut input)) = data.split_first() else {
        return;
    };
    let mut choices = Choices(u32::from(flags) << 8 | 0x9e37);
    let config = Arc::new(SessionConfig {
        hostname: "mx.fuzz.test".into(),
        max_recipients: 5,
        data: DataPolicy {
            max_bytes: 4096,
            bare_line_endings: if flags & 16 == 0 {
                BareLineEndings::Normalize
            } else {
                BareLineEndings::Reject
            },
            long_lines: if flags & 32 == 0 {
                LongLines::Reject
            } else {
                LongLines::Fold
            },
            max_hops: 100,
        },
        max_errors: 10,
        max_idle_commands: 20,
        postmaster: crate::smtp::Mailbox::local_postmaster(),
    });
    let connection = ConnectionInfo {
        peer: SocketAddr::from(([192, 0, 2, 1], 4000)),
        local: SocketAddr::from(([192, 0, 2, 2], 25)),
        listener: "fuzz".into(),
    };
    let security = Security {
        starttls: flags & 1 != 0,
        auth: flags & 2 != 0,
        auth_required: flags & 4 != 0,
    };
    let tls = || TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    };
    let (mut session, mut step) = Session::with_security(config, connection, security, (flags & 8 != 0).then(tls));
    let mut content = Vec::new();
    // Every step either consumes input or answers a driver call that ends
    // in a reply; a loop that does neither is a bug.
    let mut budget = 4 * data.len() + 16;
    loop {
        budget = budget.checked_sub(1).expect("the session made no progress");
        step = match step {
            Step::Reply(reply) => {
                check_reply(&reply);
                match next_line(&mut input) {
                    Some(Line::Text(line)) => session.command(line),
                    Some(Line::TooLong) => session.line_too_long(),
                    None => return,
                }
            }
            Step::Close(reply) => {
                check_reply(&reply);
                let _ = session.command(b"NOOP");
                return;
            }
            Step::Check(_) => session.decide(match choices.percent() {
                0..80 => Decision::Proceed,
                80..95 => Decision::Refuse(Reply::plain(550, vec!["refused by fuzz".into()])),
                _ => Decision::Disconnect(Reply::plain(421, vec!["bye".into()])),
            }),
            Step::ReceiveData(reply, mut reader) => {
                assert_eq!(reply.code(), 354);
                content.clear();
                match reader.feed(input, &mut content) {
                    Feed::More => return,
                    Feed::Done { consumed } => {
                        input = &input[consumed..];
                        session.data_end(reader.outcome())
                    }
                }
            }
            Step::ReceiveChunk(mut chunk) => match chunk.feed(input, &mut content) {
                Feed::More => return,
                Feed::Done { consumed } => {
                    input = &input[consumed..];
                    session.chunk_end(chunk)
                }
            },
            Step::DiscardChunk(size, reply) => {
                check_reply(&reply);
                let (consumed, done) = crate::smtp::chunking::Discard::new(size).feed(input);
                input = &input[consumed..];
                if !done {
                    return;
                }
                Step::Reply(reply)
            }
            Step::Queue => {
                assert!(session.message().is_some(), "queue without a message");
                session.queued(if choices.percent() < 90 {
                    QueueOutcome::Queued("FUZZ1".into())
                } else {
                    QueueOutcome::Failed
                })
            }
            Step::StartTls(reply) => {
                check_reply(&reply);
                assert!(session.tls().is_none(), "STARTTLS inside TLS");
                session.tls_started(tls());
                Step::Reply(Reply::plain(250, vec!["(handshake done)".into()]))
            }
            Step::Authenticate(attempt) => {
                assert!(session.authenticated().is_none(), "AUTH twice");
                assert!(matches!(attempt.mechanism, "PLAIN" | "LOGIN"));
                session.auth_checked(match choices.percent() {
                    0..50 => AuthOutcome::Success,
                    50..80 => AuthOutcome::Failure,
                    80..90 => AuthOutcome::Blocked,
                    _ => AuthOutcome::Unavailable,
                })
            }
        };
    }
}

enum Line<'a> {
    Text(&'a [u8]),
    TooLong,
}

/// The connection's framing: a line ends at LF, a CR before it is dropped,
/// and a line over the buffer limit is answered as too long.
fn next_line<'a>(input: &mut &'a [u8]) -> Option<Line<'a>> {
    let end = input.iter().position(|&b| b == b'\n')?;
    let line = &input[..end];
    *input = &input[end + 1..];
    if line.len() > MAX_BUFFERED_LINE {
        return Some(Line::TooLong);
    }
    Some(Line::Text(line.strip_suffix(b"\r").unwrap_or(line)))
}

/// Feeds `input` to a reader in pieces of `piece` bytes; returns the
/// content, the bytes consumed when the end was found, and the outcome.
fn read_data(policy: DataPolicy, input: &[u8], piece: usize) -> (Vec<u8>, Option<usize>, Option<DataOutcome>) {
    let mut reader = DataReader::new(policy);
    let mut out = Vec::new();
    let mut offset = 0;
    for chunk in input.chunks(piece.max(1)) {
        if let Feed::Done { consumed } = reader.feed(chunk, &mut out) {
            assert!(reader.is_done());
            return (out, Some(offset + consumed), Some(reader.outcome()));
        }
        offset += chunk.len();
    }
    assert!(!reader.is_done());
    (out, None, None)
}

/// The DATA reader (`smtp::data`): dot-unstuffing, the end of data, bare
/// line endings, long lines and the size limit, under a policy and a split
/// of the input chosen by the first two bytes.
pub fn data_reader(data: &[u8]) {
    let [flags, piece, input @ ..] = data else {
        return;
    };
    let policy = DataPolicy {
        max_bytes: [64, 4096, u64::MAX][usize::from(flags % 3)],
        bare_line_endings: if flags & 4 == 0 {
            BareLineEndings::Normalize
        } else {
            BareLineEndings::Reject
        },
        long_lines: if flags & 8 == 0 {
            LongLines::Reject
        } else {
            LongLines::Fold
        },
        max_hops: 100,
    };
    let whole = read_data(policy, input, input.len());
    let split = read_data(policy, input, usize::from(*piece));
    assert_eq!(whole, split, "the result depends on how the input was split");
    let (content, consumed, outcome) = whole;
    let Some(consumed) = consumed else {
        return;
    };
    let wire = &input[..consumed];
    assert!(
        wire == b".\r\n" || wire.ends_with(b"\r\n.\r\n"),
        "ended on something other than CRLF . CRLF"
    );
    let Some(DataOutcome::Complete(info)) = outcome else {
        return;
    };
    // Canonical content: CRLF line ends only, no line over 998 octets.
    assert_eq!(info.size, content.len() as u64);
    assert_eq!(info.eight_bit, content.iter().any(|&b| b >= 0x80));
    assert!(
        content.is_empty() || content.ends_with(b"\r\n"),
        "content does not end in CRLF"
    );
    for line in content.split(|&b| b == b'\n').take_while(|l| !l.is_empty()) {
        let text = line.strip_suffix(b"\r").expect("bare LF in the content");
        assert!(!text.contains(&b'\r'), "bare CR in the content");
        assert!(
            text.len() <= crate::smtp::data::MAX_TEXT_LINE,
            "line of {} octets",
            text.len()
        );
    }
    // What delivery sends (dot-stuffed) reads back as the same content.
    let mut stuffed = Vec::new();
    let mut stuffer = DotStuffer::default();
    stuffer.stuff(&content, &mut stuffed);
    stuffer.finish(&mut stuffed);
    let again = read_data(policy, &stuffed, stuffed.len());
    assert_eq!(
        again.1,
        Some(stuffed.len()),
        "the stuffed content ended early or not at all"
    );
    assert_eq!(again.0, content, "dot-stuffing did not round-trip");
}

/// The address parsers (`smtp::address`): a mailbox that parses prints back
/// to itself, stays within RFC 5321's length, and domain patterns match
/// what they name.
pub fn address(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for parsed in [Mailbox::parse(&text), parse_path(&text)] {
        let Ok(mailbox) = parsed else {
            continue;
        };
        let printed = mailbox.to_string();
        assert!(printed.len() <= crate::smtp::address::MAX_PATH_OCTETS);
        assert!(!mailbox.domain().is_empty());
        assert_eq!(
            Mailbox::parse(&printed).as_ref(),
            Ok(&mailbox),
            "{printed:?} does not parse back"
        );
        let _ = (mailbox.is_ascii(), mailbox.domain_key());
        let path = ReversePath::try_from(printed).expect("a mailbox is a reverse-path");
        assert_eq!(path.mailbox(), Some(&mailbox));
    }
    if let Ok(pattern) = DomainPattern::parse(&text) {
        match &pattern {
            DomainPattern::Any => assert!(pattern.matches("example.com")),
            DomainPattern::Exact(domain) => assert!(pattern.matches(domain)),
            DomainPattern::Subdomains(suffix) => {
                assert!(pattern.matches(&format!("a{suffix}")));
                assert!(!pattern.matches(&suffix[1..]), "*.{0} matches {0}", &suffix[1..]);
            }
        }
    }
}

/// The configuration loader (`config`): any text is either a configuration
/// or an error naming the file and, where the problem has a place, a line
/// of the text.
pub fn config(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    // The loader reads the files a configuration names (password files);
    // a configuration is the operator's, so a device or /proc file that
    // never ends is not a finding.
    if ["/dev", "/proc", "/sys"].iter().any(|p| source.contains(p)) {
        return;
    }
    let path = Path::new("/nonexistent/fuzz.toml");
    let Err(error) = Config::from_source(path, source) else {
        return;
    };
    let ConfigError::Invalid { problems, .. } = &error else {
        panic!("from_source does not read the file: {error}");
    };
    assert!(!problems.is_empty());
    let lines = source.split('\n').count();
    for problem in problems {
        assert!(problem.line <= lines, "line {} of {lines}", problem.line);
    }
    assert!(error.to_string().contains("fuzz.toml"), "{error}");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every input the fuzzers kept (`fuzz/corpus/TARGET`) and every crash
    /// they found (`fuzz/regressions/TARGET`), replayed.
    fn replay(target: &str, run: fn(&[u8])) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut count = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                if let Err(panic) = std::panic::catch_unwind(|| run(&input)) {
                    panic!("{}: {panic:?}", path.display());
                }
                count += 1;
            }
        }
        assert!(count > 0, "no corpus for {target}");
    }

    #[test]
    fn session_corpus() {
        replay("session", super::session);
    }

    #[test]
    fn data_reader_corpus() {
        replay("data_reader", super::data_reader);
    }

    #[test]
    fn address_corpus() {
        replay("address", super::address);
    }

    #[test]
    fn config_corpus() {
        replay("config", super::config);
    }
}
