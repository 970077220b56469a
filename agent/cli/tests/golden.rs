//! Golden files pin what `kubedna` prints for fixed answers, in every output format. Run with
//! `UPDATE_GOLDEN=1` to rewrite them after an intended change, then review the diff.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use kubedna_cli::cli::Format;
use kubedna_cli::output::{self, Versions};
use kubedna_proto::*;

fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

fn status() -> StatusResponse {
    StatusResponse {
        node: NodeStatus {
            name: "cp-1".into(),
            cluster: "demo".into(),
            role: NodeRole::ControlPlane,
            node_id: "0423b0fd566eec0d5ae93cc8f7734fb8".into(),
            state: "ready".into(),
        },
        agent: AgentStatus {
            version: "0.1.0".into(),
            pid: 4242,
            started_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 7, 0, 0)
                .single()
                .expect("time"),
            uptime_seconds: 3723,
            config_path: "/etc/kubedna/agent.yaml".into(),
            config_generation: 2,
            log_filter: "info".into(),
        },
        caller: CallerStatus {
            uid: 1000,
            role: Role::Operator,
        },
        peers: Some(peers().summary),
        formation: Some(FormationStatus {
            phase: "member".into(),
            waiting_for: None,
            etcd_members: ["cp-1", "cp-2", "cp-3"]
                .iter()
                .enumerate()
                .map(|(i, n)| EtcdMember {
                    name: (*n).into(),
                    id: format!("8e9e05c52164694{i}"),
                    learner: false,
                })
                .collect(),
            leader: Some(Leader {
                name: "cp-2".into(),
                term: 7,
            }),
            init_recorded: true,
            cluster_id: Some("cdf818194e3a8c32".into()),
            last_error: None,
        }),
        kubelet: Some(UnitHealth {
            unit: "kubelet.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            journal: Vec::new(),
        }),
    }
}

fn peers() -> PeersResponse {
    let peer = |name: &str, role, addr: &str, state: &str, liveness, heard, rtt| Peer {
        address: format!("{addr}:7946"),
        name: Some(name.into()),
        role: Some(role),
        state: Some(state.into()),
        liveness,
        incarnation: 0,
        generation: 0,
        last_heard_seconds_ago: heard,
        rtt_ms: rtt,
        agent_version: Some("0.1.0".into()),
        image_version: Some("0.1.0 (debian-12)".into()),
        addresses: vec![addr.into()],
    };
    PeersResponse {
        summary: PeersSummary {
            mesh_running: true,
            mesh_address: Some("198.18.10.2:7946".into()),
            alive: 3,
            suspect: 1,
            down: 1,
        },
        peers: vec![
            peer(
                "cp-2",
                NodeRole::ControlPlane,
                "198.18.10.3",
                "ready",
                PeerLiveness::Alive,
                Some(0.2),
                Some(0.412),
            ),
            peer(
                "cp-3",
                NodeRole::ControlPlane,
                "198.18.10.4",
                "ready",
                PeerLiveness::Suspect,
                Some(2.6),
                Some(0.388),
            ),
            peer(
                "worker-1",
                NodeRole::Worker,
                "198.18.10.5",
                "member",
                PeerLiveness::Alive,
                Some(0.4),
                Some(1.25),
            ),
            peer(
                "worker-2",
                NodeRole::Worker,
                "198.18.10.6",
                "leaving",
                PeerLiveness::Down,
                Some(75.0),
                None,
            ),
            Peer {
                address: "198.18.10.7:7946".into(),
                name: None,
                role: None,
                state: None,
                liveness: PeerLiveness::Alive,
                incarnation: 0,
                generation: 0,
                last_heard_seconds_ago: None,
                rtt_ms: None,
                agent_version: None,
                image_version: None,
                addresses: vec![],
            },
        ],
        packets: Some(PacketCounters {
            accepted: 18_204,
            malformed: 0,
            foreign_cluster: 3,
            unknown_key: 41,
            bad_tag: 1,
            replayed: 0,
            stale: 0,
        }),
        keys: Some(MeshKeys {
            primary: "1f2e3d4c".into(),
            accepted: vec!["1f2e3d4c".into(), "a0b1c2d3".into()],
            rotating_to: Some("a0b1c2d3".into()),
        }),
    }
}

#[test]
fn peers_in_every_format() {
    let p = peers();
    check(
        "peers.txt",
        &output::render(Format::Table, &p, output::peers_table),
    );
    check(
        "peers.json",
        &output::render(Format::Json, &p, output::peers_table),
    );
    check(
        "peers.yaml",
        &output::render(Format::Yaml, &p, output::peers_table),
    );
}

