//! Fuzzing the time parsers every API request goes through (`strata_model::time`): durations
//! and times of any size parse to exactly their value or to nothing, never overflow or panic,
//! and formatted times parse back.

mod fuzz_support;

use fuzz_support::{config, mutate, mutations};
use proptest::prelude::*;
use strata_model::time::{
    format_rfc3339_ms, parse_api_time_ms, parse_duration_ms, parse_rfc3339_ms,
};

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
const RFC3339_MIN: i64 = -62_167_219_200_000;
const RFC3339_MAX: i64 = 253_402_300_799_999;

/// Duration units and their milliseconds.
const UNITS: [(&str, i128); 7] = [
    ("ms", 1),
    ("s", 1000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
    ("y", 31_536_000_000),
];

proptest! {
    #![proptest_config(config(1024))]

    /// A duration of parts `<n><unit>` is their sum in milliseconds, or nothing when that (or
    /// a part) does not fit in i64.
    #[test]
    fn durations_are_exact_or_refused(parts in proptest::collection::vec((prop_oneof![0u64..1000, any::<u64>(), Just(i64::MAX as u64), Just(9_223_372_036_854_775u64)], 0usize..7), 1..5)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let mut sum: Option<i128> = Some(0);
        for (n, u) in &parts {
            // Each part must fit in i64, and so must every partial sum.
            let part = i64::try_from(*n).ok().map(|n| n as i128 * UNITS[*u].1).filter(|p| *p <= i64::MAX as i128);
            sum = sum.zip(part).map(|(s, p)| s + p).filter(|s| *s <= i64::MAX as i128);
        }
        prop_assert_eq!(parse_duration_ms(&text), sum.map(|s| s as i64), "{}", text);
    }

    /// Unix seconds with a fraction are rounded to milliseconds, or refused beyond i64.
    #[test]
    fn api_times_in_seconds_are_exact_or_refused(secs in prop_oneof![-1e10f64..1e10, any::<f64>(), Just(9.2e15), Just(-9.3e15)]) {
        let text = format!("{secs}");
        let want = (secs * 1000.0).round();
        let want = (want.is_finite() && want.abs() < 9.2e18).then_some(want as i64);
        prop_assert_eq!(parse_api_time_ms(&text), want, "{}", text);
    }

    /// Every time in RFC 3339's years (0000 to 9999) formats and parses back to itself, as
    /// RFC 3339 and as an API time; others format as something (chrono's `+10000-...`, or the
    /// number) without panicking.
    #[test]
    fn formatted_times_parse_back(ms in prop_oneof![RFC3339_MIN..=RFC3339_MAX, fuzz_support::timestamp()]) {
        let text = format_rfc3339_ms(ms);
        if (RFC3339_MIN..=RFC3339_MAX).contains(&ms) {
            prop_assert_eq!(parse_rfc3339_ms(&text), Some(ms), "{}", text);
            prop_assert_eq!(parse_api_time_ms(&text), Some(ms), "{}", text);
        }
    }

    /// Mutated durations and times, and text of their own characters, never panic.
    #[test]
    fn mutated_times_never_panic(ms in any::<i64>(), d in "[0-9]{1,25}(ms|s|m|h|d|w|y){1,2}", muts in mutations(), soup in "[0-9TZ:.+\\-eEsmhdwyn]{0,40}") {
        for t in [format_rfc3339_ms(ms), d, soup] {
            let mut b = t.into_bytes();
            let _ = parse_duration_ms(&String::from_utf8_lossy(&b));
            let _ = parse_api_time_ms(&String::from_utf8_lossy(&b));
            mutate(&mut b, &muts);
            let t = String::from_utf8_lossy(&b);
            let _ = parse_duration_ms(&t);
            let _ = parse_api_time_ms(&t);
            let _ = parse_rfc3339_ms(&t);
        }
    }
}
