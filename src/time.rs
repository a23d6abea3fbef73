//! Timestamps: microseconds since the Unix epoch (UTC), the one unit of time
//! the decision core, the audit log and replay share.

use chrono::{DateTime, SecondsFormat, Utc};

/// Microseconds in a minute, an hour and a day (calendar windows: Unix time
/// has no leap seconds).
pub const MINUTE_US: i64 = 60 * 1_000_000;
pub const HOUR_US: i64 = 60 * MINUTE_US;
pub const DAY_US: i64 = 24 * HOUR_US;

/// Parses an RFC 3339 timestamp (any offset) into microseconds UTC.
pub fn parse_rfc3339_us(text: &str) -> Result<i64, String> {
    let dt = DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("\"{text}\" is not an RFC 3339 timestamp ({e}); expected e.g. 2026-11-25T17:00:00Z")
    })?;
    Ok(dt.with_timezone(&Utc).timestamp_micros())
}

/// Parses either RFC 3339 text or a bare integer of microseconds.
pub fn parse_time_arg(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(us) => Ok(us),
        Err(_) => parse_rfc3339_us(text),
    }
}

/// Formats microseconds UTC as RFC 3339 with microsecond precision.
pub fn format_us(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|dt| dt.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{us}us"))
}

/// The wall clock, in microseconds UTC. Only the live proxy calls this.
pub fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Parses a duration (a window length, a grace period): `60` (seconds), `500ms`, `60s`, `5m`, `1h`, `1d`,
/// or the words minute, hour and day. Must be positive.
pub fn parse_duration_us(text: &str) -> Result<i64, String> {
    let t = text.trim();
    match t {
        "minute" => return Ok(MINUTE_US),
        "hour" => return Ok(HOUR_US),
        "day" => return Ok(DAY_US),
        _ => {}
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration"))?;
    let unit_us = match unit.trim() {
        "" | "s" => 1_000_000.0,
        "ms" => 1_000.0,
        "m" => MINUTE_US as f64,
        "h" => HOUR_US as f64,
        "d" => DAY_US as f64,
        other => {
            return Err(format!(
                "\"{text}\" has an unknown unit \"{other}\" (use ms, s, m, h or d)"
            ));
        }
    };
    let us = value * unit_us;
    if !us.is_finite() || us < 1.0 {
        return Err(format!("must be positive, got \"{text}\""));
    }
    if us > (100 * 365) as f64 * DAY_US as f64 {
        return Err(format!("\"{text}\" is longer than a century"));
    }
    Ok(us.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let us = parse_rfc3339_us("2026-11-25T17:00:00.123456Z").unwrap();
        assert_eq!(format_us(us), "2026-11-25T17:00:00.123456Z");
        assert_eq!(
            parse_rfc3339_us("2026-11-25T18:00:00+01:00").unwrap(),
            us - 123_456
        );
        assert_eq!(parse_time_arg("42").unwrap(), 42);
        assert!(parse_time_arg("yesterday").is_err());
    }
}
