//! Times as the operator types them, and as the command prints them: RFC 3339 instants
//! (`2026-11-23T08:00:00Z`, `2026-11-23T15:00:00+07:00`), `now`, and times relative to now
//! (`-1h`, `-2d`, `+30m`, `90 minutes ago`), through `jiff`. The API carries microseconds since
//! the Unix epoch (UTC).
//!
//! Why no calendar units: a day here is 24 hours (UTC has no daylight saving), but a month or
//! a year has no fixed length, so `-1mo` is refused rather than guessed at.

use std::str::FromStr;

use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// What the command says when a time does not parse: names every accepted form.
const TIME_FORMS: &str = "an RFC 3339 time such as 2026-11-23T08:00:00Z or 2026-11-23T15:00:00+07:00, \
                          `now`, or a time relative to now such as -1h, -30m, -2d, +10m or \"90 minutes ago\"";

/// What the command says when a duration does not parse.
const DURATION_FORMS: &str = "a duration such as 30m, 1h, 2h30m, 7d or PT1H (weeks, days, hours, minutes, seconds)";

/// Longest input considered: a real time or duration is under 40 characters, and the parsers
/// need not be handed megabytes from a script gone wrong.
const TIME_TEXT_BYTES_MAX: usize = 100;

/// A time given on the command line: an instant, or an offset from the moment the command runs.
/// Resolving every time of one command against one `now` keeps `--from -1h --to now` exactly an
/// hour long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// An instant, microseconds since the epoch.
    At(i64),
    /// Microseconds after (positive) or before (negative) now.
    FromNow(i64),
}

impl TimeArg {
    /// The instant, with relative times taken from `now_us`.
    pub fn resolve(self, now_us: i64) -> i64 {
        match self {
            TimeArg::At(us) => us,
            TimeArg::FromNow(delta_us) => now_us.saturating_add(delta_us),
        }
    }
}

impl FromStr for TimeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.len() > TIME_TEXT_BYTES_MAX {
            return Err(format!("a time of {} bytes is not {TIME_FORMS}", t.len()));
        }
        if t.eq_ignore_ascii_case("now") {
            return Ok(TimeArg::FromNow(0));
        }
        // A relative time says which way it goes: a bare `1h` could mean either, and a time
        // off by two hours in a court export is worse than a refusal.
        if t.starts_with(['+', '-']) || t.ends_with(" ago") {
            return parse_span_us(t).map(TimeArg::FromNow).map_err(|e| format!("{s:?} is not {TIME_FORMS}: {e}"));
        }
        parse_rfc3339(t).map(TimeArg::At)
    }
}

/// A span in microseconds, days taken as 24 hours.
fn parse_span_us(s: &str) -> Result<i64, String> {
    let span: Span = s.parse().map_err(|e: jiff::Error| e.to_string())?;
    let d: SignedDuration = span.to_duration(SpanRelativeTo::days_are_24_hours()).map_err(|e| e.to_string())?;
    i64::try_from(d.as_micros()).map_err(|_| "too long".to_string())
}

/// A positive duration (`--last 30m`) in microseconds.
pub fn parse_duration_us(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.len() > TIME_TEXT_BYTES_MAX {
        return Err(format!("a duration of {} bytes is not {DURATION_FORMS}", t.len()));
    }
    let us = parse_span_us(t).map_err(|e| format!("{s:?} is not {DURATION_FORMS}: {e}"))?;
    if us <= 0 {
        return Err(format!("{s:?}: the duration must be positive (it reaches back from now)"));
    }
    Ok(us)
}

/// Parses an RFC 3339 instant (an offset, `Z` or `±HH:MM`, is required: a time without one
/// would depend on the machine's time zone).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let ts: Timestamp = s.trim().parse().map_err(|e: jiff::Error| format!("{s:?} is not {TIME_FORMS} ({e})"))?;
    Ok(ts.as_microsecond())
}

