//! Making nodes: planning a node (name, index, address, labels), rendering and writing its seed
//! (`kubedna-image seed`, or the caller's user-data), creating its namespace, link and container or
//! VM, waiting until its systemd and agent are up; adding and removing nodes of a running lab.

use super::teardown::umount;
use super::*;

impl Lab {
    pub(crate) fn cluster_desc(&self) -> seed::ClusterDesc {
        seed::ClusterDesc {
            name: self.state.name.clone(),
            prefix: self.state.subnet.prefix(),
            gateway: self.gateway(),
            nodes: self
                .state
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.role, n.address))
                .collect(),
            discovery: self.state.discovery,
            doctor: self
                .state
                .doctor
                .as_ref()
                .map(|d| (d.hcloud_api.clone(), d.settings.clone())),
        }
    }

    /// A VM node: disk overlay, seed ISO, tap on the bridge, then qemu.
    pub(crate) fn provision_vm(
        &mut self,
        name: &str,
        user_data: Option<&str>,
    ) -> Result<(), LabError> {
        let record = self.node(name)?.clone();
        let vp = self.vm_paths(name);
        let base = self
            .state
            .image_disk
            .clone()
            .ok_or_else(|| QemuError::NoDisk {
                dir: self.state.image_rootfs.clone(),
            })?;
        qemu::prepare_disk(&vp, &base)?;
        let key = qemu::ensure_ssh_key(&self.dir)?;
        let builder = image::builder().ok_or(QemuError::NoBuilder)?;
        let nic = qemu::Nic {
            mac: qemu::mac(&self.state.name, name),
            address: record.address,
            prefix: self.state.subnet.prefix(),
            gateway: self.gateway(),
        };
        qemu::render_seed_iso(
            &vp,
            &qemu::VmSeed {
                builder: &builder,
                work: &self.dir.join("seed"),
                desc: &self.cluster_desc(),
                secret: &self.state.cluster_secret.0,
                ssh_key: &key,
                user_data,
                nic: &nic,
            },
        )?;
        let source = if user_data.is_some() {
            SeedSource::Caller
        } else {
            SeedSource::KubednaImage
        };
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            r.seed = source;
        }
        let tap = self.veth(&record);
        qemu::create_tap(&tap, &self.state.bridge)?;
        self.save()?;
        qemu::spawn(
            &vp,
            &self.machine(name),
            &tap,
            &qemu::mac(&self.state.name, name),
        )?;
        Ok(())
    }

    pub(crate) fn plan_node(
        &mut self,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<NodeRecord, LabError> {
        self.plan_named_node(None, role, labels)
    }

    /// [`Lab::plan_node`] under a given name (the doctor recreates a node under its old name).
    pub(crate) fn plan_named_node(
        &mut self,
        wanted: Option<&str>,
        role: Role,
        labels: BTreeMap<String, String>,
    ) -> Result<NodeRecord, LabError> {
        let index = self.state.next_index;
        let address = self
            .state
            .subnet
            .host(index + 1)
            .filter(|_| index <= names::MAX_NODE_INDEX)
            .ok_or(LabError::SubnetFull {
                subnet: self.state.subnet,
                index,
                max: self
                    .state
                    .subnet
                    .host_count()
                    .saturating_sub(1)
                    .min(names::MAX_NODE_INDEX),
            })?;
        let n = self.state.nodes.iter().filter(|n| n.role == role).count();
        let mut k = n + 1;
        let name = if let Some(w) = wanted {
            w.to_string()
        } else {
            loop {
                let candidate = format!("{}-{k}", role.prefix());
                if self.state.nodes.iter().all(|n| n.name != candidate) {
                    break candidate;
                }
                k += 1;
            }
        };
        let mut labels = labels;
        labels.insert("kubedna.io/cluster".into(), self.state.name.clone());
        labels.insert("kubedna.io/role".into(), role.as_str().into());
        let record = NodeRecord {
            name,
            role,
            index,
            address,
            labels,
            netem: Netem::default(),
            seed: SeedSource::LabFallback,
        };
        self.state.next_index += 1;
        self.state.nodes.push(record.clone());
        Ok(record)
    }

    /// Overlay, identity, seed, namespace, link, then boot.
    pub(crate) fn provision(
        &mut self,
        name: &str,
        user_data: Option<&str>,
    ) -> Result<(), LabError> {
        if self.is_vm() {
            return self.provision_vm(name, user_data);
        }
        let record = self.node(name)?.clone();
        let p = self.paths(name);
        node::mount_overlay(&self.state.image_rootfs, &p)?;
        node::write_identity(&p, name)?;
        let cps: Vec<Ipv4Addr> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .map(|n| n.address)
            .collect();
        let instance_id = format!("{}-{}-{}", self.state.name, name, record.index);
        let input = SeedInput {
            cluster: &self.state.name,
            node: name,
            role: record.role,
            instance_id: &instance_id,
            address: record.address,
            control_planes: &cps,
            cluster_secret: &self.state.cluster_secret.0,
        };
        let (rendered, source) = match user_data {
            Some(ud) => (
                seed::Seed {
                    meta_data: seed::meta_data(&input),
                    user_data: ud.to_string(),
                    network_config: seed::NETWORK_CONFIG.to_string(),
                },
                SeedSource::Caller,
            ),
            None => match image::builder().filter(|_| image::has_agent(&self.state.image_rootfs)) {
                Some(builder) => {
                    let desc = self.cluster_desc();
                    let rendered = seed::render_with_kubedna_image(
                        &builder,
                        &self.dir.join("seed"),
                        &desc,
                        (
                            &self.state.cluster_secret.0,
                            self.state.doctor.as_ref().map(LabDoctor::token),
                        ),
                        name,
                    )?;
                    (rendered, SeedSource::KubednaImage)
                }
                // FALLBACK until the image has the agent / kubedna-image is installed.
                None => (seed::render_fallback(&input), SeedSource::LabFallback),
            },
        };
        seed::write(&p.root, &rendered)?;
        self.write_peers_files()?;
        if let Some(r) = self.state.nodes.iter_mut().find(|n| n.name == name) {
            r.seed = source;
        }
        node::create_netns(&p)?;
        let veth = self.veth(&record);
        if !net::link_exists(&veth) {
            net::create_node_link(
                &self.state.bridge,
                &veth,
                &p.netns,
                record.address,
                self.state.subnet.prefix(),
                self.gateway(),
            )?;
        }
        self.save()?;
        node::spawn(&p, &self.state.name, &self.machine(name), name)?;
        Ok(())
    }

    /// Waits (in parallel) until the nodes' systemd finished booting and, where the image has the
    /// agent, until `kubedna status` answers. Returns each node's system state.
    pub fn wait_ready(
        &self,
        nodes: &[String],
        deadline: Instant,
    ) -> Result<Vec<(String, String)>, LabError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if self.is_vm() {
            let key = self.ssh_key();
            let vms: Vec<(VmPaths, Ipv4Addr)> = nodes
                .iter()
                .map(|n| Ok((self.vm_paths(n), self.node(n)?.address)))
                .collect::<Result<_, LabError>>()?;
            return std::thread::scope(|s| {
                let handles: Vec<_> = vms
                    .iter()
                    .map(|(vp, addr)| {
                        let key = &key;
                        s.spawn(move || -> Result<(String, String), LabError> {
                            let state = qemu::wait_ready(vp, key, *addr, deadline, timeout)?;
                            Ok((vp.name.clone(), state))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(LabError::Panicked)))
                    .collect()
            });
        }
        let paths: Vec<NodePaths> = nodes.iter().map(|n| self.paths(n)).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = paths
                .iter()
                .map(|p| {
                    s.spawn(move || -> Result<(String, String), LabError> {
                        let state = node::wait_booted(p, deadline, timeout)?;
                        wait_agent(p, deadline, timeout)?;
                        Ok((p.name.clone(), state))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(LabError::Panicked)))
                .collect()
        })
    }

    /// Writes [`LAB_PEERS_FILE`] (every node's address, one per line) into each node whose root
    /// is mounted, so the lab provider's list is current after `add-node`.
    pub(crate) fn write_peers_files(&self) -> Result<(), LabError> {
        let mut text =
            String::from("# Written by kubedna-lab: the lab's nodes (provider kind lab).\n");
        for n in &self.state.nodes {
            text.push_str(&format!("{}  # {}\n", n.address, n.name));
        }
        for n in &self.state.nodes {
            let root = self.paths(&n.name).root;
            if !root.join("etc").is_dir() {
                continue;
            }
            let path = root.join(LAB_PEERS_FILE);
            let err = |source| LabError::State {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text).map_err(err)?;
            std::fs::rename(&tmp, &path).map_err(err)?;
        }
        Ok(())
    }

    /// Adds a node and boots it, without waiting (see [`Lab::wait_ready`]). `user_data` replaces
    /// the rendered user-data (the node provider passes the production user-data this way).
    pub fn add_node(
        &mut self,
        role: Role,
        labels: BTreeMap<String, String>,
        user_data: Option<&str>,
    ) -> Result<NodeRecord, LabError> {
        let record = self.plan_node(role, labels)?;
        self.save()?;
        if let Err(e) = self.provision(&record.name, user_data) {
            let _ = self.remove_node(&record.name);
            return Err(e);
        }
        Ok(self.node(&record.name)?.clone())
    }

    /// [`Lab::add_node`] under `name` (refused if a node of that name exists).
    pub fn add_named_node(
        &mut self,
        name: &str,
        role: Role,
        labels: BTreeMap<String, String>,
        user_data: Option<&str>,
    ) -> Result<NodeRecord, LabError> {
        if self.state.nodes.iter().any(|n| n.name == name) {
            return Err(LabError::BadValue {
                what: "node name",
                value: name.to_string(),
                allowed: "a name no node of the lab has (remove the old node first)",
            });
        }
        let record = self.plan_named_node(Some(name), role, labels)?;
        self.save()?;
        if let Err(e) = self.provision(&record.name, user_data) {
            let _ = self.remove_node(&record.name);
            return Err(e);
        }
        Ok(self.node(&record.name)?.clone())
    }

    /// Kills a node and removes everything of it (processes, overlay, namespace, link, files).
    pub fn remove_node(&mut self, name: &str) -> Result<(), LabError> {
        self.node(name)?;
        let p = self.paths(name);
        qemu::kill_vm(&self.vm_paths(name))?;
        node::kill_node(&p)?;
        // A delay helper holds a socket in the node's namespace (which would keep it alive).
        crate::delay::kill_helpers(&p.netns).map_err(NetError::from)?;
        for m in node::mounts_under(&p.dir)
            .into_iter()
            .chain(node::mounts_under(&p.netns))
        {
            umount(&m)?;
        }
        let _ = std::fs::remove_file(&p.netns);
        for cg in node::lab_cgroups(&self.state.name) {
            let node_cg = cg.join(name);
            node::kill_cgroup_tree(&node_cg, Instant::now() + Duration::from_secs(10))?;
            node::remove_cgroup_tree(&node_cg)?;
        }
        if p.dir.exists() {
            std::fs::remove_dir_all(&p.dir).map_err(|source| LabError::State {
                path: p.dir.clone(),
                source,
            })?;
        }
        if let Some(record) = self.state.nodes.iter().find(|n| n.name == name) {
            net::delete_link(&self.veth(record))?;
        }
        let had_loss = self.node(name)?.netem.loss_pct > 0.0;
        self.state.nodes.retain(|n| n.name != name);
        for g in &mut self.state.partitions {
            g.retain(|n| n != name);
        }
        self.state.partitions.retain(|g| !g.is_empty());
        if self.state.partitions.len() < 2 {
            self.state.partitions.clear();
        }
        self.apply_partitions(&self.state.partitions)?;
        if had_loss {
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
}

pub(crate) fn agent_state(p: &NodePaths) -> String {
    let t = Some(Duration::from_secs(5));
    let present = node::exec(p, &["systemctl", "cat", "kubedna-agent.service"], t)
        .map(|o| o.success())
        .unwrap_or(false);
    if !present {
        return "absent".into();
    }
    let active = node::exec(p, &["systemctl", "is-active", "kubedna-agent.service"], t)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    if active != "active" {
        return active;
    }
    match node::exec(p, &["kubedna", "status"], t) {
        Ok(o) if o.success() => "ready".into(),
        _ => "active".into(),
    }
}

/// Where the node's seed enabled the agent, waits until it is active and `kubedna status`
/// answers. Called once boot finished, so cloud-init's runcmd (which enables it) has run.
pub(crate) fn wait_agent(
    p: &NodePaths,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), LabError> {
    let mut last = agent_state(p);
    if last == "absent" {
        return Ok(());
    }
    let enabled = node::exec(
        p,
        &["systemctl", "is-enabled", "kubedna-agent.service"],
        Some(Duration::from_secs(5)),
    )
    .map(|o| o.stdout.trim() == "enabled")
    .unwrap_or(false);
    if !enabled && last != "active" {
        return Ok(());
    }
    while last != "ready" {
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout {
                node: p.name.clone(),
                what: "kubedna-agent ready (`kubedna status` answering)",
                timeout,
                last,
                console: p.console.clone(),
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
        last = agent_state(p);
    }
    Ok(())
}
