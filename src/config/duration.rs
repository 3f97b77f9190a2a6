//! Durations in the config: a whole number with a unit, `ms`, `s`, `m` or
//! `h` (`"60s"`, `"2m"`, `"1500ms"`), or a plain integer of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// The longest duration a key takes (one day): beyond that a value is a typo.
pub const MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a duration; zero and more than a day are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ms, s, m or h, e.g. \"60s\"";
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "invalid duration {s:?}: expected a whole number with a unit {UNITS}"
        ));
    }
    let ms_per: u64 = match unit.trim_start() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        u => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {u:?}, expected {UNITS}"
            ))
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: too large"))?;
    let d = n
        .checked_mul(ms_per)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    check(d, s)
}

fn check(d: Duration, shown: &str) -> Result<Duration, String> {
    if d.is_zero() {
        return Err(format!("invalid duration {shown:?}: must be more than 0"));
    }
    if d > MAX {
        return Err(format!("invalid duration {shown:?}: at most 24h"));
    }
    Ok(d)
}

/// A duration key's value.
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"60s\" or a whole number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                let s =
                    u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
                self.visit_u64(s)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                check(Duration::from_secs(v), &v.to_string())
                    .map(Dur)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        for bad in [
            "",
            "s",
            "0s",
            "1.5s",
            "3d",
            "25h",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
