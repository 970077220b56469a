//! `kubedna-lab`: the command line over the lab library. Parses arguments, calls [`Lab`], prints
//! results; exit code 2 for usage mistakes (bad arguments, unknown lab or node, not root), 1 for
//! failures. All logic lives in the library so tests drive it the same way.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kubedna_lab::lab::{self, Lab, LabError, UpOptions};
use kubedna_lab::net::Subnet;
use kubedna_lab::{image, Provisioner, Role};

#[derive(Debug, Parser)]
#[command(
    name = "kubedna-lab",
    version,
    about = "Local KubeDNA clusters of systemd-nspawn nodes, with fault injection"
)]
struct Cli {
    /// Lab name (a-z, 0-9, '-'); names its state directory, bridge and tables.
    #[arg(
        long,
        global = true,
        env = "KUBEDNA_LAB_NAME",
        default_value = "kubedna"
    )]
    name: String,
    /// Directory holding all labs' state (one subdirectory per lab).
    #[arg(long, global = true, env = "KUBEDNA_LAB_ROOT", default_value = lab::DEFAULT_ROOT)]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the lab and boot its nodes; returns when all are ready.
    Up {
        #[arg(long, default_value_t = 3)]
        control_planes: u32,
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Output directory of `kubedna-image build` (rootfs.tar), or a rootfs directory; built if empty.
        #[arg(long, default_value = "/var/cache/kubedna-lab/image-debian-12")]
        image: PathBuf,
        /// Where extracted image tarballs are cached.
        #[arg(long, default_value = image::DEFAULT_CACHE)]
        image_cache: PathBuf,
        /// Lab subnet; must not overlap any host route.
        #[arg(long, default_value = "198.18.0.0/24")]
        subnet: Subnet,
        /// Seconds nodes may take to become ready [default: 120; 600 with --provisioner qemu].
        #[arg(long)]
        timeout: Option<u64>,
        /// nspawn: containers over the image rootfs; qemu: VMs booting the image's disk (TCG).
        #[arg(long, value_enum, default_value = "nspawn")]
        provisioner: Provisioner,
    },
    /// Nodes, state, addresses, agent readiness.
    Status {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Run a command inside a node.
    Exec {
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A node's journal (or one unit's).
    Logs {
        node: String,
        #[arg(long, short = 'u')]
        unit: Option<String>,
        /// Follow new entries.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Run the admin CLI `kubedna` inside a node.
    Kubedna {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the real kubectl of a control-plane node against the lab's cluster (admin.conf).
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Shut nodes down cleanly (all without arguments).
    Stop {
        nodes: Vec<String>,
        /// Seconds before a node that does not power off is killed.
        #[arg(long, default_value_t = 30)]
        grace: u64,
    },
    /// Boot stopped or killed nodes (all without arguments) and wait until ready.
    Start {
        nodes: Vec<String>,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Power-cut a node (SIGKILL its PID 1 and nspawn).
    Kill { node: String },
    /// Reinstall a node with a wiped disk (power cut, disk deleted, first boot from the image
    /// under the same name and address); waits until it is ready.
    Reinstall {
        node: String,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Drop traffic between groups: `partition cp-1,cp-2 / cp-3,worker-1`.
    Partition {
        #[arg(required = true, num_args = 1..)]
        groups: Vec<String>,
    },
    /// Remove every partition.
    Heal,
    /// Packet loss in percent on a node's link, each direction (0 clears).
    Loss { node: String, pct: f32 },
    /// Delay in milliseconds on a node's link, each direction (0 clears).
    Delay { node: String, ms: u32 },
    /// Add a node and wait until it is ready.
    AddNode {
        #[arg(long, value_enum, default_value = "worker")]
        role: Role,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Serve the lab's Hetzner Cloud API subset on the lab bridge (the gateway address), backed
    /// by this lab's nodes, until interrupted. Agents use it with `provider.lab.hcloudApi`.
    HcloudApi {
        /// TCP port on the gateway address.
        #[arg(long, default_value_t = 8089)]
        port: u16,
        /// File holding the token callers must present (agents' `provider.lab.tokenFile`).
        #[arg(long)]
        token_file: PathBuf,
    },
    /// Answer ONE HTTP request on stdin/stdout from a PXE tree (`kubedna/` with the image's
    /// pxe/ files and `kubedna/seed/<mac>/` from `kubedna-image seed --pxe-dir`): the program
    /// qemu's user network runs per connection (`guestfwd=...-cmd:`). Unknown MACs get 403.
    PxeHttp {
        #[arg(long)]
        root: PathBuf,
        /// Append one line per request (method, path, status, bytes) to this file. Not stderr:
        /// qemu's user network gives the program the guest's connection as stdin, stdout AND
        /// stderr.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Check the lab cannot reach beyond its bridge (routes, bridge ports, firewall, NAT).
    Check,
    /// List labs.
    List,
    /// Remove everything the lab made (works after a crash too).
    Down,
    /// Internal: holds a node's queued packets for `delay` where the kernel has no netem.
    #[command(hide = true)]
    DelayHelper {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        ms: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // The reader went away (`| head`): nothing left to say.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubedna-lab: {e:#}");
            let usage = e.downcast_ref::<LabError>().is_some_and(LabError::is_usage);
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn exit_of(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (root, name) = (cli.root, cli.name);
    match cli.command {
        Cmd::Up {
            control_planes,
            workers,
            image,
            image_cache,
            subnet,
            timeout,
            provisioner,
        } => {
            let started = Instant::now();
            let opts = UpOptions {
                root,
                name,
                control_planes,
                workers,
                image,
                image_cache,
                subnet,
                timeout: Duration::from_secs(timeout.unwrap_or(match provisioner {
                    Provisioner::Nspawn => 120,
                    Provisioner::Qemu => 600,
                })),
            };
            let lab = Lab::up_provisioned(&opts, lab::Discovery::Seeds, provisioner)?;
            writeln!(
                std::io::stdout(),
                "lab {} up: {} nodes ready in {:.1}s on {} (bridge {})",
                lab.state.name,
                lab.state.nodes.len(),
                started.elapsed().as_secs_f64(),
                lab.state.subnet,
                lab.state.bridge
            )?;
            print_status(&lab, Format::Table)?;
        }
        Cmd::Status { output } => {
            let lab = Lab::open(&root, &name)?;
            print_status(&lab, output)?;
        }
        Cmd::Exec { node, command } => {
            let lab = Lab::open(&root, &name)?;
            let argv: Vec<&str> = command.iter().map(String::as_str).collect();
            return Ok(exit_of(lab.exec_interactive(&node, &argv)?));
        }
        Cmd::Logs { node, unit, follow } => {
            let lab = Lab::open(&root, &name)?;
            let mut argv = vec!["journalctl", "--no-pager"];
            if follow {
                argv.push("--follow");
            }
            if let Some(u) = unit.as_deref() {
                argv.extend(["--unit", u]);
            }
            return Ok(exit_of(lab.exec_interactive(&node, &argv)?));
        }
        Cmd::Kubedna { node, args } => {
            let lab = Lab::open(&root, &name)?;
            let mut argv = vec!["kubedna"];
            argv.extend(args.iter().map(String::as_str));
            return Ok(exit_of(lab.exec_interactive(&node, &argv)?));
        }
        Cmd::Kubectl { args } => {
            let lab = Lab::open(&root, &name)?;
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            return Ok(exit_of(lab.kubectl_interactive(&argv)?));
        }
        Cmd::Stop { nodes, grace } => {
            Lab::open(&root, &name)?.stop(&nodes, Duration::from_secs(grace))?;
        }
        Cmd::Start { nodes, timeout } => {
            Lab::open(&root, &name)?.start(&nodes, Duration::from_secs(timeout))?;
        }
        Cmd::Kill { node } => Lab::open(&root, &name)?.kill(&node)?,
        Cmd::Reinstall { node, timeout } => {
            Lab::open(&root, &name)?.reinstall(&node, Duration::from_secs(timeout))?;
        }
        Cmd::Partition { groups } => {
            let joined = groups.join(" ");
            let parsed: Vec<Vec<String>> = joined
                .split('/')
                .map(|g| {
                    g.split([',', ' '])
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .collect();
            Lab::open(&root, &name)?.partition(parsed)?;
        }
        Cmd::Heal => Lab::open(&root, &name)?.heal()?,
        Cmd::Loss { node, pct } => Lab::open(&root, &name)?.set_loss(&node, pct)?,
        Cmd::Delay { node, ms } => Lab::open(&root, &name)?.set_delay(&node, ms)?,
        Cmd::DelayHelper { netns, ms } => kubedna_lab::delay::run_helper(&netns, ms)?,
        Cmd::AddNode { role, timeout } => {
            let mut lab = Lab::open(&root, &name)?;
            let record = lab.add_node(role, BTreeMap::new(), None)?;
            lab.wait_ready(
                std::slice::from_ref(&record.name),
                Instant::now() + Duration::from_secs(timeout),
            )?;
            println!("{} {}", record.name, record.address);
        }
        Cmd::PxeHttp { root: tree, log } => {
            let stdin = std::io::stdin();
            let line = kubedna_lab::pxe_http::serve_one(
                &tree,
                &mut stdin.lock(),
                &mut std::io::stdout().lock(),
            )
            .with_context(|| format!("serving one request from {}", tree.display()))?;
            if let Some(log) = log {
                // One write of one line in append mode: concurrent requests do not interleave.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
                    .with_context(|| format!("cannot append to {}", log.display()))?;
            }
        }
        Cmd::HcloudApi { port, token_file } => {
            let lab = Lab::open(&root, &name)?;
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("cannot read the token file {}", token_file.display()))?;
            // Only on the lab bridge: the gateway address exists on no other interface.
            let listen = format!("{}:{port}", lab.gateway());
            let backend = std::sync::Arc::new(kubedna_lab::hcloud::LabBackend {
                root: root.clone(),
                lab: name.clone(),
            });
            let api = kubedna_lab::hcloud::HcloudApi::serve(&listen, token.trim(), backend)
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("{}", api.base_url);
            std::io::stdout().flush().ok();
            loop {
                std::thread::park();
            }
        }
        Cmd::Check => {
            let lab = Lab::open(&root, &name)?;
            let problems = lab.check_isolation();
            if problems.is_empty() {
                println!(
                    "lab {} is isolated: no route, forward or NAT beyond {}",
                    name, lab.state.bridge
                );
            } else {
                for p in &problems {
                    println!("PROBLEM: {p}");
                }
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::List => {
            for l in lab::list(&root) {
                println!("{l}");
            }
        }
        Cmd::Down => {
            let report = lab::down(&root, &name)?;
            println!(
                "lab {name} down in {:.1}s: {} processes, {} mounts, {} links removed",
                report.duration_ms as f64 / 1000.0,
                report.processes_killed,
                report.mounts_removed,
                report.links_removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(lab: &Lab, format: Format) -> anyhow::Result<()> {
    let status = lab.status();
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&status).context("encoding status")?
            )?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:<10} {:<14} {:<16} {:<10} {:<8} {:<14} NETEM",
                "NODE", "ROLE", "ADDRESS", "STATE", "AGENT", "SEED"
            )?;
            for s in status {
                let netem = if s.netem.is_clear() {
                    "-".to_string()
                } else {
                    format!("loss {}% delay {}ms", s.netem.loss_pct, s.netem.delay_ms)
                };
                let seed = serde_json::to_value(s.seed)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<10} {:<14} {:<16} {:<10} {:<8} {:<14} {netem}",
                    s.name,
                    s.role.as_str(),
                    s.address,
                    s.state,
                    s.agent,
                    seed
                )?;
            }
            if !lab.state.partitions.is_empty() {
                let groups: Vec<String> =
                    lab.state.partitions.iter().map(|g| g.join(",")).collect();
                writeln!(out, "partitioned: {}", groups.join(" / "))?;
            }
        }
    }
    Ok(())
}
