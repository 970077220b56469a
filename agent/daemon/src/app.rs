//! Start-up, the signal loop and shutdown. The order is the contract with systemd: the config is
//! validated before anything is touched; the state directory is locked and loaded, the audit log
//! opened (and a torn tail repaired), the socket bound with its mode and group, and only then is
//! READY=1 sent. SIGHUP reloads the config (an invalid one is refused and the old one kept);
//! SIGTERM and SIGINT send STOPPING=1, stop accepting, and drain in-flight calls up to the
//! configured deadline. Every task goes through the one task set (crate::tasks) made here; after
//! the subsystems stopped in order, what still runs is aborted and named.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kubedna_audit::{AuditHandle, Entry, Writer};
use kubedna_config::Config;
use kubedna_host::{creds, notify, state::StateDir};
use kubedna_proto::{AuditResult, Outcome, Via};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::api::AppState;
use crate::logging::{LogControl, LogFormat};
use crate::mesh;
use crate::server;

/// How long tasks still running after every subsystem stopped (each within the drain deadline)
/// get before they are aborted and named in the journal.
const STRAGGLERS: Duration = Duration::from_secs(2);

/// `kubedna-agent [--config FILE] [--log-format plain|json] [--check-config]`
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "kubedna-agent", version, about = "The KubeDNA node agent.")]
pub struct Options {
    /// The agent's config file.
    #[arg(long, short = 'c', env = "KUBEDNA_CONFIG", default_value = kubedna_config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value = "plain")]
    pub log_format: LogFormat,
    /// Validate the config file, print what was found, and exit (0 if valid, 78 if not).
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

/// One-shot commands instead of running the daemon.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentCommand {
    /// Prepare this host for Kubernetes over systemd's D-Bus API (modules, sysctls, swap off,
    /// containerd config, units enabled), print what changed, and exit. Idempotent.
    PrepareHost,
    /// Import the container images baked into the node image (/usr/share/kubedna/images) into
    /// containerd's k8s.io namespace, after checking each archive's SHA-256; run by
    /// kubedna-images.service. Idempotent.
    /// Bring this node's pod network in line with the cluster: the CNI config for its pod CIDR
    /// and routes to every other node's pods (see kubedna_host::podnet). Run by the agent.
    PodNetwork {
        /// This node's name, as in its Node object.
        #[arg(long)]
        node: String,
    },
    ImportImages {
        #[arg(long, default_value = kubedna_host::images::IMAGES_DIR)]
        dir: PathBuf,
        #[arg(long, default_value = "/usr/bin/ctr")]
        ctr: PathBuf,
    },
}

/// An explicit `metrics.listen` must be one of this node's addresses with a free port: a bind
/// test before anything starts, and for `--check-config` (where a port in use is no error: the
/// running agent holds it). The default address, the node's mesh address, is bound later.
fn check_metrics_listen(config: &Config, checking: bool) -> Result<(), StartError> {
    let m = &config.spec.metrics;
    let Some(addr) = m.listen.filter(|_| m.enabled) else {
        return Ok(());
    };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if checking && e.kind() == std::io::ErrorKind::AddrInUse => Ok(()),
        Err(e) => Err(StartError::Config(kubedna_config::ConfigError::Invalid {
            file: config.file.clone(),
            field: "metrics.listen".into(),
            message: format!(
                "cannot listen on {addr}: {e}; give one of this node's own addresses and a free \
                 port, leave it out to use the node's mesh address, or set metrics.enabled: false"
            ),
        })),
    }
}

