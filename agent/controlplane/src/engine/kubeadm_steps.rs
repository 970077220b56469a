//! A node's kubeadm steps: what it observes (the operation records, the files a run leaves, the
//! init claim and records in etcd), the decision ([`crate::progress::decide_kubeadm`]) and the
//! acts: `kubeadm init` with its config and kubeadm's copy of the etcd files, `join` with the
//! join material from etcd (control planes) or from peers (workers), and `reset` of a run that
//! did not finish. It never runs kubeadm without the decision, never races a run an earlier
//! agent started, and reports every run for the audit log, including one it adopted.

use super::*;

impl<P: Peers, S: Systemd + 'static, K: Kubeadm, C: Clock> Engine<P, S, K, C> {
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
        // Whether this agent ran kubeadm itself: if not, a success it finds is the outcome of a
        // run an earlier agent started (and died during), awaited here; the audit log gets that
        // run's end.
        let mut ran_here = false;
        let adopted = "the run an earlier agent started, awaited after the agent restarted";
        loop {
            let facts = self.observe_kubeadm(coord).await?;
            let step = decide_kubeadm(p.progress, &facts);
            tracing::info!(node = %self.cfg().node, progress = ?p.progress, ?facts, ?step, "kubeadm step");
            match step {
                KubeadmStep::Done => {
                    if !ran_here && !p.progress.is_member() && facts.join_evidence {
                        let args = serde_json::json!({ "phase": "finished" });
                        self.actions().record("kubeadm.join", adopted, args, Ok(()));
                    }
                    p.progress = Progress::Member {
                        etcd_started: p.progress.etcd_started(),
                        init_ran: p.progress.init_ran(),
                    };
                    self.persist(p)?;
                    return Ok(());
                }
                KubeadmStep::RecordInitSucceeded => {
                    if !ran_here {
                        let args = serde_json::json!({ "phase": "finished" });
                        self.actions().record("kubeadm.init", adopted, args, Ok(()));
                    }
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
                    ran_here = true;
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
                    ran_here = true;
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
        let key = joinmat::certificate_key(cfg.secret.expose(), &cfg.cluster);
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
                return joinmat::open(self.cfg().secret.expose(), &self.cfg().cluster, &sealed)
                    .map_err(|source| EngineError::JoinMaterial {
                        node: self.node(),
                        from: "etcd".into(),
                        source,
                    });
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
            control_plane: (cfg.role == NodeRole::ControlPlane).then(|| kcfg::ControlPlaneJoin {
                advertise_address: cfg.advertise_address,
                bind_port: cfg.api_port(),
                certificate_key: m.certificate_key.clone(),
            }),
        };
        if cfg.role == NodeRole::ControlPlane {
            self.write_kubeadm_etcd_files()?;
        }
        let text = Zeroizing::new(kcfg::render_join(&params));
        self.write_secret_file(JOIN_CONFIG, &text)?;
        let why = match cfg.role {
            NodeRole::ControlPlane => {
                "a control plane joins the formed cluster under the join lock"
            }
            NodeRole::Worker => "a worker joins the formed cluster",
        };
        let args = serde_json::json!({
            "apiServerEndpoint": m.api_endpoint,
            "controlPlane": cfg.role == NodeRole::ControlPlane,
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
