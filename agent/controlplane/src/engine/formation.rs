//! A control plane's formation: its etcd TLS files and unit, the bootstrap decision and the
//! learner path under the join lock, the cluster ID record and the init claim, then the kubeadm
//! steps (`kubeadm_steps.rs`). Every etcd membership change it makes is reported for the audit
//! log.

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
        let ca = EtcdCa::derive(&self.cfg().cluster, self.cfg().secret.expose()).map_err(err)?;
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
                match host.as_ip() {
                    Some(ip) => ips.push(ip),
                    None => names.push(host.to_string()),
                }
            }
        }
        ips.push(self.cfg().advertise_address);
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
        if self.cfg().role != NodeRole::ControlPlane || self.coordinator().is_none() {
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
            // Not fatal: the lock's lease then runs out by itself within its TTL.
            if let Err(e) = coord.resign(l).await {
                tracing::warn!(node = %self.cfg().node, error = %kubedna_host::error_chain(&e),
                    "cannot give the join lock back; it lapses with its lease");
            }
        }
        if p.join_lease.take().is_some() {
            self.persist(&p)?;
        }
        self.start_kubelet().await?;
        Ok(())
    }
}
