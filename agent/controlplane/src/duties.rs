//! Leader duties: work that one node does for the whole cluster while it holds the leader
//! term. A duty runs only inside [`Duties::run`], which the engine calls only while it holds
//! the term and drops the moment the term is lost (the seat deleted, retaken or expired), so a
//! duty never needs to check the seat itself. A duty writes to etcd only through [`Term`]
//! (every write fenced by the term), keeps its progress in etcd so the next leader resumes it
//! from there, and makes any effect outside etcd idempotent across leaders or stoppable by
//! dropping it. Formation's join-material renewal is the first duty; the catalogue, the doctor,
//! patch coordination and certificate renewal belong beside it, as fields of [`Duties`] run in
//! order by [`Duties::run`].

use std::future::Future;
use std::sync::Arc;

use kubedna_host::atomic::write_atomic;

mod catalogue;
pub use catalogue::{diff as catalogue_diff, CatalogueDuty, CatalogueSettings, Planned};

use crate::coord::{CoordError, Coordinator};
use crate::engine::{ca_hash_in, Clock, ClusterSecret};
use crate::joinmat::{self, JoinMaterial};
use crate::kubeadm_run::{Kubeadm, KubeadmError, KubeadmOp};

/// The leader term a duty acts under: reads from etcd, writes fenced by the term, and the log
/// where the duty reports what it changes (each change is an audit record).
#[derive(Debug, Clone, Copy)]
pub struct Term<'a> {
    pub coord: &'a Coordinator,
    pub term: i64,
    pub actions: &'a crate::actions::ActionLog,
}

impl Term<'_> {
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CoordError> {
        self.coord.get(&self.coord.key(name)).await
    }

    /// Writes `/kubedna/<cluster>/<name>` only while this term holds the seat.
    pub async fn put(&self, name: &str, value: Vec<u8>) -> Result<(), CoordError> {
        self.coord
            .fenced_put(self.term, &self.coord.key(name), value)
            .await
    }

    /// Whether this term still holds the seat: the fence a duty checks before a write outside
    /// etcd (the catalogue's writes to the API server).
    pub async fn holds(&self) -> Result<bool, CoordError> {
        self.coord.holds(self.term).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DutyError {
    #[error("duty {duty}: {what}")]
    Coord {
        duty: &'static str,
        what: &'static str,
        #[source]
        source: CoordError,
    },
    #[error("duty {duty}: kubeadm")]
    Kubeadm {
        duty: &'static str,
        #[source]
        source: KubeadmError,
    },
    #[error(
        "duty {duty}: `kubeadm token create --print-join-command` printed no CA certificate hash"
    )]
    NoCaHash { duty: &'static str },
    #[error("duty {duty}")]
    Doctor {
        duty: &'static str,
        #[source]
        source: kubedna_doctor::pass::DoctorError,
    },
    #[error("duty catalogue")]
    Catalogue {
        #[source]
        source: Box<kubedna_catalogue::run::RunError>,
    },
    #[error("duty {duty}: cannot write the upload-certs config")]
    Write {
        duty: &'static str,
        #[source]
        source: kubedna_host::atomic::AtomicWriteError,
    },
}

impl DutyError {
    /// The write was refused because a newer term holds the seat: this node no longer leads.
    pub fn is_stale(&self) -> bool {
        match self {
            DutyError::Coord {
                source: CoordError::Stale { .. },
                ..
            } => true,
            DutyError::Doctor { source, .. } => source.is_stale(),
            DutyError::Catalogue { source } => source.is_stale(),
            _ => false,
        }
    }
}

/// One leader duty.
pub trait Duty: Send + Sync {
    fn name(&self) -> &'static str;
    /// One pass: read the duty's progress from etcd, act, record progress through `term`.
    fn pass(&self, term: Term<'_>) -> impl Future<Output = Result<(), DutyError>> + Send;
}

/// Keeps the join material present and fresh: renewed when a third of the token's or the
/// certificate key's lifetime is left. Its progress is the stored material itself. Outside
/// etcd, `kubeadm token create` only adds a token and `upload-certs` uploads under the key
/// derived from the cluster secret, so any leader's run is equivalent; both kubeadm calls stop
/// when the pass is dropped.
pub struct JoinMaterialDuty<K, C> {
    pub kubeadm: Arc<K>,
    pub clock: Arc<C>,
    pub secret: ClusterSecret,
    pub cluster: String,
    pub api_endpoint: kubedna_proto::Endpoint,
    /// Where and what to write for `init phase upload-certs --config` (control planes; a worker
    /// never leads).
    pub upload_config: Option<UploadConfig>,
}

/// The config file `init phase upload-certs` reads: without one kubeadm assumes a local etcd,
/// uploads empty local-etcd entries, and every control-plane join then fails in
/// `download-certs`. Its external etcd paths name files that do not exist, so each control
/// plane keeps its own (see the engine's `NOT_UPLOADED_ETCD_DIR`). The certificate key goes in
/// the file (kubeadm refuses `--config` with `--certificate-key`); the file is removed after.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub on_disk: std::path::PathBuf,
    pub path: String,
    pub params: crate::kubeadm::ClusterParams,
}

impl<K, C> std::fmt::Debug for JoinMaterialDuty<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinMaterialDuty")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

const JOIN_MATERIAL: &str = "join-material";

