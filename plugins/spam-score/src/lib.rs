//! spam-score: content heuristics on the subject, the text parts, the
//! URLs in them and the attachment types, read through the message handle.
//! Adds `X-Spam-Score` and `X-Spam-Status` (in SpamAssassin's style), and
//! quarantines or rejects above the configured thresholds.
//!
//! Runs at the `data` stage. See README.md for the settings.

use std::collections::BTreeMap;

use mailgate_plugin_sdk::{Message, Plugin, Settings, Transaction, Verdict, export_plugin};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpamScore {
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
        let score: SpamScore = settings.parse()?;
        if score.quarantine_at > score.reject_at {
            return Err("quarantine_at must not be above reject_at".into());
        }
        Ok(score)
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
        let haystack = format!("{}\n{}", sample.subject, sample.texts.join("\n")).to_lowercase();
        let extra = self.keywords.iter().map(|(k, v)| (k.as_str(), *v));
        for (phrase, weight) in BUILT_IN_KEYWORDS.iter().copied().chain(extra) {
            if haystack.contains(&phrase.to_lowercase()) {
                hit(
                    &format!(
                        "KW_{}",
                        phrase.to_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                    ),
                    weight,
                );
            }
        }
        let hosts = url_hosts(&haystack);
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

/// Host names of the http and https URLs in `text` (lower case).
pub fn url_hosts(text: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    for scheme in ["http://", "https://"] {
        let mut rest = text;
        while let Some(at) = rest.find(scheme) {
            let after = &rest[at + scheme.len()..];
            let end = after
                .find(|c: char| {
                    c == '/' || c == ':' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>()".contains(c)
                })
                .unwrap_or(after.len());
            if end > 0 {
                hosts.push(after[..end].to_lowercase());
            }
            rest = after;
        }
    }
    hosts
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
        assert_eq!(
            url_hosts("see http://a.example/x, https://B.example:8443/y and http://c.example"),
            ["a.example", "c.example", "b.example"]
        );
    }

    #[test]
    fn thresholds_are_checked() {
        assert!(SpamScore::from_settings(&Settings::from_json(r#"{"quarantine_at": 9, "reject_at": 5}"#)).is_err());
        assert!(SpamScore::from_settings(&Settings::from_json(r#"{"unknown": 1}"#)).is_err());
    }
}
