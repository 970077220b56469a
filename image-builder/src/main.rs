//! The `kubedna-image` command line: parses arguments, resolves defaults relative to the
//! repository, calls the library and prints errors with their causes. Exit code 2 means bad
//! usage or input, 1 a failed build step.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubedna_image::base::BaseName;
use kubedna_image::build::{self, BuildOptions, Outputs, Progress};
use kubedna_image::{seed, seed_pxe};

#[derive(Debug, Parser)]
#[command(
    name = "kubedna-image",
    version,
    about = "Build the KubeDNA node image and NoCloud seeds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the image: rootfs.tar, disk.raw, disk.qcow2, pxe/, manifest.json in --out.
    Build(Box<BuildArgs>),
    /// Render one node's NoCloud seed from a cluster description.
    Seed(SeedArgs),
    /// Write the container image archives kubeadm needs (kube-apiserver, kube-controller-manager,
    /// kube-scheduler, kube-proxy, pause) from a directory of binaries, plus images.json, for
    /// nodes that never pull (`build --image-archives`).
    Images(ImagesArgs),
}

#[derive(Debug, clap::Args)]
struct ImagesArgs {
    /// Directory holding kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy and
    /// pause (as tests/kubernetes/build lays out its bin/).
    #[arg(long)]
    bin_dir: PathBuf,
    /// Kubernetes version the binaries are, used in the image tags.
    #[arg(long, default_value = "v1.30.3")]
    kubernetes_version: String,
    /// Output directory for the archives and images.json.
    #[arg(long)]
    out: PathBuf,
    /// Where the binaries came from, recorded in images.json.
    #[arg(long)]
    origin: Option<String>,
    /// Timestamp for every file in the archives (default: $SOURCE_DATE_EPOCH, else 0).
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = 0)]
    source_date_epoch: u64,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// debian-12 or ubuntu-24.04.
    #[arg(long)]
    base: BaseName,
    /// Output directory; replaced only when the build succeeds.
    #[arg(long)]
    out: PathBuf,
    /// Directory holding the kubedna-agent and kubedna binaries.
    #[arg(long, default_value = "target/release")]
    agent_bin: PathBuf,
    /// Repository root (units/, image-builder/layer, image-builder/artifacts.yaml, examples/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Units to install (default REPO/units).
    #[arg(long)]
    units_dir: Option<PathBuf>,
    /// Default agent config (default REPO/examples/agent.yaml, else the layer's own).
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// Artifact manifest (default REPO/image-builder/artifacts.yaml).
    #[arg(long)]
    artifacts_manifest: Option<PathBuf>,
    /// Read Kubernetes artifacts from this local mirror (files named as in their URLs).
    #[arg(long)]
    artifacts_dir: Option<PathBuf>,
    /// Build without kubelet, kubeadm, kubectl, crictl and CNI plugins (recorded in image.json).
    #[arg(long)]
    without_kubernetes: bool,
    /// LAB IMAGES ONLY: install the kubeadm and kubelet TEST DOUBLES from this directory as
    /// /usr/bin/kubeadm and /usr/bin/kubelet (recorded as test_doubles in image.json and
    /// manifest.json). Never for production images.
    #[arg(long, value_name = "DIR")]
    test_doubles: Option<PathBuf>,
    /// Bake the container image archives in DIR (written by `kubedna-image images`, listed in
    /// DIR/images.json and verified against it) into /usr/share/kubedna/images, which the agent
    /// imports into containerd before kubeadm runs.
    #[arg(long, value_name = "DIR")]
    image_archives: Option<PathBuf>,
    /// Cache of base tarballs and artifacts.
    #[arg(long, default_value = "/var/tmp/kubedna-image-cache")]
    cache_dir: PathBuf,
    /// Scratch space for the root filesystem tree.
    #[arg(long, default_value = "/var/tmp/kubedna-image-work")]
    work_dir: PathBuf,
    /// Timestamp for every file and filesystem (default: $SOURCE_DATE_EPOCH, else now).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<u64>,
    /// Comma-separated outputs: tar, disk, pxe.
    #[arg(long, default_value = "tar,disk,pxe", value_delimiter = ',')]
    outputs: Vec<String>,
    /// Write disk.qcow2 with zstd-compressed clusters (smaller, slower to build).
    #[arg(long)]
    compress_qcow2: bool,
    /// Redo mmdebstrap even if the base is cached (take in updates from the archive).
    #[arg(long)]
    refresh_base: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("dest").required(true).args(["out", "iso", "pxe_dir"])))]
