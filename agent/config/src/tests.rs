//! Table-driven config tests: every shipped example parses, every bad config names its field.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A directory with a config file and the private files the examples refer to.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fixture { dir };
        f.private("cluster.secret", SECRET);
        f.private("hcloud.token", "token-value-not-a-real-one");
        f
    }

    fn private(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("agent.yaml")
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse(&self.path(), text)
    }
}

fn minimal() -> String {
    format!(
        "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\ncluster:\n  name: demo\n  secret: {SECRET}\nnode:\n  name: n1\n  role: worker\n"
    )
}

/// Every example in examples/ parses once its absolute secret paths point at test files.
#[test]
fn every_shipped_example_parses() {
    let fx = Fixture::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let text = text
            .replace("/etc/kubedna/cluster.secret", "cluster.secret")
            .replace("/etc/kubedna/hcloud.token", "hcloud.token");
        let cfg = fx
            .parse(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        assert_eq!(cfg.cluster_secret.expose(), SECRET.as_bytes());
        n += 1;
    }
    assert!(n >= 3, "expected the shipped examples, found {n}");
}

#[test]
fn defaults_are_documented_values() {
    let fx = Fixture::new();
    let cfg = fx.parse(&minimal()).expect("minimal config");
    assert_eq!(cfg.spec.admin.socket, Path::new("/run/kubedna/agent.sock"));
    assert_eq!(cfg.socket_mode, 0o660);
    assert_eq!(cfg.spec.state.dir, Path::new("/var/lib/kubedna"));
    assert_eq!(cfg.runtime_dir(), Path::new("/run/kubedna"));
    assert_eq!(cfg.audit_dir(), Path::new("/var/lib/kubedna/audit"));
    assert_eq!(cfg.spec.audit.retention_days, 365);
    assert_eq!(cfg.spec.discovery.port, 7946);
    assert_eq!(cfg.spec.log.level, "info");
    assert_eq!(cfg.rbac.role_of(0, &[0]), Some(kubedna_proto::Role::Admin));
    assert_eq!(cfg.rbac.role_of(1000, &[1000]), None);
}

#[test]
fn secret_never_prints() {
    let fx = Fixture::new();
    let cfg = fx.parse(&minimal()).expect("config");
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(SECRET), "Debug leaked the secret: {dbg}");
    let mut bad = minimal().replace(SECRET, "short-secret-value");
    bad.push('\n');
    let err = fx.parse(&bad).expect_err("must be refused").to_string();
    assert!(
        !err.contains("short-secret-value"),
        "error leaked the secret: {err}"
    );
}

#[test]
fn role_mapping_prefers_the_most_powerful_role() {
    let fx = Fixture::new();
    let text = minimal()
        + "rbac:\n  admins:\n    uids: [10]\n  operators:\n    uids: [10, 20]\n    gids: [500]\n  viewers:\n    gids: [500, 600]\n";
    let cfg = fx.parse(&text).expect("config");
    use kubedna_proto::Role::*;
    assert_eq!(cfg.rbac.role_of(10, &[10]), Some(Admin));
    assert_eq!(cfg.rbac.role_of(20, &[20]), Some(Operator));
    assert_eq!(cfg.rbac.role_of(30, &[500]), Some(Operator));
    assert_eq!(cfg.rbac.role_of(30, &[600]), Some(Viewer));
    assert_eq!(cfg.rbac.role_of(30, &[700]), None);
}

