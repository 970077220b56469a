//! The pod network of a node, without an overlay: each node's pods live on a local bridge
//! (`cni0`, CNI `bridge` + `host-local` on the node's `spec.podCIDR`, which kube-controller-manager
//! allocates), and every node routes each other node's pod CIDR to that node's InternalIP. This
//! needs the nodes to share a link (a lab bridge, a Hetzner private network, a datacenter VLAN),
//! which KubeDNA's mesh discovery already assumes. [`plan`] decides from the Node list what the
//! CNI config and routes must be (pure, tested by table); [`apply`] reads the Node list with
//! kubectl and the node's own credentials, writes the config atomically and replaces the routes.
//! Routes it owns carry protocol number [`ROUTE_PROTO`], so stale ones are found and removed and
//! nobody else's are touched. It runs outside the agent's sandbox, as the oneshot
//! `kubedna-agent pod-network` the agent starts over D-Bus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::atomic::{write_atomic, AtomicWriteError};

pub const CNI_CONFIG: &str = "/etc/cni/net.d/10-kubedna.conflist";
pub const KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
/// The routing protocol number on the routes this module owns (`ip route show proto 77`).
pub const ROUTE_PROTO: &str = "77";

/// One Node as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub pod_cidr: Option<String>,
    pub internal_ip: Option<String>,
}

/// What this node's pod network must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The CNI config, once this node has a pod CIDR.
    pub cni_config: Option<String>,
    /// Other nodes' pod CIDR → their address.
    pub routes: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("pod network: `{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("pod network: cannot write the CNI config")]
    Write(#[source] AtomicWriteError),
}

/// Parses kubectl's `name podCIDR internalIP` lines (see [`apply`]); missing fields are `None`.
pub fn parse_nodes(text: &str) -> Vec<NodeRow> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let mut pod_cidr = None;
            let mut internal_ip = None;
            for v in f {
                if v.contains('/') {
                    pod_cidr.get_or_insert_with(|| v.to_string());
                } else if v.parse::<std::net::IpAddr>().is_ok() {
                    internal_ip.get_or_insert_with(|| v.to_string());
                }
            }
            Some(NodeRow {
                name,
                pod_cidr,
                internal_ip,
            })
        })
        .collect()
}

/// The CNI config for a node whose pods get addresses from `pod_cidr`. No masquerading: every
/// node routes every pod CIDR, so pod addresses are reachable as they are.
pub fn cni_config(pod_cidr: &str) -> String {
    let v = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "kubedna",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// Pure: this node's CNI config and its routes to the other nodes' pods.
pub fn plan(me: &str, nodes: &[NodeRow]) -> Plan {
    let cni_config = nodes
        .iter()
        .find(|n| n.name == me)
        .and_then(|n| n.pod_cidr.as_deref())
        .map(cni_config);
    let routes = nodes
        .iter()
        .filter(|n| n.name != me)
        .filter_map(|n| Some((n.pod_cidr.clone()?, n.internal_ip.clone()?)))
        .collect();
    Plan { cni_config, routes }
}

/// Pure: `ip -batch` lines that turn the routes now present (ours, by [`ROUTE_PROTO`]) into
/// the planned ones.
pub fn route_changes(
    present: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (cidr, via) in want {
        if present.get(cidr) != Some(via) {
            lines.push(format!(
                "route replace {cidr} via {via} proto {ROUTE_PROTO}"
            ));
        }
    }
    for cidr in present.keys() {
        if !want.contains_key(cidr) {
            lines.push(format!("route del {cidr} proto {ROUTE_PROTO}"));
        }
    }
    lines
}

/// Parses `ip route show proto 77` (`CIDR via IP dev ...`).
pub fn parse_routes(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            Some((f.first()?.to_string(), f.get(via + 1)?.to_string()))
        })
        .collect()
}

/// What one run changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub cni_config_written: bool,
    pub route_changes: Vec<String>,
    pub nodes: usize,
}

