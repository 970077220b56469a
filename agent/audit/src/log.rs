//! Writing: [`Writer`] appends batches under the cross-process lock; [`AuditHandle`] is the async
//! front the daemon holds, feeding one writer thread that commits batches with a single fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, NaiveDate, Utc};
use kubedna_proto::{AuditRecord, AuditResult, Caller, Role};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::chain::{check_line, line_for, GENESIS};
use crate::{daily_files, file_name, redact, AuditError};

/// What a caller asks to record; the writer adds seq, time, prev and hash.
#[derive(Debug, Clone)]
pub struct Entry {
    pub caller: Caller,
    pub role: Option<Role>,
    pub action: String,
    pub args: serde_json::Value,
    pub result: AuditResult,
    /// Defaults to the time of writing; set by tests and imports.
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    pub file: String,
    pub seq: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
    /// The newest daily file and its length when we last looked: if either moved, another
    /// writer appended and the head must be re-read.
    file: Option<(NaiveDate, u64)>,
}

/// A torn tail found and cut at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub file: PathBuf,
    pub dropped_bytes: u64,
}

/// A synchronous appender. Several may be open on one directory, in one process or many.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    lock: File,
    retention_days: u32,
    head: Head,
    repairs: Vec<Repair>,
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { path, what, source }
}

impl Writer {
    /// Opens `dir` (creating it mode 0700), cuts a torn last line left by a crash, and prunes
    /// files older than `retention_days`.
    pub fn open(dir: &Path, retention_days: u32) -> Result<Writer, AuditError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir, "cannot create"))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path, "cannot open the lock file"))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            lock,
            retention_days,
            head: Head {
                seq: 0,
                hash: GENESIS.to_string(),
                file: None,
            },
            repairs: Vec::new(),
        };
        let guard = w.lock()?;
        w.refresh_head(true)?;
        drop(guard);
        Ok(w)
    }

    /// Torn tails cut when this writer opened the directory.
    pub fn repairs(&self) -> &[Repair] {
        &self.repairs
    }

    /// The sequence number and hash of the newest record this writer knows of.
    pub fn head(&self) -> (u64, &str) {
        (self.head.seq, &self.head.hash)
    }

    fn lock(&self) -> Result<Flock<File>, AuditError> {
        let fd = self
            .lock
            .try_clone()
            .map_err(io(&self.dir, "cannot duplicate the lock descriptor"))?;
        Flock::lock(fd, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&self.dir, "cannot lock")(e.into()))
    }

    /// Re-reads the head if the newest file is not what we last saw. Must hold the lock.
    fn refresh_head(&mut self, repair: bool) -> Result<(), AuditError> {
        let files = daily_files(&self.dir)?;
        let Some((date, path)) = files.last().cloned() else {
            self.head = match read_anchor(&self.dir)? {
                Some(a) => Head {
                    seq: a.seq,
                    hash: a.hash,
                    file: None,
                },
                None => Head {
                    seq: 0,
                    hash: GENESIS.to_string(),
                    file: None,
                },
            };
            return Ok(());
        };
        let len = fs::metadata(&path).map_err(io(&path, "cannot stat"))?.len();
        if self.head.file == Some((date, len)) {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path, "cannot open"))?;
        let mut bytes = Vec::with_capacity(len as usize);
        f.read_to_end(&mut bytes)
            .map_err(io(&path, "cannot read"))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            // Only a crash mid-append leaves bytes after the last newline: cut them.
            if !repair {
                return Err(AuditError::Corrupt {
                    file: path,
                    line: bytes[..complete].iter().filter(|b| **b == b'\n').count() as u64 + 1,
                });
            }
            f.set_len(complete as u64)
                .map_err(io(&path, "cannot cut a torn line"))?;
            f.sync_all().map_err(io(&path, "cannot sync"))?;
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = bytes.len() - complete,
                "cut a torn last line left by an interrupted write"
            );
            self.repairs.push(Repair {
                file: path.clone(),
                dropped_bytes: (bytes.len() - complete) as u64,
            });
        }
        let text = &bytes[..complete];
        let lines = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        let last = text[..complete.saturating_sub(1)]
            .rsplit(|b| *b == b'\n')
            .next()
            .filter(|l| !l.is_empty());
        self.head = match last {
            Some(line) => {
                let record = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| check_line(l).ok())
                    .ok_or(AuditError::Corrupt {
                        file: path.clone(),
                        line: lines,
                    })?;
                Head {
                    seq: record.seq,
                    hash: record.hash,
                    file: Some((date, complete as u64)),
                }
            }
            None => {
                // An empty newest file: the head is in the file before it, or the anchor.
                let _ = fs::remove_file(&path);
                self.head.file = None;
                return self.refresh_head(repair);
            }
        };
        Ok(())
    }

    /// Appends `entries` in order, fsyncs, and returns the records as written.
    pub fn append_batch(&mut self, entries: Vec<Entry>) -> Result<Vec<AuditRecord>, AuditError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let guard = self.lock()?;
        self.refresh_head(true)?;
        let mut records = Vec::with_capacity(entries.len());
        // (date, bytes) runs, in order; a batch spans two files only across midnight.
        let mut runs: Vec<(NaiveDate, Vec<u8>)> = Vec::new();
        let floor = self.head.file.map(|(d, _)| d);
        for e in entries {
            let time = e.time.unwrap_or_else(Utc::now);
            let mut args = e.args;
            redact(&mut args);
            let mut record = AuditRecord {
                seq: self.head.seq + 1,
                time,
                caller: e.caller,
                role: e.role,
                action: e.action,
                args,
                result: e.result,
                prev: self.head.hash.clone(),
                hash: String::new(),
            };
            let (line, hash) = line_for(&record);
            record.hash = hash.clone();
            // Files stay append-only in date order even if the clock steps back.
            let mut date = time.date_naive();
            if let Some(f) = floor.into_iter().chain(runs.last().map(|r| r.0)).max() {
                date = date.max(f);
            }
            match runs.last_mut() {
                Some((d, buf)) if *d == date => {
                    buf.extend_from_slice(line.as_bytes());
                    buf.push(b'\n');
                }
                _ => {
                    let mut buf = line.into_bytes();
                    buf.push(b'\n');
                    runs.push((date, buf));
                }
            }
            self.head.seq = record.seq;
            self.head.hash = hash;
            records.push(record);
        }
        let mut newest = None;
        let mut new_file = false;
        for (date, buf) in &runs {
            let path = self.dir.join(file_name(*date));
            new_file |= !path.exists();
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(&path, "cannot open for append"))?;
            if let Err(e) = f.write_all(buf).and_then(|_| f.sync_data()) {
                // Do not leave a torn line for the next writer to find: cut back what we wrote.
                let _ = self.truncate_to_head_of(&path);
                self.head.file = None;
                return Err(io(&path, "cannot append")(e));
            }
            let len = f
                .seek(SeekFrom::End(0))
                .map_err(io(&path, "cannot find the end"))?;
            newest = Some((*date, len));
        }
        self.head.file = newest;
        if new_file {
            kubedna_host::atomic::sync_dir(&self.dir).map_err(io(&self.dir, "cannot sync"))?;
            if let Some((date, _)) = newest {
                self.prune(date)?;
            }
        }
        drop(guard);
        Ok(records)
    }

    fn truncate_to_head_of(&self, path: &Path) -> std::io::Result<()> {
        let bytes = fs::read(path)?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(complete as u64)?;
        f.sync_all()
    }

    /// Deletes daily files older than the retention period counted back from `today`, writing
    /// the anchor first so the chain still verifies. Must hold the lock.
    fn prune(&mut self, today: NaiveDate) -> Result<(), AuditError> {
        let cutoff = today - chrono::Days::new(u64::from(self.retention_days));
        let files = daily_files(&self.dir)?;
        let old: Vec<_> = files.iter().filter(|(d, _)| *d < cutoff).collect();
        let Some((_, newest_old)) = old.last() else {
            return Ok(());
        };
        let text = fs::read_to_string(newest_old).map_err(io(newest_old, "cannot read"))?;
        if let Some(line) = text.lines().last() {
            let record = check_line(line).map_err(|_| AuditError::Corrupt {
                file: newest_old.clone(),
                line: text.lines().count() as u64,
            })?;
            let anchor = Anchor {
                file: newest_old
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                seq: record.seq,
                hash: record.hash,
            };
            let mut bytes = serde_json::to_vec(&anchor).expect("anchor serializes");
            bytes.push(b'\n');
            kubedna_host::atomic::write_atomic(&self.dir.join("anchor.json"), &bytes, 0o600)
                .map_err(|e| io(&self.dir, "cannot write anchor.json")(std::io::Error::other(e)))?;
        }
        for (_, path) in old {
            fs::remove_file(path).map_err(io(path, "cannot prune"))?;
            tracing::info!(file = %path.display(), "pruned an audit file past its retention");
        }
        kubedna_host::atomic::sync_dir(&self.dir).map_err(io(&self.dir, "cannot sync"))
    }
}

