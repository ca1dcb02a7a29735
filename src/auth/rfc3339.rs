//! Formats Unix seconds as an RFC 3339 UTC timestamp (`2026-01-01T00:00:00Z`), for
//! `expires_at` fields on the wire, and parses the RFC 3339 timestamps admins send
//! (`expires_at`, `until`, `since`).
//!
//! Invariant: pure arithmetic on the civil (proleptic Gregorian) calendar — no
//! clock, no time zone database, no crate. Used by TURN credentials, join-ticket
//! answers and anything else that prints a time for clients.

/// `unix` seconds since 1970-01-01T00:00:00Z as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `unix_ms` milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_utc_ms(unix_ms: u64) -> String {
    let s = rfc3339_utc(unix_ms / 1000);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), unix_ms % 1000)
}

/// Parses an RFC 3339 date-time (`2026-01-01T00:00:00Z`, `2026-01-01t00:00:00.5+02:00`)
/// into milliseconds since the Unix epoch. Dates before 1970 and past 9999 are refused;
/// fractions beyond milliseconds are truncated.
pub fn parse_rfc3339_ms(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "\"{}\" is not an RFC 3339 date-time",
            s.chars().take(40).collect::<String>()
        )
    };
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 || !s.is_ascii() {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_len = match mo {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return Err(bad()),
    };
    if y < 1970 || d == 0 || d > month_len || h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut i = 19;
    let mut ms = 0u64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        for _ in (i - start)..3 {
            ms *= 10;
        }
    }
    let offset_s: i64 = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if tz.starts_with('-') { -o } else { o }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(y, mo, d);
    let local = days * 86_400 + h * 3600 + mi * 60 + sec.min(59);
    let utc = i64::try_from(local).map_err(|_| bad())? - offset_s;
    let utc = u64::try_from(utc).map_err(|_| bad())?;
    Ok(utc * 1000 + ms)
}

/// Days from 1970-01-01 to the given civil date (the inverse of [`civil_from_days`]),
/// for dates from 1970 on.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year, month (1–12) and day (1–31) of the day `days` after 1970-01-01.
///
/// Howard Hinnant's `civil_from_days`, for non-negative day counts: days are
/// counted in 400-year eras of 146 097 days starting on 0000-03-01, so that the
/// leap day is the last day of a (March-based) year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 719 468 days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365, from March 1st
    let mp = (5 * doy + 2) / 153; // month index from March, 0..=11
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339_utc(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn agrees_with_a_day_by_day_walk() {
        // Independent check: step through the calendar one day at a time.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        for day in 0..(366 * 450) {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for t in [
            0u64,
            951_782_400,
            1_709_210_096,
            1_767_225_600,
            253_402_300_799,
        ] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_utc(t)), Ok(t * 1000), "{t}");
        }
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00.5Z"),
            Ok(1_767_225_600_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T00:00:00.123456Z"),
            Ok(1_767_225_600_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-01-01T02:00:00+02:00"),
            Ok(1_767_225_600_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2025-12-31T23:00:00-01:00"),
            Ok(1_767_225_600_000)
        );
        assert_eq!(
            rfc3339_utc_ms(1_767_225_600_042),
            "2026-01-01T00:00:00.042Z"
        );
        for bad in [
            "",
            "2026-01-01",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00+2:00",
            "２０２６-01-01T00:00:00Z",
            "2026-01-01T00:00:00Zjunk",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn does_not_overflow_at_the_end_of_time() {
        assert!(rfc3339_utc(u64::MAX).ends_with('Z'));
    }
}
