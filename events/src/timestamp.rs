//! RFC 3339 timestamps of the event JSON: always written in UTC with milliseconds
//! (`2026-11-26T15:04:05.123Z`, fixed width so they sort as text), read back from any offset.

use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// Formats unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
///
/// Times past year 9999 cannot be written in this form; they are clamped to the last
/// millisecond of 9999 (no clock of this gateway will produce them, and a clamp keeps
/// serialisation infallible).
pub fn format_ms(ms: u64) -> String {
    const MAX_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms.min(MAX_MS)) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T`/`t`/space
/// separator) into unix milliseconds. Digits past the millisecond are truncated.
///
/// `None` for anything else, and for times before 1970 (events cannot predate the epoch).
pub fn parse_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':'
    {
        return None;
    }
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let day = u8::try_from(num(8..10)?).ok()?;
    let hour = u8::try_from(num(11..13)?).ok()?;
    let minute = u8::try_from(num(14..16)?).ok()?;
    let second = u8::try_from(num(17..19)?).ok()?;
    let mut i = 19;
    let mut millis = 0u16;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start {
            return None;
        }
        for k in 0..3 {
            let d = b
                .get(start + k)
                .filter(|d| d.is_ascii_digit())
                .map_or(0, |d| d - b'0');
            millis = millis * 10 + u16::from(d);
        }
        i = end;
    }
    let offset_s: i32 = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i32::from(h1 - b'0') * 10 + i32::from(h2 - b'0');
            let m = i32::from(m1 - b'0') * 10 + i32::from(m2 - b'0');
            if h > 23 || m > 59 {
                return None;
            }
            let s = h * 3600 + m * 60;
            if *sign == b'-' { -s } else { s }
        }
        _ => return None,
    };
    let date = Date::from_calendar_date(year, month, day).ok()?;
    let time = Time::from_hms_milli(hour, minute, second, millis).ok()?;
    let offset = UtcOffset::from_whole_seconds(offset_s).ok()?;
    let at = PrimitiveDateTime::new(date, time).assume_offset(offset);
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).ok()
}

/// Serde adapter: `u64` unix milliseconds as an RFC 3339 string.
pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ms(*ms))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_ms(&s).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "invalid timestamp {s:?}: expected RFC 3339 like 2026-11-26T15:04:05.123Z"
            ))
        })
    }
}

/// Serde adapter: `Option<u64>` unix milliseconds as an optional RFC 3339 string.
pub(crate) mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::rfc3339::serialize(ms, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        match s {
            None => Ok(None),
            Some(s) => super::parse_ms(&s).map(Some).ok_or_else(|| {
                serde::de::Error::custom(format_args!(
                    "invalid timestamp {s:?}: expected RFC 3339 like 2026-11-26T15:04:05.123Z"
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_705_445_123), "2026-11-26T15:04:05.123Z");
        assert_eq!(format_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        for ms in [0, 1, 999, 1_795_705_445_123, 253_402_300_799_999] {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms), "{ms}");
        }
        let z = parse_ms("2026-11-26T15:04:05.123Z").unwrap();
        assert_eq!(parse_ms("2026-11-26T17:04:05.123+02:00"), Some(z));
        assert_eq!(parse_ms("2026-11-26T14:04:05.123-01:00"), Some(z));
        assert_eq!(
            parse_ms("2026-11-26t15:04:05.123456789z"),
            Some(z),
            "digits past ms truncate"
        );
        assert_eq!(parse_ms("2026-11-26T15:04:05Z"), Some(z - 123));
        assert_eq!(parse_ms("2026-11-26T15:04:05.1Z"), Some(z - 23));
    }

    #[test]
    fn refuses_malformed_and_pre_epoch() {
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T15:04:05",
            "2026-11-26T15:04:05.Z",
            "2026-11-26T15:04:05.123",
            "2026-13-26T15:04:05.123Z",
            "2026-02-30T15:04:05.123Z",
            "2026-11-26T24:04:05.123Z",
            "2026-11-26T15:04:05.123+2:00",
            "2026-11-26T15:04:05.123+24:00",
            "2026-11-26T15:04:05.123Zjunk",
            "1969-12-31T23:59:59.999Z",
            "+2026-11-26T15:04:05.123Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad:?}");
        }
    }
}
