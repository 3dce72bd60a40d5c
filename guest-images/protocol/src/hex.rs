//! `HexU64`: a 64-bit value that reads from an integer or a string and
//! always writes as a `"0x..."` string.
//!
//! Addresses and sizes are far easier to review in snapshots as hex, and
//! TOML integers are signed 64-bit, so values such as `0xffffffffffffffff`
//! can only be written as strings in scenario files.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An unsigned 64-bit value written as `"0x..."` (lowercase, no padding).
///
/// Accepts an integer (`268435456`, or TOML's `0x10000000` literal) or a
/// string: `"0x10000000"`, `"0X1000_0000"`, `"268435456"`, `"268_435_456"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HexU64(pub u64);

impl HexU64 {
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for HexU64 {
    fn from(v: u64) -> Self {
        HexU64(v)
    }
}

impl From<HexU64> for u64 {
    fn from(v: HexU64) -> Self {
        v.0
    }
}

impl fmt::Display for HexU64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Why a string is not a valid [`HexU64`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHexU64Error {
    input: String,
    reason: &'static str,
}

impl fmt::Display for ParseHexU64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid number {:?}: {} (expected e.g. \"0x10000000\" or \"268435456\")",
            self.input, self.reason
        )
    }
}

impl std::error::Error for ParseHexU64Error {}

impl FromStr for HexU64 {
    type Err = ParseHexU64Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseHexU64Error {
            input: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let (digits, radix) = match trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
        {
            Some(rest) => (rest, 16),
            None => (trimmed, 10),
        };
        // Underscores are digit separators only: not leading, trailing or doubled,
        // so that a typo such as "0x_" is not silently read as zero.
        if digits.is_empty() {
            return Err(err("no digits"));
        }
        if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
            return Err(err("misplaced underscore"));
        }
        let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
        if !cleaned.chars().all(|c| c.is_digit(radix)) {
            return Err(err(if radix == 16 {
                "not a hex digit"
            } else {
                "not a decimal digit"
            }));
        }
        u64::from_str_radix(&cleaned, radix)
            .map(HexU64)
            .map_err(|_| err("does not fit in 64 bits"))
    }
}

impl Serialize for HexU64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HexU64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HexU64Visitor)
    }
}

struct HexU64Visitor;

impl Visitor<'_> for HexU64Visitor {
    type Value = HexU64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-negative integer or a string such as \"0x10000000\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<HexU64, E> {
        Ok(HexU64(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<HexU64, E> {
        u64::try_from(v).map(HexU64).map_err(|_| {
            E::custom(format_args!(
                "negative number {v} (write large values as a string: \"0xffffffffffffffff\")"
            ))
        })
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<HexU64, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<u64, String> {
        s.parse::<HexU64>().map(|h| h.0).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_hex_decimal_and_underscores() {
        assert_eq!(parse("0x10000000"), Ok(0x1000_0000));
        assert_eq!(parse("0X1000_0000"), Ok(0x1000_0000));
        assert_eq!(parse("268435456"), Ok(0x1000_0000));
        assert_eq!(parse("268_435_456"), Ok(0x1000_0000));
        assert_eq!(parse("0xffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(parse("0"), Ok(0));
    }

    #[test]
    fn rejects_malformed_numbers_with_a_reason() {
        assert_eq!(
            parse("0x").unwrap_err(),
            "invalid number \"0x\": no digits (expected e.g. \"0x10000000\" or \"268435456\")"
        );
        assert!(parse("0x1_0000_0000_0000_0000")
            .unwrap_err()
            .contains("does not fit in 64 bits"));
        assert!(parse("12ab").unwrap_err().contains("not a decimal digit"));
        assert!(parse("0xg").unwrap_err().contains("not a hex digit"));
        assert!(parse("0x_1").unwrap_err().contains("misplaced underscore"));
        assert!(parse("1__0").unwrap_err().contains("misplaced underscore"));
        assert!(parse("-1").is_err());
    }

    #[test]
    fn serializes_as_lowercase_hex_string() {
        assert_eq!(
            serde_json::to_string(&HexU64(0x0800_0040)).unwrap(),
            "\"0x8000040\""
        );
        assert_eq!(serde_json::to_string(&HexU64(0)).unwrap(), "\"0x0\"");
    }

    #[test]
    fn deserializes_integers_and_strings() {
        let v: Vec<HexU64> = serde_json::from_str(r#"[4096, "0x1000", "4_096"]"#).unwrap();
        assert_eq!(v, vec![HexU64(4096); 3]);
        let err = serde_json::from_str::<HexU64>("-5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative number -5"), "{err}");
    }
}
