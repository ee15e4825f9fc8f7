//! Time inside Strata is `i64` milliseconds since the Unix epoch; these helpers convert at the
//! edges.

use chrono::{DateTime, SecondsFormat, Utc};

/// The current wall-clock time in milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00.5Z`, any offset) into milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Parses a Prometheus API time: RFC 3339, or Unix seconds with an optional fraction.
pub fn parse_api_time_ms(s: &str) -> Option<i64> {
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() {
            return None;
        }
        let ms = (secs * 1000.0).round();
        return (ms.abs() < 9.2e18).then_some(ms as i64);
    }
    parse_rfc3339_ms(s)
}

/// Formats milliseconds as RFC 3339 with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Parses a Prometheus duration (`1h30m`, `15s`, `500ms`, `2d`, `1w`, `1y`) into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration_ms("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("30d"), Some(2_592_000_000));
        assert_eq!(parse_duration_ms("5x"), None);
        assert_eq!(parse_duration_ms(""), None);
        assert_eq!(parse_api_time_ms("1.5"), Some(1500));
        assert_eq!(parse_api_time_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_api_time_ms("nope"), None);
        assert_eq!(format_rfc3339_ms(1500), "1970-01-01T00:00:01.500Z");
    }
}
