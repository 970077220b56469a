//! What this node has done toward formation ([`Progress`]), as it is persisted, and the pure
//! decision of its next kubeadm step ([`decide_kubeadm`]) from that progress and what the
//! engine observed. It owns the state file's format (unchanged from the boolean record older
//! agents wrote, so a node upgraded in place reads its file as it was) and never does I/O:
//! the engine observes, calls [`decide_kubeadm`], and acts.

use serde::{Deserialize, Serialize};

use crate::etcd_unit::ClusterState;
use crate::kubeadm_run::KubeadmOp;

/// How far this node's formation went; each step is recorded before the irreversible action
/// it stands for. Ordered: a node only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Progress {
    /// Nothing recorded.
    New,
    /// Recorded before etcd first starts (the bootstrap rule's `started`).
    EtcdStarted,
    /// Recorded before this node runs `kubeadm init` (it won the init claim).
    InitRan,
    /// `kubeadm init` succeeded on this disk: a retry only records `init-done`, it never resets
    /// nor inits again. A cache of the evidence (the init marker and admin.conf).
    InitSucceeded,
    /// `kubeadm init` or `join` done. A worker has no etcd; `init_ran` says this node ran init.
    Member { etcd_started: bool, init_ran: bool },
}

impl Progress {
    pub fn etcd_started(self) -> bool {
        match self {
            Progress::New => false,
            Progress::Member { etcd_started, .. } => etcd_started,
            _ => true,
        }
    }

    pub fn init_ran(self) -> bool {
        match self {
            Progress::InitRan | Progress::InitSucceeded => true,
            Progress::Member { init_ran, .. } => init_ran,
            _ => false,
        }
    }

    pub fn is_member(self) -> bool {
        matches!(self, Progress::Member { .. })
    }
}

/// What this node has done, fsynced before each irreversible step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateFile", into = "StateFile")]
pub(crate) struct Persisted {
    pub progress: Progress,
    pub etcd_state: Option<ClusterState>,
    pub initial_cluster: Option<String>,
    /// A learner added for this node and not yet promoted.
    pub learner_id: Option<u64>,
    /// The etcd cluster ID, once seen: a node that ever held one never inits again.
    pub cluster_id: Option<String>,
    /// This node's init claim, persisted before the init transaction, so a retry after a lost
    /// reply recognises its own claim.
    pub init_nonce: Option<String>,
    /// The lease of the join lock this node holds, persisted when taken, so a restarted agent
    /// takes the lock back before it expires instead of freeing it mid-join.
    pub join_lease: Option<i64>,
}

impl Default for Persisted {
    fn default() -> Self {
        Persisted {
            progress: Progress::New,
            etcd_state: None,
            initial_cluster: None,
            learner_id: None,
            cluster_id: None,
            init_nonce: None,
            join_lease: None,
        }
    }
}

/// `controlplane.json` as agents before [`Progress`] wrote it (and as this one still does).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    etcd_started: bool,
    etcd_state: Option<ClusterState>,
    initial_cluster: Option<String>,
    learner_id: Option<u64>,
    cluster_id: Option<String>,
    init_ran: bool,
    #[serde(default)]
    init_succeeded: bool,
    kubeadm_done: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    init_nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join_lease: Option<i64>,
}

impl From<StateFile> for Persisted {
    fn from(f: StateFile) -> Self {
        // The furthest step recorded wins; the booleans only ever turned true in this order.
        let progress = if f.kubeadm_done {
            Progress::Member {
                etcd_started: f.etcd_started,
                init_ran: f.init_ran,
            }
        } else if f.init_succeeded {
            Progress::InitSucceeded
        } else if f.init_ran {
            Progress::InitRan
        } else if f.etcd_started {
            Progress::EtcdStarted
        } else {
            Progress::New
        };
        Persisted {
            progress,
            etcd_state: f.etcd_state,
            initial_cluster: f.initial_cluster,
            learner_id: f.learner_id,
            cluster_id: f.cluster_id,
            init_nonce: f.init_nonce,
            join_lease: f.join_lease,
        }
    }
}

impl From<Persisted> for StateFile {
    fn from(p: Persisted) -> Self {
        StateFile {
            etcd_started: p.progress.etcd_started(),
            etcd_state: p.etcd_state,
            initial_cluster: p.initial_cluster,
            learner_id: p.learner_id,
            cluster_id: p.cluster_id,
            init_ran: p.progress.init_ran(),
            init_succeeded: match p.progress {
                Progress::InitSucceeded => true,
                Progress::Member { init_ran, .. } => init_ran,
                _ => false,
            },
            kubeadm_done: p.progress.is_member(),
            init_nonce: p.init_nonce,
            join_lease: p.join_lease,
        }
    }
}

