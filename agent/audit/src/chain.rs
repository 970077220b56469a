//! How a record becomes a line and how a line's hash is computed and checked. The line format is
//! byte-exact: the hash covers exactly the bytes written, so verification never re-serializes.

use kubedna_proto::AuditRecord;
use sha2::{Digest, Sha256};

/// `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn genesis() -> String {
    GENESIS.to_string()
}

/// Serializes `record` (whose `hash` is ignored) into its line, without the newline, and returns
/// the line and its hash.
pub fn line_for(record: &AuditRecord) -> (String, String) {
    let mut r = record.clone();
    r.hash = String::new();
    let with_empty = serde_json::to_string(&r).expect("audit records serialize");
    // serde writes fields in declaration order, `hash` last: the body is everything before it.
    let suffix = r#","hash":""}"#;
    let body_prefix = with_empty
        .strip_suffix(suffix)
        .expect("hash is the last field of an audit record");
    let body = format!("{body_prefix}}}");
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    let line = format!(r#"{body_prefix},"hash":"{hash}"}}"#);
    (line, hash)
}

/// Checks one line's self-hash; returns the parsed record.
pub(crate) fn check_line(line: &str) -> Result<AuditRecord, String> {
    let record: AuditRecord =
        serde_json::from_str(line).map_err(|e| format!("not a valid record: {e}"))?;
    let Some((body_prefix, tail)) = line.rsplit_once(r#","hash":""#) else {
        return Err("no hash member at the end of the line".into());
    };
    if tail != format!("{}\"}}", record.hash) || record.hash.len() != 64 {
        return Err("the hash member is malformed".into());
    }
    let body = format!("{body_prefix}}}");
    let actual = hex::encode(Sha256::digest(body.as_bytes()));
    if actual != record.hash {
        return Err(format!(
            "content does not match its hash (recorded {}, computed {actual})",
            record.hash
        ));
    }
    Ok(record)
}

/// Where a run of lines received from elsewhere (another node) does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBreak {
    /// 0-based index of the first bad line in the run.
    pub index: usize,
    /// Its sequence number, when it parses at all.
    pub seq: Option<u64>,
    pub reason: String,
}

/// Checks a run of audit lines as a node sent them (oldest first, possibly filtered, so not
/// always consecutive): every line's own hash, and for each pair of consecutive sequence
/// numbers the link of the second to the first. Returns each line's record when it parses (a
/// line that fails its hash still parses, and is shown marked), the indexes of the lines that
/// fail, and the first failure.
pub fn check_segment(
    lines: &[String],
) -> (Vec<Option<AuditRecord>>, Vec<usize>, Option<SegmentBreak>) {
    let mut records = Vec::with_capacity(lines.len());
    let mut bad = Vec::new();
    let mut first: Option<SegmentBreak> = None;
    let mut before: Option<(u64, String)> = None;
    for (index, line) in lines.iter().enumerate() {
        let (record, reason) = match check_line(line) {
            Ok(r) => {
                let reason = match &before {
                    Some((seq, hash)) if r.seq == seq + 1 && r.prev != *hash => Some(
                        "prev does not match the hash of the record before it: a record was changed, removed or inserted".to_string(),
                    ),
                    Some((seq, _)) if r.seq <= *seq => Some(format!(
                        "seq {} follows seq {seq}: records are repeated or reordered",
                        r.seq
                    )),
                    _ => None,
                };
                before = Some((r.seq, r.hash.clone()));
                (Some(r), reason)
            }
            Err(reason) => {
                // Parsed without the hash check, to show what the line claims.
                let r = serde_json::from_str::<AuditRecord>(line).ok();
                before = r.as_ref().map(|r| (r.seq, r.hash.clone()));
                (r, Some(reason))
            }
        };
        if let Some(reason) = reason {
            bad.push(index);
            if first.is_none() {
                first = Some(SegmentBreak {
                    index,
                    seq: record.as_ref().map(|r| r.seq),
                    reason,
                });
            }
        }
        records.push(record);
    }
    (records, bad, first)
}
