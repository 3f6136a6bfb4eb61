//! Our signatures checked by verifiers that share no code with `sign.rs`: one written here
//! from the Standard Webhooks spec text, and the reference Python library
//! (`pip install standardwebhooks`, which `.ci/run` must do).
//!
//! The Python check fails when the package is missing, so a machine without it cannot
//! pass silently; set `WAPING_NO_PY_VERIFIER=1` to skip it deliberately.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use waping_webhooks::{Secret, SignedHeaders, Signer};

/// Verifies the way the spec describes ("Signature scheme", "Webhook headers",
/// "Verifying signatures"), from scratch: strip `whsec_`, base64-decode the key,
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`, base64, and look for `v1,<that>` among the
/// space-separated signatures. (Constant-time comparison does not matter in a test.)
fn spec_verify(whsec: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> bool {
    let key = STANDARD
        .decode(whsec.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 key");
    let mut content = Vec::new();
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key), &content);
    let expected = format!("v1,{}", STANDARD.encode(tag.as_ref()));
    signatures.split(' ').any(|s| s == expected)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Minified JSON with non-ASCII text (the Python library verifies the UTF-8 decoded body).
const BODY_TEXT: &str = r#"{"type":"message.received","timestamp":"2026-01-01T00:00:00Z","data":{"text":"héllo ☃ \u00e9","n":1}}"#;
const BODY: &[u8] = BODY_TEXT.as_bytes();

#[test]
fn the_reference_libraries_test_vector() {
    // Shared by the reference libraries' `sign` tests (Go, Python, JavaScript, …).
    let whsec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = br#"{"test": 2432232314}"#;
    let h = Signer::single(Secret::parse(whsec).unwrap())
        .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body)
        .unwrap();
    assert_eq!(h.signature(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    assert!(spec_verify(
        whsec,
        h.id(),
        &h.timestamp().to_string(),
        h.signature(),
        body
    ));
}

#[test]
fn spec_verifier_accepts_ours_and_rejects_tampering() {
    let new = Secret::generate().unwrap();
    let old = Secret::generate().unwrap();
    let h = Signer::new(vec![new.clone(), old.clone()])
        .unwrap()
        .sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", 1_674_087_231, BODY)
        .unwrap();
    let ts = h.timestamp().to_string();
    for s in [&new, &old] {
        assert!(spec_verify(&s.expose_whsec(), h.id(), &ts, h.signature(), BODY));
    }
    let stranger = Secret::generate().unwrap().expose_whsec();
    assert!(!spec_verify(&stranger, h.id(), &ts, h.signature(), BODY));
    let mut tampered = BODY.to_vec();
    tampered[10] ^= 1;
    assert!(!spec_verify(
        &new.expose_whsec(),
        h.id(),
        &ts,
        h.signature(),
        &tampered
    ));
    assert!(!spec_verify(
        &new.expose_whsec(),
        h.id(),
        "1674087232",
        h.signature(),
        BODY
    ));
    // Also over a range of body sizes and secret lengths (24..=64 bytes).
    for len in [24usize, 31, 32, 33, 48, 64] {
        let s = Secret::from_bytes(&vec![len as u8; len]).unwrap();
        for size in [0usize, 1, 63, 64, 65, 4096] {
            let body = vec![b'a' + (size % 26) as u8; size];
            let h = Signer::single(s.clone()).sign("msg_x", 42, &body).unwrap();
            assert!(
                spec_verify(&s.expose_whsec(), "msg_x", "42", h.signature(), &body),
                "{len} {size}"
            );
        }
    }
}

/// The Python program: reads a JSON job from stdin, prints one line per check
/// ("ok" or the exception's name and message).
const PY_VERIFIER: &str = r#"
import json, sys
from standardwebhooks import Webhook
job = json.load(sys.stdin)
body = job["body"].encode("utf-8")
for secret in job["secrets"]:
    try:
        Webhook(secret).verify(body, job["headers"])
        print("ok")
    except Exception as e:
        print(type(e).__name__ + ": " + str(e))
"#;

/// Runs the reference Python verifier with each secret; `None` if it is not installed.
fn python_verify(secrets: &[String], headers: &SignedHeaders, body: &str) -> Option<Vec<String>> {
    let probe = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => return None,
    }
    let job = serde_json::json!({
        "secrets": secrets,
        "headers": {
            "webhook-id": headers.id(),
            "webhook-timestamp": headers.timestamp().to_string(),
            "webhook-signature": headers.signature(),
        },
        "body": body,
    });
    let mut child = Command::new("python3")
        .args(["-c", PY_VERIFIER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python verifier crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn the_reference_python_library_verifies_ours() {
    let new = Secret::generate().unwrap();
    let old = Secret::generate().unwrap();
    let stranger = Secret::generate().unwrap();
    let body = BODY_TEXT;
    // The Python library checks the timestamp against its own clock (±5 min), so this one
    // test signs at the real current time.
    let h = Signer::new(vec![new.clone(), old.clone()])
        .unwrap()
        .sign("msg_01J0000000000000000000000", now_secs(), BODY)
        .unwrap();
    let secrets = [new.expose_whsec(), old.expose_whsec(), stranger.expose_whsec()];
    let Some(results) = python_verify(&secrets, &h, body) else {
        if std::env::var("WAPING_NO_PY_VERIFIER").as_deref() == Ok("1") {
            eprintln!("skipped: standardwebhooks is not installed and WAPING_NO_PY_VERIFIER=1");
            return;
        }
        panic!(
            "the reference verifier is missing: `python3 -c 'import standardwebhooks'` failed. \
             Install it with `pip install standardwebhooks` (.ci/run must), or set \
             WAPING_NO_PY_VERIFIER=1 to skip this check knowingly."
        );
    };
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[0], "ok", "new secret: {}", results[0]);
    assert_eq!(results[1], "ok", "old secret (rotation overlap): {}", results[1]);
    // The harness can fail: a secret that did not sign is refused.
    assert!(
        results[2].starts_with("WebhookVerificationError"),
        "a stranger's secret was accepted: {}",
        results[2]
    );

    // A stale timestamp (10 min ago) is refused by it too: our timestamp is what it reads.
    let stale = Signer::single(new.clone())
        .sign("msg_01J0000000000000000000001", now_secs() - 600, BODY)
        .unwrap();
    let results = python_verify(&[new.expose_whsec()], &stale, body).unwrap();
    assert!(results[0].contains("too old"), "{results:?}");
}
