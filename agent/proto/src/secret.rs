//! The cluster secret as a value that cannot leak: the one type the config, the mesh and the
//! control-plane engine share (behind the `secret` feature, so the CLI's dependencies stay as
//! they are).
//!
//! Owns [`ClusterSecret`]: at least [`MIN_SECRET_LEN`] bytes, checked when it is made or
//! deserialized (the one minimum); its `Debug` and `Display` print no byte of it; it has no
//! `Serialize`, so it cannot reach a JSON answer or an audit record; its memory is zeroed on
//! drop. Only key derivation reads the bytes ([`ClusterSecret::expose`]).

use std::fmt;

use zeroize::Zeroizing;

/// Shortest secret accepted: 256 bits when it is random bytes, the least the keys derived from
/// it (mesh packet keys, the etcd CA, the sealing and certificate keys) are meant to rest on.
pub const MIN_SECRET_LEN: usize = 32;

/// Why a cluster secret was refused. Never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretError {
    /// The secret has this many bytes, fewer than [`MIN_SECRET_LEN`].
    TooShort(usize),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::TooShort(n) => write!(
                f,
                "the cluster secret has {n} bytes: use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)"
            ),
        }
    }
}

impl std::error::Error for SecretError {}

/// The shared cluster secret. Keys are derived from it; it is never sent.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Zeroizing<Vec<u8>>);

impl ClusterSecret {
    /// Wraps the secret bytes, refusing a secret shorter than [`MIN_SECRET_LEN`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretError> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The secret's bytes, for key derivation only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret([redacted])")
    }
}

impl fmt::Display for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// From a string (an inline `cluster.secret` in agent.yaml), surrounding whitespace trimmed.
impl<'de> serde::Deserialize<'de> for ClusterSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        ClusterSecret::new(s.trim().as_bytes().to_vec()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &[u8] = b"hunter2-hunter2-hunter2-hunter2-hunter2";

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let secret = ClusterSecret::new(LONG.to_vec()).expect("long enough");
        let shown = format!("{secret:?} {:?} {secret}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    /// (bytes given, accepted): the one minimum, whether made or deserialized.
    #[test]
    fn the_one_minimum_length() {
        for (len, ok) in [(0, false), (16, false), (31, false), (32, true), (64, true)] {
            let bytes = vec![b'k'; len];
            assert_eq!(ClusterSecret::new(bytes.clone()).is_ok(), ok, "{len} bytes");
            let json =
                serde_json::to_string(&String::from_utf8(bytes).expect("ascii")).expect("a string");
            let parsed: Result<ClusterSecret, _> = serde_json::from_str(&json);
            assert_eq!(parsed.is_ok(), ok, "{len} bytes deserialized");
            if let Err(e) = parsed {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("has {len} bytes")) && e.contains("at least 32"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn deserializing_trims_and_the_refusal_does_not_echo_the_secret() {
        let parsed: ClusterSecret =
            serde_json::from_str("\"  0123456789abcdef0123456789abcdef\\n\"").expect("valid");
        assert_eq!(parsed.expose(), b"0123456789abcdef0123456789abcdef");
        let err = serde_json::from_str::<ClusterSecret>("\"sw0rdfish\"").expect_err("short");
        assert!(!err.to_string().contains("sw0rdfish"), "{err}");
    }
}
