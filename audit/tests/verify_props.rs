//! Properties of `audit verify` over random chains and random tampering: an untouched
//! chain always verifies; any removal, swap, duplication, insertion, byte flip or
//! truncation inside the signed part is always reported (never accepted, never a panic);
//! arbitrary bytes as lines give a typed finding, never a panic.

use proptest::prelude::*;
use waping_audit::chain::{DigestSigner, Hash, PublicKey};
use waping_audit::record::{Action, Actor, Event, Outcome, Record};
use waping_audit::verify::{Position, build_chain, verify_lines};

fn events(n: usize, salt: u64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ev = Event::new(
                1_000 + i as u64,
                Actor::Key {
                    id: format!("key_{salt}_{i}"),
                },
                Action::KeyCreate,
            )
            .workspace("acme")
            .target("key", format!("k{i}"));
            if i % 3 == 0 {
                ev.outcome(Outcome::Denied, "x")
            } else {
                ev
            }
        })
        .collect()
}

fn at(lines: Vec<Vec<u8>>) -> Vec<(Position, Vec<u8>)> {
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            (
                Position {
                    file: "p.jsonl".into(),
                    line: i as u64 + 1,
                },
                l,
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Tamper {
    Remove(usize),
    Swap(usize),
    Duplicate(usize),
    Insert(usize, u64),
    Flip(usize, usize, u8),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        any::<usize>().prop_map(Tamper::Remove),
        any::<usize>().prop_map(Tamper::Swap),
        any::<usize>().prop_map(Tamper::Duplicate),
        (any::<usize>(), 1u64..10_000).prop_map(|(i, s)| Tamper::Insert(i, s)),
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(i, p, x)| Tamper::Flip(i, p, x)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn every_tampering_of_the_signed_part_is_reported(n in 4usize..40, every in 2usize..=4, salt in any::<u64>(), t in tamper()) {
        let (s, _) = DigestSigner::generate();
        let pk = PublicKey::from_bytes(s.public_key());
        let mut lines = build_chain("edge", &events(n, salt), Some(&s), every);
        // Records up to the last digest are what a digest protects. The last line itself (the
        // digest) is covered only by a later link, like any tail: removing or changing it is
        // truncation, which docs/audit.md lists as undetectable from the files alone.
        let last_digest = lines.iter().rposition(|l| std::str::from_utf8(l).unwrap().contains("\"audit.digest\"")).unwrap();
        lines.truncate(last_digest + 1);
        prop_assert!(verify_lines(at(lines.clone()), std::slice::from_ref(&pk)).is_ok());
        let len = lines.len();
        match t {
            Tamper::Remove(i) => { lines.remove(i % (len - 1)); }
            Tamper::Swap(i) => { let i = i % (len - 1); lines.swap(i, i + 1); }
            Tamper::Duplicate(i) => { let l = lines[i % len].clone(); lines.insert(i % len, l); }
            Tamper::Insert(i, seq) => {
                let i = i % len;
                let prev = if i == 0 { Hash::ZERO } else { Hash::of_line(&lines[i - 1]) };
                let forged = Record::from_event(&Event::new(5, Actor::Admin, Action::KeyRevoke), "edge", seq, &prev).to_line();
                lines.insert(i, forged);
            }
            Tamper::Flip(i, p, x) => {
                let i = i % (len - 1);
                let p = p % lines[i].len();
                lines[i][p] ^= x;
            }
        }
        prop_assert!(verify_lines(at(lines), std::slice::from_ref(&pk)).is_err());
    }

    #[test]
    fn arbitrary_lines_never_panic(lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
        let _ = verify_lines(at(lines), &[]);
    }

    #[test]
    fn json_shaped_garbage_never_panics(seqs in proptest::collection::vec(0u64..5, 1..12), prevs in proptest::collection::vec(any::<bool>(), 12)) {
        let lines: Vec<Vec<u8>> = seqs.iter().enumerate().map(|(i, s)| {
            let prev = if prevs[i] { "0".repeat(64) } else { "zz".into() };
            format!(r#"{{"v":1,"node":"n","seq":{s},"action":"audit.digest","prev":"{prev}","detail":{{"type":"digest","head_seq":1}}}}"#).into_bytes()
        }).collect();
        let _ = verify_lines(at(lines), &[]);
    }
}