struct SeedArgs {
    /// Cluster description (see cloud-init/cluster.example.yaml).
    #[arg(long)]
    cluster: PathBuf,
    /// Node name from the description (with --out or --iso).
    #[arg(long, required_unless_present = "pxe_dir", conflicts_with = "pxe_dir")]
    node: Option<String>,
    /// Write the seeds of every node for PXE: DIR/<mac>/ per node (`nodes[].mac`, as iPXE's
    /// ${mac:hexhyp}), replacing DIR as a whole. Serve DIR as ${base-url}/seed/.
    #[arg(long)]
    pxe_dir: Option<PathBuf>,
    /// Write user-data, meta-data (and network-config) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a cidata ISO instead.
    #[arg(long)]
    iso: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(a) => run_build(*a),
        Command::Seed(a) => run_seed(a),
        Command::Images(a) => run_images(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            eprintln!("kubedna-image: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    (2, e.into())
}

fn run_build(a: BuildArgs) -> Result<(), Failure> {
    let mut outputs = Outputs {
        tarball: false,
        disk: false,
        pxe: false,
        compress_qcow2: a.compress_qcow2,
    };
    for o in &a.outputs {
        match o.as_str() {
            "tar" => outputs.tarball = true,
            "disk" => outputs.disk = true,
            "pxe" => outputs.pxe = true,
            other => {
                return Err(usage(anyhow::anyhow!(
                    "--outputs: unknown output {other:?} (expected tar, disk, pxe)"
                )))
            }
        }
    }
    let epoch = match a.source_date_epoch {
        Some(e) => e,
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            eprintln!(
                "kubedna-image: SOURCE_DATE_EPOCH not set; using {now} (set it for a reproducible build)"
            );
            now
        }
    };
    let repo = a.repo;
    let agent_config = a.agent_config.unwrap_or_else(|| {
        let example = repo.join("examples/agent.yaml");
        if example.is_file() {
            example
        } else {
            repo.join("image-builder/layer/etc/kubedna/agent.yaml")
        }
    });
    let opts = BuildOptions {
        base: a.base,
        out: a.out,
        agent_bin: a.agent_bin,
        units_dir: a.units_dir.unwrap_or_else(|| repo.join("units")),
        layer_dir: repo.join("image-builder/layer"),
        agent_config,
        artifacts_manifest: a
            .artifacts_manifest
            .unwrap_or_else(|| repo.join("image-builder/artifacts.yaml")),
        artifacts_dir: a.artifacts_dir,
        without_kubernetes: a.without_kubernetes,
        test_doubles: a.test_doubles,
        image_archives: a.image_archives,
        cache_dir: a.cache_dir,
        work_dir: a.work_dir,
        apt_dir: PathBuf::from("/etc/apt"),
        source_date_epoch: epoch,
        outputs,
        refresh_base: a.refresh_base,
    };
    let progress = Progress::new();
    build::build(&opts, &progress).map_err(|e| {
        let code = match &e {
            build::BuildError::Base(_)
            | build::BuildError::AgentMissing { .. }
            | build::BuildError::UnitMissing { .. }
            | build::BuildError::DoubleMissing { .. }
            | build::BuildError::ForeignOut { .. } => 2,
            _ => 1,
        };
        (code, anyhow::Error::new(e))
    })?;
    Ok(())
}

fn run_images(a: ImagesArgs) -> Result<(), Failure> {
    use kubedna_image::oci;
    let specs = oci::kubernetes_images(&a.bin_dir, &a.kubernetes_version);
    let index =
        oci::write_all(&specs, &a.out, a.source_date_epoch, a.origin.as_deref()).map_err(|e| {
            let code = if matches!(e, oci::OciError::Input { .. }) {
                2
            } else {
                1
            };
            (code, anyhow::Error::new(e))
        })?;
    for i in &index.images {
        println!("{}  {}  {}", i.sha256, i.file, i.repo_tags.join(","));
    }
    Ok(())
}

fn run_seed(a: SeedArgs) -> Result<(), Failure> {
    let cluster = seed::load_cluster(&a.cluster).map_err(usage)?;
    if let Some(dir) = &a.pxe_dir {
        let layout = seed_pxe::layout(&cluster, &a.cluster).map_err(usage)?;
        seed_pxe::write_layout(&layout, dir).map_err(|e| (1, e.into()))?;
        for (mac, (node, _)) in &layout {
            eprintln!("kubedna-image: PXE seed for {node} (MAC {mac}) written");
        }
        eprintln!(
            "kubedna-image: {} PXE seeds in {}; any other MAC gets none",
            layout.len(),
            dir.display()
        );
        return Ok(());
    }
    // clap requires --node unless --pxe-dir.
    let node = a.node.unwrap_or_default();
    let s = seed::render(&cluster, &a.cluster, &node).map_err(usage)?;
    if let Some(dir) = &a.out {
        seed::write_dir(&s, dir).map_err(|e| (1, e.into()))?;
        eprintln!(
            "kubedna-image: seed for {} written to {}",
            node,
            dir.display()
        );
    }
    if let Some(iso) = &a.iso {
        let epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok());
        seed::write_iso(&s, iso, epoch).map_err(|e| (1, e.into()))?;
        eprintln!(
            "kubedna-image: seed ISO for {} written to {}",
            node,
            iso.display()
        );
    }
    Ok(())
}
