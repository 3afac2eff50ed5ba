//! spam-score: content heuristics on the subject, the text parts, the
//! URLs in them and the attachment types, read through the message handle.
//! Adds `X-Spam-Score` and `X-Spam-Status` (in SpamAssassin's style), and
//! quarantines or rejects above the configured thresholds.
//!
//! Runs at the `data` stage. See README.md for the settings.

use std::collections::BTreeMap;

use mailgate_plugin_sdk::{Message, Plugin, Settings, Transaction, Verdict, export_plugin};
use serde::Deserialize;

mod phrases;
use phrases::Phrases;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpamSettings {
    /// Quarantine at or above this score; default 5.0.
    #[serde(default = "default_quarantine")]
    quarantine_at: f64,
    /// Reject with 550 5.7.1 at or above this score; default 10.0.
    #[serde(default = "default_reject")]
    reject_at: f64,
    /// Add the X-Spam-* headers to mail that is delivered; default true.
    #[serde(default = "default_true")]
    add_headers: bool,
    /// Extra phrases and their weights, matched in the subject and text,
    /// ignoring case. They add to the built-in list.
    #[serde(default)]
    keywords: BTreeMap<String, f64>,
}

/// The filter: its settings, and the phrases it looks for, built once at
/// `init` (so a fresh instance starts with them from the snapshot).
#[derive(Debug)]
pub struct SpamScore {
    quarantine_at: f64,
    reject_at: f64,
    add_headers: bool,
    /// Per pattern of `matcher` (by ID): the tests it fires, with their
    /// weights; `None` for the URL schemes.
    tests: Vec<Option<Vec<(String, f64)>>>,
    /// The phrases (lower case) and `http://`, `https://`, found in one
    /// pass over the text, ignoring the case of ASCII letters.
    matcher: Phrases,
}

fn default_quarantine() -> f64 {
    5.0
}

fn default_reject() -> f64 {
    10.0
}

fn default_true() -> bool {
    true
}

/// Phrases every spam filter knows.
const BUILT_IN_KEYWORDS: &[(&str, f64)] = &[
    ("viagra", 3.0),
    ("act now", 1.5),
    ("winner", 1.0),
    ("100% free", 2.0),
    ("wire transfer", 1.5),
    ("click here", 1.0),
    ("limited time offer", 1.5),
    ("bitcoin", 1.0),
];

/// File endings of attachments that run code.
const DANGEROUS_ENDINGS: &[&str] = &[
    ".exe", ".scr", ".bat", ".cmd", ".com", ".pif", ".js", ".jse", ".vbs", ".vbe", ".wsf", ".jar", ".lnk", ".hta",
    ".ps1", ".iso",
];

/// The URL schemes whose hosts are looked at.
const URL_SCHEMES: [&str; 2] = ["http://", "https://"];

/// Hosts of URL shorteners.
const SHORTENERS: &[&str] = &["bit.ly", "tinyurl.com", "goo.gl", "t.co", "ow.ly", "is.gd", "buff.ly"];

/// What the message offers to the tests, so they can run on plain data.
#[derive(Debug, Default)]
pub struct Sample {
    /// The Subject.
    pub subject: String,
    /// Decoded text of the text parts.
    pub texts: Vec<String>,
    /// File names of attachments.
    pub attachments: Vec<String>,
    /// A Date header is present.
    pub has_date: bool,
    /// A Message-ID header is present.
    pub has_message_id: bool,
}

/// The score and the names of the tests that fired.
#[derive(Debug, PartialEq)]
pub struct Score {
    /// The total.
    pub total: f64,
    /// Test names, in the order they fired.
    pub tests: Vec<String>,
}

impl SpamScore {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let settings: SpamSettings = settings.parse()?;
        if settings.quarantine_at > settings.reject_at {
            return Err("quarantine_at must not be above reject_at".into());
        }
        // One pattern per distinct phrase (in lower case), with the tests
        // it fires, in the order of the lists; then the URL schemes.
        let mut patterns: Vec<String> = Vec::new();
        let mut tests: Vec<Option<Vec<(String, f64)>>> = Vec::new();
        let extra = settings.keywords.iter().map(|(k, v)| (k.as_str(), *v));
        for (phrase, weight) in BUILT_IN_KEYWORDS.iter().copied().chain(extra) {
            let name = format!(
                "KW_{}",
                phrase.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            let lower = phrase.to_lowercase();
            match patterns.iter().position(|p| *p == lower) {
                Some(at) => tests[at].get_or_insert_with(Vec::new).push((name, weight)),
                None => {
                    patterns.push(lower);
                    tests.push(Some(vec![(name, weight)]));
                }
            }
        }
        for scheme in URL_SCHEMES {
            patterns.push(scheme.to_owned());
            tests.push(None);
        }
        let matcher = Phrases::new(&patterns);
        Ok(Self {
            quarantine_at: settings.quarantine_at,
            reject_at: settings.reject_at,
            add_headers: settings.add_headers,
            tests,
            matcher,
        })
    }

