//! Reading: [`verify`] walks the whole chain and reports the first break by file and line;
//! [`list`] returns records matching a filter, newest last.

use std::collections::VecDeque;
use std::path::Path;

use chrono::{DateTime, Utc};
use kubedna_proto::{AuditBreak, AuditRecord, AuditVerifyResponse};

use crate::chain::{check_line, GENESIS};
use crate::log::read_anchor;
use crate::{daily_files, AuditError};

/// Checks every record in `dir`: each line's own hash, its link to the record before it, and
/// that sequence numbers run on without a gap.
pub fn verify(dir: &Path) -> Result<AuditVerifyResponse, AuditError> {
    let files = daily_files(dir)?;
    let anchor = read_anchor(dir)?;
    let mut report = AuditVerifyResponse {
        ok: true,
        files_checked: 0,
        records_checked: 0,
        head: None,
        first_break: None,
    };
    let mut expected: Option<(u64, String)> = None;
    for (_, path) in &files {
        report.files_checked += 1;
        let name = path.display().to_string();
        let fail = |report: &mut AuditVerifyResponse, line: u64, reason: String| {
            report.ok = false;
            report.first_break = Some(AuditBreak {
                file: name.clone(),
                line,
                reason,
            });
        };
        let bytes = std::fs::read(path).map_err(|source| AuditError::Io {
            path: path.clone(),
            what: "cannot read",
            source,
        })?;
        let mut rest = &bytes[..];
        let mut lineno = 0u64;
        while !rest.is_empty() {
            lineno += 1;
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                fail(
                    &mut report,
                    lineno,
                    "the last line has no newline: a torn write (the agent cuts it when it starts) or tampering".into(),
                );
                return Ok(report);
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let Ok(text) = std::str::from_utf8(line) else {
                fail(&mut report, lineno, "the line is not UTF-8".into());
                return Ok(report);
            };
            let record = match check_line(text) {
                Ok(r) => r,
                Err(reason) => {
                    fail(&mut report, lineno, reason);
                    return Ok(report);
                }
            };
            let (want_seq, want_prev) = match &expected {
                Some((seq, hash)) => (*seq + 1, hash.clone()),
                None if record.seq == 1 => (1, GENESIS.to_string()),
                None => match &anchor {
                    Some(a) => (a.seq + 1, a.hash.clone()),
                    None => {
                        fail(
                            &mut report,
                            lineno,
                            format!(
                                "the oldest record has seq {} but there is no anchor.json for the records before it: files were removed",
                                record.seq
                            ),
                        );
                        return Ok(report);
                    }
                },
            };
            if record.seq != want_seq {
                fail(
                    &mut report,
                    lineno,
                    format!(
                        "seq {} follows seq {}: records are missing or reordered",
                        record.seq,
                        want_seq - 1
                    ),
                );
                return Ok(report);
            }
            if record.prev != want_prev {
                fail(
                    &mut report,
                    lineno,
                    "prev does not match the hash of the record before it: a record was changed, removed or inserted".into(),
                );
                return Ok(report);
            }
            report.records_checked += 1;
            expected = Some((record.seq, record.hash.clone()));
            report.head = Some(record.hash);
        }
    }
    Ok(report)
}

/// Which records [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub since: Option<DateTime<Utc>>,
    /// Exact action, or a prefix ending in `*` (`config.*`).
    pub action: Option<String>,
    /// At most this many, the newest; 0 means 1000.
    pub limit: usize,
    /// Only records whose caller came this way (`agent`: the agent's own actions).
    pub via: Option<kubedna_proto::Via>,
}

impl ListFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        if self.since.is_some_and(|s| r.time < s) {
            return false;
        }
        if self.via.is_some_and(|v| r.caller.via != v) {
            return false;
        }
        match self.action.as_deref() {
            None => true,
            Some(a) => match a.strip_suffix('*') {
                Some(prefix) => r.action.starts_with(prefix),
                None => r.action == a,
            },
        }
    }
}

/// Records matching `filter`, oldest first, and whether older matches were left out.
pub fn list(dir: &Path, filter: &ListFilter) -> Result<(Vec<AuditRecord>, bool), AuditError> {
    let limit = if filter.limit == 0 {
        1000
    } else {
        filter.limit
    };
    let since_date = filter.since.map(|s| s.date_naive());
    let mut out = VecDeque::new();
    let mut truncated = false;
    for (date, path) in daily_files(dir)? {
        if since_date.is_some_and(|s| date < s) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            what: "cannot read",
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let record: AuditRecord =
                serde_json::from_str(line).map_err(|_| AuditError::Corrupt {
                    file: path.clone(),
                    line: i as u64 + 1,
                })?;
            if filter.matches(&record) {
                out.push_back(record);
                if out.len() > limit {
                    out.pop_front();
                    truncated = true;
                }
            }
        }
    }
    Ok((out.into(), truncated))
}

/// Like [`list`], but each matching record as the exact line on disk (so another node can check
/// its hash without trusting a re-serialization). A line that is not a record at all matches
/// every filter: it is sent so the asker sees the break, never silently skipped.
pub fn list_lines(dir: &Path, filter: &ListFilter) -> Result<(Vec<String>, bool), AuditError> {
    let limit = if filter.limit == 0 {
        1000
    } else {
        filter.limit
    };
    let since_date = filter.since.map(|s| s.date_naive());
    let mut out = VecDeque::new();
    let mut truncated = false;
    for (date, path) in daily_files(dir)? {
        if since_date.is_some_and(|s| date < s) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            what: "cannot read",
            source,
        })?;
        for line in text.lines() {
            let keep = serde_json::from_str::<AuditRecord>(line)
                .map_or(true, |record| filter.matches(&record));
            if keep {
                out.push_back(line.to_string());
                if out.len() > limit {
                    out.pop_front();
                    truncated = true;
                }
            }
        }
    }
    Ok((out.into(), truncated))
}
