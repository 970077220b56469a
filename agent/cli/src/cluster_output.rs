//! Tables of the cluster-wide views (`status --cluster`, `audit list --cluster`): one row per
//! node, whatever it answered, so an unreachable or refusing node is seen, not missed; and the
//! merged audit records with each record's node, a broken chain marked where it breaks. Pure
//! functions of the answer, like [`crate::output`].

use kubedna_proto::{ClusterAuditResponse, ClusterStatusResponse, NodeAnswer};

use crate::output::table;

pub fn cluster_status_table(r: &ClusterStatusResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| match &n.status {
            Some(s) => vec![
                n.node.clone(),
                n.answer.as_str().to_string(),
                s.role.to_string(),
                s.phase.clone().unwrap_or_else(|| s.state.clone()),
                s.leader
                    .as_ref()
                    .map_or("-".into(), |l| format!("{} (term {})", l.name, l.term)),
                format!("{} / {}", s.agent_version, s.image_version),
                if s.maintenance { "yes" } else { "no" }.to_string(),
                s.last_error.clone().unwrap_or_else(|| "-".into()),
            ],
            None => vec![
                n.node.clone(),
                n.answer.as_str().to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                n.message.clone().unwrap_or_default(),
            ],
        })
        .collect();
    let mut out = table(
        &[
            "NODE",
            "ANSWER",
            "ROLE",
            "PHASE",
            "LEADER",
            "AGENT / IMAGE",
            "MAINTENANCE",
            "LAST ERROR / WHY",
        ],
        &rows,
    );
    out.push_str(&format!("(asked by {})\n", r.asked_by));
    out
}

pub fn cluster_audit_table(r: &ClusterAuditResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .records
        .iter()
        .map(|x| {
            let rec = &x.record;
            let who = match &rec.caller.user {
                Some(u) => format!("{u}({})", rec.caller.uid),
                None => format!("uid {}", rec.caller.uid),
            };
            vec![
                rec.time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                x.node.clone(),
                if x.chain_ok {
                    rec.seq.to_string()
                } else {
                    format!("{}!", rec.seq)
                },
                who,
                format!("{:?}", rec.caller.via).to_lowercase(),
                rec.action.clone(),
                rec.result.outcome.as_str().to_string(),
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
            "TIME", "NODE", "SEQ", "CALLER", "VIA", "ACTION", "RESULT", "MESSAGE",
        ],
        &rows,
    );
    out.push('\n');
    let nodes: Vec<Vec<String>> = r
        .nodes
        .iter()
        .map(|n| {
            let chain = match &n.chain_break {
                None if n.answer == NodeAnswer::Ok => "ok".to_string(),
                None => "-".to_string(),
                Some(b) => {
                    let mut at = Vec::new();
                    if let (Some(f), Some(l)) = (&b.file, b.line) {
                        at.push(format!("{f} line {l}"));
                    }
                    if let Some(s) = b.seq {
                        at.push(format!("seq {s}"));
                    }
                    format!("BROKEN at {}: {}", at.join(", "), b.reason)
                }
            };
            vec![
                n.node.clone(),
                n.answer.as_str().to_string(),
                n.records.to_string(),
                chain,
                n.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "ANSWER", "RECORDS", "CHAIN", "WHY"],
        &nodes,
    ));
    if r.records.iter().any(|x| !x.chain_ok) {
        out.push_str("(SEQ marked ! fails its hash or its link to the record before it)\n");
    }
    if r.truncated {
        out.push_str("(older matching records left out: raise --limit or narrow --since)\n");
    }
    out
}
