//! End-to-end tests of `kubedna-agent` and `kubedna` as processes: readiness, bad config, RBAC
//! over a real socket with real uid switching, reload on SIGHUP, and shutdown under load.
//! They need root (to switch uids and chown the socket), as CI has; run as another user they
//! say so and fail.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::Agent;
use kubedna_agent::api::ROUTES;
use kubedna_proto::{Outcome, Role};
use nix::sys::signal::Signal;

/// The (only) daily audit file of a test agent.
fn audit_file(agent: &Agent) -> std::path::PathBuf {
    std::fs::read_dir(&agent.audit_dir)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("an audit file")
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests switch uids and chown sockets: run them as root (CI does)"
    );
}

#[test]
fn ready_only_after_the_socket_has_its_mode_and_group() {
    require_root();
    let mut agent = Agent::prepare("", "  socketMode: \"0660\"\n  socketGroup: \"61040\"\n");
    agent.spawn();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    // At READY=1 the socket is there, with the configured mode and group.
    let meta = std::fs::metadata(&agent.socket).expect("socket exists at READY=1");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 61040);
    // A user outside the group cannot even connect; one whose group it is can, and gets a role.
    let out = agent
        .kubedna()
        .arg("status")
        .uid(61020)
        .gid(61020)
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket's group"));
    let (status, _) = agent.stop();
    assert!(status.success());
    assert!(!agent.socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn a_bad_config_exits_78_naming_file_and_field_and_touches_nothing() {
    let mut agent = Agent::prepare("", "");
    let text = std::fs::read_to_string(&agent.config)
        .expect("read")
        .replace("role: control-plane", "role: master");
    std::fs::write(&agent.config, text).expect("write");
    agent.spawn();
    let (status, stderr) = agent.wait();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&agent.config.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("node.role"), "{stderr}");
    assert!(
        !agent.state_dir.exists(),
        "state created despite a bad config"
    );
    assert!(!agent.socket.exists());
}

#[test]
fn a_metrics_address_that_is_not_this_nodes_exits_78_naming_the_field() {
    // 203.0.113.0/24 is TEST-NET-3: never an address of this host. Nothing is sent to it.
    let mut agent = Agent::prepare("metrics:\n  listen: 203.0.113.7:9464\n", "");
    agent.spawn();
    let (status, stderr) = agent.wait();
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    assert!(stderr.contains("203.0.113.7:9464"), "{stderr}");
    assert!(
        !agent.state_dir.exists(),
        "state created despite a bad metrics address"
    );
    assert!(!agent.socket.exists());
}

#[test]
fn a_second_agent_on_the_same_state_is_refused() {
    let agent = Agent::start("", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubedna-agent"))
        .arg("--config")
        .arg(&agent.config)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds"),
        "{out:?}"
    );
    // The first one still answers.
    assert!(agent
        .kubedna()
        .arg("status")
        .output()
        .expect("cli")
        .status
        .success());
}