pub(crate) fn read_anchor(dir: &Path) -> Result<Option<Anchor>, AuditError> {
    let path = dir.join("anchor.json");
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|_| AuditError::Corrupt {
                file: path,
                line: 1,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path, "cannot read")(e)),
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<AuditRecord, String>>;

/// The daemon's handle on the audit log: clone it freely; one thread does the writing.
#[derive(Debug, Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<(Entry, Reply)>,
    dir: PathBuf,
}

/// Records committed in one fsync at most.
const MAX_BATCH: usize = 512;

impl AuditHandle {
    /// Starts the writer thread on an opened [`Writer`].
    pub fn spawn(mut writer: Writer) -> AuditHandle {
        let (tx, rx) = mpsc::channel::<(Entry, Reply)>();
        let dir = writer.dir.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(item) => batch.push(item),
                            Err(_) => break,
                        }
                    }
                    let (entries, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    match writer.append_batch(entries) {
                        Ok(records) => {
                            for (r, reply) in records.into_iter().zip(replies) {
                                let _ = reply.send(Ok(r));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %kubedna_host::error_chain(&e), "audit append failed");
                            for reply in replies {
                                let _ = reply.send(Err(kubedna_host::error_chain(&e)));
                            }
                        }
                    }
                }
            })
            .expect("spawning the audit writer thread");
        AuditHandle { tx, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; returns once it is on disk.
    pub async fn append(&self, entry: Entry) -> Result<AuditRecord, AuditError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((entry, reply))
            .map_err(|_| AuditError::Closed)?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(AuditError::Write(message)),
            Err(_) => Err(AuditError::Closed),
        }
    }
}
