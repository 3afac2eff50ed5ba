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