/// Why the agent did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "invalid configuration; fix it and start again (`kubedna-agent --check-config` checks it)"
    )]
    Config(#[from] kubedna_config::ConfigError),
    #[error("cannot open the state directory")]
    State(#[from] kubedna_host::state::StateError),
    #[error("cannot open the audit log")]
    Audit(#[from] kubedna_audit::AuditError),
    #[error("cannot serve the admin socket")]
    Socket(#[from] server::SocketError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot prepare the host")]
    Prepare(#[from] kubedna_host::prepare::PrepareError),
    #[error("cannot set up the pod network")]
    PodNet(#[from] kubedna_host::podnet::PodNetError),
    #[error("cannot import the container images")]
    Images(#[from] kubedna_host::images::ImagesError),
    #[error("cannot talk to systemd")]
    Systemd(#[from] kubedna_host::systemd::SystemdError),
}

impl StartError {
    /// 78 (EX_CONFIG) for configuration errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 78,
            _ => 1,
        }
    }
}

/// What `main` runs.
pub fn main(opts: Options) -> Result<(), StartError> {
    if let Some(AgentCommand::PodNetwork { node }) = &opts.command {
        let a = kubedna_host::podnet::apply(node, std::path::Path::new("/"))?;
        println!(
            "nodes: {}; cni config written: {}; route changes: {:?}",
            a.nodes, a.cni_config_written, a.route_changes
        );
        return Ok(());
    }
    if let Some(AgentCommand::ImportImages { dir, ctr }) = &opts.command {
        let report = kubedna_host::images::import(dir, ctr)?;
        println!("imported: {}", report.imported.join(", "));
        println!("already present: {}", report.already_present.join(", "));
        return Ok(());
    }
    if let Some(AgentCommand::PrepareHost) = opts.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let report = runtime.block_on(async {
            let sd = kubedna_host::systemd::DbusSystemd::connect().await?;
            Ok::<_, StartError>(
                kubedna_host::prepare::prepare(&sd, std::path::Path::new("/")).await?,
            )
        })?;
        println!("files written: {:?}", report.files_written);
        println!("restarted: {:?}", report.restarted);
        println!(
            "swap units stopped: {:?}; swap.target newly masked: {}",
            report.stopped, report.masked
        );
        println!("containerd and kubelet newly enabled: {}", report.enabled);
        return Ok(());
    }
    let config = kubedna_config::load(&opts.config)?;
    check_metrics_listen(&config, opts.check_config)?;
    if opts.check_config {
        println!(
            "{}: valid (cluster {}, node {}, role {})",
            config.file.display(),
            config.spec.cluster.name,
            config.node_name,
            config.spec.node.role
        );
        return Ok(());
    }
    let log = LogControl::init(opts.log_format, &config.spec.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(run(config, log))
}

/// fsyncs the config file and the cluster-secret file before READY=1. On a first boot
/// cloud-init writes both without an fsync; a power cut in the next half minute would leave them
/// empty, and the node would never start again (seen in the PXE lab: a 0-byte secret after a
/// power cycle). Once the agent said ready, its inputs survive a power cut. A failure is logged,
/// not fatal: the files were read, and the agent can run.
fn make_inputs_durable(config: &Config) {
    let files =
        std::iter::once(config.file.as_path()).chain(config.spec.cluster.secret_file.as_deref());
    for file in files {
        if let Err(e) = kubedna_host::atomic::make_durable(file) {
            tracing::warn!(file = %file.display(), error = %e, "cannot fsync an input file; a power cut soon may lose it");
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(config: Config, log: LogControl) -> Result<(), StartError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;

    let state_dir = StateDir::open(config.state_dir())?;
    let writer = Writer::open(&config.audit_dir(), config.spec.audit.retention_days)?;
    let repairs = writer.repairs().to_vec();
    let audit = AuditHandle::spawn(writer);
    for r in repairs {
        let entry = Entry {
            caller: creds::caller_self(Via::Agent),
            role: None,
            action: "audit.repair".into(),
            args: serde_json::json!({"file": r.file, "droppedBytes": r.dropped_bytes}),
            result: AuditResult {
                outcome: Outcome::Ok,
                status: 0,
                message: Some("cut a torn last line left by an interrupted write".into()),
            },
            time: None,
        };
        audit.append(entry).await?;
    }

    let listener = server::bind(&config)?;
    let socket_path = config.socket_path().to_path_buf();
    let drain = Duration::from_secs(u64::from(config.spec.admin.drain_timeout_seconds));
    let node_name = config.node_name.clone();
    let state = Arc::new(AppState::new(config, state_dir, audit, log));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tasks = state.tasks().clone();
    let server_task = tasks.spawn(
        "admin server",
        server::serve(listener, Arc::clone(&state), shutdown_rx.clone(), drain),
    );
    let watchdog_task = notify::watchdog_interval().map(|every| {
        let mut stop = shutdown_rx.clone();
        tasks.spawn("watchdog", async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => notify::watchdog_ping(),
                    _ = stop.changed() => break,
                }
            }
        })
    });

    make_inputs_durable(&state.config());
    notify::ready(&format!("ready; admin API on {}", socket_path.display()));
    let mesh = mesh::start(&state.config(), state.mesh().clone(), &tasks);
    let metrics_task = {
        let (state, mut stop) = (Arc::clone(&state), shutdown_rx.clone());
        tasks.spawn("metrics server", async move {
            let config = state.config();
            let Some(addr) = server::metrics_addr(&config, state.mesh(), &mut stop).await else {
                return;
            };
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "metrics on http://{addr}/metrics");
                    server::serve_metrics(l, state, stop).await;
                }
                Err(e) => tracing::error!(%addr, error = %e, file = %config.file.display(),
                    "cannot listen for metrics: set metrics.listen to one of this node's addresses \
                     and a free port, or metrics.enabled: false; a change needs a restart"),
            }
        })
    };
    let view_task = crate::cluster::spawn_serve(Arc::clone(&state), shutdown_rx.clone());
    let engine = crate::node::start(
        &state.config(),
        state.mesh().clone(),
        state.node().clone(),
        state.audit().clone(),
        shutdown_rx.clone(),
        &tasks,
    );
    tracing::info!(
        socket = %socket_path.display(),
        node = %node_name,
        node_id = %state.node_id(),
        version = env!("CARGO_PKG_VERSION"),
        "kubedna-agent ready"
    );

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                notify::reloading();
                match crate::reload::reload_config(&state, creds::caller_self(Via::Signal), None).await {
                    Ok(r) => {
                        tracing::info!(generation = r.generation, changed = ?r.changed, "SIGHUP: configuration reloaded");
                        notify::status("ready; configuration reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: reload refused; the previous configuration stays in force");
                        notify::status("ready; last reload refused, see the journal");
                    }
                }
                notify::reloaded();
            }
        }
    }

    notify::stopping();
    let _ = shutdown_tx.send(true);
    if let Some(task) = engine {
        if tokio::time::timeout(drain, task).await.is_err() {
            tracing::warn!(deadline = ?drain, "the control-plane engine did not stop in time");
        }
    }
    let _ = metrics_task.await;
    let _ = view_task.await;
    mesh::stop(mesh, drain).await;
    if server_task.await.is_none() {
        tracing::error!("the admin server task failed");
    }
    if let Some(t) = watchdog_task {
        let _ = t.await;
    }
    // Every subsystem has stopped; what is left are helpers that outlived them.
    let left = tasks.drain(STRAGGLERS).await;
    if !left.is_empty() {
        tracing::warn!(tasks = ?left, "tasks still running at shutdown were aborted");
    }
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("kubedna-agent stopped");
    Ok(())
}
