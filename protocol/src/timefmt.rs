//! RFC 3339 timestamps with nanoseconds, in UTC, as the CRI log format, the
//! shim's own log and checkpoint archives want them; done here instead of pulling in a date crate.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 for clocks before it).
pub fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`. The fraction always has
/// nine digits, so lines sort by their text; Go's RFC3339Nano parser (kubelet)
/// accepts any number of fractional digits.
pub fn write_rfc3339_nano(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_date(days);
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    );
}

/// `t` as RFC 3339 text with nanoseconds, in UTC.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let mut v = Vec::with_capacity(30);
    write_rfc3339_nano(&mut v, t);
    String::from_utf8_lossy(&v).into_owned()
}

/// The proleptic Gregorian date of a day counted from 1970-01-01.
///
/// Counts in 400-year eras (146097 days each) of years that start on
/// March 1st, so the leap day falls at the end of a year and month lengths
/// follow a fixed 153-day pattern per five months.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Shift the origin to 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> String {
        rfc3339_nano(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            at(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000000Z");
        assert_eq!(at(1_735_689_600, 0), "2025-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn every_day_of_a_leap_cycle_advances_by_one() {
        let mut last = (1969, 12, 31);
        // 1970 to 1977: eight years, two of them leap.
        for day in 0..(365 * 8 + 2) {
            let now = civil_date(day);
            let next_day = (last.0, last.1, last.2 + 1);
            let next_month = (last.0, last.1 + 1, 1);
            let next_year = (last.0 + 1, 1, 1);
            assert!(
                now == next_day || now == next_month || now == next_year,
                "{last:?} -> {now:?}"
            );
            last = now;
        }
        assert_eq!(last, (1977, 12, 31));
    }
}
