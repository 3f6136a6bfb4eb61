//! Verification of audit lines: the chain, the sequence and the signed digests.
//!
//! The verifier reads lines exactly as stored (file sink, spool, or a dump from
//! JetStream or an HTTP receiver), hashes their bytes and follows each node's chain.
//! It stops at the first problem and says what it most likely is and where:
//!
//! - **altered**: a record's bytes changed, so the next record's `prev` no longer matches;
//! - **missing**: a sequence number is skipped;
//! - **reordered**: a record appears before one with a lower sequence number;
//! - **inserted**: a record that the chain does not account for sits between two that
//!   link to each other, or claims a sequence number another record holds;
//! - **digest mismatch / bad signature**: the chain was rewritten consistently (every
//!   link recomputed), which only the signed digests can reveal.
//!
//! Records after a node's last digest are protected by the chain alone: cutting them
//! off is invisible here. The report says how many there are (`unsigned_tail`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::chain::{Hash, PublicKey};
use crate::record::DigestDetail;

/// Where a line is: file (as given or found) and 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The file.
    pub file: PathBuf,
    /// Line number, from 1.
    pub line: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The line is not a record (not JSON, wrong schema version, blank).
    Malformed,
    /// The record's bytes were changed after it was written.
    Altered,
    /// One or more records are absent.
    Missing,
    /// Records are out of order.
    Reordered,
    /// A record was added that was never written by the node.
    Inserted,
    /// The same record appears twice.
    Duplicate,
    /// A digest's signature does not verify, or its key is unknown.
    BadSignature,
    /// A digest does not match the chain before it: the chain was rewritten.
    DigestMismatch,
}

impl FindingKind {
    /// Lowercase name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Malformed => "malformed",
            FindingKind::Altered => "altered",
            FindingKind::Missing => "missing",
            FindingKind::Reordered => "reordered",
            FindingKind::Inserted => "inserted",
            FindingKind::Duplicate => "duplicate",
            FindingKind::BadSignature => "bad signature",
            FindingKind::DigestMismatch => "digest mismatch",
        }
    }
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its kind.
    pub kind: FindingKind,
    /// The node whose chain it is in (empty for a malformed line).
    pub node: String,
    /// The sequence number concerned (the altered, missing-from, reordered or inserted record).
    pub seq: Option<u64>,
    /// Where.
    pub at: Position,
    /// One sentence for the operator.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.kind.as_str(), self.message)
    }
}

/// What a clean walk saw, per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// Node name.
    pub node: String,
    /// First and last sequence numbers seen.
    pub first_seq: u64,
    /// Last sequence number seen.
    pub last_seq: u64,
    /// Records (digests included).
    pub records: u64,
    /// Digests checked.
    pub digests: u64,
    /// Highest sequence number covered by a verified signature (0 if none).
    pub signed_through: u64,
    /// Records after the last digest (protected by the chain only).
    pub unsigned_tail: u64,
    /// Whether the walk starts at the node's first record (seq 1); otherwise earlier files
    /// were not given and the first record's link is taken on trust.
    pub from_genesis: bool,
}

/// A clean walk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Per node, by name.
    pub nodes: Vec<NodeReport>,
    /// Whether digest signatures were checked (a public key was given).
    pub signatures_checked: bool,
}

/// Verification failed: I/O, or a finding.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No `*.jsonl` file was found.
    #[error("no audit files found (give files, or directories holding *.jsonl)")]
    NoFiles,
    /// The records are not what the node wrote.
    #[error("{0}")]
    Tampered(Finding),
}

