//! Sealing hook for encryption at rest: every stored value passes through a [`Sealer`].

use std::fmt;

use crate::error::SealError;
use crate::key::Ns;

/// What a sealed value is bound to: its workspace, device, namespace and key.
///
/// A sealer must authenticate [`Aad::as_bytes`] (an unambiguous encoding of all four) with the
/// value, so a value copied to another key, namespace, device or workspace fails to open.
/// The parts are also given separately so a sealer can pick a per-workspace data key.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    pub(crate) workspace: &'a str,
    pub(crate) device: &'a str,
    pub(crate) ns: Ns,
    pub(crate) key: &'a [u8],
    pub(crate) bytes: &'a [u8],
}

impl<'a> Aad<'a> {
    /// Workspace of the value.
    pub fn workspace(&self) -> &'a str {
        self.workspace
    }
    /// Device of the value.
    pub fn device(&self) -> &'a str {
        self.device
    }
    /// Namespace of the value.
    pub fn ns(&self) -> Ns {
        self.ns
    }
    /// Key of the value inside its namespace.
    pub fn key(&self) -> &'a [u8] {
        self.key
    }
    /// Canonical encoding of all four (length-prefixed ids, namespace byte, key).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Turns plaintext values into what is stored, and back.
///
/// Contract:
/// - the first byte of every sealed value is a format version owned by the sealer
///   (`0` is [`PlainSealer`]'s), so a new sealer can open values of an older one and reseal
///   them (migration) while refusing versions it does not know;
/// - `open(aad, seal(aad, p)) == Ok(p)`, and `open` with any other `aad` must fail for an
///   authenticating sealer;
/// - both run on the caller's thread (not the writer thread), so keep them CPU-only.
///
/// `seal` is fallible because an envelope sealer may lack a workspace's data key (deleted
/// workspace, crypto-shredded).
pub trait Sealer: Send + Sync + fmt::Debug + 'static {
    /// Seal `plaintext` bound to `aad`.
    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Open a value sealed by [`Sealer::seal`] under the same `aad`.
    fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Identity sealer: version byte `0` followed by the plaintext. No confidentiality, no
/// authentication; the default until the encrypting sealer of issue 5 replaces it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainSealer;

impl PlainSealer {
    /// Version byte of plain values.
    pub const VERSION: u8 = 0;
}

impl Sealer for PlainSealer {
    fn seal(&self, _aad: &Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(1 + plaintext.len());
        out.push(Self::VERSION);
        out.extend_from_slice(plaintext);
        Ok(out)
    }

    fn open(&self, _aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        match sealed.split_first() {
            Some((&Self::VERSION, rest)) => Ok(rest.to_vec()),
            Some((&v, _)) => Err(SealError::UnknownVersion(v)),
            None => Err(SealError::Truncated),
        }
    }
}
