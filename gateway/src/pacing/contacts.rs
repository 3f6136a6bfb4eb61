//! Who a device has talked with: a bounded, persistable set of recipient hashes.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

/// A recipient (or inbound sender) as the contact book stores it: 64 bits of SHA-256 over
/// its canonical form.
///
/// Default: none; made by [`ContactKey::of`]. Why a hash: a fixed 8 bytes per contact
/// whatever the address length, and stable across restarts and releases (unlike `std`'s
/// hasher) because the book is persisted. It is *not* anonymisation: phone numbers are few
/// enough to enumerate, so the persisted book is as sensitive as the numbers themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContactKey(pub u64);

impl ContactKey {
    /// The key of a recipient as the protocol accepts it (E.164 digits with or without `+`,
    /// or a JID). A phone number and its `@s.whatsapp.net` / `@c.us` JID are the same
    /// contact; other JIDs (groups, LIDs) are keyed as written, lower-cased.
    pub fn of(recipient: &str) -> ContactKey {
        let s = recipient.trim();
        let s = s.strip_prefix('+').unwrap_or(s);
        let canonical = match s.split_once('@') {
            Some((user, server))
                if server.eq_ignore_ascii_case("s.whatsapp.net") || server.eq_ignore_ascii_case("c.us") =>
            {
                // Drop a device suffix ("123:4@s.whatsapp.net"): the person is the contact.
                user.split(':').next().unwrap_or(user).to_string()
            }
            Some(_) => s.to_ascii_lowercase(),
            None => s.to_string(),
        };
        let mut h = Sha256::new();
        h.update(b"waping-contact-v1\0");
        h.update(canonical.as_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        ContactKey(u64::from_le_bytes(b))
    }
}

/// Why stored contact-book bytes were refused. Always damaged or foreign data (a storage or
/// internal fault, not the client's); retrying the same bytes does not help. The safe
/// fallback is an empty book, which only makes the first-contact rules stricter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactBookError {
    /// Shorter than the fixed header and checksum.
    #[error("contact book is truncated: {len} bytes")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// Does not start with the contact-book magic.
    #[error("not a contact book (bad magic)")]
    BadMagic,
    /// Written by a newer format.
    #[error("contact book format version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The declared count does not match the length.
    #[error("contact book declares {declared} entries but holds {actual} bytes of entries")]
    LengthMismatch {
        /// Entries declared in the header.
        declared: u32,
        /// Bytes between header and checksum.
        actual: usize,
    },
    /// The checksum does not match the contents.
    #[error("contact book checksum mismatch")]
    Checksum,
    /// An entry appears twice.
    #[error("contact book lists an entry twice")]
    Duplicate,
}

const MAGIC: &[u8; 4] = b"WPCB";
const VERSION: u8 = 1;
/// Magic, version, three reserved bytes, entry count (u32 LE).
const HEADER: usize = 12;
/// First 8 bytes of SHA-256 over header and entries.
const CHECKSUM: usize = 8;

/// Recipients one device knows, least recently used forgotten first.
///
/// Default: none; built with a capacity by [`ContactBook::new`] (usually
/// `PacingPolicy::contact_book_capacity`). Bounds: at most `capacity` keys (≥ 1); memory
/// grows with the keys actually held, about 50 bytes per key at worst (a map entry plus
/// up to two entries of the recency log). Why LRU: a contact the device keeps talking to
/// must stay known, while one-off recipients of long ago may be forgotten; forgetting only
/// makes the first-contact rules stricter, never looser.
#[derive(Debug, Clone)]
pub struct ContactBook {
    capacity: usize,
    /// Key → stamp of its last touch.
    stamps: HashMap<u64, u64>,
    /// Touch log, oldest first; an entry whose stamp is no longer the key's is stale.
    order: VecDeque<(u64, u64)>,
    next_stamp: u64,
}