    /// Which patterns occur in `text` (ASCII letters in any case, others in
    /// lower case), by ID, and the hosts of its URLs, in one pass.
    fn scan(&self, text: &str) -> (Vec<bool>, Vec<String>) {
        let mut found = vec![false; self.tests.len()];
        let mut hosts = Vec::new();
        self.matcher.find(text.as_bytes(), |id, end| {
            if self.tests[id].is_none() {
                // After a scheme, which is ASCII: `end` is a character
                // boundary.
                hosts.extend(text.get(end..).and_then(url_host));
            }
            found[id] = true;
        });
        (found, hosts)
    }

    /// Scores a sample.
    pub fn score(&self, sample: &Sample) -> Score {
        let mut score = Score {
            total: 0.0,
            tests: Vec::new(),
        };
        let mut hit = |name: &str, points: f64| {
            score.total += points;
            score.tests.push(name.to_owned());
        };
        let letters: Vec<char> = sample.subject.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase()) {
            hit("SUBJ_ALL_CAPS", 2.0);
        }
        if sample.subject.contains("!!!") {
            hit("SUBJ_EXCLAIM", 1.0);
        }
        let (found, hosts) = self.scan(&haystack(sample));
        for (tests, _) in self.tests.iter().zip(&found).filter(|(_, found)| **found) {
            for (name, weight) in tests.iter().flatten() {
                hit(name, *weight);
            }
        }
        if hosts.len() > 10 {
            hit("MANY_URLS", 1.5);
        }
        if hosts.iter().any(|h| h.parse::<std::net::Ipv4Addr>().is_ok()) {
            hit("URL_IP_HOST", 2.5);
        }
        if hosts.iter().any(|h| SHORTENERS.contains(&h.as_str())) {
            hit("URL_SHORTENER", 1.0);
        }
        if sample
            .attachments
            .iter()
            .any(|name| DANGEROUS_ENDINGS.iter().any(|e| name.to_lowercase().ends_with(e)))
        {
            hit("DANGEROUS_ATTACHMENT", 5.0);
        }
        if !sample.has_date {
            hit("MISSING_DATE", 1.0);
        }
        if !sample.has_message_id {
            hit("MISSING_MESSAGE_ID", 1.0);
        }
        score
    }
}

/// The subject and the texts, one per line, as the phrase matcher reads
/// them: it ignores the case of ASCII letters, so an ASCII text is read as
/// it is, and any other is put in lower case first.
fn haystack(sample: &Sample) -> String {
    let mut text =
        String::with_capacity(sample.subject.len() + sample.texts.iter().map(|t| t.len() + 1).sum::<usize>());
    text.push_str(&sample.subject);
    text.push('\n');
    for (i, part) in sample.texts.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(part);
    }
    if text.is_ascii() { text } else { text.to_lowercase() }
}

/// The host at the start of `after`, what follows a URL's scheme (lower
/// case), if it is not empty.
fn url_host(after: &str) -> Option<String> {
    let end = after
        .find(|c: char| c == '/' || c == ':' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>()".contains(c))
        .unwrap_or(after.len());
    (end > 0).then(|| after[..end].to_lowercase())
}

fn sample(message: &Message) -> Sample {
    let parts = message.parts();
    Sample {
        subject: message.first_header("Subject").unwrap_or_default(),
        texts: message.texts(),
        attachments: parts
            .iter()
            .filter(|p| p.is_attachment)
            .filter_map(|p| p.filename.clone())
            .collect(),
        has_date: !message.header("Date").is_empty(),
        has_message_id: !message.header("Message-ID").is_empty(),
    }
}

impl Plugin for SpamScore {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        let score = self.score(&sample(message));
        let tests = if score.tests.is_empty() {
            "NONE".to_owned()
        } else {
            score.tests.join(",")
        };
        if score.total >= self.reject_at {
            return Verdict::reject(
                550,
                "5.7.1",
                &format!("Message rejected as spam (score {:.1})", score.total),
            );
        }
        let spam = score.total >= self.quarantine_at;
        if self.add_headers || spam {
            txn.set_header("X-Spam-Score", &format!("{:.1}", score.total));
            txn.set_header(
                "X-Spam-Status",
                &format!(
                    "{}, score={:.1} required={:.1} tests={tests}",
                    if spam { "Yes" } else { "No" },
                    score.total,
                    self.quarantine_at
                ),
            );
        }
        if spam {
            return Verdict::Quarantine(format!("spam score {:.1} ({tests})", score.total));
        }
        Verdict::Continue
    }
}