/// Formats as `YYYY-MM-DDTHH:MM:SS.ffffffZ`; an instant outside jiff's range (years -9999 to
/// 9999: an open end such as `i64::MAX`) as its microseconds.
pub fn format_rfc3339(us: i64) -> String {
    match Timestamp::from_microsecond(us) {
        Ok(ts) => format!("{ts:.6}"),
        Err(_) => format!("{us} µs since the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z
    const HOUR_US: i64 = 3_600_000_000;

    fn at(s: &str) -> Result<i64, String> {
        s.parse::<TimeArg>().map(|t| t.resolve(NOW_US))
    }

    #[test]
    fn rfc3339_instants_with_and_without_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(at("2026-01-01T00:00:00Z"), Ok(NOW_US));
        assert_eq!(at("2026-01-01T07:00:00+07:00"), Ok(NOW_US));
        assert_eq!(at("2025-12-31T19:00:00-05:00"), Ok(NOW_US));
        assert_eq!(at("2026-01-01t00:00:00z"), Ok(NOW_US), "RFC 3339 allows lower case");
        assert_eq!(at("2024-02-29T12:34:56.789Z"), Ok(1_709_210_096_789_000));
        assert_eq!(at("2024-02-29T12:34:56.789123Z"), Ok(1_709_210_096_789_123));
        assert_eq!(at("1969-12-31T23:59:59Z"), Ok(-1_000_000));
    }

    #[test]
    fn relative_times_and_now() {
        assert_eq!(at("now"), Ok(NOW_US));
        assert_eq!(at("NOW"), Ok(NOW_US));
        assert_eq!(at("-1h"), Ok(NOW_US - HOUR_US));
        assert_eq!(at("-30m"), Ok(NOW_US - HOUR_US / 2));
        assert_eq!(at("+10m"), Ok(NOW_US + HOUR_US / 6));
        assert_eq!(at("-2d"), Ok(NOW_US - 48 * HOUR_US), "a day is 24 hours");
        assert_eq!(at("-1w"), Ok(NOW_US - 7 * 24 * HOUR_US));
        assert_eq!(at("-1h30m"), Ok(NOW_US - 3 * HOUR_US / 2));
        assert_eq!(at("90 minutes ago"), Ok(NOW_US - 3 * HOUR_US / 2));
        assert_eq!(at("-PT1H"), Ok(NOW_US - HOUR_US), "ISO 8601 durations too");
        // One `now` for the whole command: the pair is exactly an hour apart.
        let (from, to) = ("-1h".parse::<TimeArg>(), "now".parse::<TimeArg>());
        assert_eq!(to.map(|t| t.resolve(NOW_US)).and_then(|t| from.map(|f| t - f.resolve(NOW_US))), Ok(HOUR_US));
    }

    #[test]
    fn durations_for_last() {
        assert_eq!(parse_duration_us("30m"), Ok(HOUR_US / 2));
        assert_eq!(parse_duration_us("1h"), Ok(HOUR_US));
        assert_eq!(parse_duration_us("2h30m"), Ok(5 * HOUR_US / 2));
        assert_eq!(parse_duration_us("7d"), Ok(7 * 24 * HOUR_US));
        assert_eq!(parse_duration_us("PT15M"), Ok(HOUR_US / 4));
        for bad in ["", "0s", "-1h", "1h ago", "1mo", "1y", "soon", "30", "1h!", "²h", "30µ"] {
            assert!(parse_duration_us(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_times_are_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "yesterday",
            "1h",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T24:00:01Z",
            "2026-01-01T00:00:00+05:60",
            "-1mo",
            "-1y",
            "+",
            "-",
            " ago",
            "-soon",
        ] {
            let e = bad.parse::<TimeArg>().expect_err(bad);
            assert!(e.contains("RFC 3339"), "{bad:?}: {e}");
        }
        assert!("x".repeat(TIME_TEXT_BYTES_MAX + 1).parse::<TimeArg>().is_err());
    }

    /// The hand-written parser this replaced sliced the input by byte offsets and panicked on
    /// a multibyte character at one of them.
    #[test]
    fn multibyte_characters_are_errors_not_panics() {
        for bad in [
            "2026-01-01T00:00:00é",
            "2026-01-01T00:00:00.é",
            "2026-01-01T00:00:00+0é:00",
            "2026-01-01T00:00:00+07:0é",
            "２０２６-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z\u{200b}",
            "é2026-01-01T00:00:00Z",
            "-1é",
            "-é",
            "é ago",
            "🕐🕐🕐🕐-🕐-🕐T🕐:🕐:🕐Z",
        ] {
            assert!(bad.parse::<TimeArg>().is_err(), "{bad:?}");
            assert!(parse_duration_us(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats_with_microseconds_and_round_trips() {
        assert_eq!(format_rfc3339(1_709_210_096_789_000), "2024-02-29T12:34:56.789000Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000Z");
        for us in [-1_000_001, 0, 1, 951_782_400_000_000, 4_102_444_799_999_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(us)), Ok(us));
        }
        // An open end still prints.
        assert!(format_rfc3339(i64::MAX).contains(&i64::MAX.to_string()));
    }
}
