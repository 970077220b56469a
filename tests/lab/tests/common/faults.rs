//! Faults injected into a real formation (issue 16, "side effects that escape etcd's fencing"),
//! each timed on something observable in the nodes (a kubeadm unit running, an API server
//! answering, a process stopped at a gate), never on a sleep, and the evidence read back
//! afterwards: the units' start and end in each node's journal, and the agents' audit records.
//! Every wait has a deadline; a fault that could not be placed where it was meant to land fails
//! the test with why, rather than passing without having been exercised.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kubedna_lab::lab::Lab;
use serde_json::Value;

use super::*;

/// The agent's `WatchdogSec` (units/kubedna-agent.service): a frozen agent is killed by systemd
/// after this, so every freeze here must end well before it.
const AGENT_WATCHDOG: Duration = Duration::from_secs(30);
/// Where kubeadm's node operations write their success marker (the agent's state directory).
const INIT_MARKER: &str = "/var/lib/kubedna/kubeadm/init.ok";

/// `sh -c SCRIPT` in `node`: (success, stdout). Panics when the node cannot be reached.
pub fn sh(lab: &Lab, node: &str, script: &str) -> (bool, String) {
    let out = lab
        .exec(node, &["sh", "-c", script], Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("{node}: `{script}`: {e}"));
    (out.success(), out.stdout)
}

fn must(lab: &Lab, node: &str, script: &str) -> String {
    let (ok, out) = sh(lab, node, script);
    assert!(ok, "{node}: `{script}` failed: {out}");
    out
}

/// Whether `unit` is active or activating in `node` (an ended transient unit is unloaded).
pub fn unit_running(lab: &Lab, node: &str, unit: &str) -> bool {
    let (_, out) = sh(lab, node, &format!("systemctl is-active {unit}"));
    matches!(out.trim(), "active" | "activating")
}

