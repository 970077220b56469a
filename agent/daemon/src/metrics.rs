//! Prometheus metrics: what the agent counts as it runs (admin API calls and denials by action
//! and role, audit records and how long each append with its fsync took) and what it reads off
//! its state at each scrape (the mesh's members by liveness, datagrams by outcome, round trips;
//! the formation phase, the leader term, etcd's members). Names follow Prometheus conventions
//! (`kubedna_` prefix, base units, `_total` counters) and no label takes unbounded values: actions
//! and roles come from the route table, phases and outcomes from fixed lists.
//!
//! [`Metrics::render`] turns a [`Snapshot`] into OpenMetrics text and does no I/O; the daemon
//! serves it on `metrics.listen` (`GET /metrics`) and on the admin API (`kubedna metrics`).

use std::sync::atomic::AtomicU64;

use kubedna_proto::{FormationStatus, PeersResponse, Role};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The phases `kubedna status` shows, each a series of `kubedna_formation_phase`.
pub const PHASES: [&str; 9] = [
    "starting",
    "preparing-host",
    "waiting-for-quorum",
    "starting-etcd",
    "initialising",
    "waiting-for-join-material",
    "joining",
    "starting-kubelet",
    "member",
];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    action: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct One {
    name: String,
}

/// What a scrape reads off the agent's state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub peers: PeersResponse,
    pub formation: Option<FormationStatus>,
    pub node: String,
}

