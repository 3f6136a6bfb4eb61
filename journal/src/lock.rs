//! Directory lock: an advisory exclusive lock on `<dir>/LOCK` holding the owner's pid.
//! The kernel releases it when the process dies, so a crash leaves no stale lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{JournalError, Result};

/// Holds the lock while alive.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
    let path = dir.join("LOCK");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| JournalError::io("open lock file", &path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let pid = f
                .read_to_string(&mut s)
                .ok()
                .and_then(|_| s.trim().parse::<u32>().ok());
            return Err(JournalError::Locked { path, pid });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(JournalError::io("lock", &path, e)),
    }
    let pid = std::process::id();
    f.set_len(0)
        .and_then(|_| f.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(f, "{pid}"))
        .map_err(|e| JournalError::io("write lock file", &path, e))?;
    Ok(DirLock { _file: f })
}
