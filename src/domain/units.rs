//! Durations (`"250ms"`, `"30d"`) and sizes (`"4MiB"`) as config files and messages
//! write them: one parser and one formatter each, round-tripping.

use std::time::Duration;

/// Parses durations written as `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"` or `"30d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("\"{text}\" has no unit; write e.g. \"250ms\", \"2s\" or \"5m\""))?;
    let (number, unit) = text.split_at(split);
    let not_a_duration =
        || format!("\"{text}\" is not a duration like \"250ms\", \"2s\" or \"5m\"");
    let value: f64 = number.parse().map_err(|_| not_a_duration())?;
    let unit_nanos: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{unit}\"; use ms, s, m, h or d"
            ));
        }
    };
    let out_of_range = || format!("\"{text}\" is out of range");
    // Whole numbers exactly; fractions through f64.
    if let Ok(whole) = number.parse::<u64>() {
        let nanos = u128::from(whole) * u128::from(unit_nanos);
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| out_of_range())?;
        return Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32));
    }
    Duration::try_from_secs_f64(value * unit_nanos as f64 / 1e9).map_err(|_| out_of_range())
}

/// Writes a duration the way `parse_duration` reads it, in the largest unit that keeps it
/// exact: `"30d"`, `"2h"`, `"90s"`, `"250ms"`, `"1.5ms"`.
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ] {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{}ms", nanos as f64 / 1e6)
}

/// Parses sizes written as `"4MiB"`, `"512KiB"`, `"1GiB"`, `"10MB"`, `"100B"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size like \"4MiB\""))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\"; use B, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// Writes a size the way `parse_size` reads it, in the largest binary unit that keeps it
/// exact: `"64MiB"`, `"1GiB"`, `"1500B"`.
pub fn format_size(bytes: usize) -> String {
    for (unit, size) in [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        for text in ["30d", "2h", "90m", "45s", "250ms", "1.5ms"] {
            let parsed = parse_duration(text).unwrap_or_default();
            assert_eq!(format_duration(parsed), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("4 parsecs").is_err());
        for text in ["64MiB", "1GiB", "512KiB", "1500B"] {
            assert_eq!(parse_size(text).map(format_size), Ok(text.to_string()));
        }
    }
}
