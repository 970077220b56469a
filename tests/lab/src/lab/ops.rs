//! Operating on a running lab's nodes: status, exec, ping, start, stop, power cut, reinstall,
//! partitions, loss and delay on a node's link, and the isolation check (no route out).

use super::provision::agent_state;
use super::teardown::umount;
use super::*;

impl Lab {
    /// Status of every node.
    pub fn status(&self) -> Vec<NodeStatus> {
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .state
                .nodes
                .iter()
                .map(|n| {
                    let p = self.paths(&n.name);
                    let vm = self
                        .is_vm()
                        .then(|| (self.vm_paths(&n.name), self.ssh_key()));
                    s.spawn(move || {
                        let (state, agent) = match &vm {
                            Some((vp, key)) => qemu::node_state(vp, key, n.address),
                            None => {
                                let state = node::system_state(&p);
                                let agent = if matches!(state.as_str(), "stopped" | "starting") {
                                    "-".to_string()
                                } else {
                                    agent_state(&p)
                                };
                                (state, agent)
                            }
                        };
                        NodeStatus {
                            name: n.name.clone(),
                            role: n.role,
                            address: n.address,
                            state,
                            agent,
                            seed: n.seed,
                            netem: n.netem,
                            labels: n.labels.clone(),
                        }
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    }

    /// Runs a command in a node and captures its output.
    pub fn exec(
        &self,
        node: &str,
        argv: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Output, LabError> {
        let record = self.node(node)?;
        if self.is_vm() {
            self.require_running_vm(node)?;
            return Ok(qemu::ssh(&self.ssh_key(), record.address, argv, timeout)?);
        }
        Ok(node::exec(&self.paths(node), argv, timeout)?)
    }

    /// Sends `count` pings from node `from`'s network namespace to `to` (an address), `interval`
    /// seconds apart, each answered within 1 s or lost; returns how many were answered. Uses the
    /// host's `ping` inside the namespace, so it needs nothing in the image and measures exactly
    /// the node's link.
    pub fn ping(
        &self,
        from: &str,
        to: Ipv4Addr,
        count: u32,
        interval: f64,
    ) -> Result<u32, LabError> {
        self.node(from)?;
        if self.is_vm() {
            return Err(LabError::NotForVm {
                node: from.to_string(),
                what: "ping from a node",
                instead: "the image has no ping; ping the node's address from the host, which sits on the lab bridge",
            });
        }
        let ns = format!("--net={}", self.paths(from).netns.display());
        let (c, i, addr) = (count.to_string(), format!("{interval}"), to.to_string());
        let args = [
            ns.as_str(),
            "--",
            "ping",
            "-n",
            "-q",
            "-c",
            &c,
            "-i",
            &i,
            "-W",
            "1",
            &addr,
        ];
        let budget = Duration::from_secs_f64(count as f64 * interval + 10.0);
        let out = cmd::output("nsenter", &args, Some(budget))?;
        // "N packets transmitted, M received, ..." (exit 1 when none came back).
        let received = out
            .stdout
            .split(',')
            .find(|p| p.contains("received"))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        match received {
            Some(r) => Ok(r),
            None => Err(out
                .check()
                .err()
                .map(LabError::Cmd)
                .unwrap_or(LabError::Panicked)),
        }
    }

    /// Runs a command in a node with the caller's terminal.
    pub fn exec_interactive(
        &self,
        node: &str,
        argv: &[&str],
    ) -> Result<std::process::ExitStatus, LabError> {
        let record = self.node(node)?;
        if self.is_vm() {
            self.require_running_vm(node)?;
            return Ok(qemu::ssh_interactive(
                &self.ssh_key(),
                record.address,
                argv,
            )?);
        }
        Ok(node::exec_interactive(&self.paths(node), argv)?)
    }

    /// Boots stopped nodes (all when `nodes` is empty) and waits until they are ready.
    pub fn start(&mut self, nodes: &[String], timeout: Duration) -> Result<(), LabError> {
        let names = self.select(nodes)?;
        for n in &names {
            if self.is_vm() {
                let vp = self.vm_paths(n);
                if qemu::running(&vp) {
                    continue;
                }
                let record = self.node(n)?.clone();
                let tap = self.veth(&record);
                qemu::create_tap(&tap, &self.state.bridge)?;
                qemu::spawn(&vp, &self.machine(n), &tap, &qemu::mac(&self.state.name, n))?;
                continue;
            }
            let p = self.paths(n);
            if !node::node_pids(&p).is_empty() {
                continue;
            }
            node::mount_overlay(&self.state.image_rootfs, &p)?;
            net::set_link(&self.veth(self.node(n)?), true)?;
            node::spawn(&p, &self.state.name, &self.machine(n), n)?;
        }
        self.wait_ready(&names, Instant::now() + timeout)?;
        Ok(())
    }

    /// Shuts nodes down cleanly (all when `nodes` is empty); killed after `grace`.
    pub fn stop(&self, nodes: &[String], grace: Duration) -> Result<(), LabError> {
        let names = self.select(nodes)?;
        std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|n| {
                    let p = self.paths(n);
                    let vp = self.is_vm().then(|| self.vm_paths(n));
                    s.spawn(move || -> Result<(), LabError> {
                        match vp {
                            Some(vp) => Ok(qemu::powerdown(&vp, grace)?),
                            None => Ok(node::stop_node(&p, grace)?),
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap_or(Ok(()))?;
            }
            Ok::<(), LabError>(())
        })?;
        // The namespace outlives the node: without carrier its kernel no longer answers either.
        for n in &names {
            net::set_link(&self.veth(self.node(n)?), false)?;
        }
        Ok(())
    }

    /// Power cut: SIGKILL the node's PID 1 and nspawn.
    /// The link goes down first: a node without power answers nothing, not even from the kernel
    /// of its (surviving) network namespace.
    pub fn kill(&self, node: &str) -> Result<(), LabError> {
        let record = self.node(node)?;
        net::set_link(&self.veth(record), false)?;
        if self.is_vm() {
            return Ok(qemu::kill_vm(&self.vm_paths(node))?);
        }
        Ok(node::kill_node(&self.paths(node))?)
    }

    /// Reinstall with a wiped disk: power cut, the node's overlay upper layer (its whole disk)
    /// deleted, then a first boot from the image again under the same name, address and link,
    /// with a freshly rendered seed (cloud-init runs as on a new machine; new machine-id).
    /// Waits until the node is ready.
    pub fn reinstall(&mut self, node: &str, timeout: Duration) -> Result<(), LabError> {
        let record = self.node(node)?.clone();
        self.kill(node)?;
        if self.is_vm() {
            // A wiped disk: the overlay and firmware variables go; the seed is rendered anew.
            qemu::wipe_disk(&self.vm_paths(node))?;
            self.provision(node, None)?;
            self.wait_ready(&[node.to_string()], Instant::now() + timeout)?;
            return Ok(());
        }
        let p = self.paths(node);
        for m in node::mounts_under(&p.dir) {
            umount(&m)?;
        }
        for d in [&p.upper, &p.work, &p.containerd] {
            if d.exists() {
                std::fs::remove_dir_all(d).map_err(|source| LabError::State {
                    path: d.to_path_buf(),
                    source,
                })?;
            }
        }
        net::set_link(&self.veth(&record), true)?;
        self.provision(node, None)?;
        self.wait_ready(&[node.to_string()], Instant::now() + timeout)?;
        Ok(())
    }

    pub(crate) fn require_running_vm(&self, node: &str) -> Result<(), LabError> {
        if qemu::running(&self.vm_paths(node)) {
            Ok(())
        } else {
            Err(NodeError::NotRunning {
                node: node.to_string(),
            }
            .into())
        }
    }

    pub(crate) fn select(&self, nodes: &[String]) -> Result<Vec<String>, LabError> {
        if nodes.is_empty() {
            return Ok(self.state.nodes.iter().map(|n| n.name.clone()).collect());
        }
        for n in nodes {
            self.node(n)?;
        }
        Ok(nodes.to_vec())
    }

    /// Drops all traffic between nodes of different groups (nodes in no group are unaffected).
    /// Replaces any current partition.
    pub fn partition(&mut self, groups: Vec<Vec<String>>) -> Result<(), LabError> {
        if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
            return Err(LabError::BadPartition(
                "need at least two non-empty groups".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in groups.iter().flatten() {
            self.node(n)?;
            if !seen.insert(n.clone()) {
                return Err(LabError::BadPartition(format!("{n} is in two groups")));
            }
        }
        self.apply_partitions(&groups)?;
        self.state.partitions = groups;
        self.save()
    }

    /// Removes every partition.
    pub fn heal(&mut self) -> Result<(), LabError> {
        self.apply_partitions(&[])?;
        self.state.partitions.clear();
        self.save()
    }

    pub(crate) fn apply_partitions(&self, groups: &[Vec<String>]) -> Result<(), LabError> {
        let mut ports = Vec::new();
        for g in groups {
            let mut v = Vec::new();
            for n in g {
                v.push(self.veth(self.node(n)?));
            }
            ports.push(v);
        }
        net::set_partitions(&names::nft_table(&self.state.name), &ports)?;
        Ok(())
    }

    /// Sets packet loss (percent, each direction) on a node's link; 0 clears it.
    pub fn set_loss(&mut self, node: &str, pct: f32) -> Result<(), LabError> {
        if !(0.0..=100.0).contains(&pct) {
            return Err(LabError::BadValue {
                what: "loss",
                value: pct.to_string(),
                allowed: "a percentage from 0 to 100",
            });
        }
        self.update_netem(node, |n| n.loss_pct = pct)
    }

    /// Sets delay (ms, each direction) on a node's link; 0 clears it.
    pub fn set_delay(&mut self, node: &str, ms: u32) -> Result<(), LabError> {
        if ms > crate::delay::MAX_MS {
            return Err(LabError::BadValue {
                what: "delay",
                value: ms.to_string(),
                allowed: "milliseconds from 0 to 10000",
            });
        }
        self.update_netem(node, |n| n.delay_ms = ms)
    }

    pub(crate) fn update_netem(
        &mut self,
        node: &str,
        f: impl FnOnce(&mut Netem),
    ) -> Result<(), LabError> {
        let record = self.node(node)?.clone();
        let mut netem = record.netem;
        f(&mut netem);
        if netem.delay_ms != record.netem.delay_ms {
            if self.is_vm() {
                return Err(LabError::NotForVm {
                    node: node.to_string(),
                    what: "delay",
                    instead: "use an nspawn lab (delay works inside a node's network namespace)",
                });
            }
            let p = self.paths(node);
            net::set_delay(
                &self.veth(&record),
                &p.netns,
                netem.delay_ms,
                &p.dir.join("delay.log"),
            )?;
        }
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == node) {
            r.netem = netem;
        }
        if netem.loss_pct != record.netem.loss_pct {
            let ports: Vec<(String, f32)> = self
                .state
                .nodes
                .iter()
                .map(|n| (self.veth(n), n.netem.loss_pct))
                .collect();
            net::set_loss(&names::nft_table(&self.state.name), &ports)?;
        }
        self.save()
    }

    /// Checks that the lab cannot reach beyond its bridge: bridge ports are only lab veths, node
    /// routes stay on the lab subnet (default only via the bridge address), the forward-drop rules
    /// are in place, and no NAT rule mentions the lab. Returns the problems found.
    pub fn check_isolation(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let bridge = &self.state.bridge;
        let prefix = names::veth_prefix(&self.state.name);
        match cmd::run("ip", &["-o", "link", "show", "master", bridge]) {
            Ok(out) => {
                for line in out.lines() {
                    let port = line
                        .split(':')
                        .nth(1)
                        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
                        .unwrap_or_default();
                    if !port.starts_with(&prefix) {
                        problems.push(format!("bridge {bridge} has a foreign port {port}"));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot list bridge ports: {e}")),
        }
        let gw = self.gateway().to_string();
        for n in &self.state.nodes {
            let p = self.paths(&n.name);
            let argv = ["ip", "-4", "-o", "route", "show", "table", "all"];
            // A VM's NIC is named by udev (e.g. enp0s2), a nspawn node's is eth0.
            let dev = if self.is_vm() { "dev " } else { "dev eth0" };
            let routes = if self.is_vm() {
                self.exec(&n.name, &argv, Some(Duration::from_secs(30)))
                    .map_err(|e| e.to_string())
                    .and_then(|o| o.check().map(|o| o.stdout).map_err(|e| e.to_string()))
            } else {
                net::in_netns(&p.netns, &argv).map_err(|e| e.to_string())
            };
            match routes {
                Ok(out) => {
                    for line in out.lines() {
                        let mut words = line.split_whitespace();
                        let first = words.next().unwrap_or("");
                        let ok = if first == "default" {
                            line.contains(&format!("via {gw} ")) && line.contains(dev)
                        } else if matches!(first, "local" | "broadcast") {
                            true
                        } else {
                            let dst = first.split('/').next().unwrap_or("");
                            dst.parse::<Ipv4Addr>()
                                .map(|a| self.state.subnet.contains(a))
                                .unwrap_or(false)
                        };
                        if !ok {
                            problems.push(format!("node {} has route {line:?}", n.name));
                        }
                    }
                }
                Err(e) => problems.push(format!("cannot read routes of {}: {e}", n.name)),
            }
        }
        let table = names::nft_table(&self.state.name);
        match cmd::run("nft", &["list", "table", "inet", &table]) {
            Ok(t) => {
                let want_in = format!("iifname \"{bridge}\" oifname != \"{bridge}\" drop");
                let want_out = format!("oifname \"{bridge}\" iifname != \"{bridge}\" drop");
                if !t.contains(&want_in) || !t.contains(&want_out) {
                    problems.push(format!("forward-drop rules missing from inet {table}"));
                }
            }
            Err(e) => problems.push(format!("lab firewall missing: {e}")),
        }
        match cmd::run("nft", &["list", "ruleset"]) {
            Ok(rules) => {
                let subnet = self.state.subnet.to_string();
                for line in rules.lines() {
                    let nat = line.contains("masquerade") || line.contains("snat");
                    if nat && (line.contains(bridge.as_str()) || line.contains(&subnet)) {
                        problems.push(format!("NAT rule mentions the lab: {}", line.trim()));
                    }
                }
            }
            Err(e) => problems.push(format!("cannot list nftables ruleset: {e}")),
        }
        problems
    }
}
