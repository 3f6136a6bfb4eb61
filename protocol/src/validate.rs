//! Semantic checks of a SEND or DEVICE_CONTROL that reject one request without closing
//! the connection.

use crate::error::ErrorCode;
use crate::frame::{Body, DeviceAction, LinkMethod, Text};
use crate::limits::*;

/// A field that failed validation: the code to reject with and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Invalid {
    /// INVALID_FIELD, INVALID_RECIPIENT or UNSUPPORTED_BODY.
    pub code: ErrorCode,
    /// Which field and why.
    pub message: String,
}

fn invalid(code: ErrorCode, message: String) -> Invalid {
    Invalid { code, message }
}

fn check_len(field: &str, t: &Text, max: usize) -> Result<(), Invalid> {
    if t.is_empty() || t.len() > max {
        return Err(invalid(
            ErrorCode::INVALID_FIELD,
            format!("{field} must be 1..={max} bytes, got {}", t.len()),
        ));
    }
    Ok(())
}

/// Checks a device id: 1–64 bytes of `[A-Za-z0-9._-]`, so ids are safe in paths, logs and metric-free contexts.
pub fn device_id(t: &Text) -> Result<(), Invalid> {
    check_len("device_id", t, MAX_DEVICE_ID_LEN)?;
    if !t
        .as_str()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            ErrorCode::INVALID_FIELD,
            "device_id may contain only A-Z a-z 0-9 . _ -".into(),
        ));
    }
    Ok(())
}

/// Checks a recipient: E.164 digits (optionally with a leading `+`, 6–15 digits)
/// or a JID `user@server` whose user part is digits (or digits-digits for legacy groups)
/// and whose server is one WhatsApp uses.
pub fn recipient(t: &Text) -> Result<(), Invalid> {
    check_len("recipient", t, MAX_RECIPIENT_LEN)?;
    let s = t.as_str();
    let bad = || {
        invalid(
            ErrorCode::INVALID_RECIPIENT,
            format!("recipient {s:?} is neither E.164 digits nor a WhatsApp JID"),
        )
    };
    let digits = |u: &str| (6..=15).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('@') {
        None => {
            let d = s.strip_prefix('+').unwrap_or(s);
            if digits(d) { Ok(()) } else { Err(bad()) }
        }
        Some((user, server)) => {
            let user_ok = match server {
                "s.whatsapp.net" | "c.us" => digits(user),
                "g.us" => !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit() || b == b'-'),
                "lid" | "newsletter" => !user.is_empty() && user.bytes().all(|b| b.is_ascii_digit()),
                _ => false,
            };
            if user_ok { Ok(()) } else { Err(bad()) }
        }
    }
}

/// Checks every field of a SEND. Media bodies are well-formed but refused
/// by v1 gateways with UNSUPPORTED_BODY.
pub fn send(idempotency_key: &Text, device: &Text, to: &Text, body: &Body) -> Result<(), Invalid> {
    check_len("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY_LEN)?;
    device_id(device)?;
    recipient(to)?;
    match body {
        Body::Text(t) => check_len("text", t, MAX_TEXT_LEN),
        Body::Media { reference, .. } => {
            check_len("media_reference", reference, MAX_MEDIA_REFERENCE_LEN)?;
            Err(invalid(
                ErrorCode::UNSUPPORTED_BODY,
                "media bodies are not supported by this gateway yet".into(),
            ))
        }
    }
}

/// Checks a phone number for pairing-code linking: E.164 digits without `+`,
/// [`MIN_PHONE_DIGITS`]–[`MAX_PHONE_DIGITS`] of them, not starting with 0 (no country
/// code does). WhatsApp wants exactly this form; formatting is the client's job.
pub fn phone(t: &Text) -> Result<(), Invalid> {
    let s = t.as_str();
    let bad = |why: &str| {
        invalid(
            ErrorCode::INVALID_FIELD,
            format!(
                "phone {why}: {MIN_PHONE_DIGITS}-{MAX_PHONE_DIGITS} digits with the country code, no +, spaces or leading 0"
            ),
        )
    };
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("has characters other than digits"));
    }
    if !(MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&s.len()) {
        return Err(bad(&format!("has {} digits", s.len())));
    }
    if s.starts_with('0') {
        return Err(bad("starts with 0"));
    }
    Ok(())
}