impl<K: Kubeadm, C: Clock> Duty for JoinMaterialDuty<K, C> {
    fn name(&self) -> &'static str {
        "join-material"
    }

    async fn pass(&self, term: Term<'_>) -> Result<(), DutyError> {
        let duty = self.name();
        let coord_err = |what| move |source| DutyError::Coord { duty, what, source };
        let now = self.clock.now_unix();
        let secret = self.secret.expose();
        let why = match term
            .get(JOIN_MATERIAL)
            .await
            .map_err(coord_err("cannot read the join material"))?
        {
            None => "the cluster has no join material yet",
            Some(sealed) => match joinmat::open(secret, &self.cluster, &sealed) {
                Ok(m) if !m.needs_renewal(now) => return Ok(()),
                Ok(_) => "a third or less of the token's or certificate key's lifetime is left",
                Err(_) => "the stored join material cannot be opened with the cluster secret",
            },
        };
        let r = self.renew(term, now).await;
        let args = serde_json::json!({
            "term": term.term,
            // Names without "token" or "key", which the audit log would redact.
            "renewAfterUnix": now + joinmat::TOKEN_TTL_SECS.min(joinmat::CERT_KEY_TTL_SECS) * 2 / 3,
        });
        term.actions.done("joinmaterial.renew", why, args, &r);
        r
    }
}

impl<K: Kubeadm, C: Clock> JoinMaterialDuty<K, C> {
    /// A new token, the certificates uploaded under the cluster's key, and the sealed material
    /// stored under `term`.
    async fn renew(&self, term: Term<'_>, now: u64) -> Result<(), DutyError> {
        let duty = "join-material";
        let coord_err = |what| move |source| DutyError::Coord { duty, what, source };
        let kubeadm_err = |source| DutyError::Kubeadm { duty, source };
        let secret = self.secret.expose();
        let token = joinmat::new_token();
        let certificate_key = joinmat::certificate_key(secret, &self.cluster);
        let out = self
            .kubeadm
            .run(
                KubeadmOp::TokenCreate,
                &[
                    "token".into(),
                    "create".into(),
                    token.clone(),
                    "--ttl".into(),
                    "24h0m0s".into(),
                    "--print-join-command".into(),
                ],
            )
            .await
            .map_err(kubeadm_err)?;
        let ca_cert_hash = ca_hash_in(&out).ok_or(DutyError::NoCaHash { duty })?;
        let mut args: Vec<String> = vec![
            "init".into(),
            "phase".into(),
            "upload-certs".into(),
            "--upload-certs".into(),
        ];
        if let Some(u) = &self.upload_config {
            let text = zeroize::Zeroizing::new(crate::kubeadm::render_init(
                &u.params,
                &token,
                certificate_key.as_ref(),
            ));
            write_atomic(&u.on_disk, text.as_bytes(), 0o600)
                .map_err(|source| DutyError::Write { duty, source })?;
            args.extend(["--config".into(), u.path.clone()]);
        } else {
            args.extend(["--certificate-key".into(), certificate_key.to_string()]);
        }
        let r = self.kubeadm.run(KubeadmOp::UploadCerts, &args).await;
        if let Some(u) = &self.upload_config {
            let _ = std::fs::remove_file(&u.on_disk);
        }
        r.map_err(kubeadm_err)?;
        let m = JoinMaterial {
            token,
            ca_cert_hash,
            certificate_key: certificate_key.to_string(),
            api_endpoint: self.api_endpoint.clone(),
            token_expires: now + joinmat::TOKEN_TTL_SECS,
            certificate_key_expires: now + joinmat::CERT_KEY_TTL_SECS,
        };
        term.put(JOIN_MATERIAL, joinmat::seal(secret, &self.cluster, &m))
            .await
            .map_err(coord_err("cannot store the join material"))?;
        tracing::info!(term = term.term, "join material renewed");
        Ok(())
    }
}

/// Every leader duty, run in order by [`Duties::run`].
#[derive(Debug)]
pub struct Duties<K, C> {
    pub join_material: JoinMaterialDuty<K, C>,
    /// The doctor (docs/doctor.md), when `doctor.enabled` and a provider are configured.
    pub doctor: Option<Arc<dyn crate::doctor_duty::LeaderDuty>>,
    /// Set when the agent config has a `catalogue` section.
    pub catalogue: Option<CatalogueDuty>,
}

impl<K: Kubeadm, C: Clock> Duties<K, C> {
    /// One pass of every duty under `term`; stops at the first stale write (the term is over).
    /// Other failures are collected: one failing duty does not starve the next.
    pub async fn run(&self, term: Term<'_>) -> Result<(), Vec<DutyError>> {
        let mut failed = Vec::new();
        match self.join_material.pass(term).await {
            Ok(()) => {}
            Err(e) if e.is_stale() => return Err(vec![e]),
            Err(e) => failed.push(e),
        }
        if let Some(doctor) = &self.doctor {
            match doctor.pass(term).await {
                Ok(()) => {}
                Err(e) if e.is_stale() => return Err(vec![e]),
                Err(e) => failed.push(e),
            }
        }
        if let Some(c) = &self.catalogue {
            match c.pass(term).await {
                Ok(()) => {}
                Err(e) if e.is_stale() => return Err(vec![e]),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}