/// Every role (and no role) against every endpoint, each call from a process whose uid was
/// really switched, over the real socket. Allowed calls succeed; denied ones get exit 4 naming
/// the role needed and leave an audit record; every mutating call leaves one too.
#[test]
fn rbac_matrix_every_role_by_every_endpoint() {
    require_root();
    let rbac = "rbac:\n  admins:\n    uids: [61030]\n  operators:\n    uids: [61020]\n    gids: [61040]\n  viewers:\n    uids: [61010]\n";
    let agent = Agent::start(rbac, "  socketMode: \"0666\"\n");
    let callers: [(&str, u32, u32, Option<Role>); 6] = [
        ("nobody", 61099, 61099, None),
        ("viewer", 61010, 61010, Some(Role::Viewer)),
        ("operator", 61020, 61020, Some(Role::Operator)),
        ("operator-by-group", 61050, 61040, Some(Role::Operator)),
        ("admin", 61030, 61030, Some(Role::Admin)),
        ("root", 0, 0, Some(Role::Admin)),
    ];
    let (mut denials, mut mutations, mut refused) = (0, 0, 0);
    for (who, uid, gid, role) in callers {
        for route in ROUTES {
            let mut cmd = agent.kubedna();
            cmd.args(["api", route.method, route.path]);
            match route.path {
                kubedna_proto::paths::LOG_LEVEL => {
                    cmd.args(["--data", r#"{"filter":"info"}"#]);
                }
                kubedna_proto::paths::CONFIG_RELOAD => {
                    cmd.args(["--data", "{}"]);
                }
                _ => {}
            }
            let out = cmd.uid(uid).gid(gid).output().expect("cli");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let allowed = role.is_some_and(|r| r >= route.role);
            if allowed && route.path.starts_with("/v1/doctor") {
                // No control-plane engine here: the doctor's records (etcd) are out of reach,
                // so an authorized call is refused (409), and audited when it would mutate.
                assert_eq!(
                    out.status.code(),
                    Some(6),
                    "{who} {} {}: {stderr}",
                    route.method,
                    route.path
                );
                if route.mutating {
                    refused += 1;
                }
            } else if allowed {
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{who} {} {}: {stderr}",
                    route.method,
                    route.path
                );
                if route.mutating {
                    mutations += 1;
                }
                // The cluster audit view is open to viewers, but each node, this one too,
                // refuses its own part to a role below operator, and audits that refusal.
                if route.path == kubedna_proto::paths::CLUSTER_AUDIT_RECORDS
                    && role.is_some_and(|r| r < Role::Operator)
                {
                    denials += 1;
                }
            } else {
                assert_eq!(
                    out.status.code(),
                    Some(4),
                    "{who} {} {}: {stderr}",
                    route.method,
                    route.path
                );
                assert!(
                    stderr.contains(&format!("needs role {}", route.role)),
                    "{who}: {stderr}"
                );
                denials += 1;
                let last = agent.records().pop().expect("a denial record");
                assert_eq!(last.result.outcome, Outcome::Denied);
                assert_eq!(last.caller.uid, uid);
                assert_eq!(last.action, route.action);
                assert_eq!(last.role, role);
            }
        }
    }
    let records = agent.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r.result.outcome == Outcome::Denied)
            .count(),
        denials
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.result.outcome == Outcome::Ok)
            .count(),
        mutations
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r.result.outcome == Outcome::Error)
            .count(),
        refused
    );
    assert_eq!(
        records.len(),
        denials + mutations + refused,
        "only mutations and denials are audited"
    );
    assert!(
        denials >= 12 && mutations >= 6,
        "the matrix shrank: {denials} denials, {mutations} mutations"
    );
    let report = kubedna_audit::verify(&agent.audit_dir).expect("verify");
    assert!(report.ok, "{report:?}");
}

