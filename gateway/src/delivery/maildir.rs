//! Local delivery into a maildir (one file per recipient): written in
//! `tmp/`, fsynced, renamed into `new/`, and `new/` fsynced, so a
//! delivered message survives a crash. Line endings become LF, the maildir
//! convention; `Return-Path` and `Delivered-To` are prepended (RFC 5321
//! section 4.4).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::DeliveryError;
use crate::smtp::{Mailbox, ReversePath};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One maildir drop (owned, to move onto the blocking pool).
#[derive(Debug)]
pub struct MaildirDrop {
    /// The maildir (its `tmp`, `new`, `cur` are created if missing).
    pub dir: PathBuf,
    /// The spooled message file (its own, or its segment).
    pub source: PathBuf,
    /// Where the content starts in `source`.
    pub offset: u64,
    /// Octets of content from there.
    pub content_len: u64,
    /// The envelope sender, for `Return-Path`.
    pub reverse_path: ReversePath,
    /// The recipient, for `Delivered-To`.
    pub recipient: Mailbox,
    /// Our host name, part of the unique file name.
    pub hostname: String,
}

impl MaildirDrop {
    /// Writes the file; blocking, run it on the blocking pool.
    pub fn deliver(&self) -> Result<PathBuf, DeliveryError> {
        self.write().map_err(DeliveryError::Maildir)
    }

    fn write(&self) -> io::Result<PathBuf> {
        let (tmp_dir, new_dir) = (self.dir.join("tmp"), self.dir.join("new"));
        for dir in [&tmp_dir, &new_dir, &self.dir.join("cur")] {
            fs::create_dir_all(dir)?;
        }
        let name = unique_name(&self.hostname);
        let tmp = tmp_dir.join(&name);
        let result = (|| -> io::Result<PathBuf> {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut out = BufWriter::new(file);
            write!(
                out,
                "Return-Path: <{}>\nDelivered-To: {}\n",
                self.reverse_path, self.recipient
            )?;
            let mut source = File::open(&self.source)?;
            source.seek(SeekFrom::Start(self.offset))?;
            let mut source = source.take(self.content_len);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = source.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                // The spooled content is canonical CRLF: every CR precedes an LF.
                for piece in chunk[..n].split(|&b| b == b'\r') {
                    out.write_all(piece)?;
                }
            }
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            file.sync_all()?;
            let dest = new_dir.join(&name);
            fs::rename(&tmp, &dest)?;
            File::open(&new_dir)?.sync_all()?;
            Ok(dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// `time.M<micros>P<pid>Q<seq>.host`, the maildir unique name form.
fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let host: String = hostname
        .chars()
        .map(|c| if c == '/' || c == ':' { '_' } else { c })
        .collect();
    format!(
        "{}.M{}P{}Q{}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_a_file_with_lf_endings() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("msg");
        // As in a segment: other octets before the content, the envelope after it.
        fs::write(&source, b"RECORDHEADSubject: hi\r\n\r\nbody\r\nENVELOPE").unwrap();
        let drop = MaildirDrop {
            dir: dir.path().join("maildir"),
            source,
            offset: 10,
            content_len: 21,
            reverse_path: ReversePath::Mailbox(Mailbox::parse("a@x.test").unwrap()),
            recipient: Mailbox::parse("b@y.test").unwrap(),
            hostname: "mx.test".into(),
        };
        let path = drop.deliver().unwrap();
        assert!(path.starts_with(dir.path().join("maildir/new")));
        assert_eq!(
            fs::read_to_string(path).unwrap(),
            "Return-Path: <a@x.test>\nDelivered-To: b@y.test\nSubject: hi\n\nbody\n"
        );
        assert_eq!(fs::read_dir(dir.path().join("maildir/tmp")).unwrap().count(), 0);
    }
}
