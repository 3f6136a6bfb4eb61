//! The decoder check shared by the fuzz target (`fuzz/fuzz_targets/decode.rs`)
//! and the corpus replay test (`tests/corpus.rs`). Not part of the API.
//!
//! [`check_decode`] treats its input as the bytes a peer wrote on one stream
//! and panics if the decoder breaks any of its promises:
//!
//! - it never panics, whatever the bytes;
//! - every decoded frame re-encodes to exactly the bytes it was decoded from
//!   (the encoding is canonical) and decodes again to an equal frame, whose
//!   body is within the decoder's limit;
//! - `Ok(None)` and `Err` leave the buffer's contents untouched, and an error
//!   is sticky (the same call returns the same error again) and carries a
//!   fatal catalogue code;
//! - feeding the same bytes in chunks of any size gives the same frames and
//!   the same final outcome as feeding them at once.

use bytes::BytesMut;

use crate::codec::{DecodeError, Decoder, HEADER_LEN, encode};
use crate::frame::Frame;

/// How decoding a byte stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes; this many are buffered.
    Pending(usize),
    /// Failed; the error is fatal.
    Failed(DecodeError),
}

/// Runs every check on `data`; panics on a violation.
pub fn check_decode(data: &[u8]) {
    let decoder = Decoder::default();
    let (frames, end) = decode_at_once(decoder, data);

    let mut offset = 0;
    for frame in &frames {
        let mut enc = BytesMut::new();
        if let Err(e) = encode(frame, &mut enc) {
            panic!("decoded {frame:?} but cannot encode it: {e}");
        }
        assert!(
            enc.len() - HEADER_LEN <= decoder.max_frame_len() as usize,
            "decoded a body above the limit"
        );
        assert_eq!(
            &enc[..],
            &data[offset..offset + enc.len()],
            "re-encoding {frame:?} differs from the bytes it was decoded from"
        );
        offset += enc.len();
        match decoder.decode(&mut enc) {
            Ok(Some(again)) => assert_eq!(&again, frame, "round trip changed the frame"),
            other => panic!("re-decoding {frame:?} gave {other:?}"),
        }
        assert!(enc.is_empty(), "re-decoding left bytes behind");
    }
    match &end {
        End::Pending(n) => assert_eq!(*n, data.len() - offset),
        End::Failed(e) => {
            let code = e.code();
            let info = code
                .info()
                .unwrap_or_else(|| panic!("{e} maps to unknown code {code:?}"));
            assert!(info.fatal, "decode error {e} maps to non-fatal {code:?}");
        }
    }

    // The same bytes in chunks whose sizes come from the data itself.
    let chunked = decode_in_chunks(decoder, data);
    assert_eq!(
        chunked,
        (frames, end),
        "chunked decoding differs from decoding at once"
    );
}

fn decode_at_once(decoder: Decoder, data: &[u8]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    let mut consumed = 0;
    let end = drain(decoder, &mut buf, data, &mut consumed, &mut frames);
    (frames, end)
}

/// Decodes everything decodable in `buf`, which holds `fed[*consumed..]`;
/// returns how it stopped.
fn drain(
    decoder: Decoder,
    buf: &mut BytesMut,
    fed: &[u8],
    consumed: &mut usize,
    frames: &mut Vec<Frame>,
) -> End {
    loop {
        let len = buf.len();
        match decoder.decode(buf) {
            Ok(Some(f)) => {
                assert!(buf.len() < len, "a frame was decoded from no bytes");
                *consumed += len - buf.len();
                frames.push(f);
            }
            Ok(None) => {
                assert_eq!(&buf[..], &fed[*consumed..], "Ok(None) changed the buffer");
                return End::Pending(buf.len());
            }
            Err(e) => {
                assert_eq!(&buf[..], &fed[*consumed..], "an error changed the buffer");
                assert_eq!(decoder.decode(buf), Err(e.clone()), "the error is not sticky");
                assert_eq!(&buf[..], &fed[*consumed..], "a repeated error changed the buffer");
                return End::Failed(e);
            }
        }
    }
}

fn decode_in_chunks(decoder: Decoder, data: &[u8]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    let mut pos = 0;
    let mut i = 0;
    let mut end = End::Pending(0);
    while pos < data.len() {
        // Sizes 1..=32 picked by the input's own bytes: deterministic, and the
        // fuzzer can steer them.
        let step = (usize::from(data[i % data.len()]) % 32 + 1).min(data.len() - pos);
        i += 1;
        buf.extend_from_slice(&data[pos..pos + step]);
        pos += step;
        end = drain(decoder, &mut buf, &data[..pos], &mut consumed, &mut frames);
        if matches!(end, End::Failed(_)) {
            break;
        }
    }
    (frames, end)
}
