//! Join material: what a node needs to `kubeadm join` (bootstrap token, CA certificate hash,
//! certificate key for control planes, API endpoint). The leader makes it and renews it before it
//! expires; it is stored in etcd only sealed (XChaCha20-Poly1305 under a key derived from the
//! cluster secret with HKDF-SHA256, the cluster name as associated data) and handed to joining
//! nodes only over the authenticated mesh. Debug output never shows the token or the key. The
//! certificate key is derived from the cluster secret ([`certificate_key`]), so uploads by any
//! two leaders are equivalent.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use kubedna_proto::Endpoint;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Format version of sealed material.
const VERSION: u8 = 1;
/// kubeadm's default bootstrap token TTL.
pub const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// The kubeadm-certs Secret and its certificate key expire after two hours.
pub const CERT_KEY_TTL_SECS: u64 = 2 * 3600;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinMaterial {
    /// `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// `sha256:<hex of the cluster CA's SubjectPublicKeyInfo>`.
    pub ca_cert_hash: String,
    /// Hex of 32 bytes; encrypts the control-plane certificates kubeadm uploads.
    pub certificate_key: String,
    /// The API endpoint (`controlPlaneEndpoint`); travels as its text, `host:port`.
    pub api_endpoint: Endpoint,
    /// Unix seconds.
    pub token_expires: u64,
    pub certificate_key_expires: u64,
}

impl fmt::Debug for JoinMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinMaterial")
            .field("token", &"[redacted]")
            .field("ca_cert_hash", &self.ca_cert_hash)
            .field("certificate_key", &"[redacted]")
            .field("api_endpoint", &self.api_endpoint)
            .field("token_expires", &self.token_expires)
            .field("certificate_key_expires", &self.certificate_key_expires)
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("sealed join material is too short or of unknown version {0}")]
    Format(u8),
    #[error("sealed join material does not open with this cluster's secret: it is from another cluster, damaged, or the secret rotated")]
    Open,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    b
}

