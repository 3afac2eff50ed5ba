//! The plugin's settings, as given in the gateway's configuration.

use serde::de::DeserializeOwned;

/// The `[plugin.settings]` table, as JSON.
#[derive(Clone, Debug)]
pub struct Settings {
    json: String,
}

impl Settings {
    /// Settings from JSON text, as the gateway passes them; for a plugin's
    /// own unit tests.
    pub fn from_json(json: impl Into<String>) -> Self {
        Self { json: json.into() }
    }

    /// The settings as JSON text (`{}` when none were given).
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The settings deserialised into `T`; the error names what is wrong.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("invalid settings: {e}"))
    }
}

/// Parses a duration written as in the gateway's configuration: a number
/// with a unit, `"30s"`, `"5m"`, `"2h"`, `"36d"` (or `"500ms"`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as \"30s\", \"5m\", \"2h\" or \"36d\""))?;
    let seconds = match unit.trim() {
        "ms" => return Ok(std::time::Duration::from_millis(number)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} is not a duration such as \"30s\", \"5m\", \"2h\" or \"36d\""
            ));
        }
    };
    Ok(std::time::Duration::from_secs(number.saturating_mul(seconds)))
}

/// For settings fields: `#[serde(deserialize_with = "mailgate_plugin_sdk::duration")]`
/// reads `"5m"` (see [`parse_duration`]) or a number of seconds.
pub fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<std::time::Duration, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(u64),
        Text(String),
    }
    match <Written as serde::Deserialize>::deserialize(deserializer)? {
        Written::Seconds(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        Written::Text(text) => parse_duration(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("36d"), Ok(Duration::from_secs(36 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }
}