/// Whose init claim etcd holds, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node's own claim (its persisted nonce): it inits.
    Mine,
    /// Another node's.
    Other,
    /// A claim naming this node that is not this state's (an agent before nonces on this disk,
    /// or one made before this node's state directory was wiped).
    MyNameNotMine,
}

/// What the engine observed before deciding, after waiting for any kubeadm run still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeadmFacts {
    /// The init claim; None for a worker.
    pub claim: Option<Claim>,
    /// `init-done` exists in etcd.
    pub init_done: bool,
    /// The init marker and admin.conf exist.
    pub init_evidence: bool,
    /// The join marker and kubelet.conf exist.
    pub join_evidence: bool,
    /// What a join leaves (kubelet.conf, bootstrap-kubelet.conf, the cluster CA, the API
    /// server's manifest) without join evidence: a join that ran and did not succeed, whose
    /// files would fail the next join's preflight.
    pub half_joined: bool,
    /// etcd holds a `/registry/` key (Kubernetes wrote data); false where unknown (workers).
    pub kubernetes_data: bool,
}

/// The next kubeadm step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeadmStep {
    /// Nothing left to run: record [`Progress::Member`].
    Done,
    /// Init succeeded on this disk: record it, then write `init-done`.
    RecordInitSucceeded,
    /// Run `kubeadm init` (after `kubeadm reset` when `reset_first`).
    RunInit { reset_first: bool },
    /// Run `kubeadm join` (after `kubeadm reset` when `reset_first`), under the join lock for a
    /// control plane.
    Join { reset_first: bool },
    /// Stop: `op` did not succeed and only a reset could retry it, but Kubernetes has data in
    /// etcd. The operator decides.
    RefuseReset { op: KubeadmOp },
    /// Stop: this node is named as the init winner, nothing of that init is on its disk, and
    /// the init is not recorded done. The operator decides.
    InitInterrupted,
}

