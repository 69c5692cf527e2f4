//! The `grpc-timeout` header: an integer of at most 8 digits and a unit.

use std::time::Duration;

/// Parses `grpc-timeout` (`<digits><H|M|S|m|u|n>`) as grpc-go's `decodeTimeout`
/// does, sign included (Go's `ParseInt`): a negative timeout has already passed
/// (zero). None if malformed.
pub fn parse(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (number, unit) = value.split_at(value.len() - 1);
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: i64 = number.parse().ok()?;
    let Ok(amount) = u64::try_from(amount) else {
        return Some(Duration::ZERO);
    };
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn a_negative_timeout_has_already_passed() {
        assert_eq!(parse("-1S"), Some(Duration::ZERO));
        assert_eq!(parse("+2m"), Some(Duration::from_millis(2)));
    }

    #[test]
    fn malformed_values_are_rejected() {
        for bad in [
            "",
            "S",
            "10",
            "10x",
            "-S",
            "+S",
            "--1S",
            "123456789S",
            "1.5S",
            " 1S",
            "1é",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
