//! The command line of `kubedna`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kubedna",
    version,
    about = "Query and steer the KubeDNA agent on this node.",
    after_help = "Exit codes: 0 ok, 1 failure, 2 bad usage, 3 agent unreachable, 4 permission denied, 5 audit chain broken, 6 request rejected."
)]
pub struct Cli {
    /// The agent's admin socket.
    #[arg(long, global = true, env = "KUBEDNA_SOCKET", default_value = kubedna_proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// Give up on the agent after this many seconds.
    #[arg(long, global = true, default_value = "10")]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// This node and its agent; with --cluster, one line per node of the cluster.
    Status {
        /// Ask every node over the mesh: phase, role, leader, versions, maintenance, last error;
        /// unreachable and refusing nodes are shown as such.
        #[arg(long)]
        cluster: bool,
    },
    /// The cluster's nodes as this node's mesh sees them: liveness, state, last heard, RTT.
    Peers,
    /// The agent's Prometheus metrics (OpenMetrics text), as its metrics listener serves them.
    Metrics,
    /// The component catalogue the elected leader applies (read from etcd; ask a control plane).
    #[command(subcommand)]
    Catalogue(CatalogueCommand),
    /// The CLI's and the agent's versions.
    Version {
        /// Only the CLI's version; do not ask the agent.
        #[arg(long)]
        client: bool,
    },
    /// The audit log of admin calls.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Change the agent's log filter at run time (operator).
    LogLevel {
        /// A tracing filter: error, warn, info, debug, trace, or e.g. info,kubedna_agent=debug.
        filter: String,
    },
    /// Re-read the agent's config file (admin). An invalid file is refused; the old one stays.
    Reload,
    /// The doctor: dead nodes replaced through the provider (docs/doctor.md). Ask a control plane.
    #[command(subcommand)]
    Doctor(DoctorCommand),
    /// Send a raw request to the admin API and print the JSON answer.
    Api {
        /// GET, PUT or POST.
        method: String,
        /// A path such as /v1/status.
        path: String,
        /// A JSON request body.
        #[arg(long)]
        data: Option<String>,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
    /// Write man pages for kubedna and its commands.
    Man {
        /// Directory to write kubedna.1 and kubedna-*.1 into; without it, print kubedna.1.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CatalogueCommand {
    /// Each component: wanted and applied version, health, last error.
    Status,
    /// What the next pass would change: objects to create, upgrade, correct, prune.
    Diff,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, oldest first (operator).
    List {
        /// Only records at or after this time: RFC 3339 (2026-11-23T08:00:00Z) or an age (30m, 24h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only this action, or a prefix ending in * (config.*).
        #[arg(long)]
        action: Option<String>,
        /// Only what the agent did on its own (agent), admin calls (socket), signals (signal) or
        /// other nodes' requests (mesh).
        #[arg(long, value_parser = ["agent", "socket", "signal", "mesh"])]
        actor: Option<String>,
        /// At most this many of the newest records (per node and merged, with --cluster).
        #[arg(long, default_value = "1000")]
        limit: usize,
        /// Every reachable node's records over the mesh, merged in time order with the node
        /// named; each node applies its own RBAC; exit 5 if a node's chain is broken.
        #[arg(long)]
        cluster: bool,
    },
    /// Check the hash chain of the whole audit log (operator); exit 5 if broken.
    Verify {
        /// Verify the files in this directory directly instead of asking the agent.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DoctorCommand {
    /// Each node's signals and verdict (on the leader), the decision, the replacement in
    /// progress with its step, and whether the doctor is paused.
    Status,
    /// Finished replacements, oldest first.
    History,
    /// Stop the doctor before its next step, cluster-wide (admin). A replacement in progress
    /// stays where it is and goes on after `resume`.
    Pause {
        /// Why, for the audit log and `doctor status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let the doctor go on (admin).
    Resume,
}