export_plugin!(SpamScore);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> SpamScore {
        SpamScore::from_settings(&Settings::from_json(r#"{"keywords": {"crypto doubler": 4.0}}"#)).unwrap()
    }

    fn clean() -> Sample {
        Sample {
            subject: "Minutes of Tuesday's meeting".into(),
            texts: vec!["Hi all, the minutes are at https://wiki.example.com/minutes.\n".into()],
            attachments: vec!["minutes.pdf".into()],
            has_date: true,
            has_message_id: true,
        }
    }

    #[test]
    fn clean_mail_scores_zero() {
        assert_eq!(
            filter().score(&clean()),
            Score {
                total: 0.0,
                tests: vec![]
            }
        );
    }

    #[test]
    fn each_test_fires() {
        let spam = Sample {
            subject: "YOU ARE A WINNER!!!".into(),
            texts: vec!["Click here: http://192.0.2.7/claim and https://bit.ly/x - crypto doubler".into()],
            attachments: vec!["invoice.pdf.exe".into()],
            has_date: false,
            has_message_id: false,
        };
        let score = filter().score(&spam);
        for test in [
            "SUBJ_ALL_CAPS",
            "SUBJ_EXCLAIM",
            "KW_WINNER",
            "KW_CLICK_HERE",
            "KW_CRYPTO_DOUBLER",
            "URL_IP_HOST",
            "URL_SHORTENER",
            "DANGEROUS_ATTACHMENT",
            "MISSING_DATE",
            "MISSING_MESSAGE_ID",
        ] {
            assert!(score.tests.contains(&test.to_owned()), "{test} in {:?}", score.tests);
        }
        assert!(score.total >= 10.0);
    }

    #[test]
    fn url_hosts_are_extracted() {
        let text = "see http://a.example/x, HTTPS://B.example:8443/y, http:// and http://c.example";
        assert_eq!(filter().scan(text).1, ["a.example", "b.example", "c.example"]);
    }

    /// The one-pass scan finds what a search for each phrase in the lower
    /// case text finds, whatever the case and the script.
    #[test]
    fn phrases_are_found_as_by_a_search_for_each() {
        let filter = SpamScore::from_settings(&Settings::from_json(
            r#"{"keywords": {"Winner": 0.5, "ÉTÉ GRATUIT": 2.0, "now": 0.25}}"#,
        ))
        .unwrap();
        for (subject, text) in [
            ("", "nothing here"),
            ("Act NOW", "a WINNER takes it all"),
            ("Été gratuit", "été gratuit, click   here"),
            ("x", "VIAGRA-viagra bitcoinbitcoin 100% FREE"),
            ("İstanbul", "wire\ntransfer, limited time offer"),
        ] {
            let sample = Sample {
                subject: subject.into(),
                texts: vec![text.into(), "second part".into()],
                ..Sample::default()
            };
            let mut expected: Vec<String> = BUILT_IN_KEYWORDS
                .iter()
                .copied()
                .chain([("Winner", 0.5), ("now", 0.25), ("ÉTÉ GRATUIT", 2.0)])
                .filter(|(phrase, _)| {
                    format!("{subject}\n{text}\nsecond part")
                        .to_lowercase()
                        .contains(&phrase.to_lowercase())
                })
                .map(|(phrase, _)| {
                    format!(
                        "KW_{}",
                        phrase.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                    )
                })
                .collect();
            let mut fired: Vec<String> = filter
                .score(&sample)
                .tests
                .into_iter()
                .filter(|t| t.starts_with("KW_"))
                .collect();
            fired.sort();
            expected.sort();
            assert_eq!(fired, expected, "{subject:?} / {text:?}");
        }
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(SpamScore::from_settings(&Settings::from_json(r#"{"quarantine_at": 9, "reject_at": 5}"#)).is_err());
        assert!(SpamScore::from_settings(&Settings::from_json(r#"{"unknown": 1}"#)).is_err());
    }
}
