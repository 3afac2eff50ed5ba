//! The plugin's settings, as given in the gateway's configuration.

use serde::de::DeserializeOwned;

/// The `[plugin.settings]` table, as JSON.
#[derive(Clone, Debug)]
pub struct Settings {
    json: String,
}

impl Settings {
    pub(crate) fn new(json: String) -> Self {
        Self { json }
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
