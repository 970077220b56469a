//! Redaction of secrets from call arguments before they reach the audit log.

use serde_json::Value;

const MARKER: &str = "[redacted]";
const SECRET_WORDS: [&str; 6] = ["secret", "token", "password", "key", "credential", "cert"];

/// Replaces the value of every object member whose name suggests a secret (`secret`, `token`,
/// `password`, `key`, `credential`, `cert`, in any case) with `"[redacted]"`, at any depth.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                    *v = Value::String(MARKER.into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}