pub struct Metrics {
    registry: Registry,
    api_requests: Family<ApiLabels, Counter>,
    api_denials: Family<ApiLabels, Counter>,
    audit_records: Counter,
    audit_append: Histogram,
    members: Family<One, Gauge>,
    packets: Family<One, Counter>,
    rtt: Family<One, Gauge<f64, AtomicU64>>,
    phase: Family<One, Gauge>,
    leader_term: Gauge,
    leading: Gauge,
    etcd_members: Family<One, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubedna");
        let info: Family<Vec<(String, String)>, Gauge> = Family::default();
        info.get_or_create(&vec![("version".into(), env!("CARGO_PKG_VERSION").into())])
            .set(1);
        registry.register("build_info", "The agent's version", info);
        let m = Metrics {
            api_requests: Family::default(),
            api_denials: Family::default(),
            audit_records: Counter::default(),
            audit_append: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            members: Family::default(),
            packets: Family::default(),
            rtt: Family::default(),
            phase: Family::default(),
            leader_term: Gauge::default(),
            leading: Gauge::default(),
            etcd_members: Family::default(),
            registry,
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "api_requests",
            "Admin API calls allowed, by route action and caller role",
            m.api_requests.clone(),
        );
        r.register(
            "api_denials",
            "Admin API calls denied for want of a role, by route action and caller role",
            m.api_denials.clone(),
        );
        r.register(
            "audit_records",
            "Audit records written (admin calls, denials and the agent's own actions)",
            m.audit_records.clone(),
        );
        r.register_with_unit(
            "audit_append",
            "Time to append one audit record, its fsync included",
            Unit::Seconds,
            m.audit_append.clone(),
        );
        r.register(
            "mesh_members",
            "Other mesh members in this node's view, by liveness (alive, suspect, down)",
            m.members.clone(),
        );
        r.register(
            "mesh_packets",
            "Mesh datagrams received since the agent started, by outcome (accepted or the drop reason)",
            m.packets.clone(),
        );
        r.register_with_unit(
            "mesh_rtt",
            "Round-trip time of the last probes of alive members (median and max)",
            Unit::Seconds,
            m.rtt.clone(),
        );
        r.register(
            "formation_phase",
            "1 for this node's current formation phase, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "leader_term",
            "The leader term this node sees (0: no leader known)",
            m.leader_term.clone(),
        );
        r.register(
            "leader",
            "1 while this node holds the leader term",
            m.leading.clone(),
        );
        r.register(
            "etcd_members",
            "etcd members as this control plane last read them, by kind (voting, learner)",
            m.etcd_members.clone(),
        );
        m
    }

    /// One admin API call: allowed, or denied for want of a role.
    pub fn api_call(&self, action: &str, role: Option<Role>, denied: bool) {
        let labels = ApiLabels {
            action: action.to_string(),
            role: role.map_or_else(|| "none".to_string(), |r| r.to_string()),
        };
        let family = if denied {
            &self.api_denials
        } else {
            &self.api_requests
        };
        family.get_or_create(&labels).inc();
    }

    /// One audit record appended in `seconds`.
    pub fn audit_append(&self, seconds: f64) {
        self.audit_records.inc();
        self.audit_append.observe(seconds);
    }

    /// The OpenMetrics text of every metric, the state-read ones set from `s` first.
    pub fn render(&self, s: &Snapshot) -> String {
        let one = |name: &str| One {
            name: name.to_string(),
        };
        for (name, n) in [
            ("alive", s.peers.summary.alive),
            ("suspect", s.peers.summary.suspect),
            ("down", s.peers.summary.down),
        ] {
            self.members
                .get_or_create(&one(name))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(p) = &s.peers.packets {
            for (name, total) in [
                ("accepted", p.accepted),
                ("malformed", p.malformed),
                ("foreign_cluster", p.foreign_cluster),
                ("unknown_key", p.unknown_key),
                ("bad_tag", p.bad_tag),
                ("replayed", p.replayed),
                ("stale", p.stale),
            ] {
                let c = self.packets.get_or_create(&one(name));
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
        let mut rtts: Vec<f64> = s.peers.peers.iter().filter_map(|p| p.rtt_ms).collect();
        rtts.sort_by(f64::total_cmp);
        if let (Some(max), Some(median)) = (rtts.last(), rtts.get(rtts.len() / 2)) {
            self.rtt.get_or_create(&one("median")).set(median / 1000.0);
            self.rtt.get_or_create(&one("max")).set(max / 1000.0);
        }
        let phase = s.formation.as_ref().map(|f| f.phase.as_str());
        for p in PHASES {
            self.phase
                .get_or_create(&one(p))
                .set(i64::from(phase == Some(p)));
        }
        let leader = s.formation.as_ref().and_then(|f| f.leader.as_ref());
        self.leader_term.set(leader.map_or(0, |l| l.term));
        self.leading
            .set(i64::from(leader.is_some_and(|l| l.name == s.node)));
        if let Some(f) = &s.formation {
            let learners = f.etcd_members.iter().filter(|m| m.learner).count();
            let voting = f.etcd_members.len() - learners;
            for (kind, n) in [("voting", voting), ("learner", learners)] {
                self.etcd_members
                    .get_or_create(&one(kind))
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubedna_proto::{EtcdMember, Leader, PacketCounters, PeersSummary};

    fn snapshot(phase: &str, leader: Option<(&str, i64)>) -> Snapshot {
        Snapshot {
            node: "cp-1".into(),
            peers: PeersResponse {
                summary: PeersSummary {
                    mesh_running: true,
                    mesh_address: Some("198.18.0.2:7946".into()),
                    alive: 4,
                    suspect: 0,
                    down: 1,
                },
                peers: Vec::new(),
                packets: Some(PacketCounters {
                    accepted: 120,
                    bad_tag: 2,
                    ..Default::default()
                }),
                keys: None,
            },
            formation: Some(FormationStatus {
                phase: phase.into(),
                waiting_for: None,
                etcd_members: ["cp-1", "cp-2", "cp-3"]
                    .iter()
                    .map(|n| EtcdMember {
                        name: (*n).into(),
                        id: "1".into(),
                        learner: *n == "cp-3",
                    })
                    .collect(),
                leader: leader.map(|(n, t)| Leader {
                    name: n.into(),
                    term: t,
                }),
                init_recorded: true,
                cluster_id: None,
                last_error: None,
            }),
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_scrape_reads_the_state_by_table() {
        // (phase, leader, series, want)
        type Case<'a> = (&'a str, Option<(&'a str, i64)>, &'a str, f64);
        let cases: &[Case] = &[
            ("member", Some(("cp-1", 7)), "kubedna_leader_term", 7.0),
            ("member", Some(("cp-1", 7)), "kubedna_leader", 1.0),
            ("member", Some(("cp-2", 9)), "kubedna_leader", 0.0),
            ("member", None, "kubedna_leader_term", 0.0),
            (
                "joining",
                None,
                r#"kubedna_formation_phase{name="joining"}"#,
                1.0,
            ),
            (
                "joining",
                None,
                r#"kubedna_formation_phase{name="member"}"#,
                0.0,
            ),
            ("member", None, r#"kubedna_mesh_members{name="alive"}"#, 4.0),
            ("member", None, r#"kubedna_mesh_members{name="down"}"#, 1.0),
            (
                "member",
                None,
                r#"kubedna_mesh_packets_total{name="accepted"}"#,
                120.0,
            ),
            (
                "member",
                None,
                r#"kubedna_mesh_packets_total{name="bad_tag"}"#,
                2.0,
            ),
            (
                "member",
                None,
                r#"kubedna_etcd_members{name="voting"}"#,
                2.0,
            ),
            (
                "member",
                None,
                r#"kubedna_etcd_members{name="learner"}"#,
                1.0,
            ),
        ];
        for (phase, leader, series, want) in cases {
            let m = Metrics::new();
            let text = m.render(&snapshot(phase, *leader));
            assert_eq!(value(&text, series), Some(*want), "{series}:\n{text}");
        }
    }

    #[test]
    fn counters_count_and_the_text_is_openmetrics() {
        let m = Metrics::new();
        m.api_call("status.get", Some(Role::Viewer), false);
        m.api_call("status.get", Some(Role::Viewer), false);
        m.api_call("config.reload", None, true);
        m.audit_append(0.002);
        let s = snapshot("member", None);
        let first = m.render(&s);
        // Rendering twice does not count datagrams twice.
        let text = m.render(&s);
        assert_eq!(
            value(&first, r#"kubedna_mesh_packets_total{name="accepted"}"#),
            value(&text, r#"kubedna_mesh_packets_total{name="accepted"}"#)
        );
        for (series, want) in [
            (
                r#"kubedna_api_requests_total{action="status.get",role="viewer"}"#,
                2.0,
            ),
            (
                r#"kubedna_api_denials_total{action="config.reload",role="none"}"#,
                1.0,
            ),
            ("kubedna_audit_records_total", 1.0),
            ("kubedna_audit_append_seconds_count", 1.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series}:\n{text}");
        }
        assert!(text.contains("# TYPE kubedna_audit_append_seconds histogram"));
        assert!(text.contains(r#"kubedna_build_info{version=""#));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
