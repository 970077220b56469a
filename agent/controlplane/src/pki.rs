//! etcd's PKI: a CA, and per member a server, a peer and a client certificate.
//!
//! The CA key is derived from the cluster secret (HKDF-SHA256 → an Ed25519 seed), so every
//! control plane holds the same CA before etcd exists and no CA has to travel between nodes.
//! The cluster secret is therefore the root of trust for etcd, as it already is for the mesh and
//! the join material. Leaf keys are fresh ECDSA P-256 keys made on the node and never leave it.
//! Keys are written mode 0600, certificates 0644, each file atomically.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make the {what} certificate")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error(transparent)]
    Write(#[from] kubedna_host::atomic::AtomicWriteError),
}

/// Validity of member certificates; renewal before expiry is the agent's job.
pub const LEAF_DAYS: i64 = 365;
/// Validity of the CA certificate.
pub const CA_DAYS: i64 = 3650;

/// The cluster's etcd CA.
pub struct EtcdCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for EtcdCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdCa([key redacted])")
    }
}

/// The files of one member, as etcd's flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl MemberFiles {
    pub fn in_dir(dir: &Path) -> Self {
        MemberFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            peer_cert: dir.join("peer.crt"),
            peer_key: dir.join("peer.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    // PKCS#8 v1 PrivateKeyInfo for Ed25519 (RFC 8410): fixed prefix, then the 32-byte seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(seed);
    der
}

impl EtcdCa {
    /// The CA of `cluster`, derived from its secret: the same on every control plane.
    pub fn derive(cluster: &str, secret: &[u8]) -> Result<Self, PkiError> {
        let gen = |source| PkiError::Generate {
            what: "etcd CA".into(),
            source,
        };
        let hk = Hkdf::<Sha256>::new(Some(b"kubedna etcd ca v1"), secret);
        let mut seed = [0u8; 32];
        hk.expand(cluster.as_bytes(), &mut seed)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let der = ed25519_pkcs8(&seed);
        let key = KeyPair::try_from(der.as_slice()).map_err(gen)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("kubedna-etcd-ca-{cluster}"));
        dn.push(DnType::OrganizationName, "KubeDNA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        // Fixed validity, so every node's CA certificate is the same document.
        params.not_before = OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("2026-01-01");
        params.not_after = params.not_before + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key).map_err(gen)?;
        Ok(EtcdCa {
            pem: cert.pem(),
            params,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Issues a leaf certificate; returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        common_name: &str,
        dns: &[String],
        ips: &[IpAddr],
        usages: &[ExtendedKeyUsagePurpose],
        now: OffsetDateTime,
    ) -> Result<(String, String), PkiError> {
        let gen = |source| PkiError::Generate {
            what: common_name.into(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = dns
            .iter()
            .map(|d| d.clone().try_into().map(SanType::DnsName))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, _>>()
            .map_err(gen)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(LEAF_DAYS);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes the CA and this member's server, peer and client certificates into `dir`.
    /// `names` and `ips` are the member's DNS names and addresses (localhost is always added).
    pub fn write_member(
        &self,
        dir: &Path,
        member: &str,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<MemberFiles, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| kubedna_host::atomic::AtomicWriteError {
            path: dir.to_path_buf(),
            step: "creating the directory",
            source,
        })?;
        let files = MemberFiles::in_dir(dir);
        let now = OffsetDateTime::now_utc();
        let mut dns = names.to_vec();
        dns.push("localhost".into());
        let mut all_ips = ips.to_vec();
        all_ips.push(IpAddr::from([127, 0, 0, 1]));
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server, server_key) =
            self.issue(member, &dns, &all_ips, &[ServerAuth, ClientAuth], now)?;
        let (peer, peer_key) =
            self.issue(member, &dns, &all_ips, &[ServerAuth, ClientAuth], now)?;
        let (client, client_key) = self.issue(
            &format!("kubedna-agent-{member}"),
            &[],
            &[],
            &[ClientAuth],
            now,
        )?;
        let w = kubedna_host::atomic::write_atomic;
        w(&files.ca, self.pem.as_bytes(), 0o644)?;
        w(&files.server_key, server_key.as_bytes(), 0o600)?;
        w(&files.server_cert, server.as_bytes(), 0o644)?;
        w(&files.peer_key, peer_key.as_bytes(), 0o600)?;
        w(&files.peer_cert, peer.as_bytes(), 0o644)?;
        w(&files.client_key, client_key.as_bytes(), 0o600)?;
        w(&files.client_cert, client.as_bytes(), 0o644)?;
        Ok(files)
    }
}
