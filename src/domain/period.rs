//! Calendar arithmetic in UTC: budget periods (days and calendar months), dates as
//! text, HTTP dates. Pure functions of their arguments; the caller passes the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Which budget window a usage figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeriodKey {
    /// Days since 1970-01-01, UTC.
    Day(u32),
    /// Months since year 0 (`year * 12 + month - 1`).
    Month(u32),
}

impl PeriodKey {
    pub fn day(now: SystemTime) -> PeriodKey {
        PeriodKey::Day((secs(now) / 86_400) as u32)
    }

    pub fn month(now: SystemTime) -> PeriodKey {
        let (year, month) = civil_month(secs(now) / 86_400);
        PeriodKey::Month(year * 12 + month - 1)
    }

    /// Time from `now` until this period is over.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        let now_secs = secs(now);
        let end_secs = match *self {
            PeriodKey::Day(day) => (u64::from(day) + 1) * 86_400,
            PeriodKey::Month(index) => {
                let (year, month) = (index / 12, index % 12 + 1);
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                days_from_civil(year, month) * 86_400
            }
        };
        Duration::from_secs(end_secs.saturating_sub(now_secs))
    }

    pub fn label(&self) -> &'static str {
        match self {
            PeriodKey::Day(_) => "daily",
            PeriodKey::Month(_) => "monthly",
        }
    }
}

fn secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Year and month (1-12) of a day number.
fn civil_month(days: u64) -> (u32, u32) {
    let (year, month, _) = civil_date(days);
    (year, month)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for milliseconds since the epoch.
pub fn utc_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_date(secs / 86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// Year, month (1-12) and day (1-31) of a day number (Howard Hinnant's civil-from-days).
fn civil_date(days: u64) -> (u32, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

/// Days from 1970-01-01 to the first of `month` in `year`.
pub fn days_from_civil(year: u32, month: u32) -> u64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00");
        assert_eq!(utc_text(1_795_896_000_000), "2026-11-28 20:00:00");
        assert_eq!(utc_text(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn months_and_their_ends_follow_the_calendar() {
        // 2026-11-28T20:00:00Z
        let now = at(1_795_896_000);
        assert_eq!(PeriodKey::month(now), PeriodKey::Month(2026 * 12 + 10));
        // 2026-12-01T00:00:00Z is 1_796_083_200.
        assert_eq!(
            PeriodKey::month(now).remaining(now),
            Duration::from_secs(1_796_083_200 - 1_795_896_000)
        );
        assert_eq!(
            PeriodKey::day(now).remaining(now),
            Duration::from_secs(4 * 3600)
        );
        // December rolls into January of the next year.
        let december = at(1_796_083_200 + 86_400);
        assert_eq!(PeriodKey::month(december), PeriodKey::Month(2026 * 12 + 11));
        assert_eq!(
            PeriodKey::month(december).remaining(december),
            Duration::from_secs(1_798_761_600 - 1_796_083_200 - 86_400)
        );
    }
}
