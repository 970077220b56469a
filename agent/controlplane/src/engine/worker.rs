//! A worker's formation: join material from an alive control plane (still sealed on the
//! wire), the same kubeadm steps as a control plane without etcd, kubelet, then following the
//! leader by asking control planes.

use super::*;

impl<P: Peers, S: Systemd + 'static, K: Kubeadm, C: Clock> Engine<P, S, K, C> {
    // -- workers -------------------------------------------------------------------------------

    pub(super) async fn control_planes(&self) -> Vec<String> {
        let mut cps: Vec<String> = self
            .peers
            .alive()
            .into_iter()
            .filter(|p| p.role == NodeRole::ControlPlane)
            .map(|p| p.name)
            .collect();
        cps.sort();
        cps
    }

    /// Join material from the first alive control plane that has it.
    pub(super) async fn material_from_peers(&self) -> Result<JoinMaterial, EngineError> {
        loop {
            self.set_phase(
                Phase::WaitingForJoinMaterial,
                Some("join material from a control plane".into()),
            );
            for cp in self.control_planes().await {
                if let Ok(Response::JoinMaterial { sealed, leader }) =
                    self.peers.ask(&cp, Request::JoinMaterial).await
                {
                    let m = joinmat::open(self.cfg().secret.expose(), &self.cfg().cluster, &sealed)
                        .map_err(|source| EngineError::JoinMaterial {
                            node: self.node(),
                            from: cp.clone(),
                            source,
                        })?;
                    let mut s = lock(&self.shared.status);
                    s.leader = leader;
                    s.init_recorded = true;
                    return Ok(m);
                }
            }
            self.clock.sleep(self.cfg().timings.poll).await;
        }
    }

    pub(super) async fn form_worker(&self) -> Result<(), EngineError> {
        self.prepare().await?;
        let mut p = self.persisted();
        if !p.progress.is_member() {
            self.kubeadm_steps(None, &mut p, &mut None).await?;
        }
        lock(&self.shared.status).init_recorded = true;
        self.start_kubelet().await
    }

    pub(super) async fn follow_leader(&self) -> Result<(), EngineError> {
        for cp in self.control_planes().await {
            if let Ok(Response::Leader(Some(l))) = self.peers.ask(&cp, Request::Leader).await {
                lock(&self.shared.status).leader = Some(l);
                break;
            }
        }
        self.clock.sleep(self.cfg().timings.poll * 2).await;
        Ok(())
    }
}
