//! On-disk key layout: `len(ws) u8 | ws | len(dev) u8 | dev | ns u8 | key`.
//!
//! The two length bytes make the device prefix self-delimiting: no (workspace, device) pair's
//! prefix is a prefix of another pair's, so a scan inside one device can never reach another's
//! keys, whatever bytes the ids contain.

use std::fmt;

use crate::error::StoreError;

/// Longest workspace or device id, in bytes (one length byte on disk).
pub const MAX_ID_BYTES: usize = 255;

/// Longest key inside a namespace, in bytes.
///
/// Keys are B-tree keys; large keys make every page on the path larger. 1 KiB fits any
/// Signal address or app-state index with room to spare.
pub const MAX_KEY_BYTES: usize = 1024;

/// A namespace inside a device (e.g. identities, sessions, pre-keys).
///
/// A byte on disk: callers define their namespaces as constants (`const SESSIONS: Ns =
/// Ns::new(2);`) and must never renumber them, since the number is part of every stored key and
/// of the sealing AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ns(u8);

impl Ns {
    /// The namespace numbered `n`.
    pub const fn new(n: u8) -> Ns {
        Ns(n)
    }

    /// Its number on disk.
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A device known to the store (it has been written to and not deleted since).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId {
    /// Workspace (tenant) id.
    pub workspace: String,
    /// Device id inside the workspace.
    pub device: String,
}

fn push_id(out: &mut Vec<u8>, what: &'static str, id: &str) -> Result<(), StoreError> {
    let len = id.len();
    if len == 0 || len > MAX_ID_BYTES {
        return Err(StoreError::InvalidId { what, len });
    }
    out.push(len as u8);
    out.extend_from_slice(id.as_bytes());
    Ok(())
}

/// `len(ws) | ws`: prefix of every key of one workspace.
pub(crate) fn workspace_prefix(workspace: &str) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(1 + workspace.len());
    push_id(&mut out, "workspace", workspace)?;
    Ok(out)
}

/// `len(ws) | ws | len(dev) | dev`: prefix of every key of one device, and its registry key.
pub(crate) fn device_prefix(workspace: &str, device: &str) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(2 + workspace.len() + device.len());
    push_id(&mut out, "workspace", workspace)?;
    push_id(&mut out, "device", device)?;
    Ok(out)
}

/// Full key of `key` in namespace `ns` of the device whose prefix is `device_prefix`.
pub(crate) fn full_key(device_prefix: &[u8], ns: Ns, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(device_prefix.len() + 1 + key.len());
    out.extend_from_slice(device_prefix);
    out.push(ns.0);
    out.extend_from_slice(key);
    out
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge {
            what: "key",
            size: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Inverse of [`device_prefix`] for registry keys; `None` if the bytes are not one.
pub(crate) fn decode_device(bytes: &[u8]) -> Option<DeviceId> {
    let (&wl, rest) = bytes.split_first()?;
    let ws = rest.get(..wl as usize)?;
    let rest = &rest[wl as usize..];
    let (&dl, rest) = rest.split_first()?;
    if rest.len() != dl as usize {
        return None;
    }
    Some(DeviceId {
        workspace: String::from_utf8(ws.to_vec()).ok()?,
        device: String::from_utf8(rest.to_vec()).ok()?,
    })
}

/// Smallest byte string greater than every string starting with `prefix`; `None` when no such
/// bound exists (prefix empty or all `0xff`), meaning "to the end".
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_prefixes_never_nest() {
        // Ids that would collide under a separator-based encoding.
        let pairs = [
            ("a", "b/c"),
            ("a/b", "c"),
            ("ab", "c"),
            ("a", "bc"),
            ("a\u{1}", "b"),
        ];
        let prefixes: Vec<_> = pairs.iter().map(|(w, d)| device_prefix(w, d).unwrap()).collect();
        for (i, p) in prefixes.iter().enumerate() {
            for (j, q) in prefixes.iter().enumerate() {
                if i != j {
                    assert!(!q.starts_with(p), "{:?} is a prefix of {:?}", pairs[i], pairs[j]);
                }
            }
            assert_eq!(
                decode_device(p),
                Some(DeviceId {
                    workspace: pairs[i].0.into(),
                    device: pairs[i].1.into()
                })
            );
        }
    }

    #[test]
    fn ids_are_bounded() {
        assert!(matches!(
            device_prefix("", "d"),
            Err(StoreError::InvalidId {
                what: "workspace",
                len: 0
            })
        ));
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(
            device_prefix("w", &long),
            Err(StoreError::InvalidId {
                what: "device",
                len: 256
            })
        ));
        assert!(device_prefix("w", &long[1..]).is_ok());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