/// (what is wrong, the YAML, the field path the error must name, a word the message must hold)
#[test]
fn bad_configs_name_their_field() {
    let fx = Fixture::new();
    let loose = fx.dir.path().join("loose.secret");
    std::fs::write(&loose, SECRET).expect("write");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let m = minimal();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown top-level field",
            m.clone() + "extra: 1\n",
            "extra",
            "expected one of `apiVersion`",
        ),
        (
            "unknown nested field",
            m.replace("  role: worker", "  role: worker\n  zone: a"),
            "node.zone",
            "unknown field `zone`",
        ),
        (
            "bad role",
            m.replace("role: worker", "role: master"),
            "node.role",
            "control-plane",
        ),
        (
            "wrong apiVersion",
            m.replace("v1alpha1", "v1"),
            "apiVersion",
            "kubedna.io/v1alpha1",
        ),
        (
            "wrong kind",
            m.replace("kind: AgentConfig", "kind: Agent"),
            "kind",
            "AgentConfig",
        ),
        (
            "bad cluster name",
            m.replace("name: demo", "name: Demo_1"),
            "cluster.name",
            "DNS label",
        ),
        (
            "missing cluster",
            "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\nnode:\n  role: worker\n".into(),
            ".",
            "missing field `cluster`",
        ),
        (
            "no secret",
            m.replace(&format!("  secret: {SECRET}\n"), ""),
            "cluster",
            "secretFile",
        ),
        (
            "short secret",
            m.replace(SECRET, "abc"),
            "cluster.secret",
            "at least 32",
        ),
        (
            "both secrets",
            m.replace(
                "  name: demo\n",
                "  name: demo\n  secretFile: cluster.secret\n",
            ),
            "cluster",
            "exactly one",
        ),
        (
            "secret file readable by others",
            m.replace(
                &format!("secret: {SECRET}"),
                &format!("secretFile: {}", loose.display()),
            ),
            "cluster.secretFile",
            "chmod 600",
        ),
        (
            "secret file missing",
            m.replace(&format!("secret: {SECRET}"), "secretFile: /nonexistent/s"),
            "cluster.secretFile",
            "cannot read",
        ),
        (
            "bad node name",
            m.replace("name: n1", "name: N_1"),
            "node.name",
            "node name",
        ),
        (
            "bad seed",
            m.clone() + "discovery:\n  seeds: [\"198.18.0.1:99999\"]\n",
            "discovery.seeds[0]",
            "host:port",
        ),
        (
            "bad seed type",
            m.clone() + "discovery:\n  seeds: 5\n",
            "discovery.seeds",
            "sequence",
        ),
        (
            "unicast multicast group",
            m.clone() + "discovery:\n  multicast:\n    group: 10.0.0.1\n",
            "discovery.multicast.group",
            "224.0.0.0/4",
        ),
        (
            "provider discovery without provider",
            m.clone() + "discovery:\n  provider: true\n",
            "discovery.provider",
            "provider.kind",
        ),
        (
            "hetzner without block",
            m.clone() + "provider:\n  kind: hetzner\n",
            "provider.hetzner",
            "tokenFile",
        ),
        (
            "unknown provider",
            m.clone() + "provider:\n  kind: aws\n",
            "provider.kind",
            "hetzner",
        ),
        (
            "unknown rbac user",
            m.clone() + "rbac:\n  viewers:\n    users: [no-such-user-kubedna]\n",
            "rbac.viewers.users[0]",
            "does not exist",
        ),
        (
            "negative uid",
            m.clone() + "rbac:\n  admins:\n    uids: [-1]\n",
            "rbac.admins.uids[0]",
            "expected u32",
        ),
        (
            "bad socket mode",
            m.clone() + "admin:\n  socketMode: \"rw\"\n",
            "admin.socketMode",
            "octal",
        ),
        (
            "socket mode locks owner out",
            m.clone() + "admin:\n  socketMode: \"0066\"\n",
            "admin.socketMode",
            "0600",
        ),
        (
            "unknown socket group",
            m.clone() + "admin:\n  socketGroup: no-such-group-kubedna\n",
            "admin.socketGroup",
            "groupadd",
        ),
        (
            "drain out of range",
            m.clone() + "admin:\n  drainTimeoutSeconds: 0\n",
            "admin.drainTimeoutSeconds",
            "1 to 300",
        ),
        (
            "retention out of range",
            m.clone() + "audit:\n  retentionDays: 0\n",
            "audit.retentionDays",
            "1 to 3650",
        ),
        (
            "bad log level",
            m.clone() + "log:\n  level: loud\n",
            "log.level",
            "info",
        ),
        (
            "yaml syntax",
            m.clone() + "log: \"unterminated\n",
            "log",
            "line 10",
        ),
    ];
    for (what, text, field, needle) in cases {
        let err = match fx.parse(&text) {
            Ok(_) => panic!("{what}: accepted a bad config:\n{text}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert_eq!(err.field(), Some(field), "{what}: wrong field in {msg:?}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
        assert!(
            msg.contains("agent.yaml"),
            "{what}: {msg:?} does not name the file"
        );
    }
}

#[test]
fn missing_file_names_the_file() {
    let err = load(Path::new("/nonexistent/agent.yaml")).expect_err("must be refused");
    assert!(err.to_string().contains("/nonexistent/agent.yaml"));
}

#[test]
fn restart_only_changes_are_detected() {
    let fx = Fixture::new();
    let a = fx.parse(&minimal()).expect("a");
    let b = fx
        .parse(&(minimal() + "log:\n  level: debug\n"))
        .expect("b");
    assert!(a.restart_only_changes(&b).is_empty());
    assert_eq!(a.changed_sections(&b), vec!["log"]);
    let c = fx
        .parse(&minimal().replace("name: n1", "name: n2"))
        .expect("c");
    assert_eq!(a.restart_only_changes(&c), vec!["node.name"]);
    let d = fx
        .parse(&(minimal() + "metrics:\n  listen: 198.18.0.2:9100\n"))
        .expect("d");
    assert_eq!(a.restart_only_changes(&d), vec!["metrics"]);
    let e = fx
        .parse(&(minimal() + "state:\n  runtimeDir: /run/kubedna-2\n"))
        .expect("e");
    assert_eq!(e.runtime_dir(), Path::new("/run/kubedna-2"));
    assert_eq!(a.restart_only_changes(&e), vec!["state.runtimeDir"]);
}

#[test]
fn a_metrics_listen_address_that_cannot_be_one_is_refused_naming_the_field() {
    let fx = Fixture::new();
    for bad in ["0.0.0.0:9464", "198.18.0.2:0", "[::]:9464"] {
        let e = fx
            .parse(&(minimal() + &format!("metrics:\n  listen: \"{bad}\"\n")))
            .expect_err(bad);
        assert_eq!(e.field(), Some("metrics.listen"), "{bad}: {e}");
        assert!(e.to_string().contains("own"), "{bad}: {e}");
    }
    for bad in ["nonsense", "198.18.0.2"] {
        let e = fx
            .parse(&(minimal() + &format!("metrics:\n  listen: \"{bad}\"\n")))
            .expect_err(bad);
        assert!(e.to_string().contains("metrics"), "{bad}: {e}");
    }
    let ok = fx
        .parse(&(minimal() + "metrics:\n  enabled: false\n"))
        .expect("off");
    assert!(!ok.spec.metrics.enabled);
}

#[test]
fn a_new_secret_is_a_reloadable_change_with_a_grace_period() {
    let fx = Fixture::new();
    let a = fx.parse(&minimal()).expect("a");
    assert_eq!(
        a.spec.cluster.secret_grace_seconds,
        DEFAULT_SECRET_GRACE_SECONDS
    );
    let other = "fedcba9876543210fedcba9876543210";
    let b = fx
        .parse(
            &minimal()
                .replace(SECRET, other)
                .replace("  name: demo\n", "  name: demo\n  secretGraceSeconds: 30\n"),
        )
        .expect("b");
    assert!(a.secret_changed(&b));
    assert!(!a.secret_changed(&a.clone()));
    assert!(
        a.restart_only_changes(&b).is_empty(),
        "rotation needs no restart"
    );
    assert_eq!(a.changed_sections(&b), vec!["cluster"]);
    assert_eq!(b.spec.cluster.secret_grace_seconds, 30);
    let dbg = format!("{b:?} {:?}", a.changed_sections(&b));
    assert!(!dbg.contains(other) && !dbg.contains(SECRET), "{dbg}");
    let zero = fx
        .parse(&minimal().replace("  name: demo\n", "  name: demo\n  secretGraceSeconds: 0\n"))
        .expect_err("zero grace");
    assert_eq!(zero.field(), Some("cluster.secretGraceSeconds"));
}

#[test]
fn the_pause_tolerance_defaults_to_5_s_is_validated_and_needs_a_restart() {
    let fx = Fixture::new();
    let a = fx.parse(&minimal()).expect("a");
    assert_eq!(
        a.spec.mesh.pause_tolerance_seconds,
        crate::spec::DEFAULT_PAUSE_TOLERANCE_SECONDS
    );
    let b = fx
        .parse(&(minimal() + "mesh:\n  pauseToleranceSeconds: 12\n"))
        .expect("b");
    assert_eq!(b.spec.mesh.pause_tolerance_seconds, 12);
    assert_eq!(a.changed_sections(&b), vec!["mesh"]);
    assert_eq!(
        a.restart_only_changes(&b),
        vec!["mesh.pauseToleranceSeconds"]
    );
    for bad in ["0", "61"] {
        let e = fx
            .parse(&(minimal() + &format!("mesh:\n  pauseToleranceSeconds: {bad}\n")))
            .expect_err(bad);
        assert_eq!(e.field(), Some("mesh.pauseToleranceSeconds"), "{bad}");
        assert!(e.to_string().contains("1 to 60 seconds"), "{e}");
    }
    let unknown = fx
        .parse(&(minimal() + "mesh:\n  pauseTolerance: 5\n"))
        .expect_err("unknown field");
    assert!(unknown.to_string().contains("pauseTolerance"), "{unknown}");
}
