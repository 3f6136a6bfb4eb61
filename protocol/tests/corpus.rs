//! Replays the committed fuzz corpus (`fuzz/corpus/decode/`) through the
//! same check as the fuzz target, so every input the fuzzer ever found
//! interesting (and every crash it found, once fixed) is retested by
//! `cargo test`.
//!
//! The hand-made seeds (`seed-*` files) are generated from `common::seeds()`;
//! after changing the codec or the seeds, regenerate them with
//!
//! ```sh
//! WAPING_WRITE_SEEDS=1 cargo test -p waping-protocol --test corpus
//! ```

mod common;

use std::fs;
use std::path::PathBuf;

use bytes::BytesMut;
use waping_protocol::{Decoder, fuzzing};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode")
}

/// Every file of the corpus, sorted by name. With `WAPING_WRITE_SEEDS` set,
/// first (once per test process, before any test reads) rewrites the seeds.
fn corpus() -> Vec<(String, Vec<u8>)> {
    static WRITE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("WAPING_WRITE_SEEDS").is_some() {
        WRITE.call_once(write_seeds);
    }
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(corpus_dir())
        .expect("fuzz/corpus/decode exists")
        .map(|e| {
            let e = e.expect("readable entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, fs::read(e.path()).expect("readable file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn replay_corpus() {
    let files = corpus();
    assert!(!files.is_empty(), "the corpus is empty");
    let mut failed = Vec::new();
    for (name, data) in &files {
        if std::panic::catch_unwind(|| fuzzing::check_decode(data)).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "corpus inputs failing the decode check: {failed:?}"
    );
}

#[test]
fn corpus_stays_small() {
    let files = corpus();
    let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
    assert!(
        files.len() < 300,
        "{} files; minimise with `cargo fuzz cmin decode`",
        files.len()
    );
    assert!(
        bytes < 1 << 20,
        "{bytes} bytes; minimise with `cargo fuzz cmin decode`"
    );
}

/// Every hand-made seed is in the corpus, byte for byte, and decodes the way
/// it claims: all frames, waiting for more, or the named error after the
/// frames before it.
#[test]
fn seeds_are_committed_and_do_what_they_say() {
    let files = corpus();
    for (name, bytes, end) in common::seeds() {
        let Some((_, on_disk)) = files.iter().find(|(n, _)| *n == name) else {
            panic!("seed {name} missing; run with WAPING_WRITE_SEEDS=1");
        };
        assert_eq!(
            on_disk, &bytes,
            "seed {name} is stale; run with WAPING_WRITE_SEEDS=1"
        );

        let decoder = Decoder::default();
        let mut buf = BytesMut::from(&bytes[..]);
        let outcome = loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) if buf.is_empty() => break None,
                Ok(None) => break Some(None),
                Err(e) => break Some(Some(e)),
            }
        };
        assert_eq!(outcome, end, "seed {name}");
    }
    // No stale hand-made seeds linger either.
    let names: Vec<String> = common::seeds().into_iter().map(|(n, _, _)| n).collect();
    for (name, _) in files.iter().filter(|(n, _)| n.starts_with("seed-")) {
        assert!(names.contains(name), "{name} is no longer generated; delete it");
    }
}

fn write_seeds() {
    let dir = corpus_dir();
    fs::create_dir_all(&dir).expect("create corpus dir");
    for entry in fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
        {
            fs::remove_file(&path).expect("remove old seed");
        }
    }
    for (name, bytes, _) in common::seeds() {
        fs::write(dir.join(name), bytes).expect("write seed");
    }
}