/// Decides the next kubeadm step from this node's progress and what it observed.
pub fn decide_kubeadm(progress: Progress, f: &KubeadmFacts) -> KubeadmStep {
    if progress.is_member() {
        return KubeadmStep::Done;
    }
    let init_here = match f.claim {
        None | Some(Claim::Other) => false,
        Some(Claim::Mine) => true,
        Some(Claim::MyNameNotMine) => match (f.init_done, progress >= Progress::InitRan) {
            (_, true) => true,
            (false, false) => return KubeadmStep::InitInterrupted,
            // Initialised here, then this node lost its disk (a reinstall under the same
            // name): nothing of that init is left on it, so it joins like the others.
            (true, false) => false,
        },
    };
    if init_here {
        let succeeded_here = progress == Progress::InitSucceeded || f.init_evidence;
        return match (f.init_done, succeeded_here, progress) {
            (true, true, _) => KubeadmStep::Done,
            (true, false, Progress::InitRan) => KubeadmStep::Done,
            (true, false, _) => KubeadmStep::InitInterrupted,
            (false, true, _) => KubeadmStep::RecordInitSucceeded,
            (false, false, Progress::InitRan) if f.kubernetes_data => KubeadmStep::RefuseReset {
                op: KubeadmOp::Init,
            },
            (false, false, Progress::InitRan) => KubeadmStep::RunInit { reset_first: true },
            (false, false, _) => KubeadmStep::RunInit { reset_first: false },
        };
    }
    // A join that did not finish is reset and run again even when Kubernetes has data (it
    // always has, once a cluster was initialised): a node whose join never finished holds
    // nothing the cluster needs. Its certificates came from the cluster's upload, its etcd member
    // is the agent's, not kubeadm's, and the join lock was awaited, so no join of its is running.
    if f.join_evidence {
        KubeadmStep::Done
    } else {
        KubeadmStep::Join {
            reset_first: f.half_joined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: KubeadmFacts = KubeadmFacts {
        claim: Some(Claim::Mine),
        init_done: false,
        init_evidence: false,
        join_evidence: false,
        half_joined: false,
        kubernetes_data: false,
    };

    #[test]
    fn kubeadm_steps_by_table() {
        use KubeadmStep::*;
        use Progress::*;
        let member = Member {
            etcd_started: true,
            init_ran: false,
        };
        let with = |f: fn(&mut KubeadmFacts)| {
            let mut x = NONE;
            f(&mut x);
            x
        };
        let mine = NONE;
        let other = with(|f| f.claim = Some(Claim::Other));
        let not_mine = with(|f| f.claim = Some(Claim::MyNameNotMine));
        let worker = with(|f| f.claim = None);
        #[rustfmt::skip]
        let table: Vec<(&str, Progress, KubeadmFacts, KubeadmStep)> = vec![
            ("a member does nothing", member, mine, Done),
            ("the winner inits", EtcdStarted, mine, RunInit { reset_first: false }),
            ("an interrupted or failed init is reset and retried", InitRan, mine, RunInit { reset_first: true }),
            ("...never once Kubernetes has data", InitRan, with(|f| f.kubernetes_data = true), RefuseReset { op: KubeadmOp::Init }),
            ("evidence of success is recorded, never re-run", InitRan, with(|f| f.init_evidence = true), RecordInitSucceeded),
            ("evidence outranks the progress a crash lost", EtcdStarted, with(|f| f.init_evidence = true), RecordInitSucceeded),
            ("a recorded success writes init-done", InitSucceeded, mine, RecordInitSucceeded),
            ("init-done written: done", InitSucceeded, with(|f| f.init_done = true), Done),
            ("init-done from this disk's init", InitRan, with(|f| f.init_done = true), Done),
            ("init-done but no init here: inconsistent, stop", EtcdStarted, with(|f| f.init_done = true), InitInterrupted),
            ("another node's claim: join", EtcdStarted, other, Join { reset_first: false }),
            ("a half-done join is reset", EtcdStarted, with(|f| { f.claim = Some(Claim::Other); f.half_joined = true }), Join { reset_first: true }),
            ("...even once Kubernetes has data (a failed join holds nothing the cluster needs)", EtcdStarted, with(|f| { f.claim = Some(Claim::Other); f.half_joined = true; f.kubernetes_data = true }), Join { reset_first: true }),
            ("a join that succeeded is not run again", EtcdStarted, with(|f| { f.claim = Some(Claim::Other); f.join_evidence = true }), Done),
            ("a claim in my name, not mine, nothing done: stop", EtcdStarted, not_mine, InitInterrupted),
            ("...done: a reinstalled init node joins", EtcdStarted, with(|f| { f.claim = Some(Claim::MyNameNotMine); f.init_done = true }), Join { reset_first: false }),
            ("...an older agent's claim on this disk resumes", InitRan, not_mine, RunInit { reset_first: true }),
            ("...an older agent's finished init", InitRan, with(|f| { f.claim = Some(Claim::MyNameNotMine); f.init_done = true }), Done),
            ("a worker joins", New, worker, Join { reset_first: false }),
            ("a worker's half-done join is reset", New, with(|f| { f.claim = None; f.half_joined = true }), Join { reset_first: true }),
        ];
        for (what, progress, facts, want) in table {
            assert_eq!(
                decide_kubeadm(progress, &facts),
                want,
                "{what}: {progress:?} {facts:?}"
            );
        }
    }

    #[test]
    fn a_state_file_written_by_the_old_agent_reads_and_writes_back_the_same() {
        let old = [
            r#"{"etcd_started":false,"etcd_state":null,"initial_cluster":null,"learner_id":null,"cluster_id":null,"init_ran":false,"kubeadm_done":false}"#,
            r#"{"etcd_started":true,"etcd_state":"new","initial_cluster":"a=https://a:2380","learner_id":null,"cluster_id":"c1","init_ran":true,"kubeadm_done":false}"#,
            r#"{"etcd_started":true,"etcd_state":"existing","initial_cluster":"a=x","learner_id":7,"cluster_id":null,"init_ran":false,"init_succeeded":false,"kubeadm_done":false}"#,
            r#"{"etcd_started":true,"etcd_state":"new","initial_cluster":"a=x","learner_id":null,"cluster_id":"c1","init_ran":true,"init_succeeded":true,"kubeadm_done":false}"#,
            r#"{"etcd_started":true,"etcd_state":"new","initial_cluster":"a=x","learner_id":null,"cluster_id":"c1","init_ran":true,"init_succeeded":true,"kubeadm_done":true}"#,
            r#"{"etcd_started":false,"etcd_state":null,"initial_cluster":null,"learner_id":null,"cluster_id":null,"init_ran":false,"init_succeeded":false,"kubeadm_done":true}"#,
        ];
        let want = [
            Progress::New,
            Progress::InitRan,
            Progress::EtcdStarted,
            Progress::InitSucceeded,
            Progress::Member {
                etcd_started: true,
                init_ran: true,
            },
            Progress::Member {
                etcd_started: false,
                init_ran: false,
            },
        ];
        for (text, want) in old.iter().zip(want) {
            let p: Persisted = serde_json::from_str(text).expect(text);
            assert_eq!(p.progress, want, "{text}");
            let back: serde_json::Value = serde_json::to_value(&p).expect("json");
            let mut orig: serde_json::Value = serde_json::from_str(text).expect("json");
            orig["init_succeeded"] = back["init_succeeded"].clone();
            assert_eq!(back, orig, "{text}");
            let again: Persisted = serde_json::from_value(back).expect("again");
            assert_eq!(again, p);
        }
        let p = Persisted {
            init_nonce: Some("n".into()),
            join_lease: Some(5),
            ..Persisted::default()
        };
        let again: Persisted =
            serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("reads");
        assert_eq!(again, p);
    }
}
