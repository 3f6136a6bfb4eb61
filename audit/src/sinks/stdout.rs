//! The stdout sink: one JSON line per record on standard output, which systemd passes to
//! the journal. The gateway's own logs go to standard error, so the two never interleave.

use std::io::Write as _;

use crate::config::StdoutSinkConfig;
use crate::sink::{Line, Sink, SinkError, SinkErrorKind};

/// Writes record lines to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    /// A stdout sink named after `cfg` (default `stdout`).
    pub fn new(cfg: &StdoutSinkConfig) -> StdoutSink {
        StdoutSink {
            name: cfg.name.clone().unwrap_or_else(|| "stdout".into()),
        }
    }
}

/// The bytes written for `batch`: each line and a `\n`.
pub fn encode(batch: &[Line]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(batch.iter().map(|l| l.bytes.len() + 1).sum());
    for l in batch {
        buf.extend_from_slice(&l.bytes);
        buf.push(b'\n');
    }
    buf
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Standard output cannot be read back.
    async fn resume(&mut self) -> Result<Option<u64>, SinkError> {
        Ok(None)
    }

    /// One locked write per batch, so lines of concurrent writers never interleave; on the
    /// blocking pool because a slow reader of the pipe (the journal) blocks the write.
    async fn send(&mut self, batch: &[Line]) -> Result<(), SinkError> {
        let buf = encode(batch);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await
        .map_err(|e| SinkError::new(SinkErrorKind::Local, format!("stdout task failed: {e}")))?
        .map_err(|e| SinkError::new(SinkErrorKind::Local, format!("writing to stdout: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_newline_terminated_and_resume_is_unknown() {
        let batch = vec![
            Line {
                seq: 1,
                bytes: bytes::Bytes::from_static(b"{\"seq\":1}"),
            },
            Line {
                seq: 2,
                bytes: bytes::Bytes::from_static(b"{\"seq\":2}"),
            },
        ];
        assert_eq!(encode(&batch), b"{\"seq\":1}\n{\"seq\":2}\n");
        let mut s = StdoutSink::new(&StdoutSinkConfig::default());
        assert_eq!(s.name(), "stdout");
        assert_eq!(s.resume().await.unwrap(), None);
        s.send(&batch).await.unwrap();
    }
}