/// A fresh bootstrap token in kubeadm's format.
pub fn new_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // Rejection sampling: only bytes below 252 (7 × 36), so every character is equally likely.
    let mut s = String::with_capacity(23);
    while s.len() < 22 {
        for b in random::<32>() {
            if b < 252 && s.len() < 22 {
                s.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    s.insert(6, '.');
    s
}

/// A fresh certificate key (hex of 32 bytes), as `kubeadm certs certificate-key` prints.
pub fn new_certificate_key() -> String {
    hex::encode(random::<32>())
}

/// The cluster's certificate key (hex of 32 bytes), derived from the cluster secret with
/// HKDF-SHA256 under its own label (as the sealing key above and the mesh's keys are), so every
/// leader uploads the control-plane certificates under the same key: an upload by a deposed
/// leader that resumes late is equivalent to the current leader's, and cannot break the key
/// the stored join material carries.
pub fn certificate_key(secret: &[u8], cluster: &str) -> Zeroizing<String> {
    let hk = Hkdf::<Sha256>::new(Some(b"kubedna kubeadm certificate key v1"), secret);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(cluster.as_bytes(), key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Zeroizing::new(hex::encode(key.as_ref()))
}

impl JoinMaterial {
    /// Whether the leader should renew now: a third of either lifetime left, or less.
    pub fn needs_renewal(&self, now: u64) -> bool {
        now + TOKEN_TTL_SECS / 3 >= self.token_expires
            || now + CERT_KEY_TTL_SECS / 3 >= self.certificate_key_expires
    }
}

fn cipher(secret: &[u8], cluster: &str) -> XChaCha20Poly1305 {
    let hk = Hkdf::<Sha256>::new(Some(b"kubedna join material v1"), secret);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(cluster.as_bytes(), key.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    XChaCha20Poly1305::new(key.as_ref().into())
}

/// Seals `m` for storage: version, 24-byte nonce, ciphertext with tag.
pub fn seal(secret: &[u8], cluster: &str, m: &JoinMaterial) -> Vec<u8> {
    let plain = Zeroizing::new(serde_json::to_vec(m).expect("serializes"));
    let nonce = random::<24>();
    let ct = cipher(secret, cluster)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: cluster.as_bytes(),
            },
        )
        .expect("encryption of a small message cannot fail");
    let mut out = Vec::with_capacity(1 + 24 + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens what [`seal`] made with the same secret and cluster name.
pub fn open(secret: &[u8], cluster: &str, sealed: &[u8]) -> Result<JoinMaterial, JoinError> {
    match sealed.first() {
        Some(&VERSION) if sealed.len() > 1 + 24 + 16 => {}
        Some(v) => return Err(JoinError::Format(*v)),
        None => return Err(JoinError::Format(0)),
    }
    let plain = Zeroizing::new(
        cipher(secret, cluster)
            .decrypt(
                XNonce::from_slice(&sealed[1..25]),
                Payload {
                    msg: &sealed[25..],
                    aad: cluster.as_bytes(),
                },
            )
            .map_err(|_| JoinError::Open)?,
    );
    serde_json::from_slice(&plain).map_err(|_| JoinError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn material() -> JoinMaterial {
        JoinMaterial {
            token: new_token(),
            ca_cert_hash: format!("sha256:{}", "ab".repeat(32)),
            certificate_key: new_certificate_key(),
            api_endpoint: "198.18.0.11:6443".parse().expect("endpoint"),
            token_expires: 1_000_000 + TOKEN_TTL_SECS,
            certificate_key_expires: 1_000_000 + CERT_KEY_TTL_SECS,
        }
    }

    #[test]
    fn tokens_and_keys_have_kubeadms_formats() {
        for _ in 0..100 {
            let t = new_token();
            let (a, b) = t.split_once('.').expect("dot");
            assert_eq!((a.len(), b.len()), (6, 16), "{t}");
            assert!(t
                .bytes()
                .all(|c| c == b'.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
            let k = new_certificate_key();
            assert_eq!(k.len(), 64);
            assert!(hex::decode(&k).is_ok());
        }
        assert_ne!(new_token(), new_token());
    }

    /// Material sealed before the endpoint was typed carried it as a string: it still opens,
    /// and an IPv6 endpoint travels bracketed.
    #[test]
    fn the_endpoint_travels_as_its_text() {
        let m = material();
        let json = serde_json::to_value(&m).expect("json");
        assert_eq!(json["api_endpoint"], "198.18.0.11:6443");
        let mut v6 = json.clone();
        v6["api_endpoint"] = "[fd00::11]:6443".into();
        let back: JoinMaterial = serde_json::from_value(v6).expect("an IPv6 endpoint");
        assert_eq!(back.api_endpoint.host().to_string(), "fd00::11");
        assert_eq!(back.api_endpoint.port(), 6443);
    }

    #[test]
    fn sealed_material_opens_only_with_the_same_secret_and_cluster() {
        let m = material();
        let sealed = seal(SECRET, "lab", &m);
        assert_eq!(open(SECRET, "lab", &sealed), Ok(m.clone()));
        assert_eq!(
            open(b"another-secret-another-secret-xx", "lab", &sealed),
            Err(JoinError::Open)
        );
        assert_eq!(open(SECRET, "prod", &sealed), Err(JoinError::Open));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(SECRET, "lab", &bad).is_err(), "flip at {i} accepted");
        }
        assert!(open(SECRET, "lab", &sealed[..30]).is_err());
        let text = String::from_utf8_lossy(&sealed);
        assert!(
            !text.contains(&m.token) && !text.contains(&m.certificate_key),
            "plaintext in the sealed bytes"
        );
    }

    #[test]
    fn the_certificate_key_is_one_per_cluster_secret_and_apart_from_the_sealing_key() {
        let k = certificate_key(SECRET, "lab");
        assert_eq!(k.len(), 64);
        assert!(hex::decode(k.as_str()).is_ok());
        assert_eq!(k, certificate_key(SECRET, "lab"));
        assert_ne!(k, certificate_key(SECRET, "prod"));
        assert_ne!(
            k,
            certificate_key(b"another-secret-another-secret-xx", "lab")
        );
        let hk = Hkdf::<Sha256>::new(Some(b"kubedna join material v1"), SECRET);
        let mut sealing = [0u8; 32];
        hk.expand(b"lab", &mut sealing).expect("hkdf");
        assert_ne!(k.as_str(), hex::encode(sealing));
    }

    #[test]
    fn debug_never_shows_the_token_or_key() {
        let m = material();
        let d = format!("{m:?}");
        assert!(
            !d.contains(&m.token) && !d.contains(&m.certificate_key),
            "{d}"
        );
    }

    #[test]
    fn renewal_comes_before_expiry() {
        let m = material();
        assert!(!m.needs_renewal(1_000_000));
        assert!(m.needs_renewal(1_000_000 + CERT_KEY_TTL_SECS - CERT_KEY_TTL_SECS / 3));
        assert!(m.needs_renewal(m.token_expires));
    }
}