/// The fields the verifier needs; everything else in the line is covered by its hash.
#[derive(Deserialize)]
struct Head {
    v: u8,
    node: String,
    seq: u64,
    action: String,
    prev: String,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

struct Entry {
    seq: u64,
    hash: Hash,
    prev: Hash,
    at: Position,
    digest: Option<DigestDetail>,
}

/// Walks lines (in the order given) and checks every node's chain and digests.
/// `keys` are the trusted digest keys; with none, signatures are not checked (the
/// report says so) but digests must still match the chain.
pub fn verify_lines<I>(lines: I, keys: &[PublicKey]) -> Result<Report, Finding>
where
    I: IntoIterator<Item = (Position, Vec<u8>)>,
{
    let mut nodes: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut files = std::collections::BTreeSet::new();
    for (at, line) in lines {
        files.insert(at.file.clone());
        let malformed = |why: &str| Finding {
            kind: FindingKind::Malformed,
            node: String::new(),
            seq: None,
            at: at.clone(),
            message: why.to_owned(),
        };
        let head: Head =
            serde_json::from_slice(&line).map_err(|e| malformed(&format!("not an audit record ({e})")))?;
        if head.v != crate::record::SCHEMA_VERSION {
            return Err(malformed(&format!("unknown schema version {}", head.v)));
        }
        let prev = Hash::from_hex(&head.prev).ok_or_else(|| malformed("`prev` is not 64 hex digits"))?;
        let digest = if head.action == "audit.digest" {
            let d = head
                .detail
                .and_then(|v| {
                    let mut v = v;
                    v.as_object_mut()?.remove("type");
                    serde_json::from_value::<DigestDetail>(v).ok()
                })
                .ok_or_else(|| malformed("digest record without a valid digest detail"))?;
            Some(d)
        } else {
            None
        };
        nodes.entry(head.node).or_default().push(Entry {
            seq: head.seq,
            hash: Hash::of_line(&line),
            prev,
            at,
            digest,
        });
    }
    let mut report = Report {
        files: files.len(),
        nodes: Vec::new(),
        signatures_checked: !keys.is_empty(),
    };
    for (node, entries) in &nodes {
        report.nodes.push(verify_node(node, entries, keys)?);
    }
    Ok(report)
}

fn verify_node(node: &str, e: &[Entry], keys: &[PublicKey]) -> Result<NodeReport, Finding> {
    let finding = |kind, seq: Option<u64>, at: &Position, message: String| Finding {
        kind,
        node: node.to_owned(),
        seq,
        at: at.clone(),
        message,
    };
    if e[0].seq == 1 && e[0].prev != Hash::ZERO {
        return Err(finding(
            FindingKind::Altered,
            Some(1),
            &e[0].at,
            "the node's first record does not start the chain (its `prev` is not zero)".into(),
        ));
    }
    let mut by_seq: HashMap<u64, usize> = HashMap::with_capacity(e.len());
    by_seq.insert(e[0].seq, 0);
    let mut last_digest: Option<usize> = None;
    let mut digests = 0;
    let mut signed_through = 0;
    let mut check_digest = |i: usize, last_digest: &mut Option<usize>| -> Result<(), Finding> {
        let Some(d) = &e[i].digest else { return Ok(()) };
        if i > 0 {
            let before = &e[i - 1];
            if d.head_seq != before.seq || Hash::from_hex(&d.head_hash) != Some(before.hash) {
                return Err(finding(
                    FindingKind::DigestMismatch,
                    Some(e[i].seq),
                    &e[i].at,
                    format!(
                        "the signed digest covers seq {} with a different hash than the records hold: records after the previous digest were rewritten",
                        d.head_seq
                    ),
                ));
            }
        }
        if let Some(p) = *last_digest
            && Hash::from_hex(&d.prev_digest) != Some(e[p].hash)
        {
            return Err(finding(
                FindingKind::DigestMismatch,
                Some(e[i].seq),
                &e[i].at,
                format!(
                    "this digest does not follow the digest at seq {} ({}): a digest was removed or replaced",
                    e[p].seq, e[p].at
                ),
            ));
        }
        // The node's first digest (nothing before it to link to) proves the walk should
        // start at the node's first record: a later start means records were cut off the front.
        if last_digest.is_none() && d.prev_digest == Hash::ZERO.to_hex() && e[0].seq != 1 {
            let to = e[0].seq - 1;
            return Err(finding(
                FindingKind::Missing,
                Some(1),
                &e[0].at,
                format!(
                    "seq 1..={to} missing before the first record given: the digest at seq {} is the node's first, so the chain started in these files",
                    e[i].seq
                ),
            ));
        }
        if !keys.is_empty() {
            let Some(k) = keys.iter().find(|k| k.id() == d.key_id) else {
                return Err(finding(
                    FindingKind::BadSignature,
                    Some(e[i].seq),
                    &e[i].at,
                    format!(
                        "digest signed by key {} which is not among the trusted keys",
                        d.key_id
                    ),
                ));
            };
            if !k.verifies(node, d) {
                return Err(finding(
                    FindingKind::BadSignature,
                    Some(e[i].seq),
                    &e[i].at,
                    "the digest's signature does not verify".into(),
                ));
            }
            signed_through = d.head_seq;
        }
        digests += 1;
        *last_digest = Some(i);
        Ok(())
    };
    check_digest(0, &mut last_digest)?;
    for i in 1..e.len() {
        let (a, b) = (&e[i - 1], &e[i]);
        let expected = a.seq + 1;
        if b.seq == expected && b.prev == a.hash {
            by_seq.insert(b.seq, i);
            check_digest(i, &mut last_digest)?;
            continue;
        }
        // A record is genuine if some record holds the number before it with the hash it links to.
        let genuine = |x: &Entry| {
            (x.seq == 1 && x.prev == Hash::ZERO) || e.iter().any(|y| y.seq + 1 == x.seq && y.hash == x.prev)
        };
        let inserted = |x: &Entry, why: String| finding(FindingKind::Inserted, Some(x.seq), &x.at, why);
        if b.seq == expected {
            if let Some(c) = e.get(i + 1).filter(|c| c.seq == expected && c.prev == a.hash) {
                return Err(inserted(
                    b,
                    format!(
                        "a record claiming seq {} sits between seq {} and the real seq {} ({}), which link to each other",
                        b.seq, a.seq, c.seq, c.at
                    ),
                ));
            }
            return Err(finding(
                FindingKind::Altered,
                Some(a.seq),
                &a.at,
                format!(
                    "record seq {} was changed: its hash no longer matches the link in seq {} ({})",
                    a.seq, b.seq, b.at
                ),
            ));
        }
        if b.seq > expected {
            let later = e[i + 1..].iter().any(|x| x.seq == expected);
            if later && genuine(b) {
                return Err(finding(
                    FindingKind::Reordered,
                    Some(b.seq),
                    &b.at,
                    format!("seq {} appears before seq {}", b.seq, expected),
                ));
            }
            if later {
                return Err(inserted(
                    b,
                    format!(
                        "a record claiming seq {} sits after seq {} but links to no record; the chain continues after it",
                        b.seq, a.seq
                    ),
                ));
            }
            let to = b.seq - 1;
            let range = if to == expected {
                format!("seq {expected} is")
            } else {
                format!("seq {expected}..={to} are")
            };
            return Err(finding(
                FindingKind::Missing,
                Some(expected),
                &b.at,
                format!(
                    "{range} missing between seq {} ({}) and seq {}",
                    a.seq, a.at, b.seq
                ),
            ));
        }
        // b.seq <= a.seq: a repeat, a second claimant of a sequence number, or a record moved later.
        match by_seq.get(&b.seq) {
            Some(&j) if e[j].hash == b.hash => {
                return Err(finding(
                    FindingKind::Duplicate,
                    Some(b.seq),
                    &b.at,
                    format!("seq {} appears again (first at {})", b.seq, e[j].at),
                ));
            }
            Some(&j) => {
                // Two records claim one number: the one whose successor does not link to it was inserted.
                let first_links = e.get(j + 1).is_some_and(|n| n.prev == e[j].hash);
                let (ins, other) = if first_links { (b, &e[j]) } else { (&e[j], b) };
                return Err(inserted(
                    ins,
                    format!(
                        "two records claim seq {} (also at {}); this one is not part of the chain",
                        ins.seq, other.at
                    ),
                ));
            }
            None if genuine(b) => {
                return Err(finding(
                    FindingKind::Reordered,
                    Some(b.seq),
                    &b.at,
                    format!("seq {} appears after seq {}", b.seq, a.seq),
                ));
            }
            None => {
                return Err(inserted(
                    b,
                    format!(
                        "a record claiming seq {} sits after seq {} but links to no record",
                        b.seq, a.seq
                    ),
                ));
            }
        }
    }
    let last = e.last().expect("non-empty");
    let tail_from = last_digest.map(|d| d + 1).unwrap_or(0);
    Ok(NodeReport {
        node: node.to_owned(),
        first_seq: e[0].seq,
        last_seq: last.seq,
        records: e.len() as u64,
        digests,
        signed_through,
        unsigned_tail: (e.len() - tail_from) as u64,
        from_genesis: e[0].seq == 1,
    })
}

/// Expands `paths` (files, or directories whose `*.jsonl` files are taken in name order,
/// which is sequence order for the spool and the file sink), reads every line and verifies.
pub fn verify_paths(paths: &[PathBuf], keys: &[PublicKey]) -> Result<Report, VerifyError> {
    let files = expand(paths)?;
    let mut lines = Vec::new();
    for f in &files {
        let data = std::fs::read(f).map_err(|source| VerifyError::Io {
            path: f.clone(),
            source,
        })?;
        let mut n = 0u64;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            n += 1;
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &rest[rest.len()..]),
            };
            lines.push((
                Position {
                    file: f.clone(),
                    line: n,
                },
                line.to_vec(),
            ));
            rest = next;
        }
    }
    verify_lines(lines, keys).map_err(VerifyError::Tampered)
}

fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, VerifyError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| VerifyError::Io {
                    path: p.clone(),
                    source,
                })?
                .filter_map(|d| d.ok().map(|d| d.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl") && f.is_file())
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(VerifyError::NoFiles);
    }
    Ok(out)
}

/// Builds a chain of `lines` as the spool writer does, for tests and benchmarks:
/// records from `events` for `node`, with a digest after every `digest_every` records.
pub fn build_chain(
    node: &str,
    events: &[crate::record::Event],
    signer: Option<&crate::chain::DigestSigner>,
    digest_every: usize,
) -> Vec<Vec<u8>> {
    use crate::record::{Action, Actor, Detail, Event, Record};
    let mut out = Vec::new();
    let mut head = Hash::ZERO;
    let mut last_digest = Hash::ZERO;
    let mut seq = 0u64;
    let mut since = 0usize;
    let push = |ev: &Event, out: &mut Vec<Vec<u8>>, head: &mut Hash, seq: &mut u64| {
        *seq += 1;
        let line = Record::from_event(ev, node, *seq, head).to_line();
        *head = Hash::of_line(&line);
        out.push(line);
    };
    for ev in events {
        push(ev, &mut out, &mut head, &mut seq);
        since += 1;
        if let Some(s) = signer
            && digest_every > 0
            && since == digest_every
        {
            {
                let d = s.digest(node, seq, &head, &last_digest);
                let dev = Event::new(ev.at_ms, Actor::System, Action::AuditDigest).detail(Detail::Digest(d));
                push(&dev, &mut out, &mut head, &mut seq);
                last_digest = head;
                since = 0;
            }
        }
    }
    out
}

