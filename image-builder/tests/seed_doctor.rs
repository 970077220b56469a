//! The doctor's part of a seed (`doctor:` in cluster.yaml, docs/doctor.md): a control plane's
//! user-data carries the provider token (0600), agent.yaml's provider settings and `doctor:`, and
//! both role templates; the templates, rendered by the doctor's own code for a replacement,
//! pass cloud-init's schema, name the new node, and a control plane's replacement carries the
//! templates again. Workers carry none of it. Bad doctor settings name their field. Needs
//! cloud-init (scripts/deps/image.txt).

mod common;

use std::path::Path;
use std::process::Command;

use common::{bin, run, text};
use kubedna_doctor::pass::Seeds;
use kubedna_doctor::seeds::TemplateSeeds;
use kubedna_doctor::NodeRole;
use serde_yaml_ng::Value;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only-secret";
const TOKEN: &str = "lab-token-test-only";

const CLUSTER: &str = "apiVersion: kubedna.io/v1alpha1\nkind: ClusterSeed\nname: p-doc\n\
secretFile: cluster-secret\nprovider: lab\ndoctor:\n  tokenFile: hcloud-token\n  \
hcloudApi: http://198.18.80.1:8089/v1\n  settings:\n    backoffSeconds: 60\n\
nodes:\n  - name: cp-1\n    role: control-plane\n    address: 198.18.80.2\n  \
- name: cp-2\n    role: control-plane\n    address: 198.18.80.3\n  \
- name: cp-3\n    role: control-plane\n    address: 198.18.80.4\n  - name: w-1\n    role: worker\n";

fn decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let n = chunk
            .iter()
            .take_while(|c| **c != b'=')
            .fold((0u32, 0), |(acc, k), c| {
                (acc | u32::from(val(*c)) << (18 - 6 * k), k + 1)
            });
        let bytes = n.0.to_be_bytes();
        out.extend_from_slice(&bytes[1..n.1]);
    }
    out
}

