use std::io::Read;

use super::*;

fn bins() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tmp");
    for name in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "pause",
    ] {
        std::fs::write(d.path().join(name), format!("#!binary {name}\n")).expect("write");
    }
    d
}

/// Every entry of a tar file: name → (mode, uid, mtime, bytes).
fn entries(path: &Path) -> BTreeMap<String, (u32, u64, u64, Vec<u8>)> {
    let mut a = tar::Archive::new(File::open(path).expect("open"));
    let mut out = BTreeMap::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").to_string_lossy().into_owned();
        let h = e.header().clone();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).expect("read");
        let v = (
            h.mode().expect("mode"),
            h.uid().expect("uid"),
            h.mtime().expect("mtime"),
            bytes,
        );
        out.insert(name, v);
    }
    out
}

#[test]
fn archives_have_the_names_kubeadm_expects_and_a_consistent_layout() {
    let b = bins();
    let out = tempfile::tempdir().expect("tmp");
    let index = write_all(
        &kubernetes_images(b.path(), "v1.30.3"),
        out.path(),
        1_767_225_600,
        Some("built from source"),
    )
    .expect("write");
    let tags: Vec<_> = index
        .images
        .iter()
        .flat_map(|i| i.repo_tags.clone())
        .collect();
    assert_eq!(
        tags,
        [
            "registry.k8s.io/kube-apiserver:v1.30.3",
            "registry.k8s.io/kube-controller-manager:v1.30.3",
            "registry.k8s.io/kube-scheduler:v1.30.3",
            "registry.k8s.io/kube-proxy:v1.30.3",
            "registry.k8s.io/pause:3.9",
        ]
    );
    let read: ImageIndex = serde_json::from_slice(
        &std::fs::read(out.path().join("images.json")).expect("images.json"),
    )
    .expect("parse");
    assert_eq!(read, index);

    let rec = &index.images[0];
    let archive = out.path().join(&rec.file);
    assert_eq!(
        hash_reader(&mut File::open(&archive).expect("open"), &archive).expect("hash"),
        rec.sha256
    );
    let outer = entries(&archive);
    let manifest: serde_json::Value =
        serde_json::from_slice(&outer["manifest.json"].3).expect("manifest.json");
    assert_eq!(manifest[0]["RepoTags"][0], rec.repo_tags[0]);
    let config_name = manifest[0]["Config"].as_str().expect("Config");
    let layer_name = manifest[0]["Layers"][0].as_str().expect("Layers");
    let config_bytes = &outer[config_name].3;
    assert_eq!(
        format!("{}.json", hex::encode(Sha256::digest(config_bytes))),
        config_name,
        "the config is named by its digest"
    );
    let config: serde_json::Value = serde_json::from_slice(config_bytes).expect("config");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/local/bin/kube-apiserver"
    );
    let layer_bytes = &outer[layer_name].3;
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", hex::encode(Sha256::digest(layer_bytes))),
        "diff_id is the uncompressed layer's digest"
    );

    let layer_path = out.path().join("layer.tar");
    std::fs::write(&layer_path, layer_bytes).expect("write");
    let layer = entries(&layer_path);
    let names: Vec<_> = layer.keys().cloned().collect();
    assert_eq!(
        names,
        [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/kube-apiserver"
        ]
    );
    let (mode, uid, mtime, bytes) = &layer["usr/local/bin/kube-apiserver"];
    assert_eq!((*mode, *uid, *mtime), (0o755, 0, 1_767_225_600));
    assert_eq!(bytes, b"#!binary kube-apiserver\n");
}

#[test]
fn same_inputs_give_the_same_bytes_and_the_epoch_is_in_them() {
    let b = bins();
    let specs = kubernetes_images(b.path(), "v1.30.3");
    let (one, two, three) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = write_all(&specs, one.path(), 100, None).expect("one");
    let b2 = write_all(&specs, two.path(), 100, None).expect("two");
    let c = write_all(&specs, three.path(), 200, None).expect("three");
    assert_eq!(a, b2);
    assert_ne!(a.images[0].sha256, c.images[0].sha256);
}

#[test]
fn a_missing_binary_names_the_image_and_file_and_leaves_no_archive() {
    let b = bins();
    std::fs::remove_file(b.path().join("kube-scheduler")).expect("rm");
    let out = tempfile::tempdir().expect("tmp");
    let err = write_all(&kubernetes_images(b.path(), "v1.30.3"), out.path(), 0, None)
        .expect_err("missing binary");
    let msg = err.to_string();
    assert!(
        msg.contains("kube-scheduler.tar")
            && msg.contains(&b.path().join("kube-scheduler").display().to_string()),
        "{msg}"
    );
    assert!(!out.path().join("kube-scheduler.tar").exists());
    assert!(
        !out.path().join("images.json").exists(),
        "no index for a partial set"
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn layer_paths_must_be_absolute_and_plain() {
    let b = bins();
    for bad in ["usr/bin/x", "/usr/../etc/x", "/", "/usr//x"] {
        let spec = ImageSpec {
            file: "x.tar".into(),
            repo_tags: vec!["x:1".into()],
            files: vec![LayerFile {
                path: bad.into(),
                source: b.path().join("pause"),
                mode: 0o755,
            }],
            entrypoint: vec![],
            env: vec![],
        };
        let out = tempfile::tempdir().expect("tmp");
        let err = write_archive(&spec, &out.path().join("x.tar"), 0).expect_err(bad);
        assert!(matches!(err, OciError::BadPath { .. }), "{bad}: {err}");
    }
}

#[test]
fn rfc3339_dates() {
    for (epoch, want) in [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_721_173_995, "2024-07-16T23:53:15Z"),
        (1_767_225_600, "2026-01-01T00:00:00Z"),
    ] {
        assert_eq!(rfc3339(epoch), want, "{epoch}");
    }
}

#[test]
fn verify_dir_accepts_what_was_written_and_names_a_changed_or_missing_archive() {
    let b = bins();
    let out = tempfile::tempdir().expect("tmp");
    let written =
        write_all(&kubernetes_images(b.path(), "v1.30.3"), out.path(), 0, None).expect("write");
    assert_eq!(verify_dir(out.path()).expect("verify"), written);

    let pause = out.path().join("pause.tar");
    let mut bytes = std::fs::read(&pause).expect("read");
    bytes[600] ^= 1;
    std::fs::write(&pause, &bytes).expect("write");
    let err = verify_dir(out.path()).expect_err("changed archive");
    assert!(
        matches!(&err, OciError::Mismatch { path, .. } if path == &pause),
        "{err}"
    );

    std::fs::remove_file(&pause).expect("rm");
    let err = verify_dir(out.path()).expect_err("missing archive");
    assert!(format!("{err}").contains("pause.tar"), "{err}");

    let empty = tempfile::tempdir().expect("tmp");
    let err = verify_dir(empty.path()).expect_err("no index");
    assert!(format!("{err}").contains("kubedna-image images"), "{err}");
}
