//! `kubedna-image seed --pxe-dir`: one NoCloud seed directory per machine, named by its MAC as
//! iPXE writes it, for a whole cluster description; each passes `cloud-init schema -c` and
//! carries its own node; a rerun replaces the layout as a whole (a machine removed from the
//! description loses its seed); a missing, malformed, group or repeated MAC is refused with
//! the field named and nothing written. Needs cloud-init.

mod common;

use std::path::Path;

use common::{bin, run, text};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only-secret";
const CLUSTER: &str = "apiVersion: kubedna.io/v1alpha1\nkind: ClusterSeed\nname: dc\n\
secretFile: cluster-secret\nnodes:\n  - name: cp-1\n    role: control-plane\n    \
mac: 52:54:00:AA:00:01\n  - name: w-1\n    role: worker\n    mac: 52-54-00-aa-00-02\n";

fn seed(dir: &Path, yaml: &str, out: &Path) -> std::process::Output {
    let c = dir.join("cluster.yaml");
    std::fs::write(&c, yaml).expect("write");
    std::fs::write(dir.join("cluster-secret"), SECRET).expect("secret");
    run(bin()
        .args(["seed", "--cluster"])
        .arg(&c)
        .arg("--pxe-dir")
        .arg(out))
}

#[test]
fn a_layout_holds_one_seed_per_mac_and_a_rerun_replaces_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("www/seed");
    let o = seed(dir.path(), CLUSTER, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains(SECRET), "the secret was printed");
    let mut macs: Vec<String> = std::fs::read_dir(&out)
        .expect("layout")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    macs.sort();
    assert_eq!(macs, ["52-54-00-aa-00-01", "52-54-00-aa-00-02"]);
    for (mac, node) in [("52-54-00-aa-00-01", "cp-1"), ("52-54-00-aa-00-02", "w-1")] {
        let ud = out.join(mac).join("user-data");
        let o = std::process::Command::new("cloud-init")
            .args(["schema", "-c"])
            .arg(&ud)
            .output()
            .expect("cloud-init (scripts/deps/image.txt)");
        assert!(o.status.success(), "{}: {}", ud.display(), text(&o));
        let meta = std::fs::read_to_string(out.join(mac).join("meta-data")).expect("meta-data");
        assert!(meta.contains(&format!("local-hostname: {node}")), "{meta}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ud).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", ud.display());
    }
    // w-1 leaves the cluster: its machine must lose its seed.
    let fewer = CLUSTER.replace(
        "  - name: w-1\n    role: worker\n    mac: 52-54-00-aa-00-02\n",
        "",
    );
    let o = seed(dir.path(), &fewer, &out);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("52-54-00-aa-00-01/user-data").is_file());
    assert!(
        !out.join("52-54-00-aa-00-02").exists(),
        "a removed machine kept its seed"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("www"))
        .expect("www")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["seed"], "temporary trees left beside the layout");
}

#[test]
fn bad_macs_are_refused_with_the_field_named_and_nothing_written() {
    let table: &[(String, &str)] = &[
        (
            CLUSTER.replace("    mac: 52-54-00-aa-00-02\n", ""),
            "nodes[1].mac: node \"w-1\" has no mac",
        ),
        (
            CLUSTER.replace("52-54-00-aa-00-02", "52:54:00:AA:00:01"),
            "nodes[1].mac: 52:54:00:AA:00:01 is also the MAC of \"cp-1\"",
        ),
        (
            CLUSTER.replace("52-54-00-aa-00-02", "52:54:00:aa:00"),
            "nodes[1].mac: \"52:54:00:aa:00\" is not a MAC address",
        ),
        (
            CLUSTER.replace("52-54-00-aa-00-02", "01:00:5e:00:00:01"),
            "nodes[1].mac: \"01:00:5e:00:00:01\" is a group",
        ),
    ];
    for (yaml, want) in table {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("seed");
        let o = seed(dir.path(), yaml, &out);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{want}: {t}");
        assert!(t.contains(want), "want {want:?} in:\n{t}");
        assert!(!out.exists(), "{want}: a layout was written");
    }
}

#[test]
fn pxe_dir_and_node_do_not_mix() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = dir.path().join("cluster.yaml");
    std::fs::write(&c, CLUSTER).expect("write");
    let o = run(bin()
        .args(["seed", "--cluster"])
        .arg(&c)
        .args(["--node", "cp-1", "--pxe-dir"])
        .arg(dir.path().join("seed")));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(bin()
        .args(["seed", "--cluster"])
        .arg(&c)
        .arg("--out")
        .arg(dir.path()));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--node"), "{}", text(&o));
}
