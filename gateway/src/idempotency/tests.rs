use super::*;

fn id(n: u8) -> MessageId {
    MessageId([n; 16])
}

fn new_token(c: Claim) -> ClaimToken {
    match c {
        Claim::New(t) => t,
        other => panic!("expected a new claim, got {other:?}"),
    }
}

#[test]
fn second_claim_after_commit_gets_the_original_id() {
    let ix = IdempotencyIndex::new(60_000, 100);
    let t = new_token(ix.claim("acme", "k1", id(1), 1_000));
    assert_eq!(t.id(), id(1));
    ix.commit(t);
    match ix.claim("acme", "k1", id(2), 2_000) {
        Claim::Duplicate { id: got, pending } => {
            assert_eq!(got, id(1));
            assert!(pending.is_none());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keys_are_per_workspace() {
    let ix = IdempotencyIndex::new(60_000, 100);
    ix.commit(new_token(ix.claim("acme", "k", id(1), 0)));
    ix.commit(new_token(ix.claim("other", "k", id(2), 0)));
    // The workspace length is hashed too: ("ab","c") and ("a","bc") differ.
    ix.commit(new_token(ix.claim("ab", "c", id(3), 0)));
    ix.commit(new_token(ix.claim("a", "bc", id(4), 0)));
    assert_eq!(ix.stats().len, 4);
}

#[tokio::test]
async fn a_duplicate_in_flight_waits_for_the_original() {
    let ix = IdempotencyIndex::new(60_000, 100);
    let t = new_token(ix.claim("acme", "k", id(1), 0));
    let Claim::Duplicate {
        id: got,
        pending: Some(p),
    } = ix.claim("acme", "k", id(2), 0)
    else {
        panic!("expected a pending duplicate")
    };
    assert_eq!(got, id(1));
    let waiter = tokio::spawn(p.wait());
    tokio::task::yield_now().await;
    assert!(
        !waiter.is_finished(),
        "must not resolve before the write is durable"
    );
    ix.commit(t);
    assert!(waiter.await.unwrap());
}

#[tokio::test]
async fn a_failed_write_releases_the_key_and_fails_waiters() {
    let ix = IdempotencyIndex::new(60_000, 100);
    let t = new_token(ix.claim("acme", "k", id(1), 0));
    let Claim::Duplicate { pending: Some(p), .. } = ix.claim("acme", "k", id(2), 0) else {
        panic!()
    };
    ix.release(t);
    assert!(!p.wait().await);
    // The resend can now claim the key for itself.
    assert_eq!(new_token(ix.claim("acme", "k", id(3), 0)).id(), id(3));
}

#[tokio::test]
async fn a_dropped_claim_fails_waiters() {
    let ix = IdempotencyIndex::new(60_000, 100);
    let t = new_token(ix.claim("acme", "k", id(1), 0));
    let Claim::Duplicate { pending: Some(p), .. } = ix.claim("acme", "k", id(2), 0) else {
        panic!()
    };
    drop(t);
    assert!(!p.wait().await);
}

#[test]
fn expiry_follows_the_window() {
    let ix = IdempotencyIndex::new(1_000, 100);
    ix.commit(new_token(ix.claim("w", "a", id(1), 0)));
    ix.commit(new_token(ix.claim("w", "b", id(2), 500)));
    assert_eq!(ix.expire(999), 0);
    assert_eq!(ix.expire(1_001), 1, "a is older than the window");
    assert!(matches!(
        ix.claim("w", "b", id(9), 1_001),
        Claim::Duplicate { .. }
    ));
    assert_eq!(ix.expire(1_501), 1);
    assert_eq!(ix.stats().evicted_window, 2);
    assert_eq!(new_token(ix.claim("w", "a", id(3), 1_600)).id(), id(3));
}

#[test]
fn capacity_evicts_oldest_first() {
    let ix = IdempotencyIndex::new(u64::MAX, 10);
    for i in 0..25u8 {
        ix.commit(new_token(ix.claim("w", &format!("k{i}"), id(i), u64::from(i))));
    }
    ix.expire(100);
    let s = ix.stats();
    assert_eq!(s.len, 10);
    assert_eq!(s.evicted_capacity, 15);
    assert!(matches!(
        ix.claim("w", "k24", id(99), 100),
        Claim::Duplicate { .. }
    ));
    assert!(matches!(ix.claim("w", "k0", id(99), 100), Claim::New(_)));
}

#[test]
fn in_flight_claims_are_never_evicted() {
    let ix = IdempotencyIndex::new(10, 1);
    let t = new_token(ix.claim("w", "a", id(1), 0));
    ix.commit(new_token(ix.claim("w", "b", id(2), 0)));
    assert_eq!(ix.expire(1_000), 0, "the sweep stops at the in-flight claim");
    ix.commit(t);
    assert_eq!(ix.expire(1_000), 2);
}

#[test]
fn a_reclaimed_key_is_not_removed_by_its_older_queue_entry() {
    let ix = IdempotencyIndex::new(1_000, 100);
    let t = new_token(ix.claim("w", "k", id(1), 0));
    ix.release(t);
    ix.commit(new_token(ix.claim("w", "k", id(2), 900)));
    ix.expire(1_100);
    assert!(
        matches!(ix.claim("w", "k", id(3), 1_100), Claim::Duplicate { id: got, .. } if got == id(2)),
        "the newer claim is still inside its window"
    );
}

#[test]
fn restore_rebuilds_from_the_journal() {
    let ix = IdempotencyIndex::new(60_000, 100);
    assert!(ix.restore("w", "k", id(7), 10));
    assert!(!ix.restore("w", "k", id(8), 11), "first record wins");
    assert!(
        matches!(ix.claim("w", "k", id(1), 20), Claim::Duplicate { id: got, pending: None } if got == id(7))
    );
}

#[test]
fn concurrent_claims_of_one_key_yield_one_owner() {
    let ix = IdempotencyIndex::new(60_000, 1000);
    let owners = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (ix, owners) = (&ix, &owners);
            s.spawn(move || {
                for k in 0..200 {
                    if let Claim::New(tok) = ix.claim("w", &format!("k{k}"), id(t), 0) {
                        owners.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        ix.commit(tok);
                    }
                }
            });
        }
    });
    assert_eq!(owners.into_inner(), 200, "exactly one claimer per key");
}
