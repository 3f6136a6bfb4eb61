//! The file sink: record lines in rotating files `audit-<first seq, 20 digits>.jsonl`
//! (mode 0600, directory 0700), byte for byte as in the spool, so `audit verify` checks
//! them directly.
//!
//! Exactly once across crashes: at start ([`Sink::resume`]) the sink cuts a torn last line
//! off the newest file and reports the seq of its last complete line; the shipping loop
//! continues right after it, and `send` skips any line the files already hold.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::config::{FileSinkConfig, FsyncPolicy};
use crate::sink::{Line, Sink, SinkError, SinkErrorKind};
use crate::spool::{now_ms, truncate_torn};

/// With `fsync = "interval"`, the longest time written lines may stay unsynced while
/// batches keep coming (an idle sink is synced by the shipping loop's flush).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// `audit-<first seq, 20 digits>.jsonl`.
pub fn file_name(first: u64) -> String {
    format!("audit-{first:020}.jsonl")
}

fn parse_file_name(name: &str) -> Option<u64> {
    let d = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if d.len() != 20 || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

/// Whether the current file must be closed before the next line: it is not empty, and it
/// reached `max_file_bytes` or is `rotate_interval_s` old (0 = no time rotation). A clock
/// stepped back does not rotate.
pub fn rotate_due(
    file_bytes: u64,
    max_file_bytes: u64,
    opened_ms: u64,
    now_ms: u64,
    rotate_interval_s: u64,
) -> bool {
    file_bytes > 0
        && (file_bytes >= max_file_bytes
            || (rotate_interval_s > 0
                && now_ms.saturating_sub(opened_ms) >= rotate_interval_s.saturating_mul(1000)))
}

/// The file sink. Its file work runs on the blocking pool.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    /// `None` only while a blocking call holds it (or after one panicked).
    inner: Option<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    node: String,
    max_file_bytes: u64,
    rotate_interval_s: u64,
    fsync: FsyncPolicy,
    keep_files: u32,
    cur: Option<Current>,
    /// Highest seq the files hold (0: none).
    held: u64,
    /// The files' state must be read (again) before writing: at start, and after a failed
    /// write that may have left a partial line.
    must_recover: bool,
    last_sync: Instant,
    unsynced: bool,
}

#[derive(Debug)]
struct Current {
    file: File,
    bytes: u64,
    opened_ms: u64,
}

fn local(what: &str, e: io::Error) -> SinkError {
    SinkError::new(SinkErrorKind::Local, format!("{what}: {e}"))
}

#[derive(serde::Deserialize)]
struct Probe {
    seq: u64,
    node: String,
}

impl FileSink {
    /// A file sink writing into `dir` (created 0700) for node `node`. Reads nothing yet:
    /// the files' state is read by `resume` (or the first `send`).
    pub fn open(cfg: &FileSinkConfig, dir: PathBuf, node: &str) -> Result<FileSink, SinkError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| local(&format!("creating {}", dir.display()), e))?;
        Ok(FileSink {
            name: cfg.name.clone().unwrap_or_else(|| "file".into()),
            inner: Some(Inner {
                dir,
                node: node.to_owned(),
                max_file_bytes: cfg.max_file_bytes.max(1),
                rotate_interval_s: cfg.rotate_interval_s,
                fsync: cfg.fsync,
                keep_files: cfg.keep_files,
                cur: None,
                held: 0,
                must_recover: true,
                last_sync: Instant::now(),
                unsynced: false,
            }),
        })
    }

    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Inner) -> Result<T, SinkError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let mut inner = self.inner.take().ok_or_else(|| {
            SinkError::new(
                SinkErrorKind::Local,
                "file sink state lost (an earlier call was cancelled or panicked)",
            )
        })?;
        let (inner, res) = tokio::task::spawn_blocking(move || {
            let r = f(&mut inner);
            (inner, r)
        })
        .await
        .map_err(|e| SinkError::new(SinkErrorKind::Local, format!("file sink task failed: {e}")))?;
        self.inner = Some(inner);
        res
    }
}

