//! Taking a lab down from its name alone (processes, mounts, links, tables found from the kernel,
//! so it cleans up after a crash too), and listing what a lab left behind.

use super::*;

pub(crate) fn umount(path: &Path) -> Result<(), LabError> {
    let p = path.to_string_lossy();
    let out = cmd::output("umount", &[&p], None)?;
    if !out.success() {
        // Busy (a straggler holds it): detach now, the kernel frees it when released.
        cmd::run("umount", &["--lazy", &p])?;
    }
    Ok(())
}

/// Measures of a `down`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub processes_killed: usize,
    pub mounts_removed: usize,
    pub links_removed: usize,
    pub duration_ms: u128,
}

/// Removes everything lab `name` made: processes, mounts, links, bridge, network namespaces,
/// nftables tables and its state directory. Needs no state file; safe to repeat.
pub fn down(root: &Path, name: &str) -> Result<DownReport, LabError> {
    require_root()?;
    names::validate_lab_name(name)?;
    let started = Instant::now();
    let mut report = DownReport::default();
    let dir = root.join(name);
    let _lock = if dir.is_dir() {
        Some(lock(&dir)?)
    } else {
        None
    };
    let phase = |what: &str| {
        if std::env::var_os("KUBEDNA_LAB_TRACE").is_some() {
            eprintln!("down: {what} done at {:?}", started.elapsed());
        }
    };

    // 1. Processes: every node's nspawn and PID namespace, then anything else naming the lab dir.
    let node_dirs: Vec<String> = std::fs::read_dir(dir.join("nodes"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<NodePaths> = node_dirs.iter().map(|n| NodePaths::new(&dir, n)).collect();
    for p in &all {
        report.processes_killed += node::node_pids(p).len();
        node::send_kill(p);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &all {
        node::wait_killed(p, deadline)?;
    }
    // Whatever else runs in the lab's cgroups (e.g. a node whose namespace file is gone).
    for cg in node::lab_cgroups(name) {
        report.processes_killed += node::cgroup_pids(&cg).len();
        node::kill_cgroup_tree(&cg, deadline)?;
    }
    // qemu of VM nodes (its command line names the node's disk under the lab directory).
    report.processes_killed += qemu::kill_all_under(&dir, deadline).len();
    let dir_arg = format!("{}/", dir.display());
    for pid in node::pids_with_arg_prefix(&dir_arg) {
        if pid != std::process::id() as i32 {
            report.processes_killed += 1;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    phase("processes");
    // 2. Mounts (overlays, namespace files, the private netns dir), deepest first.
    for m in node::mounts_under(&dir) {
        umount(&m)?;
        report.mounts_removed += 1;
    }

    phase("mounts");
    // 3. Links: veths die with their namespaces; delete any left, then the bridge.
    let mut links = net::links_with_prefix(&names::veth_prefix(name));
    links.push(names::bridge(name));
    for l in links {
        if net::link_exists(&l) {
            net::delete_link(&l)?;
            report.links_removed += 1;
        }
    }

    phase("links");
    // 4. nftables tables.
    net::remove_firewall(&names::nft_table(name))?;

    phase("nftables");
    // 5. nspawn's per-machine directories, left behind when nspawn was killed.
    let machine_prefix = format!("kdl-{}-", names::lab_id(name));
    if let Ok(entries) = std::fs::read_dir(NSPAWN_PROPAGATE) {
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let is_ours = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&machine_prefix));
            if is_ours && node::mounts_under(&path).is_empty() {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }

    phase("nspawn dirs");
    // 6. The lab's cgroups (empty now: every process is gone).
    for cg in node::lab_cgroups(name) {
        node::remove_cgroup_tree(&cg)?;
    }
    for cg in node::lab_cgroups(name) {
        // The shared parent goes when the last lab does; another lab's presence keeps it.
        if let Some(parent) = cg.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    phase("cgroups");

    // 7. The state directory, only once nothing is mounted below it.
    if dir.exists() {
        let still = node::mounts_under(&dir);
        if !still.is_empty() {
            return Err(LabError::Leftovers(
                still
                    .iter()
                    .map(|m| format!("mount {}", m.display()))
                    .collect(),
            ));
        }
        // Node trees in parallel: removal is bound by per-unlink latency, not CPU.
        std::thread::scope(|s| {
            for p in &all {
                s.spawn(move || std::fs::remove_dir_all(&p.dir));
            }
        });
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
    }
    phase("state dir");
    let left = leftovers(root, name);
    if !left.is_empty() {
        return Err(LabError::Leftovers(left));
    }
    phase("leftover check");
    report.duration_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Anything of lab `name` still on the host: processes, mounts, links, nftables tables, nspawn
/// directories, the state directory. Empty after a successful `down`.
pub fn leftovers(root: &Path, name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let dir = root.join(name);
    let dir_arg = format!("{}/", dir.display());
    for pid in node::pids_with_arg_prefix(&dir_arg) {
        if pid != std::process::id() as i32 {
            left.push(format!("process {pid}"));
        }
    }
    for m in node::mounts_under(&dir) {
        left.push(format!("mount {}", m.display()));
    }
    let mut links = net::links_with_prefix(&names::veth_prefix(name));
    if net::link_exists(&names::bridge(name)) {
        links.push(names::bridge(name));
    }
    left.extend(links.into_iter().map(|l| format!("link {l}")));
    if net::firewall_exists(&names::nft_table(name)) {
        left.push(format!("nftables table {}", names::nft_table(name)));
    }
    let machine_prefix = format!("kdl-{}-", names::lab_id(name));
    if let Ok(entries) = std::fs::read_dir(NSPAWN_PROPAGATE) {
        for e in entries.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&machine_prefix))
            {
                left.push(format!("directory {}", e.path().display()));
            }
        }
    }
    for cg in node::lab_cgroups(name) {
        for pid in node::cgroup_pids(&cg) {
            left.push(format!("process {pid} in {}", cg.display()));
        }
        if cg.exists() {
            left.push(format!("cgroup {}", cg.display()));
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}
