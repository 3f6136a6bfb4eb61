//! Segment files: naming, header, creation, listing and a streaming frame reader.
//!
//! A segment is `NNNNNNNNNNNNNNNNNNNN.wal` (its number, 20 digits) in the journal directory,
//! starting with a 16-byte header `"WPJL" | version u16 | reserved u16 | number u64`, followed
//! by frames. A new segment is written as `*.wal.tmp`, synced, renamed and the directory
//! synced, so a segment file that exists always has a complete header.
//!
//! With `preallocate`, a new segment is created at its full size (a sparse hole after the
//! header): the active segment ends at the first all-zero frame header. A segment is trimmed
//! to its last record when it is sealed, so sealed segments never contain zero padding.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{JournalError, Result};
use crate::record::{FRAME_HEADER, Frame, check_frame};

pub(crate) const MAGIC: &[u8; 4] = b"WPJL";
pub(crate) const VERSION: u16 = 1;
/// Segment header length.
pub const HEADER_LEN: usize = 16;

pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.wal"))
}

pub(crate) fn header(n: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&n.to_le_bytes());
    h
}

/// Checks a segment header; `Err(reason)` when it is not ours.
pub(crate) fn check_header(h: &[u8], n: u64) -> std::result::Result<(), String> {
    if h.len() < HEADER_LEN {
        return Err(format!("short header ({} bytes)", h.len()));
    }
    if &h[..4] != MAGIC {
        return Err("bad magic".into());
    }
    let v = u16::from_le_bytes([h[4], h[5]]);
    if v != VERSION {
        return Err(format!("unsupported segment version {v}"));
    }
    let num = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
    if num != n {
        return Err(format!("header says segment {num}, file name says {n}"));
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("fsync directory", dir, e))
}

