//! The Node objects through `kubectl` with the control plane's admin kubeconfig: the doctor's
//! [`Kube`] until the agent has its own Kubernetes client. Reads each Node's `Ready` condition
//! and its `lastTransitionTime`; deletes with `--ignore-not-found`, so deleting a deleted Node
//! succeeds. Every call has a request timeout; an error names the command and kubectl's words.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::pass::{Kube, KubeNode};
use crate::verdict::ReadyState;
use crate::Unix;

/// kubeadm's admin kubeconfig on a control plane.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";

#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    pub timeout: Duration,
}

impl Default for Kubectl {
    fn default() -> Self {
        Kubectl {
            kubectl: "kubectl".into(),
            kubeconfig: ADMIN_CONF.into(),
            timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Deserialize)]
struct NodeList {
    items: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    metadata: Meta,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
    #[serde(default)]
    last_transition_time: Option<String>,
}

/// `2026-11-30T14:00:00Z` (the form the API server writes) as Unix seconds.
pub fn parse_time(s: &str) -> Option<Unix> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// The Nodes in `kubectl get nodes -o json` output.
pub fn parse_nodes(json: &[u8]) -> Result<Vec<KubeNode>, String> {
    let list: NodeList = serde_json::from_slice(json)
        .map_err(|e| format!("unexpected `kubectl get nodes -o json` output: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .map(|n| {
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.kind == "Ready"));
            KubeNode {
                name: n.metadata.name,
                ready: match ready.map(|c| c.status.as_str()) {
                    Some("True") => ReadyState::Ready,
                    Some("False") => ReadyState::NotReady,
                    _ => ReadyState::Unknown,
                },
                since: ready
                    .and_then(|c| c.last_transition_time.as_deref())
                    .and_then(parse_time),
            }
        })
        .collect())
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!(
                "--request-timeout={}s",
                self.timeout.as_secs().max(1)
            ))
            .args(args)
            .kill_on_drop(true);
        let what = format!("kubectl {}", args.join(" "));
        let out = tokio::time::timeout(self.timeout + Duration::from_secs(5), cmd.output())
            .await
            .map_err(|_| format!("`{what}` did not finish in time"))?
            .map_err(|e| format!("cannot run `{what}` ({}): {e}", self.kubectl.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`{what}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out.stdout)
    }
}

impl Kube for Kubectl {
    async fn nodes(&self) -> Result<Vec<KubeNode>, String> {
        let out = self.run(&["get", "nodes", "-o", "json"]).await?;
        parse_nodes(&out)
    }

    async fn delete_node(&self, name: &str) -> Result<(), String> {
        self.run(&["delete", "node", name, "--ignore-not-found", "--wait=false"])
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_nodes_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-11-30T14:00:00Z"), Some(1_796_047_200));
        assert_eq!(parse_time("2000-02-29T12:34:56Z"), Some(951_827_696));
        assert_eq!(parse_time("2026-11-30 14:00:00"), None);
        assert_eq!(parse_time("2026-13-30T14:00:00Z"), None);
        let json = br#"{"apiVersion":"v1","items":[
            {"metadata":{"name":"cp-1"},"status":{"conditions":[{"type":"MemoryPressure","status":"False"},{"type":"Ready","status":"True","lastTransitionTime":"2026-11-30T14:00:00Z"}]}},
            {"metadata":{"name":"w-1"},"status":{"conditions":[{"type":"Ready","status":"Unknown","lastTransitionTime":"2026-11-30T14:05:00Z"}]}},
            {"metadata":{"name":"w-2"},"status":{"conditions":[{"type":"Ready","status":"False"}]}},
            {"metadata":{"name":"w-3"}}
        ],"kind":"List"}"#;
        let nodes = parse_nodes(json).expect("parse");
        let got: Vec<(&str, ReadyState, Option<u64>)> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.ready, n.since))
            .collect();
        assert_eq!(
            got,
            [
                ("cp-1", ReadyState::Ready, Some(1_796_047_200)),
                ("w-1", ReadyState::Unknown, Some(1_796_047_500)),
                ("w-2", ReadyState::NotReady, None),
                ("w-3", ReadyState::Unknown, None),
            ]
        );
        assert!(parse_nodes(b"not json").is_err());
    }

    #[tokio::test]
    async fn runs_kubectl_with_the_admin_kubeconfig_and_names_failures() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("calls");
        let script = dir.path().join("kubectl");
        // A kubectl TEST DOUBLE: logs its arguments, lists one Node, fails on `delete node bad`.
        // Written under another name and copied by a `cp` process: this test process never
        // holds a write descriptor to the file it execs, so a child another test forks at that
        // moment cannot make the exec fail with ETXTBSY.
        let source = dir.path().join("kubectl.src");
        std::fs::write(
            &source,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\ncase \"$*\" in\n  *'get nodes'*) echo '{{\"items\":[{{\"metadata\":{{\"name\":\"w-1\"}},\"status\":{{\"conditions\":[{{\"type\":\"Ready\",\"status\":\"True\"}}]}}}}]}}' ;;\n  *'delete node bad'*) echo 'error: forbidden' >&2; exit 1 ;;\nesac\n",
                log.display()
            ),
        )
        .expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let copied = std::process::Command::new("cp")
            .arg("-p")
            .arg(&source)
            .arg(&script)
            .status()
            .expect("cp");
        assert!(copied.success(), "cp {}", source.display());
        let k = Kubectl {
            kubectl: script,
            kubeconfig: "/etc/kubernetes/admin.conf".into(),
            timeout: Duration::from_secs(5),
        };
        let nodes = k.nodes().await.expect("nodes");
        assert_eq!(nodes[0].ready, ReadyState::Ready);
        k.delete_node("w-1").await.expect("delete");
        let e = k.delete_node("bad").await.expect_err("refused");
        assert!(
            e.contains("kubectl delete node bad") && e.contains("forbidden"),
            "{e}"
        );
        let calls = std::fs::read_to_string(&log).expect("log");
        assert!(
            calls.contains(
                "--kubeconfig /etc/kubernetes/admin.conf --request-timeout=5s get nodes -o json"
            ),
            "{calls}"
        );
        assert!(
            calls.contains("delete node w-1 --ignore-not-found --wait=false"),
            "{calls}"
        );
    }
}
