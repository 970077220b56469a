//! The audit log: every mutating admin call and every denial, one JSON line each, in daily files
//! `audit-YYYY-MM-DD.jsonl` (UTC) under the audit directory, kept for the retention period.
//!
//! Each line is a [`kubedna_proto::AuditRecord`]. Its `hash` is the SHA-256 of the line's own
//! bytes with the `,"hash":"…"` member left out, and its `prev` is the `hash` of the record
//! before it (64 zeros for the first record ever), so changing, removing or reordering any byte
//! of any record breaks the chain where it happened. Pruning old files writes `anchor.json` first,
//! naming the last pruned record, so the oldest kept record still links to something.
//!
//! Writers take an exclusive `flock` on `.lock` for each batch and re-read the tail when another
//! writer moved it, so several processes never interleave; within a process one writer thread
//! batches records and fsyncs once per batch (group commit), and nothing is acknowledged before
//! its fsync. This crate never sees a secret: callers pass arguments through [`redact`] first, and
//! [`Writer::append`] redacts again.

mod chain;
mod log;
mod read;
mod redact;

pub use chain::{check_segment, genesis, line_for, SegmentBreak, GENESIS};
pub use log::{AuditHandle, Entry, Writer};
pub use read::{list, list_lines, verify, ListFilter};
pub use redact::redact;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit directory {path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("audit file {file} line {line} is not a valid record: run `kubedna audit verify` and keep a copy of the file before repairing by hand")]
    Corrupt { file: PathBuf, line: u64 },
    #[error("cannot write the audit log: {0}")]
    Write(String),
    #[error("the audit writer has stopped: the agent is shutting down or the disk failed")]
    Closed,
}

/// The name of the daily file holding records of `date`.
pub fn file_name(date: chrono::NaiveDate) -> String {
    format!("audit-{}.jsonl", date.format("%Y-%m-%d"))
}

/// The date of a daily file's name, or None for any other file.
pub fn file_date(name: &str) -> Option<chrono::NaiveDate> {
    let d = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
}

/// The daily files in `dir`, oldest first.
pub(crate) fn daily_files(
    dir: &std::path::Path,
) -> Result<Vec<(chrono::NaiveDate, PathBuf)>, AuditError> {
    let rd = std::fs::read_dir(dir).map_err(|source| AuditError::Io {
        path: dir.to_path_buf(),
        what: "cannot list",
        source,
    })?;
    let mut out: Vec<_> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            file_date(name.to_str()?).map(|d| (d, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
