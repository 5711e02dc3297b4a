//! A report window's ends as people write them: a duration back from now (`24h`, `30m`,
//! `90s`, `7d`) or an RFC 3339 time.

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration like 24h (s, m, h, d) nor an RFC 3339 time")]
pub struct WindowError(pub String);

pub fn duration(s: &str) -> Result<chrono::Duration, WindowError> {
    let bad = || WindowError(s.to_owned());
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    };
    d.ok_or_else(bad)
}

pub fn instant(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, WindowError> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.to_utc()),
        Err(_) => now
            .checked_sub_signed(duration(s)?)
            .ok_or_else(|| WindowError(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            instant("24h", now).unwrap(),
            now - chrono::Duration::hours(24)
        );
        assert_eq!(
            instant("90s", now).unwrap(),
            now - chrono::Duration::seconds(90)
        );
        assert_eq!(
            instant("2026-11-25T00:00:00Z", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-11-25T00:00:00Z").unwrap()
        );
        for bad in [
            "",
            "h",
            "24",
            "24w",
            "yesterday",
            "-1h",
            "99999999999999999999d",
        ] {
            assert!(instant(bad, now).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errors(s in ".{0,24}") {
            let _ = instant(&s, DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        }
    }
}
