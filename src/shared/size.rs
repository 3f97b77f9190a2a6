//! Byte sizes as the config and the API write them.

/// Parses a byte size: a whole number with an optional binary unit, `B`,
/// `K`, `M`, `G`, `T`, `P` or `E` (also `KB`, `KiB`… in any case; all are
/// powers of 1024), with optional spaces: `"100G"`, `"512M"`, `"10GiB"`,
/// `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &str = "B, K, M, G, T, P or E (1K = 1024)";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!(
            "empty size, expected a number with an optional unit {UNITS}"
        ));
    }
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "invalid size {s:?}: expected a whole number of bytes with an optional unit {UNITS}, e.g. \"100G\""
        ));
    }
    let unit = unit.trim_start();
    if unit.starts_with('.') {
        return Err(format!(
            "invalid size {s:?}: fractions are not supported, use a smaller unit (e.g. \"1536M\" for 1.5G)"
        ));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        "e" | "eb" | "eib" => 60,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?}, expected {UNITS}"
            ))
        }
    };
    let too_big = || format!("invalid size {s:?}: too large (must be below 16E)");
    let n: u64 = number.parse().map_err(|_| too_big())?;
    n.checked_mul(1u64 << shift).ok_or_else(too_big)
}