fn records() -> AuditRecordsResponse {
    let t = |m| {
        Utc.with_ymd_and_hms(2026, 11, 23, 8, m, 0)
            .single()
            .expect("time")
    };
    let caller = |uid, user: Option<&str>, via| Caller {
        uid,
        gid: uid,
        pid: Some(77),
        user: user.map(Into::into),
        via,
    };
    AuditRecordsResponse {
        records: vec![
            AuditRecord {
                seq: 41,
                time: t(1),
                caller: caller(1000, Some("alice"), Via::Socket),
                role: Some(Role::Operator),
                action: "log.level.set".into(),
                args: serde_json::json!({"filter": "debug"}),
                result: AuditResult {
                    outcome: Outcome::Ok,
                    status: 200,
                    message: None,
                },
                prev: "a".repeat(64),
                hash: "b".repeat(64),
            },
            AuditRecord {
                seq: 42,
                time: t(2),
                caller: caller(1001, None, Via::Socket),
                role: None,
                action: "config.reload".into(),
                args: serde_json::json!({"method": "POST", "path": "/v1/config/reload"}),
                result: AuditResult {
                    outcome: Outcome::Denied,
                    status: 403,
                    message: Some("needs role admin".into()),
                },
                prev: "b".repeat(64),
                hash: "c".repeat(64),
            },
            AuditRecord {
                seq: 43,
                time: t(3),
                caller: caller(0, Some("root"), Via::Signal),
                role: None,
                action: "config.reload".into(),
                args: serde_json::json!({"file": "/etc/kubedna/agent.yaml"}),
                result: AuditResult {
                    outcome: Outcome::Ok,
                    status: 0,
                    message: Some("changed: log".into()),
                },
                prev: "c".repeat(64),
                hash: "d".repeat(64),
            },
        ],
        truncated: true,
    }
}

#[test]
fn status_in_every_format() {
    let s = status();
    check(
        "status.txt",
        &output::render(Format::Table, &s, output::status_table),
    );
    check(
        "status.json",
        &output::render(Format::Json, &s, output::status_table),
    );
    check(
        "status.yaml",
        &output::render(Format::Yaml, &s, output::status_table),
    );
}

#[test]
fn a_kubelet_that_cannot_start_shows_why() {
    let mut s = status();
    s.kubelet = Some(UnitHealth {
        unit: "kubelet.service".into(),
        active_state: "activating".into(),
        sub_state: "auto-restart".into(),
        journal: vec![
            "E1130 15:40:01.000000     812 run.go:74] \"command failed\" err=\"failed to parse kubelet flag: unknown flag: --no-such-flag\"".into(),
            "kubelet.service: Main process exited, code=exited, status=1/FAILURE".into(),
        ],
    });
    check(
        "status-kubelet-failing.txt",
        &output::render(Format::Table, &s, output::status_table),
    );
}

#[test]
fn audit_list_in_every_format() {
    let r = records();
    check(
        "audit-list.txt",
        &output::render(Format::Table, &r, output::audit_table),
    );
    check(
        "audit-list.json",
        &output::render(Format::Json, &r, output::audit_table),
    );
    check(
        "audit-list.yaml",
        &output::render(Format::Yaml, &r, output::audit_table),
    );
}

#[test]
fn audit_verify_intact_and_broken() {
    let ok = AuditVerifyResponse {
        ok: true,
        files_checked: 3,
        records_checked: 1200,
        head: Some("d".repeat(64)),
        first_break: None,
    };
    check(
        "audit-verify-ok.txt",
        &output::render(Format::Table, &ok, output::verify_table),
    );
    let broken = AuditVerifyResponse {
        ok: false,
        files_checked: 2,
        records_checked: 17,
        head: Some("c".repeat(64)),
        first_break: Some(AuditBreak {
            file: "/var/lib/kubedna/audit/audit-2026-11-23.jsonl".into(),
            line: 18,
            reason: "content does not match its hash".into(),
        }),
    };
    check(
        "audit-verify-broken.txt",
        &output::render(Format::Table, &broken, output::verify_table),
    );
    check(
        "audit-verify-broken.json",
        &output::render(Format::Json, &broken, output::verify_table),
    );
}