impl ContactBook {
    /// An empty book holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> ContactBook {
        ContactBook {
            capacity: capacity.max(1),
            stamps: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
        }
    }

    /// Most keys held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// True when nobody is known.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// Whether `key` is known (does not refresh it).
    pub fn contains(&self, key: ContactKey) -> bool {
        self.stamps.contains_key(&key.0)
    }

    /// Marks `key` known and most recently used; forgets the least recently used key if
    /// the book is over capacity. Returns true if `key` was not known before.
    pub fn touch(&mut self, key: ContactKey) -> bool {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let new = self.stamps.insert(key.0, stamp).is_none();
        self.order.push_back((key.0, stamp));
        if self.stamps.len() > self.capacity {
            self.evict_oldest();
        }
        // Stale log entries pile up when known keys are touched again; compacting at twice
        // the capacity keeps the log bounded at O(1) amortised cost per touch.
        if self.order.len() > 2 * self.capacity + 16 {
            let stamps = &self.stamps;
            self.order.retain(|(k, s)| stamps.get(k) == Some(s));
        }
        new
    }

    /// Entries in the recency log, stale ones included (tests check it stays bounded).
    #[cfg(test)]
    pub(super) fn log_len(&self) -> usize {
        self.order.len()
    }

    fn evict_oldest(&mut self) {
        while let Some((k, s)) = self.order.pop_front() {
            if self.stamps.get(&k) == Some(&s) {
                self.stamps.remove(&k);
                return;
            }
        }
    }

    /// Keys from least to most recently used.
    pub fn keys_by_recency(&self) -> impl Iterator<Item = ContactKey> + '_ {
        self.order
            .iter()
            .filter(|(k, s)| self.stamps.get(k) == Some(s))
            .map(|&(k, _)| ContactKey(k))
    }

    /// The book as bytes for the session's store: a 12-byte header (`WPCB`, version 1,
    /// count), the keys least recently used first (8 bytes each, little-endian), and an
    /// 8-byte checksum. Recency survives the round trip; stamps do not need to.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.len() * 8 + CHECKSUM);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&[0, 0, 0]);
        // `len` is at most the capacity, which config bounds at 10^6.
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        for k in self.keys_by_recency() {
            out.extend_from_slice(&k.0.to_le_bytes());
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// A book from [`ContactBook::to_bytes`] output, holding at most `capacity` keys: if
    /// the stored book is larger (the capacity was lowered), the most recently used are kept.
    pub fn from_bytes(bytes: &[u8], capacity: usize) -> Result<ContactBook, ContactBookError> {
        if bytes.len() < HEADER + CHECKSUM {
            return Err(ContactBookError::Truncated { len: bytes.len() });
        }
        if &bytes[..4] != MAGIC {
            return Err(ContactBookError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(ContactBookError::UnsupportedVersion(bytes[4]));
        }
        let declared = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[HEADER..bytes.len() - CHECKSUM];
        if !body.len().is_multiple_of(8) || body.len() / 8 != declared as usize {
            return Err(ContactBookError::LengthMismatch {
                declared,
                actual: body.len(),
            });
        }
        let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM);
        if checksum(content) != sum {
            return Err(ContactBookError::Checksum);
        }
        let mut book = ContactBook::new(capacity);
        let keep = body.len() / 8 - (body.len() / 8).saturating_sub(book.capacity);
        let mut seen = std::collections::HashSet::with_capacity(body.len() / 8);
        for (i, chunk) in body.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let k = u64::from_le_bytes(b);
            if !seen.insert(k) {
                return Err(ContactBookError::Duplicate);
            }
            if i >= body.len() / 8 - keep {
                book.touch(ContactKey(k));
            }
        }
        Ok(book)
    }
}

fn checksum(content: &[u8]) -> [u8; CHECKSUM] {
    let d = Sha256::digest(content);
    let mut s = [0u8; CHECKSUM];
    s.copy_from_slice(&d[..CHECKSUM]);
    s
}
