//! Where a budget or rate window starts and ends at a given time: calendar windows in UTC
//! (minute, hour, midnight, Monday, 1st of month, quarter, year) and rolling windows of fixed length.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

use crate::config::Window;

/// Nominal length of a window in seconds (rolling windows use it as is).
pub fn length(w: Window) -> i64 {
    match w {
        Window::Seconds30 => 30,
        Window::Minute => 60,
        Window::Minutes5 => 300,
        Window::Hour => 3600,
        Window::Day => 86_400,
        Window::Week => 7 * 86_400,
        Window::Month => 30 * 86_400,
        Window::Quarter => 91 * 86_400,
        Window::Year => 365 * 86_400,
    }
}

/// The calendar window (UTC) containing `now`: `[start, end)` in Unix seconds.
pub fn calendar(w: Window, now: i64) -> (i64, i64) {
    let fixed = |len: i64| {
        let start = now - now.rem_euclid(len);
        (start, start + len)
    };
    // The fixed-length windows need no calendar (and are the ones rate limits check on every request).
    if matches!(w, Window::Seconds30 | Window::Minute | Window::Minutes5 | Window::Hour | Window::Day) {
        return fixed(length(w));
    }
    let Some(t) = DateTime::<Utc>::from_timestamp(now, 0) else { return fixed(length(w)) };
    let date = t.date_naive();
    let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()).timestamp();
    let month_start = |y: i32, m: u32| NaiveDate::from_ymd_opt(y, m, 1).map(midnight);
    let add_months = |y: i32, m: u32, k: u32| {
        let idx = (y as i64) * 12 + (m as i64 - 1) + k as i64;
        (idx.div_euclid(12) as i32, (idx.rem_euclid(12) + 1) as u32)
    };
    let months = |first: (i32, u32), k: u32| -> Option<(i64, i64)> {
        let (ny, nm) = add_months(first.0, first.1, k);
        Some((month_start(first.0, first.1)?, month_start(ny, nm)?))
    };
    let span = match w {
        // Returned before the date conversion above.
        Window::Seconds30 | Window::Minute | Window::Minutes5 | Window::Hour | Window::Day => None,
        Window::Week => {
            let monday = date - chrono::Duration::days(date.weekday().num_days_from_monday() as i64);
            let start = midnight(monday);
            Some((start, start + length(Window::Week)))
        }
        Window::Month => months((date.year(), date.month()), 1),
        Window::Quarter => months((date.year(), (date.month0() / 3) * 3 + 1), 3),
        Window::Year => months((date.year(), 1), 12),
    };
    span.unwrap_or_else(|| fixed(length(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn days_start_at_utc_midnight() {
        assert_eq!(
            calendar(Window::Day, ts("2026-03-10T17:45:00Z")),
            (ts("2026-03-10T00:00:00Z"), ts("2026-03-11T00:00:00Z"))
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-03-12 is a Thursday.
        assert_eq!(
            calendar(Window::Week, ts("2026-03-12T08:00:00Z")),
            (ts("2026-03-09T00:00:00Z"), ts("2026-03-16T00:00:00Z"))
        );
        // A Monday is the first day of its own week.
        assert_eq!(calendar(Window::Week, ts("2026-03-09T00:00:00Z")).0, ts("2026-03-09T00:00:00Z"));
    }

    #[test]
    fn months_quarters_and_years_follow_the_calendar() {
        assert_eq!(
            calendar(Window::Month, ts("2026-02-20T12:00:00Z")),
            (ts("2026-02-01T00:00:00Z"), ts("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            calendar(Window::Month, ts("2026-12-31T23:59:59Z")),
            (ts("2026-12-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            calendar(Window::Quarter, ts("2026-05-05T00:00:00Z")),
            (ts("2026-04-01T00:00:00Z"), ts("2026-07-01T00:00:00Z"))
        );
        assert_eq!(
            calendar(Window::Quarter, ts("2026-11-30T00:00:00Z")),
            (ts("2026-10-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            calendar(Window::Year, ts("2026-07-04T00:00:00Z")),
            (ts("2026-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn short_windows_align_to_the_clock() {
        assert_eq!(
            calendar(Window::Minutes5, ts("2026-03-10T17:47:13Z")),
            (ts("2026-03-10T17:45:00Z"), ts("2026-03-10T17:50:00Z"))
        );
        assert_eq!(calendar(Window::Seconds30, ts("2026-03-10T17:47:43Z")).0, ts("2026-03-10T17:47:30Z"));
    }
}