fn schema_ok(text: &str, dir: &Path, name: &str) {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    let o = Command::new("cloud-init")
        .args(["schema", "-c"])
        .arg(&p)
        .output()
        .expect("cloud-init is installed (scripts/deps/image.txt)");
    assert!(
        o.status.success(),
        "{name} fails cloud-init schema: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn seed(dir: &Path, node: &str) -> String {
    let c = dir.join("cluster.yaml");
    let out = dir.join(node);
    let o = run(bin()
        .args(["seed", "--cluster"])
        .arg(&c)
        .args(["--node", node, "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !text(&o).contains(TOKEN) && !text(&o).contains(SECRET),
        "secrets are never printed"
    );
    std::fs::read_to_string(out.join("user-data")).expect("user-data")
}

/// write_files path → (decoded content, permissions).
fn files(user_data: &str) -> Vec<(String, String, String)> {
    let v: Value = serde_yaml_ng::from_str(user_data).expect("yaml");
    v["write_files"]
        .as_sequence()
        .expect("write_files")
        .iter()
        .map(|f| {
            let content = f["content"].as_str().unwrap_or_default();
            let content = if f["encoding"] == "b64" {
                String::from_utf8(decode(content)).expect("utf-8")
            } else {
                content.to_string()
            };
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                content,
                f["permissions"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn file<'a>(
    files: &'a [(String, String, String)],
    path: &str,
) -> Option<&'a (String, String, String)> {
    files.iter().find(|f| f.0 == path)
}

#[test]
fn control_planes_carry_token_settings_and_templates_workers_none() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).expect("write");
    std::fs::write(dir.path().join("cluster-secret"), SECRET).expect("secret");
    std::fs::write(dir.path().join("hcloud-token"), format!("{TOKEN}\n")).expect("token");

    let cp = seed(dir.path(), "cp-2");
    schema_ok(&cp, dir.path(), "cp-2.yaml");
    assert!(!cp.contains(TOKEN), "the token is encoded, not inline");
    let f = files(&cp);
    let token = file(&f, "/etc/kubedna/provider-token").expect("token file");
    assert_eq!((token.1.as_str(), token.2.as_str()), (TOKEN, "0600"));
    let agent: Value =
        serde_yaml_ng::from_str(&file(&f, "/etc/kubedna/agent.yaml").expect("agent.yaml").1)
            .expect("agent");
    assert_eq!(agent["doctor"]["enabled"], true);
    assert_eq!(agent["doctor"]["backoffSeconds"], 60);
    assert_eq!(agent["provider"]["kind"], "lab");
    assert_eq!(agent["provider"]["lab"]["name"], "p-doc");
    assert_eq!(
        agent["provider"]["lab"]["hcloudApi"],
        "http://198.18.80.1:8089/v1"
    );
    assert_eq!(
        agent["provider"]["lab"]["tokenFile"],
        "/etc/kubedna/provider-token"
    );

    // The templates, as the doctor renders a replacement from them.
    let tdir = dir.path().join("templates");
    std::fs::create_dir(&tdir).expect("mkdir");
    for role in ["control-plane", "worker"] {
        let (_, t, mode) =
            file(&f, &format!("/etc/kubedna/doctor/user-data.{role}.tmpl")).expect("template");
        assert_eq!(mode, "0600");
        assert!(
            t.contains("{{node_name}}"),
            "{role} template keeps its placeholder"
        );
        assert!(
            !t.contains("user-data.worker.tmpl"),
            "templates hold no templates"
        );
        std::fs::write(tdir.join(format!("user-data.{role}.tmpl")), t).expect("write");
    }
    let seeds = TemplateSeeds { dir: tdir };
    let new_cp = seeds
        .render("cp-2", NodeRole::ControlPlane)
        .expect("render cp");
    schema_ok(&new_cp, dir.path(), "new-cp.yaml");
    let nf = files(&new_cp);
    let agent: Value =
        serde_yaml_ng::from_str(&file(&nf, "/etc/kubedna/agent.yaml").expect("agent.yaml").1)
            .expect("agent");
    assert_eq!(agent["node"]["name"], "cp-2");
    assert_eq!(agent["node"]["role"], "control-plane");
    assert_eq!(
        agent["doctor"]["enabled"], true,
        "a replacement control plane can run the doctor"
    );
    assert_eq!(
        agent["discovery"]["seeds"].as_sequence().map(Vec::len),
        Some(3),
        "every control plane is a seed"
    );
    assert!(file(&nf, "/etc/kubedna/provider-token").is_some());
    for role in ["control-plane", "worker"] {
        let t = &file(&nf, &format!("/etc/kubedna/doctor/user-data.{role}.tmpl"))
            .expect("carried on")
            .1;
        assert!(t.contains("{{node_name}}"));
    }
    let new_w = seeds
        .render("w-1", NodeRole::Worker)
        .expect("render worker");
    schema_ok(&new_w, dir.path(), "new-w.yaml");
    let wf = files(&new_w);
    assert!(file(&wf, "/etc/kubedna/provider-token").is_none() && !new_w.contains("doctor"));
    assert!(new_w.contains("hostname: \"w-1\""), "{new_w}");

    let w = seed(dir.path(), "w-1");
    let wf = files(&w);
    assert!(
        file(&wf, "/etc/kubedna/provider-token").is_none(),
        "workers never get the token"
    );
    assert!(!w.contains("doctor"), "nor the doctor");
}

fn refused(cluster: &str, field: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("cluster.yaml"), cluster).expect("write");
    std::fs::write(dir.path().join("cluster-secret"), SECRET).expect("secret");
    std::fs::write(dir.path().join("hcloud-token"), TOKEN).expect("token");
    let o = run(bin()
        .args(["seed", "--cluster"])
        .arg(dir.path().join("cluster.yaml"))
        .args(["--node", "cp-1", "--out"])
        .arg(dir.path().join("out")));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains(field), "error must name {field}:\n{t}");
    assert!(!dir.path().join("out").exists(), "nothing written");
}

#[test]
fn bad_doctor_settings_name_their_field() {
    refused(
        &CLUSTER.replace("provider: lab", "provider: none"),
        "doctor",
    );
    refused(
        &CLUSTER.replace("  hcloudApi: http://198.18.80.1:8089/v1\n", ""),
        "doctor.hcloudApi",
    );
    refused(
        &CLUSTER.replace("provider: lab", "provider: hetzner"),
        "doctor.hcloudApi",
    );
    refused(
        &CLUSTER.replace("backoffSeconds", "backofSeconds"),
        "doctor.settings.backofSeconds",
    );
    refused(
        &CLUSTER.replace("hcloud-token", "no-such-token"),
        "doctor.tokenFile",
    );
}