/// Reads the Nodes, then writes the CNI config (if changed) and the routes (if changed).
pub fn apply(me: &str, root: &Path) -> Result<Applied, PodNetError> {
    let jsonpath = r#"{range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}"#;
    let out = run(
        "kubectl",
        &[
            "--kubeconfig",
            KUBECONFIG,
            "get",
            "nodes",
            "-o",
            &format!("jsonpath={jsonpath}"),
        ],
    )?;
    let nodes = parse_nodes(&out);
    let plan = plan(me, &nodes);
    let mut applied = Applied {
        nodes: nodes.len(),
        ..Applied::default()
    };
    if let Some(cfg) = &plan.cni_config {
        let path: PathBuf = root.join(CNI_CONFIG.trim_start_matches('/'));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(cfg.as_str()) {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            write_atomic(&path, cfg.as_bytes(), 0o644).map_err(PodNetError::Write)?;
            applied.cni_config_written = true;
        }
    }
    let present = parse_routes(&run("ip", &["route", "show", "proto", ROUTE_PROTO])?);
    let changes = route_changes(&present, &plan.routes);
    if !changes.is_empty() {
        let batch = changes.join("\n") + "\n";
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| PodNetError::Command {
                command: "ip -batch -".into(),
                detail: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = stdin.write_all(batch.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| PodNetError::Command {
            command: "ip -batch -".into(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(PodNetError::Command {
                command: format!("ip -batch - <<< {batch:?}"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        applied.route_changes = changes;
    }
    Ok(applied)
}

fn run(program: &str, args: &[&str]) -> Result<String, PodNetError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| PodNetError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PodNetError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, cidr: Option<&str>, ip: Option<&str>) -> NodeRow {
        NodeRow {
            name: name.into(),
            pod_cidr: cidr.map(String::from),
            internal_ip: ip.map(String::from),
        }
    }

    #[test]
    fn kubectl_rows_parse_with_missing_fields() {
        let rows = parse_nodes("cp-1 10.244.0.0/24 198.18.0.2\ncp-2  198.18.0.3\nworker-1\n\n");
        assert_eq!(
            rows,
            [
                row("cp-1", Some("10.244.0.0/24"), Some("198.18.0.2")),
                row("cp-2", None, Some("198.18.0.3")),
                row("worker-1", None, None),
            ]
        );
    }

    #[test]
    fn plan_routes_other_nodes_pods_and_waits_for_its_own_cidr() {
        let nodes = [
            row("cp-1", Some("10.244.0.0/24"), Some("198.18.0.2")),
            row("cp-2", Some("10.244.1.0/24"), Some("198.18.0.3")),
            row("worker-1", None, Some("198.18.0.5")),
            row("worker-2", Some("10.244.3.0/24"), None),
        ];
        let p = plan("cp-1", &nodes);
        assert!(p
            .cni_config
            .as_deref()
            .is_some_and(|c| c.contains("\"10.244.0.0/24\"")));
        assert_eq!(
            p.routes.into_iter().collect::<Vec<_>>(),
            [("10.244.1.0/24".to_string(), "198.18.0.3".to_string())]
        );
        assert_eq!(plan("worker-1", &nodes).cni_config, None);
        assert_eq!(plan("stranger", &nodes).routes.len(), 2);
    }

    #[test]
    fn route_changes_replace_what_moved_and_delete_what_left() {
        let m = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        for (present, want, lines) in [
            (m(&[]), m(&[]), vec![]),
            (
                m(&[]),
                m(&[("10.244.1.0/24", "198.18.0.3")]),
                vec!["route replace 10.244.1.0/24 via 198.18.0.3 proto 77"],
            ),
            (
                m(&[("10.244.1.0/24", "198.18.0.3")]),
                m(&[("10.244.1.0/24", "198.18.0.3")]),
                vec![],
            ),
            (
                m(&[
                    ("10.244.1.0/24", "198.18.0.9"),
                    ("10.244.2.0/24", "198.18.0.4"),
                ]),
                m(&[("10.244.1.0/24", "198.18.0.3")]),
                vec![
                    "route replace 10.244.1.0/24 via 198.18.0.3 proto 77",
                    "route del 10.244.2.0/24 proto 77",
                ],
            ),
        ] {
            assert_eq!(route_changes(&present, &want), lines);
        }
        assert_eq!(
            parse_routes("10.244.1.0/24 via 198.18.0.3 dev eth0 proto 77 \n"),
            m(&[("10.244.1.0/24", "198.18.0.3")])
        );
    }
}
