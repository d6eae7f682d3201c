//! The message log: append-only files per tenant that plugins write with the
//! `append-log` action (seed 001's message backup, seed 003's per-source `filename`).
//!
//! A line goes to `<log_dir>/<YYYY-MM-DD>/<file>` (UTC date), exactly as the plugin
//! gave it (no newline added). File names are plain names: no `/`, `\`, `..`, NUL or
//! leading dot, at most 128 bytes, so a name can never leave the tenant's directory.
//! A file that would grow past `log_max_bytes` is rotated first (`f` → `f.1` → `f.2` …,
//! keeping `log_keep`). Writes happen on one background thread fed by a bounded queue:
//! the connection path never waits for the disk; a full queue drops and counts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::metrics::Metrics;

/// Lines waiting for the writer thread.
const QUEUE: usize = 10_000;
/// Longest file name accepted.
const MAX_NAME: usize = 128;

/// Where and how one tenant's log is written.
#[derive(Debug, Clone)]
pub struct LogTarget {
    /// The tenant's log directory.
    pub dir: PathBuf,
    /// Rotate a file before it grows past this.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: usize,
}

struct Line {
    target: Arc<LogTarget>,
    file: String,
    bytes: Vec<u8>,
}

/// The log writer's queue.
#[derive(Debug, Clone)]
pub struct MessageLog {
    tx: SyncSender<Line>,
    metrics: Arc<Metrics>,
}

/// Why a line was not queued for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The file name is empty or too long.
    #[error("log file name must be 1 to {MAX_NAME} bytes")]
    NameLength,
    /// The file name is not a plain name.
    #[error("log file name {0:?} must be a plain name (no '/', '\\', '..', NUL or leading '.')")]
    NotPlain(String),
    /// The writer is behind: the queue is full.
    #[error("message log queue full")]
    Full,
    /// The writer has stopped.
    #[error("message log writer stopped")]
    Stopped,
}

/// Whether `name` may name a log file: a plain name, 1 to [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), LogError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(LogError::NameLength);
    }
    if name.contains(['/', '\\', '\0']) || name.contains("..") || name.starts_with('.') {
        return Err(LogError::NotPlain(name.to_owned()));
    }
    Ok(())
}

/// Most bytes [`read`] returns (the end of a larger file).
pub const MAX_READ: u64 = 4 << 20;

/// Today's file `file` of a tenant's log (its last [`MAX_READ`] bytes when larger);
/// `None` when it does not exist.
pub fn read(target: &LogTarget, file: &str) -> Result<Option<Vec<u8>>, LogError> {
    use std::io::{Read, Seek, SeekFrom};
    check_name(file)?;
    let path = target.dir.join(today()).join(file);
    let Ok(mut f) = File::open(&path) else {
        return Ok(None);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_READ && f.seek(SeekFrom::Start(len - MAX_READ)).is_err() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(len.min(MAX_READ) as usize);
    match f.take(MAX_READ).read_to_end(&mut out) {
        Ok(_) => Ok(Some(out)),
        Err(_) => Ok(None),
    }
}

/// Today's directory name (UTC), `YYYY-MM-DD`.
fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl MessageLog {
    /// Start the writer thread.
    pub fn start(metrics: Arc<Metrics>) -> std::io::Result<MessageLog> {
        let (tx, rx) = sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("relay-msglog".into())
            .spawn(move || writer(rx, m))?;
        Ok(MessageLog { tx, metrics })
    }

    /// Queue `bytes` for `file` of a tenant's log; a bad name or a full queue is refused
    /// (counted) with the reason.
    pub fn append(
        &self,
        target: &Arc<LogTarget>,
        file: &str,
        bytes: Vec<u8>,
    ) -> Result<(), LogError> {
        if let Err(e) = check_name(file) {
            Metrics::inc(&self.metrics.log_refused);
            return Err(e);
        }
        let line = Line {
            target: target.clone(),
            file: file.to_owned(),
            bytes,
        };
        match self.tx.try_send(line) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Metrics::inc(&self.metrics.log_refused);
                Err(LogError::Full)
            }
            Err(TrySendError::Disconnected(_)) => {
                Metrics::inc(&self.metrics.log_refused);
                Err(LogError::Stopped)
            }
        }
    }
}

/// Open files by path, with their sizes.
type Open = HashMap<PathBuf, (File, u64)>;

fn writer(rx: Receiver<Line>, m: Arc<Metrics>) {
    let mut open: Open = HashMap::new();
    let mut day = today();
    while let Ok(line) = rx.recv() {
        let now = today();
        if now != day {
            open.clear(); // a new day: new directories, close yesterday's files
            day = now;
        }
        let dir = line.target.dir.join(&day);
        let path = dir.join(&line.file);
        match write(&mut open, &dir, &path, &line) {
            Ok(()) => Metrics::inc(&m.log_lines),
            Err(e) => {
                Metrics::inc(&m.log_refused);
                open.remove(&path);
                tracing::error!(path = %path.display(), error = %e, "message log write failed");
            }
        }
    }
}

fn write(open: &mut Open, dir: &Path, path: &Path, line: &Line) -> std::io::Result<()> {
    let n = line.bytes.len() as u64;
    if let Some((_, size)) = open.get(path) {
        if *size > 0 && size + n > line.target.max_bytes {
            open.remove(path);
            rotate(path, line.target.keep)?;
        }
    }
    if !open.contains_key(path) {
        std::fs::create_dir_all(dir)?;
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let size = f.metadata()?.len();
        if size > 0 && size + n > line.target.max_bytes {
            drop(f);
            rotate(path, line.target.keep)?;
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            open.insert(path.to_owned(), (f, 0));
        } else {
            open.insert(path.to_owned(), (f, size));
        }
    }
    if let Some((f, size)) = open.get_mut(path) {
        f.write_all(&line.bytes)?;
        *size += n;
    }
    Ok(())
}

/// `f.(keep-1)` → `f.keep` … `f` → `f.1`; the oldest beyond `keep` is deleted.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |i: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_the_directory() {
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            "..",
            ".hidden",
            "x\0y",
            &"n".repeat(200),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["demo_test.log", "demo_msg.log", "a-b.c"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn lines_append_and_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let log = MessageLog::start(metrics.clone()).unwrap();
        let target = Arc::new(LogTarget {
            dir: dir.path().to_owned(),
            max_bytes: 10,
            keep: 2,
        });
        for i in 0..4 {
            log.append(&target, "f.log", format!("line{i}\n").into_bytes())
                .unwrap();
        }
        assert!(log.append(&target, "../escape", b"x".to_vec()).is_err());
        let day = dir.path().join(today());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while metrics.log_lines.load(std::sync::atomic::Ordering::Relaxed) < 4 {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let read = |n: &str| std::fs::read_to_string(day.join(n)).unwrap_or_default();
        assert_eq!(read("f.log"), "line3\n");
        assert_eq!(read("f.log.1"), "line2\n");
        assert_eq!(read("f.log.2"), "line1\n");
        assert!(!day.join("f.log.3").exists(), "only `keep` rotated files");
        assert!(!dir.path().join("escape").exists());
    }
}
