//! Gateway message ids: UUIDv7 layout, unique without coordination.
//!
//! 48 bits of Unix milliseconds, version 7, 12 random bits fixed per process,
//! variant, then a 62-bit counter that starts at a random value. Generation is
//! one relaxed atomic increment; ids sort by creation time across restarts.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use waping_protocol::MessageId;

/// Id generator; one per process.
#[derive(Debug)]
pub struct IdGen {
    node: u16,
    counter: AtomicU64,
}

impl Default for IdGen {
    fn default() -> Self {
        let mut r = rand::rng();
        IdGen {
            node: r.random::<u16>() & 0x0fff,
            counter: AtomicU64::new(r.random::<u64>() >> 2),
        }
    }
}

impl IdGen {
    /// The next id.
    pub fn next(&self) -> MessageId {
        self.at(crate::unix_ms())
    }

    /// The next id for a given time (tests).
    pub fn at(&self, unix_ms: u64) -> MessageId {
        let c = self.counter.fetch_add(1, Ordering::Relaxed) & ((1 << 62) - 1);
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        let ver_rand = 0x7000 | self.node;
        b[6..8].copy_from_slice(&ver_rand.to_be_bytes());
        b[8..].copy_from_slice(&((0b10u64 << 62) | c).to_be_bytes());
        MessageId(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ordered_and_well_formed() {
        let g = IdGen::default();
        let a = g.at(1_700_000_000_000);
        let b = g.at(1_700_000_000_000);
        let c = g.at(1_700_000_000_001);
        assert_ne!(a, b);
        assert!(c > a && c > b, "later milliseconds sort later");
        assert_eq!(a.0[6] >> 4, 7, "version 7");
        assert_eq!(a.0[8] >> 6, 0b10, "RFC 9562 variant");
        let set: std::collections::HashSet<_> = (0..10_000).map(|_| g.next()).collect();
        assert_eq!(set.len(), 10_000);
    }
}
