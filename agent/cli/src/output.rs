//! Rendering answers for people (aligned tables, kubectl style) and for scripts (JSON, YAML).
//! Renderers are pure functions of the answer, so golden files pin their output.

use kubedna_proto::{
    AuditRecordsResponse, AuditVerifyResponse, DoctorHistoryResponse, DoctorStatusResponse,
    FormationStatus, LogLevelResponse, PeersResponse, PeersSummary, ReloadResponse, StatusResponse,
    VersionResponse,
};
use serde::Serialize;

use crate::cli::Format;

/// Renders `value` as JSON or YAML, or as a table with `table`.
pub fn render<T: Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> String) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value).expect("answers serialize");
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml_ng::to_string(value).expect("answers serialize"),
        Format::Table => table(value),
    }
}

/// Columns separated by three spaces, each as wide as its widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            l.push_str(cell);
            if i < last {
                l.push_str(&" ".repeat(w - cell.chars().count() + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `label: value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (k, v) in pairs {
        let label = format!("{k}:");
        out.push_str(&format!("{label:<width$}{v}\n"));
    }
    out
}

/// 45s, 5m3s, 2h5m, 3d4h.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `active (running)`, or the state and why: the unit's last journal lines and where to look.
fn kubelet_line(k: &kubedna_proto::UnitHealth) -> String {
    let state = format!("{} ({})", k.active_state, k.sub_state);
    if k.running() {
        return state;
    }
    let mut out = format!(
        "{state}: NOT RUNNING; last lines of `journalctl -u {}`:",
        k.unit
    );
    for l in &k.journal {
        out.push_str("\n  ");
        out.push_str(l);
    }
    out
}

pub fn status_table(s: &StatusResponse) -> String {
    let mut pairs = vec![
        ("Node", format!("{} ({})", s.node.name, s.node.role)),
        ("Cluster", s.node.cluster.clone()),
        ("State", s.node.state.clone()),
        ("Node ID", s.node.node_id.clone()),
        (
            "Agent",
            format!(
                "{}, pid {}, up {} (since {})",
                s.agent.version,
                s.agent.pid,
                human_duration(s.agent.uptime_seconds),
                s.agent.started_at.format("%Y-%m-%dT%H:%M:%SZ")
            ),
        ),
        (
            "Config",
            format!(
                "{} (generation {})",
                s.agent.config_path, s.agent.config_generation
            ),
        ),
        ("Log filter", s.agent.log_filter.clone()),
        (
            "Peers",
            s.peers
                .as_ref()
                .map_or("unknown (agent without the mesh)".into(), peers_line),
        ),
    ];
    match &s.formation {
        Some(f) => pairs.extend(formation_lines(f)),
        None => pairs.push(("Formation", "not running (see the agent's journal)".into())),
    }
    if let Some(k) = &s.kubelet {
        pairs.push(("Kubelet", kubelet_line(k)));
    }
    pairs.push((
        "You",
        format!("uid {}, role {}", s.caller.uid, s.caller.role),
    ));
    fields(&pairs)
}

/// Formation, leader, etcd members and the last error, for `kubedna status`.
fn formation_lines(f: &FormationStatus) -> Vec<(&'static str, String)> {
    let mut phase = f.phase.clone();
    if let Some(w) = &f.waiting_for {
        phase.push_str(&format!(" (waiting for {w})"));
    }
    if f.init_recorded {
        phase.push_str("; cluster initialised");
    }
    let mut out = vec![("Formation", phase)];
    out.push((
        "Leader",
        f.leader.as_ref().map_or("none yet".into(), |l| {
            format!("{} (term {})", l.name, l.term)
        }),
    ));
    if !f.etcd_members.is_empty() {
        let voters = f.etcd_members.iter().filter(|m| !m.learner).count();
        let names: Vec<String> = f
            .etcd_members
            .iter()
            .map(|m| {
                let name = if m.name.is_empty() {
                    "(starting)"
                } else {
                    m.name.as_str()
                };
                if m.learner {
                    format!("{name} [learner]")
                } else {
                    name.to_string()
                }
            })
            .collect();
        out.push((
            "etcd",
            format!(
                "{voters} voting, {} learning: {}",
                f.etcd_members.len() - voters,
                names.join(", ")
            ),
        ));
    }
    if let Some(e) = &f.last_error {
        out.push(("Last error", e.clone()));
    }
    out
}

/// `4 alive, 0 suspect, 1 down (mesh 198.18.10.2:7946)`.
pub fn peers_line(p: &PeersSummary) -> String {
    if !p.mesh_running {
        return "mesh not running yet (see the agent's journal)".into();
    }
    let mut line = format!("{} alive, {} suspect, {} down", p.alive, p.suspect, p.down);
    if let Some(a) = &p.mesh_address {
        line.push_str(&format!(" (mesh {a})"));
    }
    line
}

/// `kubedna catalogue status`: one row per component, then the catalogue's version and error.
pub fn catalogue_status_table(r: &kubedna_proto::CatalogueStatusResponse) -> String {
    if let Some(why) = &r.unavailable {
        return format!("catalogue status unavailable on this node: {why}\n");
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = r
        .components
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.wanted_version.clone(),
                c.applied_version.clone().unwrap_or_else(dash),
                c.health.clone(),
                c.last_error.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut out = table(
        &["COMPONENT", "WANTED", "APPLIED", "HEALTH", "LAST ERROR"],
        &rows,
    );
    match &r.version {
        Some(v) => out.push_str(&format!(
            "catalogue {v}, recorded by leader term {}\n",
            r.term
        )),
        None => out.push_str("no catalogue applied yet\n"),
    }
    if let Some(e) = &r.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    out
}

/// `kubedna catalogue diff`: one row per change, in the order a pass makes them.
pub fn catalogue_diff_table(r: &kubedna_proto::CatalogueDiffResponse) -> String {
    if let Some(why) = &r.unavailable {
        return format!("catalogue diff unavailable on this node: {why}\n");
    }
    if r.changes.is_empty() {
        return format!("catalogue {}: nothing to change\n", r.version);
    }
    let rows: Vec<Vec<String>> = r
        .changes
        .iter()
        .map(|c| vec![c.action.clone(), c.component.clone(), c.object.clone()])
        .collect();
    table(&["ACTION", "COMPONENT", "OBJECT"], &rows)
}

/// `kubedna peers`: one row per peer, kubectl style.
pub fn peers_table(r: &PeersResponse) -> String {
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = r
        .peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone().unwrap_or_else(dash),
                p.role.map_or_else(dash, |r| r.to_string()),
                p.address.clone(),
                p.state.clone().unwrap_or_else(dash),
                p.liveness.as_str().to_string(),
                p.last_heard_seconds_ago.map_or_else(dash, |s| {
                    format!("{} ago", human_duration(s.round() as u64))
                }),
                p.rtt_ms.map_or_else(dash, |ms| format!("{ms:.2}ms")),
                p.agent_version.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME",
            "ROLE",
            "ADDRESS",
            "STATE",
            "LIVENESS",
            "LAST HEARD",
            "RTT",
            "AGENT VERSION",
        ],
        &rows,
    );
    out.push_str(&format!("{}\n", peers_line(&r.summary)));
    if let Some(c) = &r.packets {
        let reasons: Vec<String> = [
            ("unknown key", c.unknown_key),
            ("bad tag", c.bad_tag),
            ("foreign cluster", c.foreign_cluster),
            ("replayed", c.replayed),
            ("stale", c.stale),
            ("malformed", c.malformed),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(why, n)| format!("{n} {why}"))
        .collect();
        let mut line = format!("Packets: {} accepted, {} dropped", c.accepted, c.dropped());
        if !reasons.is_empty() {
            line.push_str(&format!(" ({})", reasons.join(", ")));
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(k) = &r.keys {
        let mut line = format!(
            "Keys: sealing with {}, accepting {}",
            k.primary,
            k.accepted.join(" ")
        );
        if let Some(t) = &k.rotating_to {
            line.push_str(&format!("; rotating to {t}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Both versions; `agent` is None when only the client was asked for.
#[derive(Debug, Serialize)]
pub struct Versions {
    pub client_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<VersionResponse>,
}

pub fn version_table(v: &Versions) -> String {
    let mut pairs = vec![("Client", v.client_version.clone())];
    if let Some(a) = &v.agent {
        pairs.push(("Agent", a.agent_version.clone()));
        pairs.push(("API", a.api_version.clone()));
    }
    fields(&pairs)
}

pub fn audit_table(r: &AuditRecordsResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .records
        .iter()
        .map(|rec| {
            let who = match &rec.caller.user {
                Some(u) => format!("{u}({})", rec.caller.uid),
                None => format!("uid {}", rec.caller.uid),
            };
            vec![
                rec.seq.to_string(),
                rec.time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                who,
                format!("{:?}", rec.caller.via).to_lowercase(),
                rec.role.map_or("-".into(), |r| r.to_string()),
                rec.action.clone(),
                rec.result.outcome.as_str().to_string(),
                // The agent's own records say why it acted; an error says what failed.
                rec.result
                    .message
                    .clone()
                    .or_else(|| rec.args["reason"].as_str().map(str::to_string))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SEQ", "TIME", "CALLER", "VIA", "ROLE", "ACTION", "RESULT", "MESSAGE",
        ],
        &rows,
    );
    if r.truncated {
        out.push_str("(older matching records left out: raise --limit or narrow --since)\n");
    }
    out
}

pub fn verify_table(v: &AuditVerifyResponse) -> String {
    match &v.first_break {
        None => format!(
            "audit log intact: {} records in {} files; head {}\n",
            v.records_checked,
            v.files_checked,
            v.head.as_deref().unwrap_or("(empty)")
        ),
        Some(b) => format!(
            "audit log BROKEN at {} line {}: {}\n{} records before it verified\n",
            b.file, b.line, b.reason, v.records_checked
        ),
    }
}

pub fn log_level_table(r: &LogLevelResponse) -> String {
    format!("log filter: {} -> {}\n", r.previous, r.current)
}

pub fn reload_table(r: &ReloadResponse) -> String {
    format!(
        "configuration reloaded (generation {}); changed: {}\n",
        r.generation,
        if r.changed.is_empty() {
            "nothing".to_string()
        } else {
            r.changed.join(", ")
        }
    )
}

/// Unix seconds as RFC 3339 UTC.
fn unix(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0).map_or(secs.to_string(), |t| {
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

pub fn doctor_table(r: &DoctorStatusResponse) -> String {
    let mut out = String::new();
    if !r.enabled {
        out.push_str("doctor: disabled on this node (doctor.enabled in agent.yaml)\n");
    }
    if let Some(p) = &r.paused {
        out.push_str(&format!(
            "doctor: PAUSED by {} since {}{}\n",
            p.by,
            unix(p.since),
            p.reason
                .as_ref()
                .map_or(String::new(), |r| format!(" ({r})"))
        ));
    }
    if r.leading {
        let rows: Vec<Vec<String>> = r
            .nodes
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.role.clone(),
                    n.verdict.clone(),
                    n.signals.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "ROLE", "VERDICT", "SIGNALS"], &rows));
        if let Some(d) = &r.decision {
            out.push_str(&format!("decision: {d}\n"));
        }
    } else {
        out.push_str(
            "this node does not lead: node signals are on the leader (kubedna status names it)\n",
        );
    }
    match &r.in_flight {
        Some(p) => out.push_str(&format!(
            "replacing {} ({}): step {} since {}, started {}, old VM {}, new VM {}; signals: {}\n",
            p.node,
            p.role,
            p.step,
            unix(p.step_since),
            unix(p.started),
            p.old_vm.map_or("-".into(), |v| v.to_string()),
            p.new_vm.map_or("-".into(), |v| v.to_string()),
            p.signals
        )),
        None => out.push_str("no replacement in progress\n"),
    }
    if let Some(e) = &r.error {
        out.push_str(&format!("last error: {e}\n"));
    }
    out
}

pub fn doctor_history_table(r: &DoctorHistoryResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .entries
        .iter()
        .map(|h| {
            vec![
                h.node.clone(),
                h.role.clone(),
                h.outcome.clone(),
                unix(h.started),
                format!("{}s", h.ended.saturating_sub(h.started)),
                h.term.to_string(),
                h.signals.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NODE", "ROLE", "OUTCOME", "STARTED", "TOOK", "TERM", "SIGNALS",
        ],
        &rows,
    )
}