#[test]
fn version_and_mutations() {
    let v = Versions {
        client_version: "0.1.0".into(),
        agent: Some(VersionResponse {
            agent_version: "0.1.0".into(),
            api_version: "v1".into(),
        }),
    };
    check(
        "version.txt",
        &output::render(Format::Table, &v, output::version_table),
    );
    check(
        "version.json",
        &output::render(Format::Json, &v, output::version_table),
    );
    let l = LogLevelResponse {
        previous: "info".into(),
        current: "debug".into(),
    };
    check(
        "log-level.txt",
        &output::render(Format::Table, &l, output::log_level_table),
    );
    let r = ReloadResponse {
        generation: 3,
        changed: vec!["log".into(), "rbac".into()],
    };
    check(
        "reload.txt",
        &output::render(Format::Table, &r, output::reload_table),
    );
}

#[test]
fn durations_read_like_kubectl() {
    assert_eq!(output::human_duration(45), "45s");
    assert_eq!(output::human_duration(303), "5m3s");
    assert_eq!(output::human_duration(7500), "2h5m");
    assert_eq!(output::human_duration(273600), "3d4h");
}

#[test]
fn since_accepts_times_and_ages_and_rejects_the_rest() {
    use kubedna_cli::commands::parse_since;
    let now = Utc
        .with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
        .single()
        .expect("time");
    assert_eq!(
        parse_since("2h", now).expect("age"),
        now - chrono::Duration::hours(2)
    );
    assert_eq!(
        parse_since("7d", now).expect("age"),
        now - chrono::Duration::days(7)
    );
    assert_eq!(
        parse_since("2026-11-23T08:00:00Z", now)
            .expect("time")
            .to_rfc3339(),
        "2026-11-23T08:00:00+00:00"
    );
    let err = parse_since("yesterday", now)
        .expect_err("must be refused")
        .to_string();
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
}

/// Completions and man pages render for every command (a man page per subcommand).
#[test]
fn completions_and_man_pages_render() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubedna"));
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(&bin)
            .args(["completions", shell])
            .output()
            .expect("run");
        assert!(
            out.status.success() && out.stdout.len() > 1000,
            "{shell}: {out:?}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(&bin)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    for page in [
        "kubedna.1",
        "kubedna-status.1",
        "kubedna-audit.1",
        "kubedna-audit-verify.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|_| panic!("{page} missing"));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    let out = std::process::Command::new(&bin)
        .args(["audit", "list", "--since", "soon"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad --since is a usage error: {out:?}"
    );
    let out = std::process::Command::new(&bin)
        .arg("frobnicate")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

fn doctor_status() -> DoctorStatusResponse {
    let node = |name: &str, role: &str, verdict: &str, signals: &str| DoctorNode {
        name: name.into(),
        role: role.into(),
        verdict: verdict.into(),
        signals: signals.into(),
    };
    DoctorStatusResponse {
        enabled: true,
        leading: true,
        nodes: vec![
            node(
                "cp-1",
                "control-plane",
                "healthy",
                "mesh=alive, node=ready, vm=running",
            ),
            node(
                "w-1",
                "worker",
                "dead (by provider)",
                "mesh=down for 41s, node=unknown for 36s, vm=off for 41s",
            ),
        ],
        decision: Some("continuing the replacement of w-1".into()),
        in_flight: Some(DoctorReplacement {
            node: "w-1".into(),
            role: "worker".into(),
            step: "create-vm".into(),
            started: 1_795_000_000,
            step_since: 1_795_000_020,
            signals: "mesh=down for 41s, node=unknown for 36s, vm=off for 41s".into(),
            old_vm: Some(4711),
            new_vm: None,
            term: 12,
        }),
        paused: None,
        error: None,
    }
}

#[test]
fn doctor_status_and_history() {
    let s = doctor_status();
    check(
        "doctor.txt",
        &output::render(Format::Table, &s, output::doctor_table),
    );
    check(
        "doctor.json",
        &output::render(Format::Json, &s, output::doctor_table),
    );
    let follower = DoctorStatusResponse {
        leading: false,
        nodes: vec![],
        decision: None,
        in_flight: None,
        paused: Some(DoctorPause {
            by: "root".into(),
            since: 1_795_000_000,
            reason: Some("rack maintenance".into()),
        }),
        ..doctor_status()
    };
    check(
        "doctor-follower-paused.txt",
        &output::render(Format::Table, &follower, output::doctor_table),
    );
    let h = DoctorHistoryResponse {
        entries: vec![DoctorHistoryEntry {
            node: "w-1".into(),
            role: "worker".into(),
            outcome: "replaced".into(),
            started: 1_795_000_000,
            ended: 1_795_000_055,
            signals: "mesh=down for 41s, node=unknown for 36s, vm=off for 41s".into(),
            term: 12,
        }],
    };
    check(
        "doctor-history.txt",
        &output::render(Format::Table, &h, output::doctor_history_table),
    );
}