/// Checks every field of a DEVICE_CONTROL.
pub fn device_control(device: &Text, action: &DeviceAction) -> Result<(), Invalid> {
    device_id(device)?;
    match action {
        DeviceAction::Link(LinkMethod::PairingCode { phone: p }) => phone(p),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_and_device_control() {
        for ok in ["4915112345678", "1234567", "123456789012345"] {
            assert_eq!(phone(&ok.into()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "123456",
            "1234567890123456",
            "+4915112345678",
            "0151123456",
            "49 151 1234",
            "49151x2345",
        ] {
            assert_eq!(
                phone(&bad.into()).unwrap_err().code,
                ErrorCode::INVALID_FIELD,
                "{bad}"
            );
        }
        let pair = |p: &str| DeviceAction::Link(LinkMethod::PairingCode { phone: p.into() });
        assert_eq!(device_control(&"dev-1".into(), &pair("4915112345678")), Ok(()));
        assert_eq!(device_control(&"dev-1".into(), &DeviceAction::Status), Ok(()));
        assert!(device_control(&"dev/1".into(), &DeviceAction::Status).is_err());
        assert!(device_control(&"".into(), &DeviceAction::Unlink).is_err());
        assert_eq!(
            device_control(&"dev-1".into(), &pair("12")).unwrap_err().code,
            ErrorCode::INVALID_FIELD
        );
    }

    #[test]
    fn recipients() {
        for ok in [
            "4915112345678",
            "+4915112345678",
            "4915112345678@s.whatsapp.net",
            "120363-1234@g.us",
            "123456@lid",
        ] {
            assert_eq!(recipient(&ok.into()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "12",
            "abc",
            "+",
            "49151@example.com",
            "@s.whatsapp.net",
            "1234567890123456",
            "49 151 123",
        ] {
            let e = recipient(&bad.into()).unwrap_err();
            assert!(
                e.code == ErrorCode::INVALID_RECIPIENT || e.code == ErrorCode::INVALID_FIELD,
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn field_limits() {
        let body = Body::Text("hi".into());
        let to: Text = "4915112345678".into();
        assert!(send(&"k".into(), &"dev-1".into(), &to, &body).is_ok());
        let long = Text::from("k".repeat(129));
        assert_eq!(
            send(&long, &"dev-1".into(), &to, &body).unwrap_err().code,
            ErrorCode::INVALID_FIELD
        );
        assert_eq!(
            send(&"".into(), &"dev-1".into(), &to, &body).unwrap_err().code,
            ErrorCode::INVALID_FIELD
        );
        assert_eq!(
            send(&"k".into(), &"dev/1".into(), &to, &body).unwrap_err().code,
            ErrorCode::INVALID_FIELD
        );
        assert_eq!(
            send(&"k".into(), &"dev".into(), &to, &Body::Text("".into()))
                .unwrap_err()
                .code,
            ErrorCode::INVALID_FIELD
        );
        let big = Body::Text(Text::from("x".repeat(MAX_TEXT_LEN + 1)));
        assert_eq!(
            send(&"k".into(), &"dev".into(), &to, &big).unwrap_err().code,
            ErrorCode::INVALID_FIELD
        );
        let media = Body::Media {
            reference: "s3://b/k".into(),
            mime: "image/png".into(),
            caption: "".into(),
        };
        assert_eq!(
            send(&"k".into(), &"dev".into(), &to, &media).unwrap_err().code,
            ErrorCode::UNSUPPORTED_BODY
        );
    }
}
