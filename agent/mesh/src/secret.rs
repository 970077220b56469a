//! The cluster secret as a value that cannot leak.
//!
//! Owns [`ClusterSecret`], a redacting newtype: its `Debug` prints no byte of it, it has no
//! `Display`, no serde, and its memory is zeroed on drop. It must never hand out the bytes except to
//! the key derivation in [`crate::security`].

use std::fmt;

use zeroize::Zeroizing;

/// Shortest secret accepted: 128 bits of entropy is the least we derive keys from.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a cluster secret was refused. Never carries the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("the cluster secret is too short: it needs at least {MIN_SECRET_LEN} bytes; generate one with `openssl rand -base64 32`")]
    TooShort,
}

/// The shared cluster secret from the agent config. Keys are derived from it; it is never sent.
#[derive(Clone)]
pub struct ClusterSecret(Zeroizing<Vec<u8>>);

impl ClusterSecret {
    /// Wraps the secret bytes, refusing a secret shorter than [`MIN_SECRET_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort);
        }
        Ok(Self(bytes))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = ClusterSecret::new(b"hunter2-hunter2-hunter2".to_vec()).expect("long enough");
        let shown = format!("{secret:?} {:?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn short_secret_is_refused_without_echoing_it() {
        let err = ClusterSecret::new(b"short".to_vec()).expect_err("too short");
        assert!(!err.to_string().contains("short\""));
        assert_eq!(err, SecretError::TooShort);
    }
}
