//! What the read-only views answer: `kubedna status` (this node, the agent, the mesh summary,
//! formation as the engine sees it, kubelet's state over D-Bus) and `kubedna peers` (every mesh
//! member this node knows, its datagram counters and key ids).

use super::*;

/// The mesh's members as the API shows them.
pub async fn peers(state: &AppState) -> PeersResponse {
    let Some(handle) = state.mesh.get() else {
        return PeersResponse {
            summary: PeersSummary {
                mesh_running: false,
                mesh_address: None,
                alive: 0,
                suspect: 0,
                down: 0,
            },
            peers: Vec::new(),
            packets: None,
            keys: None,
        };
    };
    let members = handle.members().await;
    let running = members.is_ok();
    let now = std::time::Instant::now();
    let mut peers: Vec<Peer> = members
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let meta = m.meta.as_ref();
            Peer {
                address: m.id.addr.to_string(),
                name: meta.map(|x| x.name.clone()),
                role: meta.map(|x| x.role),
                state: meta.map(|x| x.state.as_str().to_string()),
                liveness: match m.liveness {
                    Liveness::Alive => PeerLiveness::Alive,
                    Liveness::Suspect => PeerLiveness::Suspect,
                    Liveness::Down => PeerLiveness::Down,
                },
                incarnation: u64::from(m.incarnation),
                generation: m.id.generation,
                last_heard_seconds_ago: m
                    .last_heard
                    .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                rtt_ms: m.rtt.map(|d| d.as_secs_f64() * 1000.0),
                agent_version: meta.map(|x| x.agent_version.clone()),
                image_version: meta.map(|x| x.image_version.clone()),
                addresses: meta
                    .map(|x| x.addresses.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    peers.sort_by(|a, b| (&a.name, &a.address).cmp(&(&b.name, &b.address)));
    let count = |l: PeerLiveness| peers.iter().filter(|p| p.liveness == l).count();
    PeersResponse {
        summary: PeersSummary {
            mesh_running: running,
            mesh_address: Some(handle.local_addr().to_string()),
            alive: count(PeerLiveness::Alive),
            suspect: count(PeerLiveness::Suspect),
            down: count(PeerLiveness::Down),
        },
        peers,
        packets: handle.counters().await.ok().map(|c| PacketCounters {
            accepted: c.accepted,
            malformed: c.malformed,
            foreign_cluster: c.foreign_cluster,
            unknown_key: c.unknown_key,
            bad_tag: c.bad_tag,
            replayed: c.replayed,
            stale: c.stale,
        }),
        keys: handle.keys().await.ok().map(|k| MeshKeys {
            primary: k.primary.to_string(),
            accepted: k.keys.iter().map(ToString::to_string).collect(),
            rotating_to: k.rotation.map(|r| r.target.to_string()),
        }),
    }
}

pub(super) async fn status(state: &AppState, caller: &Caller, role: Role) -> StatusResponse {
    let config = state.config();
    let peers = peers(state).await.summary;
    let formation = state.node.status().map(formation);
    // kubelet's state once the engine has gone past host preparation (it installs the unit).
    let kubelet = match &formation {
        Some(f) if !matches!(f.phase.as_str(), "starting" | "preparing-host") => {
            unit_health("kubelet.service").await
        }
        _ => None,
    };
    StatusResponse {
        peers: Some(peers),
        formation,
        kubelet,
        node: NodeStatus {
            name: config.node_name.clone(),
            cluster: config.spec.cluster.name.clone(),
            role: config.spec.node.role,
            node_id: state.node_id().to_string(),
            state: state
                .node
                .status()
                .map(|s| crate::node::gossip_state(&s))
                .map_or_else(|| "ready".into(), |s| s.as_str().to_string()),
        },
        agent: AgentStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at: state.started_at,
            uptime_seconds: state.started.elapsed().as_secs(),
            config_path: config.file.display().to_string(),
            config_generation: state.generation.load(Ordering::Relaxed),
            log_filter: state.log.current(),
        },
        caller: CallerStatus {
            uid: caller.uid,
            role,
        },
    }
}

/// A unit's state over D-Bus, with its journal's last lines when it does not run; None when
/// systemd cannot be asked or has not loaded the unit.
async fn unit_health(unit: &str) -> Option<kubedna_proto::UnitHealth> {
    let sd = kubedna_host::systemd::DbusSystemd::connect().await.ok()?;
    let (active_state, sub_state) = sd.unit_state(unit).await.ok()??;
    let mut health = kubedna_proto::UnitHealth {
        unit: unit.to_string(),
        active_state,
        sub_state,
        journal: Vec::new(),
    };
    if !health.running() {
        let tail = kubedna_host::systemd::journal_tail(unit).await;
        let lines: Vec<String> = tail.lines().map(str::to_string).collect();
        health.journal = lines[lines.len().saturating_sub(8)..].to_vec();
    }
    Some(health)
}

/// The engine's status as the API shows it.
pub(crate) fn formation(s: kubedna_controlplane::engine::Status) -> kubedna_proto::FormationStatus {
    kubedna_proto::FormationStatus {
        phase: serde_json::to_value(s.phase)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        waiting_for: s.waiting_for,
        etcd_members: s
            .etcd_members
            .into_iter()
            .map(|m| kubedna_proto::EtcdMember {
                name: m.name,
                id: m.id,
                learner: m.learner,
            })
            .collect(),
        leader: s.leader.map(|l| kubedna_proto::Leader {
            name: l.name,
            term: l.term,
        }),
        init_recorded: s.init_recorded,
        cluster_id: s.cluster_id,
        last_error: s.last_error,
    }
}
