//! Value types of the configuration file that validate while they are
//! deserialised, so toml reports a bad value at its line and column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A duration written as a string with a unit: `"500ms"`, `"30s"`, `"5m"`,
/// `"2h"`, `"5d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses the string form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected a number and a unit, e.g. \"30s\""))?;
        let millis: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: the unit must be one of ms, s, m, h, d"
                ));
            }
        };
        let total = number
            .checked_mul(millis)
            .ok_or_else(|| format!("duration {text:?} is too long"))?;
        Ok(Self(Duration::from_millis(total)))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        for (text, millis) in [("500ms", 500), ("30s", 30_000), ("5m", 300_000), ("2h", 7_200_000), ("1d", 86_400_000), ("0s", 0)] {
            assert_eq!(HumanDuration::parse(text), Ok(HumanDuration(Duration::from_millis(millis))), "{text}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for text in ["", "30", "s", "5 minutes", "-1s", "1.5s", "30x"] {
            assert!(HumanDuration::parse(text).is_err(), "{text}");
        }
    }
}
