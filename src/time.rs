//! Timestamps: microseconds since the Unix epoch (UTC), the one unit of time
//! the decision core, the audit log and replay share.

use chrono::{DateTime, SecondsFormat, Utc};

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