/// Convenience for callers holding a single directory.
pub fn verify_dir(dir: &Path, keys: &[PublicKey]) -> Result<Report, VerifyError> {
    verify_paths(&[dir.to_path_buf()], keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::DigestSigner;
    use crate::record::{Action, Actor, Event, Outcome, Record};

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| {
                Event::new(
                    1_000 + i as u64,
                    Actor::Key {
                        id: format!("key_{i}"),
                    },
                    Action::KeyCreate,
                )
                .workspace("acme")
                .target("key", format!("key_{}", i + 100))
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
                        file: "audit.jsonl".into(),
                        line: i as u64 + 1,
                    },
                    l,
                )
            })
            .collect()
    }

    fn setup() -> (Vec<Vec<u8>>, PublicKey) {
        let (s, _) = DigestSigner::generate();
        let lines = build_chain("edge-1", &events(20), Some(&s), 5);
        (lines, PublicKey::from_bytes(s.public_key()))
    }

    fn record(line: &[u8]) -> Record {
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (lines, pk) = setup();
        assert_eq!(lines.len(), 24);
        let r = verify_lines(at(lines), &[pk]).unwrap();
        let n = &r.nodes[0];
        assert_eq!((n.first_seq, n.last_seq, n.records, n.digests), (1, 24, 24, 4));
        assert_eq!(n.signed_through, 23);
        assert_eq!(n.unsigned_tail, 0);
        assert!(n.from_genesis && r.signatures_checked);
    }

    #[test]
    fn an_altered_record_is_named() {
        let (mut lines, pk) = setup();
        let mut r = record(&lines[9]);
        r.outcome = Outcome::Failure;
        lines[9] = r.to_line();
        let f = verify_lines(at(lines), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::Altered);
        assert_eq!(f.seq, Some(10));
        assert_eq!(f.at.line, 10);
    }

    #[test]
    fn a_single_changed_byte_is_found() {
        let (lines, pk) = setup();
        for i in 0..lines.len() - 1 {
            let mut l = lines.clone();
            let pos = l[i].len() / 2;
            l[i][pos] ^= 0x01;
            let f = verify_lines(at(l), std::slice::from_ref(&pk)).unwrap_err();
            // Line i+1 was changed: reported there, at its successor, or (a changed link) its predecessor.
            let line = f.at.line as usize;
            assert!(line >= i && line <= i + 2, "line {} changed: {f}", i + 1);
        }
    }

    #[test]
    fn a_missing_record_is_named() {
        let (mut lines, pk) = setup();
        lines.remove(6);
        let f = verify_lines(at(lines), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::Missing);
        assert_eq!(f.seq, Some(7));
        assert_eq!(f.at.line, 7, "reported where seq 8 now sits");
    }

    #[test]
    fn reordered_records_are_named() {
        let (mut lines, pk) = setup();
        lines.swap(7, 8);
        let f = verify_lines(at(lines), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::Reordered);
        assert_eq!(f.seq, Some(9));
        assert_eq!(f.at.line, 8);
    }

    #[test]
    fn an_inserted_record_is_named_however_it_is_numbered() {
        let (lines, pk) = setup();
        // A forged record that links correctly to seq 10 and takes seq 11.
        let forged_ev = Event::new(9, Actor::Admin, Action::KeyRevoke).workspace("acme");
        let forged = Record::from_event(&forged_ev, "edge-1", 11, &Hash::of_line(&lines[9])).to_line();
        let mut l = lines.clone();
        l.insert(10, forged.clone());
        let f = verify_lines(at(l), std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!(f.kind, FindingKind::Inserted, "{f}");
        assert_eq!(f.at.line, 11);
        // A forged record with an arbitrary number.
        let odd = Record::from_event(&forged_ev, "edge-1", 999, &Hash::ZERO).to_line();
        let mut l = lines.clone();
        l.insert(10, odd);
        let f = verify_lines(at(l), std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!(f.kind, FindingKind::Inserted, "{f}");
        assert_eq!(f.at.line, 11);
        // With everything after it renumbered and relinked, only the digest catches it.
        let mut evs = events(20);
        evs.insert(7, forged_ev);
        let (s2, _) = DigestSigner::generate();
        let rewritten = build_chain("edge-1", &evs, Some(&s2), 5);
        let f = verify_lines(at(rewritten), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::BadSignature, "{f}");
    }

    #[test]
    fn a_consistently_rewritten_chain_fails_at_the_next_digest() {
        let (lines, pk) = setup();
        // Alter seq 3 and recompute every later link, keeping the original digest details.
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut head = Hash::ZERO;
        for (i, l) in lines.iter().enumerate() {
            let mut r = record(l);
            if i == 2 {
                r.workspace = Some("other".into());
            }
            r.prev = head.to_hex();
            let line = r.to_line();
            head = Hash::of_line(&line);
            out.push(line);
        }
        let f = verify_lines(at(out), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::DigestMismatch, "{f}");
        assert_eq!(f.seq, Some(6), "the first digest after the change");
    }

    #[test]
    fn a_removed_digest_is_found() {
        let (lines, pk) = setup();
        // Drop the second digest (seq 12) and relink the rest so the chain itself is intact.
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut head = Hash::ZERO;
        let mut seq = 0;
        for (i, l) in lines.iter().enumerate() {
            if i == 11 {
                continue;
            }
            let mut r = record(l);
            seq += 1;
            r.seq = seq;
            r.prev = head.to_hex();
            let line = r.to_line();
            head = Hash::of_line(&line);
            out.push(line);
        }
        let f = verify_lines(at(out), &[pk]).unwrap_err();
        assert_eq!(f.kind, FindingKind::DigestMismatch, "{f}");
    }

    #[test]
    fn duplicates_unknown_keys_and_garbage_are_reported() {
        let (lines, pk) = setup();
        let mut l = lines.clone();
        l.insert(4, lines[3].clone());
        assert_eq!(
            verify_lines(at(l), std::slice::from_ref(&pk)).unwrap_err().kind,
            FindingKind::Duplicate
        );
        let (other, _) = DigestSigner::generate();
        let f = verify_lines(at(lines.clone()), &[PublicKey::from_bytes(other.public_key())]).unwrap_err();
        assert_eq!(f.kind, FindingKind::BadSignature);
        let mut l = lines.clone();
        l[2] = b"not json".to_vec();
        let f = verify_lines(at(l), std::slice::from_ref(&pk)).unwrap_err();
        assert_eq!((f.kind, f.at.line), (FindingKind::Malformed, 3));
        // Without keys the walk still checks the chain and says signatures were not checked.
        let r = verify_lines(at(lines), &[]).unwrap();
        assert!(!r.signatures_checked);
    }

    #[test]
    fn a_walk_may_start_mid_chain_and_reports_the_unsigned_tail() {
        let (s, _) = DigestSigner::generate();
        let pk = PublicKey::from_bytes(s.public_key());
        let lines = build_chain("edge-1", &events(12), Some(&s), 5);
        // From after the node's first digest: earlier files may have been rotated away.
        let r = verify_lines(at(lines[6..].to_vec()), std::slice::from_ref(&pk)).unwrap();
        let n = &r.nodes[0];
        assert!(!n.from_genesis);
        assert_eq!((n.first_seq, n.last_seq), (7, 14));
        assert_eq!(n.unsigned_tail, 2);
        // From before it: the node's first digest proves records were cut off the front.
        let f = verify_lines(at(lines[3..].to_vec()), &[pk]).unwrap_err();
        assert_eq!((f.kind, f.seq, f.at.line), (FindingKind::Missing, Some(1), 1));
    }

    #[test]
    fn nodes_are_verified_separately_even_when_interleaved() {
        let (s, _) = DigestSigner::generate();
        let pk = PublicKey::from_bytes(s.public_key());
        let a = build_chain("a", &events(6), Some(&s), 3);
        let b = build_chain("b", &events(6), Some(&s), 3);
        let mixed: Vec<Vec<u8>> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
        let r = verify_lines(at(mixed), &[pk]).unwrap();
        assert_eq!(r.nodes.len(), 2);
    }

    #[test]
    fn files_in_a_directory_are_walked_in_name_order() {
        let (lines, pk) = setup();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, ls: &[Vec<u8>]| {
            let mut data = Vec::new();
            for l in ls {
                data.extend_from_slice(l);
                data.push(b'\n');
            }
            std::fs::write(dir.path().join(name), data).unwrap();
        };
        write("audit-00000000000000000011.jsonl", &lines[10..]);
        write("audit-00000000000000000001.jsonl", &lines[..10]);
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let r = verify_dir(dir.path(), std::slice::from_ref(&pk)).unwrap();
        assert_eq!((r.files, r.nodes[0].records), (2, 24));
        // Remove line 3 of the second file: reported in that file.
        let mut second = lines[10..].to_vec();
        second.remove(2);
        write("audit-00000000000000000011.jsonl", &second);
        match verify_dir(dir.path(), &[pk]) {
            Err(VerifyError::Tampered(f)) => {
                assert_eq!(f.kind, FindingKind::Missing);
                assert!(f.at.file.ends_with("audit-00000000000000000011.jsonl"));
                assert_eq!(f.at.line, 3);
            }
            other => panic!("{other:?}"),
        }
    }
}
