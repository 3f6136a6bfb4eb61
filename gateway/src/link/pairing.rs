//! Phone numbers for pairing-code linking and the pairing codes WhatsApp answers with.

use std::fmt;

use waping_protocol::limits::{MAX_PHONE_DIGITS, MIN_PHONE_DIGITS};

/// Why a phone number was refused. Always the caller's input; retrying it unchanged fails again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// No digits at all.
    #[error("phone number is empty")]
    Empty,
    /// A character that is neither a digit nor one of the separators people type.
    #[error(
        "phone number has {ch:?} at position {at}; use digits with the country code, e.g. +49 151 2345678"
    )]
    InvalidChar {
        /// The character.
        ch: char,
        /// Its position in the input (characters, from 0).
        at: usize,
    },
    /// `+` anywhere but first.
    #[error("phone number has a '+' that is not its first character")]
    MisplacedPlus,
    /// Fewer digits than any number with a country code has.
    #[error("phone number has {digits} digits; at least {MIN_PHONE_DIGITS} with the country code")]
    TooShort {
        /// Digits found.
        digits: usize,
    },
    /// More digits than E.164 allows.
    #[error("phone number has {digits} digits; E.164 allows at most {MAX_PHONE_DIGITS}")]
    TooLong {
        /// Digits found.
        digits: usize,
    },
    /// Starts with 0: a trunk or international prefix, not a country code.
    #[error("phone number starts with 0; write the country code instead of 0 or 00 (e.g. 49 for Germany)")]
    LeadingZero,
}

/// A phone number in the form WhatsApp wants for pairing codes: E.164 digits with the country
/// code, without `+` (7–15 digits, not starting with 0).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Parses what a person types: digits, optionally a leading `+`, and the separators
    /// space, `-`, `.`, `(`, `)`, which are dropped. Anything else is an error rather than
    /// silently removed, so a typo never links a different number.
    pub fn parse(input: &str) -> Result<Phone, PhoneError> {
        let mut digits = String::with_capacity(MAX_PHONE_DIGITS);
        let mut seen_any = false;
        for (at, ch) in input.trim().chars().enumerate() {
            match ch {
                '0'..='9' => digits.push(ch),
                '+' if !seen_any => {}
                '+' => return Err(PhoneError::MisplacedPlus),
                ' ' | '-' | '.' | '(' | ')' => {}
                ch => return Err(PhoneError::InvalidChar { ch, at }),
            }
            seen_any = true;
        }
        match digits.len() {
            0 => Err(PhoneError::Empty),
            n if n < MIN_PHONE_DIGITS => Err(PhoneError::TooShort { digits: n }),
            n if n > MAX_PHONE_DIGITS => Err(PhoneError::TooLong { digits: n }),
            _ if digits.starts_with('0') => Err(PhoneError::LeadingZero),
            _ => Ok(Phone(digits)),
        }
    }

    /// The digits, as sent on the wire (DEVICE_CONTROL `phone`).
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    /// `+` and the digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

/// Why a pairing code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingCodeError {
    /// Not 8 characters once separators are removed.
    #[error("pairing code has {len} characters; WhatsApp's have 8")]
    WrongLength {
        /// Characters found (separators excluded).
        len: usize,
    },
    /// A character other than a letter, a digit or a separator.
    #[error("pairing code has {0:?}; only letters and digits")]
    InvalidChar(char),
}

/// An 8-character pairing code, upper case; displayed `ABCD-EFGH` as the phone shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairingCode(String);

impl PairingCode {
    /// Length without the separator.
    pub const LEN: usize = 8;

    /// Accepts `ABCDEFGH`, `abcd-efgh`, `ABCD EFGH`: letters and digits (upper-cased), with
    /// `-` and spaces ignored.
    pub fn parse(input: &str) -> Result<PairingCode, PairingCodeError> {
        let mut code = String::with_capacity(Self::LEN);
        for ch in input.trim().chars() {
            match ch {
                '-' | ' ' => {}
                c if c.is_ascii_alphanumeric() => code.push(c.to_ascii_uppercase()),
                c => return Err(PairingCodeError::InvalidChar(c)),
            }
        }
        if code.len() != Self::LEN {
            return Err(PairingCodeError::WrongLength { len: code.len() });
        }
        Ok(PairingCode(code))
    }

    /// The 8 characters without separator.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PairingCode {
    /// `ABCD-EFGH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", &self.0[..4], &self.0[4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_people_type() {
        for (input, digits) in [
            ("4915123456789", "4915123456789"),
            ("+49 151 2345-6789", "4915123456789"),
            (" +1 (415) 555.0100 ", "14155550100"),
            ("1234567", "1234567"),
            ("123456789012345", "123456789012345"),
        ] {
            let p = Phone::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(p.digits(), digits);
            assert_eq!(p.to_string(), format!("+{digits}"));
            // What the CLI sends is what the gateway accepts.
            assert_eq!(waping_protocol::validate::phone(&p.digits().into()), Ok(()));
        }
    }

    #[test]
    fn phone_errors_are_typed() {
        assert_eq!(Phone::parse(""), Err(PhoneError::Empty));
        assert_eq!(Phone::parse(" + - "), Err(PhoneError::Empty));
        assert_eq!(
            Phone::parse("49151x234567"),
            Err(PhoneError::InvalidChar { ch: 'x', at: 5 })
        );
        assert_eq!(Phone::parse("49+151234567"), Err(PhoneError::MisplacedPlus));
        assert_eq!(Phone::parse("123456"), Err(PhoneError::TooShort { digits: 6 }));
        assert_eq!(
            Phone::parse("1234567890123456"),
            Err(PhoneError::TooLong { digits: 16 })
        );
        assert_eq!(Phone::parse("0049151234567"), Err(PhoneError::LeadingZero));
        assert_eq!(Phone::parse("0151 2345678"), Err(PhoneError::LeadingZero));
        assert!(PhoneError::LeadingZero.to_string().contains("country code"));
    }

    #[test]
    fn pairing_codes() {
        for input in ["ABCDEFGH", "abcd-efgh", " ABCD EFGH "] {
            let c = PairingCode::parse(input).unwrap();
            assert_eq!(c.as_str(), "ABCDEFGH");
            assert_eq!(c.to_string(), "ABCD-EFGH");
        }
        assert_eq!(PairingCode::parse("12AB-34CD").unwrap().to_string(), "12AB-34CD");
        assert_eq!(
            PairingCode::parse("ABCDEFG"),
            Err(PairingCodeError::WrongLength { len: 7 })
        );
        assert_eq!(
            PairingCode::parse("ABCD-EFGHI"),
            Err(PairingCodeError::WrongLength { len: 9 })
        );
        assert_eq!(
            PairingCode::parse("ABCD_EFGH"),
            Err(PairingCodeError::InvalidChar('_'))
        );
        assert_eq!(
            PairingCode::parse("ÄBCDEFGH"),
            Err(PairingCodeError::InvalidChar('Ä'))
        );
    }
}