#[test]
fn sighup_reload_refuses_a_bad_config_and_keeps_the_old_one() {
    let agent = Agent::start("", "");
    let good = std::fs::read_to_string(&agent.config).expect("read");
    let status = |agent: &Agent| -> serde_json::Value {
        let out = agent
            .kubedna()
            .args(["-o", "json", "status"])
            .output()
            .expect("cli");
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let hup = |text: &str| {
        std::fs::write(&agent.config, text).expect("write config");
        agent.signal(Signal::SIGHUP);
        agent.wait_notify("RELOADING=1", Duration::from_secs(10));
        agent.wait_notify("READY=1", Duration::from_secs(10));
    };

    hup(&format!("{good}log:\n  level: loud\n"));
    let s = status(&agent);
    assert_eq!(s["agent"]["config_generation"], 0);
    assert_eq!(s["agent"]["log_filter"], "info");
    let last = agent.records().pop().expect("reload audited");
    assert_eq!(
        (last.action.as_str(), last.result.outcome),
        ("config.reload", Outcome::Error)
    );
    assert!(
        last.result
            .message
            .as_deref()
            .unwrap_or("")
            .contains("log.level"),
        "{last:?}"
    );

    hup(&good.replace("name: n1", "name: n2"));
    assert_eq!(status(&agent)["node"]["name"], "n1");
    assert!(agent
        .records()
        .pop()
        .and_then(|r| r.result.message)
        .unwrap_or_default()
        .contains("restart"));

    hup(&format!("{good}log:\n  level: debug\n"));
    let s = status(&agent);
    assert_eq!(s["agent"]["config_generation"], 1);
    assert_eq!(s["agent"]["log_filter"], "debug");
    assert_eq!(
        agent.records().pop().map(|r| r.result.outcome),
        Some(Outcome::Ok)
    );
}

/// A call in flight when SIGTERM arrives completes; calls racing the shutdown either complete or
/// fail cleanly; the agent exits 0 and every successful mutation has its audit record.
#[test]
fn sigterm_drains_in_flight_calls_and_the_audit_log_stays_valid() {
    let mut agent = Agent::start("", "");
    // A request whose handler is provably running: it waits for our body after 100-continue.
    let mut held = std::os::unix::net::UnixStream::connect(&agent.socket).expect("connect");
    let body = br#"{"filter":"debug"}"#;
    write!(
        held,
        "PUT /v1/log-level HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .expect("headers");
    let mut interim = [0u8; 25];
    held.read_exact(&mut interim).expect("100 Continue");
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );

    // Racing calls: started now, some will meet the shutdown.
    let racers: Vec<_> = (0..24)
        .map(|i| {
            let mut c = agent.kubedna();
            if i % 2 == 0 {
                c.args(["log-level", "info"]);
            } else {
                c.arg("status");
            }
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cli")
        })
        .collect();

    agent.signal(Signal::SIGTERM);
    agent.wait_notify("STOPPING=1", Duration::from_secs(10));
    held.write_all(body).expect("body after SIGTERM");
    let mut answer = String::new();
    held.read_to_string(&mut answer).expect("answer");
    assert!(
        answer.contains("200 OK") && answer.contains(r#""current":"debug""#),
        "{answer}"
    );

    let mut ok_mutations = 1; // the held call
    for (i, r) in racers.into_iter().enumerate() {
        let out = r.wait_with_output().expect("cli");
        let stdout = String::from_utf8_lossy(&out.stdout);
        match out.status.code() {
            Some(0) => {
                if i % 2 == 0 {
                    assert!(stdout.starts_with("log filter:"), "{stdout}");
                    ok_mutations += 1;
                } else {
                    assert!(stdout.contains("Node:"), "{stdout}");
                }
            }
            // Refused or closed before the call was taken: a clean failure, nothing printed.
            Some(1) | Some(3) => assert!(stdout.is_empty(), "partial output: {stdout}"),
            other => panic!("call {i} ended with {other:?}: {out:?}"),
        }
    }
    let (status, stderr) = agent.wait();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
    let records = agent.records();
    let recorded = records
        .iter()
        .filter(|r| r.action == "log.level.set" && r.result.outcome == Outcome::Ok)
        .count();
    assert_eq!(
        recorded, ok_mutations,
        "every successful mutation, and only those, is audited"
    );
    assert!(kubedna_audit::verify(&agent.audit_dir).expect("verify").ok);
}

#[test]
fn a_torn_audit_line_from_a_crash_is_repaired_at_start() {
    let mut agent = Agent::start("", "");
    assert!(agent
        .kubedna()
        .args(["log-level", "debug"])
        .output()
        .expect("cli")
        .status
        .success());
    agent.stop();
    let file = audit_file(&agent);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .expect("open");
    f.write_all(br#"{"seq":2,"time":"20"#).expect("tear");
    drop(f);
    agent.spawn();
    agent.wait_notify("READY=1", Duration::from_secs(30));
    let records = agent.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].action, "log.level.set");
    assert_eq!(records[1].action, "audit.repair");
    let out = agent
        .kubedna()
        .args(["audit", "verify"])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn cli_reports_an_absent_agent_with_exit_3() {
    let agent = Agent::prepare("", "");
    let out = agent.kubedna().arg("status").output().expect("cli");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is the agent running") && stderr.contains("agent.sock"),
        "{stderr}"
    );
}

#[test]
fn audit_verify_offline_finds_a_flipped_byte_and_exits_5() {
    let mut agent = Agent::start("", "");
    for level in ["debug", "info", "warn"] {
        assert!(agent
            .kubedna()
            .args(["log-level", level])
            .output()
            .expect("cli")
            .status
            .success());
    }
    agent.stop();
    let file = audit_file(&agent);
    let mut bytes = std::fs::read(&file).expect("read");
    let second_line = bytes.iter().position(|b| *b == b'\n').expect("newline") + 10;
    bytes[second_line] ^= 0x20;
    std::fs::write(&file, &bytes).expect("write");
    let out = agent
        .kubedna()
        .args(["audit", "verify", "--dir"])
        .arg(&agent.audit_dir)
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("BROKEN")
            && stdout.contains("line 2")
            && stdout.contains(&file.display().to_string()),
        "{stdout}"
    );
    let _ = std::fs::Permissions::from_mode(0o600);
}

#[test]
fn json_logs_and_watchdog_pings() {
    let mut agent = Agent::prepare("", "");
    // systemd sets WATCHDOG_USEC from WatchdogSec=; the agent pings at half that interval.
    agent.spawn_with(&["--log-format", "json"], &[("WATCHDOG_USEC", "200000")]);
    agent.wait_notify("READY=1", Duration::from_secs(30));
    agent.wait_notify("WATCHDOG=1", Duration::from_secs(5));
    agent.wait_notify("WATCHDOG=1", Duration::from_secs(5));
    let (status, stderr) = agent.stop();
    assert!(status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(stderr.contains("kubedna-agent ready"));
    assert!(
        !stderr.contains(common::SECRET),
        "the secret reached the log"
    );
}
