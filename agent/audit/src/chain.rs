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