/// The first node of `nodes` running a unit named `prefix*`, and that unit.
pub fn running_unit(
    lab: &Lab,
    nodes: &[&'static str],
    prefix: &str,
) -> Option<(&'static str, String)> {
    nodes.iter().find_map(|n| {
        let (_, out) = sh(
            lab,
            n,
            &format!(
                "systemctl list-units --no-legend --plain --state=active,activating '{prefix}*'"
            ),
        );
        Some((*n, out.split_whitespace().next()?.to_string()))
    })
}

/// Sends `signal` to the agent's main process in `node` (SIGKILL: systemd restarts it).
pub fn signal_agent(lab: &Lab, node: &str, signal: &str) {
    must(
        lab,
        node,
        &format!("systemctl kill --signal={signal} --kill-whom=main kubedna-agent"),
    );
}

fn agent_pid(lab: &Lab, node: &str) -> String {
    must(lab, node, "systemctl show -p MainPID --value kubedna-agent")
        .trim()
        .to_string()
}

/// Polls `nodes` until one runs a unit named `prefix*`, then kills that node's agent (SIGKILL to
/// its main process, as an OOM kill would; systemd restarts it). Returns the node and the unit.
pub fn kill_agent_while_running(
    lab: &Lab,
    nodes: &[&'static str],
    prefix: &str,
    within: Duration,
) -> (&'static str, String) {
    let (node, unit) = poll(
        &format!("a {prefix}* unit running on one of {nodes:?}"),
        within,
        || running_unit(lab, nodes, prefix),
        || diagnose_all(lab, nodes),
    );
    signal_agent(lab, node, "SIGKILL");
    (node, unit)
}

/// The agent is killed right after `kubeadm init` exits 0, before it can record the success:
/// once the init node's kube-apiserver runs (kubeadm then waits for it and makes its last API
/// calls: seconds; the API answering `/readyz` proved too late to catch) and the API name
/// points at the node itself (the agent writes that entry; kubeadm needs it), its agent is
/// frozen (SIGSTOP); the init unit is awaited to its end and kubeadm's own success marker
/// checked; then the frozen agent, which never saw the exit, is killed (SIGKILL; systemd
/// restarts it). Returns the node, the unit and how long the agent was frozen. Fails, saying
/// so, if the init ended before the freeze or the agent's watchdog fired.
pub fn kill_agent_right_after_init(
    lab: &Lab,
    within: Duration,
) -> (&'static str, String, Duration) {
    let (node, unit) = poll(
        "a kubeadm init unit on a control plane whose kube-apiserver runs, the API name on itself",
        within,
        || {
            let (node, unit) = running_unit(lab, &CONTROL_PLANES, "kubedna-kubeadm-init-")?;
            let own = lab.node(node).ok()?.address.to_string();
            let (ok, out) = sh(
                lab,
                node,
                "pgrep -x kube-apiserver >/dev/null && awk '$2 ~ /^api[.]/ {print $1}' /etc/hosts",
            );
            (ok && out.trim() == own).then_some((node, unit))
        },
        || diagnose_all(lab, &CONTROL_PLANES),
    );
    let pid = agent_pid(lab, node);
    signal_agent(lab, node, "SIGSTOP");
    let frozen = Instant::now();
    assert!(
        unit_running(lab, node, &unit),
        "{node}: {unit} ended before its agent was frozen, so the fault did not land; \
         the poll above is too slow for this host\n{}",
        diagnose(lab, node)
    );
    poll(
        &format!("{node}'s {unit} to end while its agent is frozen"),
        AGENT_WATCHDOG - Duration::from_secs(5),
        || (!unit_running(lab, node, &unit)).then_some(()),
        || {
            // Thaw it, so the journal below is the agent's, not the watchdog's.
            signal_agent(lab, node, "SIGCONT");
            format!(
                "kubeadm init went on longer than the agent's watchdog allows a freeze\n{}",
                diagnose(lab, node)
            )
        },
    );
    let held = frozen.elapsed();
    assert!(
        has_file(lab, node, INIT_MARKER),
        "{node}: {unit} ended without kubeadm's success marker {INIT_MARKER}: kubeadm init \
         failed; read `journalctl -u {unit}` in {node}\n{}",
        diagnose(lab, node)
    );
    assert_eq!(
        agent_pid(lab, node),
        pid,
        "{node}'s agent was restarted while frozen (its watchdog?): the fault did not land"
    );
    signal_agent(lab, node, "SIGKILL");
    (node, unit, held)
}

/// During a control-plane join (the first: another control plane waits for the join lock),
/// kubeadm is held (SIGSTOP to its unit's processes) while every etcd member crashes in turn
/// (SIGKILL; systemd restarts it), each once the cluster is healthy again, then released. The
/// etcd client spreads its streams over the members, so whichever member carries the joining
/// agent's lock keep-alive, it crashes while the join runs. Returns the node, the unit and how
/// long kubeadm was held.
pub fn crash_etcd_members_during_join(
    lab: &Lab,
    joiners: &[&'static str],
    within: Duration,
) -> (&'static str, String, Duration) {
    let (node, unit) = poll(
        &format!("a kubeadm join unit on one of {joiners:?}"),
        within,
        || running_unit(lab, joiners, "kubedna-kubeadm-join-"),
        || diagnose_all(lab, joiners),
    );
    must(
        lab,
        node,
        &format!("systemctl kill --signal=SIGSTOP {unit}"),
    );
    let held = Instant::now();
    // The lock is what keeps the next join out: a waiter must be there for the check to bite.
    let waiters: Vec<&str> = joiners.iter().copied().filter(|n| *n != node).collect();
    await_views(
        lab,
        &waiters,
        &format!("the other control planes wait for the join lock {node} holds"),
        Duration::from_secs(60),
        |_, v| {
            v.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("join lock"))
        },
    );
    for cp in CONTROL_PLANES {
        await_etcd_healthy(
            lab,
            &format!("before {cp}'s etcd is crashed"),
            Duration::from_secs(120),
        );
        assert!(
            unit_running(lab, node, &unit),
            "{node}'s {unit} ended while held\n{}",
            diagnose(lab, node)
        );
        must(
            lab,
            cp,
            "systemctl kill --signal=SIGKILL --kill-whom=main kubedna-etcd",
        );
    }
    await_etcd_healthy(
        lab,
        "after every member crashed once",
        Duration::from_secs(120),
    );
    assert!(
        unit_running(lab, node, &unit),
        "{node}'s {unit} ended while held\n{}",
        diagnose(lab, node)
    );
    must(
        lab,
        node,
        &format!("systemctl kill --signal=SIGCONT {unit}"),
    );
    (node, unit, held.elapsed())
}

/// One kubeadm unit's life in a node's journal: its first and last message from systemd.
#[derive(Debug, Clone)]
pub struct Span {
    pub node: &'static str,
    pub op: String,
    pub unit: String,
    /// Unix microseconds (the nodes share the host's clock).
    pub from: u64,
    pub to: u64,
}

impl Span {
    fn overlaps(&self, o: &Span) -> bool {
        self.from < o.to && o.from < self.to
    }
}

/// Every `kubedna-kubeadm-<op>-<pid>-<n>.service` in `node`'s journal, from systemd's own
/// messages about it.
pub fn kubeadm_spans(lab: &Lab, node: &'static str) -> Vec<Span> {
    let out = must(
        lab,
        node,
        "journalctl -o json --output-fields=UNIT --no-pager _PID=1",
    );
    let mut by_unit: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(unit) = v["UNIT"]
            .as_str()
            .filter(|u| u.starts_with("kubedna-kubeadm-"))
        else {
            continue;
        };
        let Some(t) = v["__REALTIME_TIMESTAMP"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        let e = by_unit.entry(unit.to_string()).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    by_unit
        .into_iter()
        .map(|(unit, (from, to))| {
            let stem = unit
                .trim_end_matches(".service")
                .trim_start_matches("kubedna-kubeadm-");
            let op = stem.rsplitn(3, '-').nth(2).unwrap_or(stem).to_string();
            Span {
                node,
                op,
                unit,
                from,
                to,
            }
        })
        .collect()
}

/// From every node's journal: no two control-plane joins overlap in time, and no reset runs
/// beside a join on the same node. Returns every kubeadm unit seen.
pub fn assert_joins_serialized(lab: &Lab) -> Vec<Span> {
    let spans: Vec<Span> = NODES.iter().flat_map(|n| kubeadm_spans(lab, n)).collect();
    let cp_joins: Vec<&Span> = spans
        .iter()
        .filter(|s| s.op == "join" && CONTROL_PLANES.contains(&s.node))
        .collect();
    for (i, a) in cp_joins.iter().enumerate() {
        for b in &cp_joins[i + 1..] {
            assert!(
                !a.overlaps(b),
                "two control-plane joins overlap: {a:?} and {b:?}\nall kubeadm units: {spans:#?}"
            );
        }
    }
    for r in spans.iter().filter(|s| s.op == "reset") {
        for j in spans.iter().filter(|s| s.op == "join" && s.node == r.node) {
            assert!(
                !r.overlaps(j),
                "a reset ran beside a join on {}: {r:?} and {j:?}",
                r.node
            );
        }
    }
    spans
}

/// `node`'s audit records of the agent's own `action` (a name or a `prefix.*` pattern).
pub fn agent_records(lab: &Lab, node: &str, action: &str) -> Vec<Value> {
    let out = must(
        lab,
        node,
        &format!("kubedna -o json audit list --actor agent --action '{action}' --limit 100000"),
    );
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{node}: audit list is not JSON: {e}: {out}"));
    v["records"].as_array().cloned().unwrap_or_default()
}

fn of_term(records: &[Value], term: i64) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["args"]["term"].as_i64() == Some(term))
        .collect()
}

/// What unseating a leader blocked in `upload-certs` took.
#[derive(Debug)]
pub struct Unseated {
    pub new_leader: String,
    pub new_term: i64,
    /// From the old leader's freeze to a new term shown by the other control planes.
    pub takeover: Duration,
    /// From the freeze to the new leader's renewal of the join material.
    pub renewed: Duration,
    /// From the old leader's thaw to its gated kubeadm being gone.
    pub stopped: Duration,
}

/// The gate: a watcher inside the node stops (SIGSTOP) `kubeadm init phase upload-certs` the
/// moment it starts, and writes its pid.
const UPLOAD_GATE: &str = r#"cat > /run/lab-upload-gate.sh <<'EOF'
while :; do
  for p in $(pgrep -x kubeadm); do
    if grep -q upload-certs /proc/$p/cmdline 2>/dev/null; then
      kill -STOP $p && echo $p > /run/lab-upload-gate.pid && exit 0
    fi
  done
  sleep 0.02
done
EOF
rm -f /run/lab-upload-gate.pid
systemd-run --unit=lab-upload-gate --collect /bin/sh /run/lab-upload-gate.sh"#;

/// The leader is unseated while its join-material duty is blocked in `kubeadm init phase
/// upload-certs`. The stored material is deleted from etcd (so the leader renews it at its next
/// pass), the leader's kubeadm is stopped at a gate in `upload-certs`, the leader's agent is
/// frozen until the others show a new term and the new leader has renewed the material, then
/// thawed. Its agent must find its term gone and stop the gated kubeadm itself (the gate is only
/// opened by the test if it does not), and no record of the old term's duty may appear after.
pub fn unseat_leader_in_upload_certs(lab: &Lab, leader: &'static str, term: i64) -> Unseated {
    let renews_before = of_term(&agent_records(lab, leader, "joinmaterial.renew"), term).len();
    must(lab, leader, UPLOAD_GATE);
    let (_, keys) = etcdctl(
        lab,
        leader,
        &["get", "--prefix", "/kubedna/", "--keys-only"],
    );
    let key = keys
        .lines()
        .find(|l| l.ends_with("/join-material"))
        .unwrap_or_else(|| panic!("no join material stored in etcd: {keys}"))
        .to_string();
    let (ok, out) = etcdctl(lab, leader, &["del", &key]);
    assert!(ok, "deleting {key}: {out}");
    let pid = poll(
        &format!("{leader}'s join-material duty stopped at the gate in `upload-certs`"),
        Duration::from_secs(120),
        || {
            let (ok, out) = sh(lab, leader, "cat /run/lab-upload-gate.pid");
            ok.then(|| out.trim().to_string()).filter(|p| !p.is_empty())
        },
        || diagnose(lab, leader),
    );
    let state = must(lab, leader, &format!("cut -d' ' -f3 /proc/{pid}/stat"));
    assert_eq!(
        state.trim(),
        "T",
        "{leader}'s kubeadm {pid} is not stopped at the gate"
    );
    let agent = agent_pid(lab, leader);
    signal_agent(lab, leader, "SIGSTOP");
    let frozen = Instant::now();
    let others: Vec<&str> = CONTROL_PLANES
        .iter()
        .copied()
        .filter(|n| *n != leader)
        .collect();
    let takeover = await_views(
        lab,
        &others,
        &format!("a new leader term while {leader}'s agent is frozen in upload-certs"),
        Duration::from_secs(20),
        |_, v| {
            v.leader
                .as_ref()
                .is_some_and(|(n, t)| n != leader && *t > term)
        },
    );
    let (new_leader, new_term) = common_leader(lab, &others);
    poll(
        &format!("{new_leader} renews the join material under term {new_term}"),
        AGENT_WATCHDOG - Duration::from_secs(5) - frozen.elapsed().min(Duration::from_secs(20)),
        || {
            let r = agent_records(lab, &new_leader, "joinmaterial.renew");
            of_term(&r, new_term)
                .iter()
                .any(|r| r["result"]["outcome"] == "ok")
                .then_some(())
        },
        || diagnose(lab, &new_leader),
    );
    let renewed = frozen.elapsed();
    signal_agent(lab, leader, "SIGCONT");
    let thawed = Instant::now();
    assert_eq!(
        agent_pid(lab, leader),
        agent,
        "{leader}'s agent was restarted while frozen (its watchdog?): the fault did not land"
    );
    // Its agent finds the term gone and stops the duty's unit: systemd's SIGTERM and SIGCONT
    // end the stopped kubeadm before it runs another instruction.
    let gone = || !sh(lab, leader, &format!("test -d /proc/{pid}")).0;
    while !gone() {
        if thawed.elapsed() > Duration::from_secs(60) {
            let _ = sh(lab, leader, &format!("kill -CONT {pid}"));
            panic!(
                "{leader}'s agent did not stop its upload-certs kubeadm ({pid}) within 60 s of \
                 finding its term {term} gone; the gate is now open\n{}",
                diagnose(lab, leader)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stopped = thawed.elapsed();
    poll(
        &format!("{leader} records the end of its term {term}"),
        Duration::from_secs(60),
        || (!of_term(&agent_records(lab, leader, "leader.lost"), term).is_empty()).then_some(()),
        || diagnose(lab, leader),
    );
    let renews_after = of_term(&agent_records(lab, leader, "joinmaterial.renew"), term).len();
    assert_eq!(
        renews_after, renews_before,
        "{leader}'s join-material duty of term {term} completed after term {new_term} existed"
    );
    assert!(
        running_unit(lab, &[leader], "kubedna-kubeadm-upload-certs-").is_none(),
        "{leader} still runs an upload-certs unit of its old term"
    );
    Unseated {
        new_leader,
        new_term,
        takeover,
        renewed,
        stopped,
    }
}