/// Creates segment `n` (header only; with `durable`, synced and the directory synced);
/// returns it open for writing at the end of the header.
pub(crate) fn create_segment(dir: &Path, n: u64, durable: bool, preallocate: Option<u64>) -> Result<File> {
    let path = segment_path(dir, n);
    let tmp = path.with_extension("wal.tmp");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(|e| JournalError::io("create segment", &tmp, e))?;
    f.write_all(&header(n))
        .map_err(|e| JournalError::io("write segment header", &tmp, e))?;
    if let Some(size) = preallocate {
        // A file whose size does not change on every append lets fdatasync skip the
        // metadata journal commit (see the design record); the tail stays a sparse hole.
        f.set_len(size)
            .map_err(|e| JournalError::io("preallocate segment", &tmp, e))?;
    }
    if durable {
        f.sync_all()
            .map_err(|e| JournalError::io("fsync segment", &tmp, e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| JournalError::io("rename segment", &path, e))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(f)
}

/// Segment numbers present in `dir`, ascending. Leftover `*.wal.tmp` files are removed.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| JournalError::io("read directory", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| JournalError::io("read directory", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".wal.tmp") {
            let p = ent.path();
            fs::remove_file(&p).map_err(|e| JournalError::io("remove temporary segment", &p, e))?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".wal")
            && stem.len() == 20
            && let Ok(n) = stem.parse::<u64>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One step of [`SegmentReader::next`].
#[derive(Debug)]
pub(crate) enum Item<'a> {
    /// A frame with a good checksum at `offset`; `body` is kind + payload.
    Record { offset: u64, body: &'a [u8], total: u64 },
    /// Clean end of file.
    End,
    /// An all-zero frame header at `offset`: the unwritten (preallocated) tail starts here,
    /// or a region was zeroed.
    Zero { offset: u64 },
    /// A bad frame at `offset`. `skip_len` is the frame length its (plausible) length field
    /// announces when the whole frame is present in the file.
    Bad {
        offset: u64,
        reason: String,
        skip_len: Option<u64>,
    },
}

/// Streams the frames of one segment file in chunks.
pub(crate) struct SegmentReader {
    file: File,
    pub(crate) path: PathBuf,
    pub(crate) file_len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
    pos: usize,
    max_len: usize,
    chunk: usize,
}

impl SegmentReader {
    /// Opens segment `n` and checks its header; returns the reader positioned after the header.
    pub(crate) fn open(dir: &Path, n: u64, max_len: usize, chunk: usize) -> Result<SegmentReader> {
        let path = segment_path(dir, n);
        let file = File::open(&path).map_err(|e| JournalError::io("open segment", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| JournalError::io("stat segment", &path, e))?
            .len();
        let mut h = [0u8; HEADER_LEN];
        let got = read_at_most(&file, &mut h, 0).map_err(|e| JournalError::io("read segment", &path, e))?;
        check_header(&h[..got], n).map_err(|reason| JournalError::Corrupt {
            segment: n,
            offset: 0,
            reason,
        })?;
        Ok(SegmentReader {
            file,
            path,
            file_len,
            buf: Vec::new(),
            buf_off: HEADER_LEN as u64,
            pos: 0,
            max_len,
            chunk: chunk.max(64 << 10),
        })
    }

    /// File offset of the next frame.
    pub(crate) fn offset(&self) -> u64 {
        self.buf_off + self.pos as u64
    }

    /// Makes at least `n` bytes available from `pos` unless the file ends first.
    fn fill(&mut self, n: usize) -> Result<()> {
        let avail = self.buf.len() - self.pos;
        if avail >= n {
            return Ok(());
        }
        let at = self.offset();
        let left_in_file = self.file_len.saturating_sub(at + avail as u64) as usize;
        if left_in_file == 0 {
            return Ok(());
        }
        self.buf.drain(..self.pos);
        self.buf_off = at;
        self.pos = 0;
        let want = (n - avail).max(self.chunk).min(left_in_file);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        let got = read_at_most(&self.file, &mut self.buf[old..], at + old as u64)
            .map_err(|e| JournalError::io("read segment", &self.path, e))?;
        self.buf.truncate(old + got);
        Ok(())
    }

    /// Moves to `offset` (used to skip a bad frame).
    pub(crate) fn seek(&mut self, offset: u64) {
        let end = self.buf_off + self.buf.len() as u64;
        if offset >= self.buf_off && offset <= end {
            self.pos = (offset - self.buf_off) as usize;
        } else {
            self.buf.clear();
            self.buf_off = offset;
            self.pos = 0;
        }
    }

    /// The next frame.
    pub(crate) fn next(&mut self) -> Result<Item<'_>> {
        let offset = self.offset();
        if offset >= self.file_len {
            return Ok(Item::End);
        }
        self.fill(FRAME_HEADER)?;
        let remaining_in_file = self.file_len - offset;
        {
            let avail = &self.buf[self.pos..];
            let head = &avail[..avail.len().min(FRAME_HEADER)];
            if !head.is_empty() && head.iter().all(|&b| b == 0) {
                return Ok(Item::Zero { offset });
            }
        }
        let mut len_hint = None;
        if self.buf.len() - self.pos >= FRAME_HEADER {
            let b = &self.buf[self.pos..];
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if len > 0 && len <= self.max_len {
                len_hint = Some(len);
                self.fill(FRAME_HEADER + len)?;
            }
        }
        let skip_len = len_hint
            .map(|l| (FRAME_HEADER + l) as u64)
            .filter(|&t| t <= remaining_in_file);
        match check_frame(&self.buf[self.pos..], self.max_len) {
            Frame::Ok { total, .. } => {
                let start = self.pos;
                self.pos += total;
                let body = &self.buf[start + FRAME_HEADER..start + total];
                Ok(Item::Record {
                    offset,
                    body,
                    total: total as u64,
                })
            }
            Frame::Short { len } => Ok(Item::Bad {
                offset,
                reason: match len {
                    None => format!("short frame header ({remaining_in_file} bytes left)"),
                    Some(l) => format!("frame of {l} bytes cut off ({remaining_in_file} bytes left)"),
                },
                skip_len: None,
            }),
            Frame::BadLen { len } => Ok(Item::Bad {
                offset,
                reason: format!("implausible frame length {len}"),
                skip_len: None,
            }),
            Frame::BadCrc { len } => Ok(Item::Bad {
                offset,
                reason: format!("checksum mismatch in {len}-byte frame"),
                skip_len,
            }),
        }
    }

    /// Offset just past the last non-zero byte at or after `from`, if there is one.
    ///
    /// Only the allocated parts of the file are read (`SEEK_DATA`/`SEEK_HOLE`): the sparse
    /// preallocated tail of a segment costs nothing. Falls back to reading everything where
    /// the filesystem does not support it.
    pub(crate) fn last_nonzero_after(&self, from: u64) -> Result<Option<u64>> {
        use rustix::fs::{SeekFrom, seek};
        let mut last = None;
        let mut pos = from;
        while pos < self.file_len {
            let (start, end) = match seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) if d >= self.file_len => break,
                Ok(d) => (
                    d,
                    seek(&self.file, SeekFrom::Hole(d)).map_or(self.file_len, |h| h.min(self.file_len)),
                ),
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => (pos, self.file_len),
            };
            if let Some(l) = self.last_nonzero_in(start.max(pos), end)? {
                last = Some(l);
            }
            pos = end.max(pos + 1);
        }
        Ok(last)
    }

    fn last_nonzero_in(&self, from: u64, to: u64) -> Result<Option<u64>> {
        let mut last = None;
        let mut at = from;
        let mut buf = vec![0u8; ((to - from) as usize).min(1 << 20)];
        while at < to {
            let n = ((to - at) as usize).min(buf.len());
            let got = read_at_most(&self.file, &mut buf[..n], at)
                .map_err(|e| JournalError::io("read segment", &self.path, e))?;
            if got == 0 {
                break;
            }
            if let Some(i) = buf[..got].iter().rposition(|&b| b != 0) {
                last = Some(at + i as u64 + 1);
            }
            at += got as u64;
        }
        Ok(last)
    }

    /// Reads one frame at `offset` directly (random access for dead-letter look-ups).
    pub(crate) fn read_frame_at(file: &File, path: &Path, offset: u64, max_len: usize) -> Result<Vec<u8>> {
        let mut h = [0u8; FRAME_HEADER];
        file.read_exact_at(&mut h, offset)
            .map_err(|e| JournalError::io("read record", path, e))?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len == 0 || len > max_len {
            return Err(JournalError::Corrupt {
                segment: 0,
                offset,
                reason: format!("implausible frame length {len} in {}", path.display()),
            });
        }
        let mut v = vec![0u8; FRAME_HEADER + len];
        v[..FRAME_HEADER].copy_from_slice(&h);
        file.read_exact_at(&mut v[FRAME_HEADER..], offset + FRAME_HEADER as u64)
            .map_err(|e| JournalError::io("read record", path, e))?;
        match check_frame(&v, max_len) {
            Frame::Ok { .. } => Ok(v.split_off(FRAME_HEADER)),
            other => Err(JournalError::Corrupt {
                segment: 0,
                offset,
                reason: format!("{other:?} in {}", path.display()),
            }),
        }
    }
}

fn read_at_most(f: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