impl Inner {
    fn files(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if let Some(first) = e.file_name().to_str().and_then(parse_file_name) {
                out.push((first, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Cuts a torn end off the newest file and finds the last seq held.
    fn recover(&mut self) -> Result<Option<u64>, SinkError> {
        let dir = self.dir.display().to_string();
        let ctx = |e: io::Error| local(&format!("reading {dir}"), e);
        self.cur = None;
        self.held = 0;
        let mut files = self.files().map_err(ctx)?;
        while let Some((_, path)) = files.last().cloned() {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| local(&format!("opening {}", path.display()), e))?;
            let len = f.metadata().map_err(ctx)?.len();
            let (_, cut, last) = truncate_torn(&f, len, &path).map_err(|e| local("recovering", e))?;
            if cut > 0 {
                tracing::warn!(file = %path.display(), bytes = cut, "audit file sink: cut a torn last line; it is written again from the spool");
            }
            let Some(line) = last else {
                // Created by a rotation whose first write never completed.
                fs::remove_file(&path).map_err(ctx)?;
                files.pop();
                continue;
            };
            let p: Probe = serde_json::from_slice(&line).map_err(|e| {
                SinkError::new(
                    SinkErrorKind::Local,
                    format!("{}: last line is not an audit record: {e}", path.display()),
                )
            })?;
            if p.node != self.node {
                return Err(SinkError::new(
                    SinkErrorKind::Misconfigured,
                    format!(
                        "{} holds records of node {:?}, not {:?}: give each node its own file sink directory",
                        self.dir.display(),
                        p.node,
                        self.node
                    ),
                ));
            }
            self.held = p.seq;
            {
                let meta = f.metadata().map_err(ctx)?;
                let opened_ms = meta
                    .created()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or_else(now_ms, |d| d.as_millis() as u64);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(|e| local(&format!("opening {}", path.display()), e))?;
                self.cur = Some(Current {
                    file,
                    bytes: meta.len(),
                    opened_ms,
                });
            }
            break;
        }
        self.must_recover = false;
        Ok((self.held > 0).then_some(self.held))
    }

    fn write(&mut self, batch: &[Line], now_ms: u64) -> Result<(), SinkError> {
        if self.must_recover {
            self.recover()?;
        }
        let res = self.write_new(batch, now_ms);
        if res.is_err() {
            self.must_recover = true;
        }
        res
    }

    fn write_new(&mut self, batch: &[Line], now_ms: u64) -> Result<(), SinkError> {
        let held = self.held;
        let mut buf: Vec<u8> = Vec::new();
        let mut created = false;
        let mut last = held;
        for line in batch.iter().filter(|l| l.seq > held) {
            let pending = self.cur.as_ref().map_or(0, |c| c.bytes) + buf.len() as u64;
            let rotate = match &self.cur {
                None => true,
                Some(c) => rotate_due(
                    pending,
                    self.max_file_bytes,
                    c.opened_ms,
                    now_ms,
                    self.rotate_interval_s,
                ),
            };
            if rotate {
                if let Some(c) = &mut self.cur {
                    c.file.write_all(&buf).map_err(|e| local("writing", e))?;
                    c.bytes += buf.len() as u64;
                    buf.clear();
                    if self.fsync != FsyncPolicy::Never {
                        c.file.sync_data().map_err(|e| local("fsync", e))?;
                    }
                }
                let path = self.dir.join(file_name(line.seq));
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| local(&format!("creating {}", path.display()), e))?;
                self.cur = Some(Current {
                    file,
                    bytes: 0,
                    opened_ms: now_ms,
                });
                created = true;
            }
            buf.extend_from_slice(&line.bytes);
            buf.push(b'\n');
            last = line.seq;
        }
        if last == held {
            return Ok(());
        }
        let c = self.cur.as_mut().expect("current file");
        c.file.write_all(&buf).map_err(|e| local("writing", e))?;
        c.bytes += buf.len() as u64;
        match self.fsync {
            FsyncPolicy::Batch => {
                c.file.sync_data().map_err(|e| local("fsync", e))?;
                if created {
                    File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| local("fsync of the directory", e))?;
                }
                self.last_sync = Instant::now();
            }
            FsyncPolicy::Interval => {
                if self.last_sync.elapsed() >= SYNC_INTERVAL {
                    c.file.sync_data().map_err(|e| local("fsync", e))?;
                    self.last_sync = Instant::now();
                    self.unsynced = false;
                } else {
                    self.unsynced = true;
                }
            }
            FsyncPolicy::Never => {}
        }
        self.held = last;
        if created && self.keep_files > 0 {
            self.prune();
        }
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `keep_files` (the current file is not counted).
    fn prune(&self) {
        let files = match self.files() {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "audit file sink: listing files to prune failed");
                return;
            }
        };
        let rotated = files.len().saturating_sub(1);
        let excess = rotated.saturating_sub(self.keep_files as usize);
        for (_, path) in files.iter().take(excess) {
            match fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "audit file sink: deleted a rotated file (keep_files)")
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "audit file sink: deleting a rotated file failed")
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.unsynced {
            if let Some(c) = &self.cur {
                c.file.sync_data().map_err(|e| local("fsync", e))?;
            }
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn resume(&mut self) -> Result<Option<u64>, SinkError> {
        self.blocking(Inner::recover).await
    }

    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError> {
        let batch = batch.to_vec();
        let now = now_ms();
        self.blocking(move |i| i.write(&batch, now)).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.blocking(Inner::flush).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::path::Path;

    fn cfg() -> FileSinkConfig {
        FileSinkConfig {
            max_file_bytes: 1 << 20,
            rotate_interval_s: 0,
            ..FileSinkConfig::default()
        }
    }

    fn line(seq: u64) -> Line {
        Line {
            seq,
            bytes: Bytes::from(format!(
                r#"{{"v":1,"node":"n1","seq":{seq},"pad":"{}"}}"#,
                "x".repeat(40)
            )),
        }
    }

    fn lines(r: std::ops::RangeInclusive<u64>) -> Vec<Line> {
        r.map(line).collect()
    }

    fn inner(s: &mut FileSink) -> &mut Inner {
        s.inner.as_mut().unwrap()
    }

    /// Every line in the directory, in file-name order.
    fn read_all(dir: &Path) -> Vec<u64> {
        let mut files: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            let data = fs::read(&f).unwrap();
            assert!(data.ends_with(b"\n"), "{f:?}");
            for l in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice::<Probe>(l).unwrap().seq);
            }
        }
        out
    }

    #[test]
    fn rotation_is_decided_by_size_and_age() {
        let h = 3_600_000;
        assert!(!rotate_due(0, 10, 0, 10 * h, 1), "an empty file never rotates");
        assert!(!rotate_due(9, 10, 0, 0, 0));
        assert!(rotate_due(10, 10, 0, 0, 0));
        assert!(!rotate_due(5, 10, 0, h - 1, 3600));
        assert!(rotate_due(5, 10, 0, h, 3600));
        assert!(!rotate_due(5, 10, 0, 100 * h, 0), "0 = no time rotation");
        assert!(!rotate_due(5, 10, h, 0, 3600), "clock stepped back");
    }

    #[test]
    fn files_resume_after_their_last_line_and_skip_what_they_hold() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let mut s = FileSink::open(&cfg(), dir.clone(), "n1").unwrap();
        assert_eq!(inner(&mut s).recover().unwrap(), None);
        inner(&mut s).write(&lines(1..=10), 0).unwrap();
        inner(&mut s).write(&lines(5..=12), 0).unwrap();
        assert_eq!(read_all(&dir), (1..=12).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let f = dir.join(file_name(1));
        assert_eq!(fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);

        // A crash in the middle of a line.
        let mut fh = OpenOptions::new().append(true).open(&f).unwrap();
        fh.write_all(br#"{"v":1,"node":"n1","se"#).unwrap();
        drop(fh);
        let mut s = FileSink::open(&cfg(), dir.clone(), "n1").unwrap();
        assert_eq!(inner(&mut s).recover().unwrap(), Some(12));
        inner(&mut s).write(&lines(1..=15), 0).unwrap();
        assert_eq!(read_all(&dir), (1..=15).collect::<Vec<_>>());

        // Another node's directory is refused.
        let mut other = FileSink::open(&cfg(), dir.clone(), "n2").unwrap();
        let e = inner(&mut other).recover().unwrap_err();
        assert_eq!(e.kind, SinkErrorKind::Misconfigured);
    }

    #[test]
    fn rotation_names_files_by_first_seq_and_keeps_the_newest() {
        let d = tempfile::tempdir().unwrap();
        let c = FileSinkConfig {
            max_file_bytes: 300,
            keep_files: 2,
            ..cfg()
        };
        let mut s = FileSink::open(&c, d.path().to_path_buf(), "n1").unwrap();
        inner(&mut s).write(&lines(1..=20), 0).unwrap();
        let mut names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "current + 2 rotated: {names:?}");
        let firsts: Vec<u64> = names.iter().map(|n| parse_file_name(n).unwrap()).collect();
        let held = read_all(d.path());
        assert_eq!(held.first(), firsts.first());
        assert_eq!(*held.last().unwrap(), 20);
        for w in held.windows(2) {
            assert_eq!(w[1], w[0] + 1);
        }
        for f in &names {
            assert!(fs::metadata(d.path().join(f)).unwrap().len() <= 300 + 100);
        }
        // Time rotation, judged from the `now` handed in.
        let c = FileSinkConfig {
            rotate_interval_s: 60,
            ..cfg()
        };
        let d2 = tempfile::tempdir().unwrap();
        let mut s = FileSink::open(&c, d2.path().to_path_buf(), "n1").unwrap();
        inner(&mut s).write(&lines(1..=3), 1_000).unwrap();
        inner(&mut s).write(&lines(4..=5), 60_999).unwrap();
        inner(&mut s).write(&lines(6..=6), 61_000).unwrap();
        assert!(d2.path().join(file_name(1)).exists());
        assert!(d2.path().join(file_name(6)).exists());
        assert_eq!(fs::read_dir(d2.path()).unwrap().count(), 2);
    }

    #[test]
    fn interval_fsync_is_deferred_to_flush() {
        let d = tempfile::tempdir().unwrap();
        let c = FileSinkConfig {
            fsync: FsyncPolicy::Interval,
            ..cfg()
        };
        let mut s = FileSink::open(&c, d.path().to_path_buf(), "n1").unwrap();
        inner(&mut s).recover().unwrap();
        inner(&mut s).last_sync = Instant::now();
        inner(&mut s).write(&lines(1..=2), 0).unwrap();
        assert!(inner(&mut s).unsynced);
        inner(&mut s).flush().unwrap();
        assert!(!inner(&mut s).unsynced);
    }

    #[tokio::test]
    async fn the_async_api_runs_on_the_blocking_pool() {
        let d = tempfile::tempdir().unwrap();
        let mut s = FileSink::open(&cfg(), d.path().to_path_buf(), "n1").unwrap();
        assert_eq!(s.name(), "file");
        assert_eq!(s.resume().await.unwrap(), None);
        s.send(&lines(1..=3)).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.resume().await.unwrap(), Some(3));
        s.send(&lines(3..=4)).await.unwrap();
        assert_eq!(read_all(d.path()), vec![1, 2, 3, 4]);
    }
}
