//! header-rewrite: adds, removes and sets header fields by rules, and can
//! add a footer to the message text. Typical uses: strip internal
//! `Received:` lines and `X-` headers before mail leaves, stamp a header,
//! add a disclaimer.
//!
//! Runs at the `data` stage. See README.md for the settings.

use mailgate_plugin_sdk::{Message, Part, Plugin, Settings, Transaction, Verdict, export_plugin};
use serde::Deserialize;

/// The settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Header rules, applied in order.
    #[serde(default)]
    rules: Vec<Rule>,
    /// Text appended to the first plain-text part (not an attachment, not
    /// transfer-encoded). `\n` line breaks become CRLF.
    #[serde(default)]
    footer: Option<String>,
}

/// One header rule: exactly one of `remove`, `set`, `add`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Remove fields with this name...
    #[serde(default)]
    remove: Option<String>,
    /// ...only those whose value contains this text (ASCII case ignored).
    #[serde(default)]
    containing: Option<String>,
    /// Replace fields with this name by one with `value`.
    #[serde(default)]
    set: Option<String>,
    /// Add a field with this name and `value`.
    #[serde(default)]
    add: Option<String>,
    /// The value for `set` and `add`.
    #[serde(default)]
    value: Option<String>,
}

impl Rewrite {
    /// Parses and checks the settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, String> {
        let rewrite: Rewrite = settings.parse()?;
        for (i, rule) in rewrite.rules.iter().enumerate() {
            let actions = [&rule.remove, &rule.set, &rule.add]
                .iter()
                .filter(|a| a.is_some())
                .count();
            if actions != 1 {
                return Err(format!("rule {i}: give exactly one of `remove`, `set`, `add`"));
            }
            if rule.remove.is_none() && rule.value.is_none() {
                return Err(format!("rule {i}: `set` and `add` need a `value`"));
            }
            if rule.remove.is_none() && rule.containing.is_some() {
                return Err(format!("rule {i}: `containing` goes with `remove`"));
            }
        }
        Ok(rewrite)
    }
}

/// Which occurrences (0-based) of a field to remove: those whose value
/// contains `needle`, or all. Indices are returned highest first, so that
/// removing them one by one does not shift the ones still to remove.
pub fn occurrences_to_remove(values: &[String], needle: Option<&str>) -> Vec<u32> {
    let needle = needle.map(str::to_ascii_lowercase);
    let mut hits: Vec<u32> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            needle
                .as_ref()
                .is_none_or(|n| v.to_ascii_lowercase().contains(n.as_str()))
        })
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect();
    hits.reverse();
    hits
}

/// The body with `footer` inserted after the content of `part`, or `None`
/// when the part is transfer-encoded (inserting text would corrupt it).
pub fn with_footer(body: &[u8], part: &Part, footer: &str) -> Option<Vec<u8>> {
    if !matches!(part.transfer_encoding.as_str(), "7bit" | "8bit" | "binary") {
        return None;
    }
    let end = usize::try_from(part.raw_offset + part.raw_length).ok()?.min(body.len());
    let footer = footer.replace("\r\n", "\n").replace('\n', "\r\n");
    let (before, after) = body.split_at(end);
    let mut out = Vec::with_capacity(body.len() + footer.len() + 4);
    out.extend_from_slice(before);
    if !before.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(footer.as_bytes());
    // In a multipart body the CRLF before the next boundary belongs to the
    // boundary, so `after` may already start the next line.
    if !footer.ends_with("\r\n") && !after.starts_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(after);
    Some(out)
}

impl Plugin for Rewrite {
    fn init(settings: &Settings) -> Result<Self, String> {
        Self::from_settings(settings)
    }

    fn on_data(&self, message: &Message, txn: &Transaction) -> Verdict {
        for rule in &self.rules {
            match (&rule.remove, &rule.set, &rule.add, &rule.value) {
                (Some(name), ..) if rule.containing.is_none() => txn.remove_header(name),
                (Some(name), ..) => {
                    for index in occurrences_to_remove(&message.header(name), rule.containing.as_deref()) {
                        txn.remove_header_at(name, index);
                    }
                }
                (None, Some(name), _, Some(value)) => txn.set_header(name, value),
                (None, None, Some(name), Some(value)) => txn.add_header(name, value),
                _ => {}
            }
        }
        if let Some(footer) = &self.footer {
            let text = message
                .parts()
                .into_iter()
                .find(|p| p.content_type == "text/plain" && !p.is_attachment);
            if let Some(body) = text.and_then(|part| with_footer(&message.raw_body(), &part, footer)) {
                txn.replace_body(&body);
            }
        }
        Verdict::Continue
    }
}

export_plugin!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, length: u64, encoding: &str) -> Part {
        Part {
            index: 0,
            content_type: "text/plain".into(),
            filename: None,
            size: length,
            raw_offset: offset,
            raw_length: length,
            transfer_encoding: encoding.into(),
            is_attachment: false,
        }
    }

    #[test]
    fn picks_occurrences_highest_first() {
        let values = vec![
            "from internal.example".to_owned(),
            "from outside".into(),
            "by INTERNAL.example".into(),
        ];
        assert_eq!(occurrences_to_remove(&values, Some("internal.example")), vec![2, 0]);
        assert_eq!(occurrences_to_remove(&values, None), vec![2, 1, 0]);
    }

    #[test]
    fn footer_goes_after_the_text_part() {
        let body = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n";
        let start = 33u64; // after the part's blank line
        let out = with_footer(body, &part(start, 5, "7bit"), "-- \nfooter").unwrap();
        assert_eq!(
            out,
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n-- \r\nfooter\r\n--b--\r\n"
        );
        assert!(with_footer(body, &part(start, 5, "base64"), "x").is_none());
    }

    #[test]
    fn footer_on_a_single_part_message() {
        let out = with_footer(b"hello\r\n", &part(0, 7, "7bit"), "bye").unwrap();
        assert_eq!(out, b"hello\r\nbye\r\n");
    }

    #[test]
    fn rules_are_checked() {
        let bad = [
            r#"{"rules": [{"remove": "A", "set": "B", "value": "x"}]}"#,
            r#"{"rules": [{"add": "A"}]}"#,
            r#"{"rules": [{"set": "A", "value": "x", "containing": "y"}]}"#,
            r#"{"rules": [{}]}"#,
        ];
        for json in bad {
            assert!(Rewrite::from_settings(&Settings::from_json(json)).is_err(), "{json}");
        }
        assert!(
            Rewrite::from_settings(&Settings::from_json(
                r#"{"rules": [{"remove": "Received", "containing": "internal"}], "footer": "x"}"#
            ))
            .is_ok()
        );
    }
}
