//! A control plane's formation: its etcd TLS files and unit, the bootstrap decision and the
//! learner path under the join lock, the cluster ID record, the init claim, and the kubeadm
//! steps ([`crate::progress::decide_kubeadm`]) observed, decided and acted on in one loop. It
//! never runs kubeadm without the decision, never races a kubeadm run an earlier agent
//! started, and never resets a node once Kubernetes has data in etcd.

use super::*;

impl<P: Peers, S: Systemd + 'static, K: Kubeadm, C: Clock> Engine<P, S, K, C> {
    // -- control planes ------------------------------------------------------------------------

    pub(super) fn set(&self) -> &MemberSet {
        // Present for every control plane: `new` refused a control plane without it.
        self.shared
            .set
            .as_ref()
            .unwrap_or_else(|| unreachable!("control-plane engine without a member set"))
    }

    pub(super) fn pki(&self) -> Result<MemberFiles, EngineError> {
        let dir = rooted(&self.cfg().root, PKI_DIR);
        let files = MemberFiles::in_dir(&dir);
        let complete = [
            &files.ca,
            &files.server_cert,
            &files.server_key,
            &files.peer_cert,
            &files.peer_key,
            &files.client_cert,
            &files.client_key,
        ]
        .iter()
        .all(|p| p.exists());
        if complete {
            return Ok(files);
        }
        let err = |source| EngineError::Pki {
            node: self.node(),
            source,
        };
        let ca = EtcdCa::derive(&self.cfg().cluster, &self.cfg().secret.0).map_err(err)?;
        let set = self.set();
        let (_, adv) = self.cfg().urls(set, &self.cfg().node);
        let mut names = vec![format!(
            "{}.{}.kubedna",
            self.cfg().node,
            self.cfg().cluster
        )];
        let mut ips = Vec::new();
        for url in [&adv.peer, &adv.client] {
            if let Some(host) = url_host(url) {
                match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => names.push(host.to_string()),
                }
            }
        }
        if let Ok(ip) = self.cfg().advertise_address.parse() {
            ips.push(ip);
        }
        names.sort();
        names.dedup();
        ips.sort();
        ips.dedup();
        ca.write_member(&dir, &self.cfg().node, &names, &ips)
            .map_err(err)
    }

    pub(super) fn etcd_spec(&self, files: &MemberFiles, p: &Persisted) -> EtcdSpec {
        let set = self.set();
        let (listen, advertise) = self.cfg().urls(set, &self.cfg().node);
        EtcdSpec {
            binary: self.cfg().etcd_binary.clone(),
            name: self.node(),
            data_dir: rooted(&self.cfg().root, ETCD_DATA_DIR),
            files: files.clone(),
            listen,
            advertise,
            initial_cluster: p
                .initial_cluster
                .clone()
                .unwrap_or_else(|| self.cfg().initial_cluster(set)),
            initial_cluster_state: p.etcd_state.unwrap_or(ClusterState::New),
            initial_cluster_token: set.initial_cluster_token(),
        }
    }

    /// A connection to every member of E that serves now (this node's own first).
    pub(super) async fn connect_serving(&self) -> Option<Coordinator> {
        let files = MemberFiles::in_dir(&rooted(&self.cfg().root, PKI_DIR));
        Coordinator::connect_tls_serving(
            &self.cfg().client_urls(self.set(), None),
            &self.cfg().cluster,
            &files,
        )
        .await
        .ok()
    }

    /// After a failed duty round: rebuild the long-lived connection from the members that
    /// serve now, so one member refusing connections cannot keep failing this node's calls.
    pub(super) async fn reconnect_after_failure(&self) {
        if self.cfg().role != Role::ControlPlane || self.coordinator().is_none() {
            return;
        }
        if let Some(c) = self.connect_serving().await {
            tracing::info!(node = %self.cfg().node, endpoints = ?c.endpoints(), "etcd: reconnected to the members that serve");
            *lock(&self.shared.coord) = Some(c);
        }
    }

    pub(super) async fn connect(
        &self,
        endpoints: &[String],
        files: &MemberFiles,
    ) -> Result<Coordinator, EngineError> {
        Coordinator::connect_tls(endpoints, &self.cfg().cluster, files)
            .await
            .map_err(self.coord_err("cannot reach etcd"))
    }

    /// Asks the other members of E until the bootstrap rule decides.
    pub(super) async fn bootstrap_decision(
        &self,
    ) -> Result<(Decision, Vec<StartedAnswer>), EngineError> {
        let set = self.set();
        let me = self.node();
        loop {
            let alive: BTreeSet<String> = self.peers.alive().into_iter().map(|p| p.name).collect();
            let mut answers = Vec::new();
            for name in set.names().filter(|n| *n != me && alive.contains(*n)) {
                if let Ok(Response::Started(a)) = self.peers.ask(name, Request::Started).await {
                    answers.push(a);
                }
            }
            let d = decide(&me, set, false, &answers).map_err(|source| EngineError::Config {
                node: me.clone(),
                source,
            })?;
            match d {
                Decision::Wait { have, need } => {
                    self.set_phase(
                        Phase::WaitingForQuorum,
                        Some(format!(
                            "{have} of {need} other control planes answered \"not started\""
                        )),
                    );
                    self.clock.sleep(self.cfg().timings.poll).await;
                }
                d => return Ok((d, answers)),
            }
        }
    }

    /// The member list as the running cluster sees it, if a quorum serves.
    pub(super) async fn try_members(
        &self,
        files: &MemberFiles,
    ) -> Option<(Coordinator, Vec<MemberInfo>)> {
        let endpoints = self.cfg().client_urls(self.set(), Some(&self.cfg().node));
        let attempt = async {
            let c = self.connect(&endpoints, files).await.ok()?;
            // A linearizable read proves a quorum; the member list alone does not.
            c.get(&c.key("init")).await.ok()?;
            let m = c.members().await.ok()?;
            Some((c, m))
        };
        self.within(Duration::from_secs(5), attempt).await.flatten()
    }

    /// Takes the join lock: back from before a restart if this node's persisted lease still
    /// holds it (so a join in progress keeps its lock across an agent restart), else anew,
    /// persisting its lease.
    /// Takes back the join lock this node held before a restart (its lease persisted), if the
    /// lease still holds it; clears the record otherwise.
    pub(super) async fn resume_join_lock(
        &self,
        coord: &Coordinator,
        p: &mut Persisted,
    ) -> Result<Option<Leadership>, EngineError> {
        let Some(lease) = p.join_lease else {
            return Ok(None);
        };
        let ttl = self.cfg().timings.lease_ttl;
        let resumed = coord
            .resume("join", &self.cfg().node, lease, ttl)
            .await
            .map_err(self.coord_err("cannot take the join lock back"))?;
        match &resumed {
            Some(_) => {
                tracing::info!(node = %self.cfg().node, "took back the join lock held before a restart")
            }
            None => {
                p.join_lease = None;
                self.persist(p)?;
            }
        }
        Ok(resumed)
    }

    pub(super) async fn acquire_join_lock(
        &self,
        coord: &Coordinator,
        p: &mut Persisted,
    ) -> Result<Leadership, EngineError> {
        let ttl = self.cfg().timings.lease_ttl;
        if let Some(l) = self.resume_join_lock(coord, p).await? {
            return Ok(l);
        }
        loop {
            if let Some(l) = coord
                .acquire("join", &self.cfg().node, ttl)
                .await
                .map_err(self.coord_err("cannot take the join lock"))?
            {
                p.join_lease = Some(l.lease);
                self.persist(p)?;
                return Ok(l);
            }
            lock(&self.shared.status).waiting_for =
                Some("the join lock (another control plane is joining)".into());
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    /// Health of members by a TLS status call to each client URL.
    pub(super) async fn healthy(
        &self,
        members: &[MemberInfo],
        files: &MemberFiles,
    ) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for m in members {
            let probe = async {
                let c = self.connect(&m.client_urls, files).await.ok()?;
                c.client().maintenance_client().status().await.ok()
            };
            if !m.client_urls.is_empty()
                && self
                    .within(Duration::from_secs(2), probe)
                    .await
                    .flatten()
                    .is_some()
            {
                out.insert(m.id);
            }
        }
        out
    }

    /// This node's etcd member is added as a learner (after removing a stale one of the same
    /// peer URL), under the join lock, which the caller keeps until the kubeadm join is done.
    pub(super) async fn add_as_learner(
        &self,
        coord: &Coordinator,
        members: Vec<MemberInfo>,
        files: &MemberFiles,
        p: &mut Persisted,
    ) -> Result<Leadership, EngineError> {
        let join_lock = self.acquire_join_lock(coord, p).await?;
        let (_, adv) = self.cfg().urls(self.set(), &self.cfg().node);
        let mut members = members;
        if let Some(stale) = members
            .iter()
            .find(|m| m.peer_urls.contains(&adv.peer))
            .cloned()
        {
            tracing::info!(node = %self.cfg().node, id = format!("{:x}", stale.id), "removing this node's stale etcd member before rejoining");
            let healthy = self.healthy(&members, files).await;
            let removed = coord
                .remove_member_within(stale.id, &healthy, Duration::from_secs(30))
                .await;
            let outcome = match &removed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(refused)) => Err(refused.to_string()),
                Err(e) => Err(kubedna_host::error_chain(e)),
            };
            self.actions().record(
                "etcd.member.remove",
                "this node lost its disk: its old etcd member goes before it rejoins as a new one",
                serde_json::json!({ "id": format!("{:x}", stale.id), "peerUrl": adv.peer }),
                outcome,
            );
            match removed.map_err(self.coord_err("cannot remove this node's stale etcd member"))? {
                Ok(()) => {}
                Err(source) => {
                    return Err(EngineError::RemovalRefused {
                        node: self.node(),
                        source,
                    })
                }
            }
            members.retain(|m| m.id != stale.id);
        }
        let deadline = self.clock.instant() + Duration::from_secs(30);
        let why = "a control plane joins a formed etcd cluster as a learner, promoted once in sync";
        let (id, members) = loop {
            match coord.add_learner(&adv.peer).await {
                Ok(r) => break r,
                Err(_) if self.clock.instant() < deadline => {
                    self.clock.sleep(self.cfg().timings.poll).await
                }
                Err(e) => {
                    let e = self.coord_err("cannot add this node as a learner")(e);
                    let args = serde_json::json!({ "peerUrl": adv.peer });
                    self.actions()
                        .done::<(), _>("etcd.member.add", why, args, &Err(&e));
                    return Err(e);
                }
            }
        };
        self.actions().record(
            "etcd.member.add",
            why,
            serde_json::json!({ "id": format!("{id:x}"), "peerUrl": adv.peer, "learner": true }),
            Ok(()),
        );
        let initial = members
            .iter()
            .filter_map(|m| {
                let name = if m.id == id {
                    self.node()
                } else {
                    m.name.clone()
                };
                m.peer_urls.first().map(|u| format!("{name}={u}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        p.etcd_state = Some(ClusterState::Existing);
        p.initial_cluster = Some(initial);
        p.learner_id = Some(id);
        Ok(join_lock)
    }

    pub(super) async fn promote(&self, coord: &Coordinator, id: u64) -> Result<(), EngineError> {
        let secs = 60;
        let deadline = self.clock.instant() + Duration::from_secs(secs);
        loop {
            match coord.promote(id).await {
                Ok(()) => {
                    self.actions().record(
                        "etcd.member.promote",
                        "this node's learner caught up with the etcd leader",
                        serde_json::json!({ "id": format!("{id:x}") }),
                        Ok(()),
                    );
                    return Ok(());
                }
                Err(CoordError::Etcd { source, .. })
                    if source.to_string().contains("not found")
                        || source.to_string().contains("not a learner") =>
                {
                    return Ok(()); // promoted by an earlier attempt
                }
                Err(_) if self.clock.instant() < deadline => {
                    self.clock.sleep(self.cfg().timings.poll).await
                }
                Err(_) => {
                    let e = EngineError::NotPromoted {
                        node: self.node(),
                        id,
                        secs,
                    };
                    let args = serde_json::json!({ "id": format!("{id:x}") });
                    self.actions().done::<(), _>(
                        "etcd.member.promote",
                        "this node's learner should have caught up",
                        args,
                        &Err(&e),
                    );
                    return Err(e);
                }
            }
        }
    }

    pub(super) async fn form_control_plane(&self) -> Result<(), EngineError> {
        self.prepare().await?;
        let files = self.pki()?;
        let mut p = self.persisted();
        let mut join_lock: Option<Leadership> = None;
        let mut early: Option<Coordinator> = None;
        if !p.progress.etcd_started() {
            let (decision, answers) = self.bootstrap_decision().await?;
            let heard: Vec<String> = answers
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.from,
                        match (&a.started, &a.cluster_id) {
                            (true, Some(id)) => format!("started, cluster {id}"),
                            (true, None) => "started".to_string(),
                            (false, _) => "not started".to_string(),
                        }
                    )
                })
                .collect();
            tracing::info!(node = %self.cfg().node, ?decision, answers = ?heard, "etcd bootstrap decision");
            match decision {
                Decision::StartNew => {
                    p.etcd_state = Some(ClusterState::New);
                    p.initial_cluster = Some(self.cfg().initial_cluster(self.set()));
                }
                Decision::Join { via } => {
                    self.set_phase(
                        Phase::StartingEtcd,
                        Some(format!("joining etcd ({via} started it)")),
                    );
                    let (_, adv) = self.cfg().urls(self.set(), &self.cfg().node);
                    match self.try_members(&files).await {
                        Some((coord, members)) => {
                            let mine = members.iter().find(|m| m.peer_urls.contains(&adv.peer));
                            match mine {
                                // In the initial set and never started: start it as `existing`.
                                Some(m) if m.name.is_empty() && !m.learner => {
                                    p.etcd_state = Some(ClusterState::Existing);
                                    p.initial_cluster =
                                        Some(self.cfg().initial_cluster(self.set()));
                                }
                                _ => {
                                    join_lock = Some(
                                        self.add_as_learner(&coord, members, &files, &mut p)
                                            .await?,
                                    );
                                }
                            }
                            early = Some(coord);
                        }
                        None => {
                            // No quorum serves. If no started member has ever seen one, the
                            // cluster is still forming (a staggered first boot) and waits for
                            // this node's initial member: start it as `new`, with the same
                            // initial cluster and token, as a simultaneous boot would have
                            // (etcd 3.4 refuses `existing` until a cluster version is decided).
                            // Otherwise wait for the formed cluster's quorum to come back.
                            if fallback(&self.node(), self.set(), &answers)
                                == Fallback::WaitForQuorum
                            {
                                return Err(EngineError::NoQuorum { node: self.node() });
                            }
                            p.etcd_state = Some(ClusterState::New);
                            p.initial_cluster = Some(self.cfg().initial_cluster(self.set()));
                        }
                    }
                }
                Decision::Resume | Decision::Wait { .. } => {}
            }
            p.progress = Progress::EtcdStarted;
            self.persist(&p)?;
        }

        self.set_phase(Phase::StartingEtcd, None);
        let spec = self.etcd_spec(&files, &p);
        let started = crate::etcd_unit::install_and_start(&*self.sd, &self.cfg().root, &spec).await;
        self.actions().done(
            "etcd.start",
            "this control plane runs an etcd member of the cluster",
            serde_json::json!({
                "clusterState": p.etcd_state,
                "initialCluster": p.initial_cluster,
            }),
            &started,
        );
        started.map_err(|source| EngineError::EtcdUnit {
            node: self.node(),
            source: Box::new(source),
        })?;
        // The start job is done once etcd serves, i.e. once its cluster formed: record the
        // cluster ID now, so this node answers "formed" from its record from here on.
        if p.cluster_id.is_none() {
            if let Some(id) = local_cluster_id(self.cfg(), self.set()).await {
                p.cluster_id = Some(id);
                self.persist(&p)?;
                lock(&self.shared.status).cluster_id = p.cluster_id.clone();
            }
        }
        let coord = match early {
            Some(c) => c,
            None => {
                self.connect(&self.cfg().client_urls(self.set(), None), &files)
                    .await?
            }
        };
        // A restarted agent takes its join lock back first, before waiting for the join its
        // predecessor left running: the lock must not lapse while that join runs.
        if join_lock.is_none() && !p.progress.is_member() {
            join_lock = self.resume_join_lock(&coord, &mut p).await?;
        }
        if let Some(id) = p.learner_id {
            if join_lock.as_ref().is_some_and(Leadership::is_lost) {
                return Err(EngineError::JoinLockLost {
                    node: self.node(),
                    step: "promoting the learner",
                });
            }
            self.promote(&coord, id).await?;
            p.learner_id = None;
            self.persist(&p)?;
        }
        // Now a voter: the long-lived connection reaches every member, this node's own first,
        // so losing any one member (the etcd leader included) leaves the engine connected.
        let coord = match self.connect_serving().await {
            Some(all) => all,
            None => coord,
        };
        *lock(&self.shared.coord) = Some(coord.clone());
        if p.cluster_id.is_none() {
            let resp = coord
                .client()
                .kv_client()
                .get(coord.key("init"), None)
                .await
                .map_err(|e| EngineError::Coord {
                    node: self.node(),
                    what: "cannot read the cluster ID",
                    source: Box::new(CoordError::Etcd {
                        endpoints: vec![],
                        what: "get",
                        source: e,
                    }),
                })?;
            if let Some(h) = resp.header() {
                p.cluster_id = Some(format!("{:x}", h.cluster_id()));
                self.persist(&p)?;
                lock(&self.shared.status).cluster_id = p.cluster_id.clone();
            }
        }
        self.refresh_members(&coord).await;

        if !p.progress.is_member() {
            if p.init_nonce.is_none() {
                let mut nonce = [0u8; 16];
                getrandom::fill(&mut nonce).expect("the kernel's random source is available");
                p.init_nonce = Some(hex::encode(nonce));
                self.persist(&p)?;
            }
            let nonce = p.init_nonce.clone().unwrap_or_default();
            let decision = coord
                .init_once(&self.cfg().node, &nonce)
                .await
                .map_err(self.coord_err("the init transaction failed"))?;
            lock(&self.shared.status).init_recorded = true;
            let claim = match decision {
                InitDecision::Won { .. } => Claim::Mine,
                InitDecision::Taken { by } if by == self.cfg().node => Claim::MyNameNotMine,
                InitDecision::Taken { .. } => Claim::Other,
            };
            self.kubeadm_steps(Some((&coord, claim)), &mut p, &mut join_lock)
                .await?;
        } else {
            lock(&self.shared.status).init_recorded = true;
        }
        if let Some(l) = join_lock {
            let _ = coord.resign(l).await;
        }
        if p.join_lease.take().is_some() {
            self.persist(&p)?;
        }
        self.start_kubelet().await?;
        Ok(())
    }

    /// What [`decide_kubeadm`] needs, observed after every kubeadm run an earlier agent left
    /// going has ended (they run to their end outside the agent: never race them).
    pub(super) async fn observe_kubeadm(
        &self,
        coord: Option<(&Coordinator, Claim)>,
    ) -> Result<KubeadmFacts, EngineError> {
        let records = self.kubeadm.records();
        for op in [KubeadmOp::Init, KubeadmOp::Join, KubeadmOp::Reset] {
            records.settle(op).await.map_err(self.kubeadm_err())?;
        }
        let exists = |p: &str| rooted(&self.cfg().root, p).exists();
        let kubelet_conf = exists("/etc/kubernetes/kubelet.conf");
        let join_evidence = records.succeeded(KubeadmOp::Join) && kubelet_conf;
        // A failed join can stop after writing any of these (the control-plane files come
        // before kubelet-start, which refuses a name whose old Node is still Ready).
        let join_leftovers = [
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/bootstrap-kubelet.conf",
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/manifests/kube-apiserver.yaml",
        ]
        .into_iter()
        .any(exists);
        let (claim, init_done, kubernetes_data) = match coord {
            Some((coord, claim)) => {
                let done = coord
                    .get(&coord.key("init-done"))
                    .await
                    .map_err(self.coord_err("cannot read the init record"))?;
                let data = coord
                    .any_key_under("/registry/")
                    .await
                    .map_err(self.coord_err("cannot check etcd for Kubernetes data"))?;
                (Some(claim), done.is_some(), data)
            }
            None => (None, false, false),
        };
        Ok(KubeadmFacts {
            claim,
            init_done,
            init_evidence: self.init_evidence(),
            join_evidence,
            half_joined: join_leftovers && !join_evidence,
            kubernetes_data,
        })
    }

    /// Observes, decides ([`decide_kubeadm`]) and acts until kubeadm is done on this node.
    /// `coord` is the control plane's etcd with its init claim (None for a worker); a
    /// control plane joins under `join_lock`, taken here when needed.
    pub(super) async fn kubeadm_steps(
        &self,
        coord: Option<(&Coordinator, Claim)>,
        p: &mut Persisted,
        join_lock: &mut Option<Leadership>,
    ) -> Result<(), EngineError> {
        loop {
            let facts = self.observe_kubeadm(coord).await?;
            let step = decide_kubeadm(p.progress, &facts);
            tracing::info!(node = %self.cfg().node, progress = ?p.progress, ?facts, ?step, "kubeadm step");
            match step {
                KubeadmStep::Done => {
                    p.progress = Progress::Member {
                        etcd_started: p.progress.etcd_started(),
                        init_ran: p.progress.init_ran(),
                    };
                    self.persist(p)?;
                    return Ok(());
                }
                KubeadmStep::RecordInitSucceeded => {
                    p.progress = Progress::InitSucceeded;
                    self.persist(p)?;
                    if let Some((coord, _)) = coord {
                        self.record_init_done(coord).await?;
                    }
                }
                KubeadmStep::RunInit { reset_first } => {
                    self.set_phase(Phase::Initialising, None);
                    if reset_first {
                        self.reset().await;
                    }
                    p.progress = Progress::InitRan;
                    self.persist(p)?;
                    self.run_init().await?;
                }
                KubeadmStep::Join { reset_first } => {
                    let material = match coord {
                        Some((coord, _)) => {
                            let m = self.material_from_etcd(coord).await?;
                            if join_lock.is_none() {
                                *join_lock = Some(self.acquire_join_lock(coord, p).await?);
                            }
                            m
                        }
                        None => self.material_from_peers().await?,
                    };
                    self.set_phase(Phase::Joining, None);
                    if reset_first {
                        self.reset().await;
                    }
                    self.join(&material, join_lock.as_ref()).await?;
                }
                KubeadmStep::RefuseReset { op } => {
                    let e = EngineError::ResetRefused {
                        node: self.node(),
                        op: op.name(),
                        marker: self.kubeadm.records().marker_path(op),
                    };
                    tracing::error!(node = %self.cfg().node, error = %kubedna_host::error_chain(&e), "will not reset this node");
                    return Err(e);
                }
                KubeadmStep::InitInterrupted => {
                    return Err(EngineError::InitInterrupted { node: self.node() })
                }
            }
        }
    }

    pub(super) async fn record_init_done(&self, coord: &Coordinator) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let rec = serde_json::json!({ "node": cfg.node }).to_string();
        coord
            .client()
            .kv_client()
            .put(coord.key("init-done"), rec, None)
            .await
            .map_err(|e| EngineError::Coord {
                node: self.node(),
                what: "cannot record that init is done",
                source: Box::new(CoordError::Etcd {
                    endpoints: vec![],
                    what: "put",
                    source: e,
                }),
            })?;
        tracing::info!(node = %cfg.node, "kubeadm init done");
        Ok(())
    }

    /// Whether `kubeadm init` succeeded on this disk, by evidence a crash cannot lose: the
    /// marker the init unit wrote when kubeadm exited 0, and the admin.conf kubeadm wrote.
    pub(super) fn init_evidence(&self) -> bool {
        self.kubeadm.records().succeeded(KubeadmOp::Init)
            && rooted(&self.cfg().root, "/etc/kubernetes/admin.conf").exists()
    }

    /// `kubeadm reset --force` after an interrupted or failed run ([`decide_kubeadm`] decided
    /// it, having seen no Kubernetes data in etcd and no run still going).
    pub(super) async fn reset(&self) {
        tracing::warn!(node = %self.cfg().node, "resetting what an unfinished kubeadm run left");
        let why =
            "an earlier kubeadm run on this node did not finish, and etcd holds no Kubernetes data";
        self.actions()
            .started("kubeadm.reset", why, serde_json::json!({}));
        let r = self
            .kubeadm
            .run(KubeadmOp::Reset, &["reset".into(), "--force".into()])
            .await;
        self.actions().finished(
            "kubeadm.reset",
            why,
            serde_json::json!({}),
            r.as_ref().map(|_| ()),
        );
    }

    /// `kubeadm init` on this disk: the caller has recorded `init_ran` and found no evidence
    /// of an earlier success.
    pub(super) async fn run_init(&self) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let params = cluster_params(cfg, self.set());
        self.write_kubeadm_etcd_files()?;
        let token = joinmat::new_token();
        let key = joinmat::certificate_key(&cfg.secret.0, &cfg.cluster);
        let text = Zeroizing::new(kcfg::render_init(&params, &token, &key));
        self.write_secret_file(INIT_CONFIG, &text)?;
        let why = "this control plane holds the cluster's one init claim in etcd";
        let args = serde_json::json!({ "controlPlaneEndpoint": params.control_plane_endpoint });
        self.actions().started("kubeadm.init", why, args.clone());
        let r = self
            .kubeadm
            .run(KubeadmOp::Init, &kcfg::init_args(INIT_CONFIG))
            .await;
        self.actions()
            .finished("kubeadm.init", why, args, r.as_ref().map(|_| ()));
        let _ = std::fs::remove_file(rooted(&cfg.root, INIT_CONFIG));
        r.map_err(self.kubeadm_err())?;
        Ok(())
    }

    pub(super) fn write_secret_file(&self, path: &str, text: &str) -> Result<(), EngineError> {
        let p = rooted(&self.cfg().root, path);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        write_atomic(&p, text.as_bytes(), 0o600).map_err(|source| EngineError::State {
            node: self.node(),
            path: p.clone(),
            source,
        })
    }

    /// Waits for the leader's join material in etcd.
    pub(super) async fn material_from_etcd(
        &self,
        coord: &Coordinator,
    ) -> Result<JoinMaterial, EngineError> {
        self.set_phase(
            Phase::WaitingForJoinMaterial,
            Some("the leader's join material in etcd".into()),
        );
        loop {
            let sealed = coord
                .get(&coord.key("join-material"))
                .await
                .map_err(self.coord_err("cannot read the join material"))?;
            if let Some(sealed) = sealed {
                return joinmat::open(&self.cfg().secret.0, &self.cfg().cluster, &sealed).map_err(
                    |source| EngineError::JoinMaterial {
                        node: self.node(),
                        from: "etcd".into(),
                        source,
                    },
                );
            }
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    /// `kubeadm join`, as a control plane when this node is one (then under `join_lock`).
    /// kubeadm's copy of this node's etcd CA and client certificate (see KUBEADM_ETCD_DIR),
    /// which its API server uses; before `kubeadm init` and a control-plane join.
    fn write_kubeadm_etcd_files(&self) -> Result<(), EngineError> {
        let cfg = self.cfg();
        let (from, to) = (
            rooted(&cfg.root, PKI_DIR),
            rooted(&cfg.root, KUBEADM_ETCD_DIR),
        );
        let io = |path: &std::path::Path| {
            let (node, path) = (self.node(), path.to_path_buf());
            move |source| EngineError::KubeadmFiles { node, path, source }
        };
        std::fs::create_dir_all(&to).map_err(io(&to))?;
        for (f, mode) in [
            ("ca.crt", 0o644),
            ("client.crt", 0o644),
            ("client.key", 0o600),
        ] {
            let bytes = Zeroizing::new(std::fs::read(from.join(f)).map_err(io(&from.join(f)))?);
            kubedna_host::atomic::write_atomic(&to.join(f), &bytes, mode).map_err(|e| {
                EngineError::KubeadmFiles {
                    node: self.node(),
                    path: e.path.clone(),
                    source: e.source,
                }
            })?;
        }
        Ok(())
    }

    pub(super) async fn join(
        &self,
        m: &JoinMaterial,
        join_lock: Option<&Leadership>,
    ) -> Result<(), EngineError> {
        let cfg = self.cfg();
        if join_lock.is_some_and(Leadership::is_lost) {
            return Err(EngineError::JoinLockLost {
                node: self.node(),
                step: "kubeadm join",
            });
        }
        let params = JoinParams {
            node_name: cfg.node.clone(),
            api_server_endpoint: m.api_endpoint.clone(),
            token: m.token.clone(),
            ca_cert_hash: m.ca_cert_hash.clone(),
            control_plane: (cfg.role == Role::ControlPlane)
                .then(|| (cfg.advertise_address.clone(), m.certificate_key.clone())),
        };
        if cfg.role == Role::ControlPlane {
            self.write_kubeadm_etcd_files()?;
        }
        let text = Zeroizing::new(kcfg::render_join(&params));
        self.write_secret_file(JOIN_CONFIG, &text)?;
        let why = match cfg.role {
            Role::ControlPlane => "a control plane joins the formed cluster under the join lock",
            Role::Worker => "a worker joins the formed cluster",
        };
        let args = serde_json::json!({
            "apiServerEndpoint": m.api_endpoint,
            "controlPlane": cfg.role == Role::ControlPlane,
        });
        self.actions().started("kubeadm.join", why, args.clone());
        let r = self
            .kubeadm
            .run(KubeadmOp::Join, &kcfg::join_args(JOIN_CONFIG))
            .await;
        self.actions()
            .finished("kubeadm.join", why, args, r.as_ref().map(|_| ()));
        let _ = std::fs::remove_file(rooted(&cfg.root, JOIN_CONFIG));
        r.map_err(self.kubeadm_err())?;
        tracing::info!(node = %cfg.node, "kubeadm join done");
        Ok(())
    }
}
