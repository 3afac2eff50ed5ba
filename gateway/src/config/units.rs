//! Value types of the configuration file that validate while they are
//! deserialised, so toml reports a bad value at its line and column.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A duration written as a string with a unit: `"500ms"`, `"30s"`, `"5m"`,
/// `"2h"`, `"5d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses the string form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
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
        deserializer.deserialize_str(ParseStr("a duration such as \"30s\"", Self::parse))
    }
}

/// Deserialises a string through `parse`. Errors raised inside `visit_str`
/// carry the span of the value itself, so the reported line and column
/// point at the bad element, not at its enclosing array.
struct ParseStr<T>(&'static str, fn(&str) -> Result<T, String>);

impl<T> Visitor<'_> for ParseStr<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

/// A listen address, `"ip:port"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddress(pub SocketAddr);

impl ListenAddress {
    fn parse(text: &str) -> Result<Self, String> {
        text.parse().map(Self).map_err(|_| {
            format!(
                "invalid listen address {text:?}: expected an IP address and port such as \"0.0.0.0:25\" or \"[::]:25\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStr("an address such as \"0.0.0.0:25\"", Self::parse))
    }
}

/// An IP network in CIDR form, `"10.0.0.0/8"`; a bare address means a single host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network(pub IpNet);

impl Network {
    fn parse(text: &str) -> Result<Self, String> {
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        parsed.map(Self).map_err(|_| {
            format!(
                "invalid network {text:?}: expected CIDR such as \"10.0.0.0/8\" or an address such as \"192.0.2.1\""
            )
        })
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(ParseStr("a network such as \"10.0.0.0/8\"", Self::parse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        for (text, millis) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0s", 0),
        ] {
            assert_eq!(
                HumanDuration::parse(text),
                Ok(HumanDuration(Duration::from_millis(millis))),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for text in ["", "30", "s", "5 minutes", "-1s", "1.5s", "30x"] {
            assert!(HumanDuration::parse(text).is_err(), "{text}");
        }
    }
}
