//! Tampering and unreachability: a flipped byte in a served or cached artifact, a truncated
//! body or an unreachable host stops `kubedna-image build` before anything is assembled, with
//! a message naming the artifact, the expected digest and the actual one, and no output.
//! These run as any user: artifact checks come before the root-only steps.

mod common;

use std::path::Path;

use common::{agent_bin, bin, run, serve, text, units_dir, Reply};
use sha2::{Digest, Sha256};

const BODY: &[u8] = b"pretend kubelet binary, version v1.30.3\n";

fn manifest(dir: &Path, url: &str, sha: &str) -> std::path::PathBuf {
    let p = dir.join("artifacts.yaml");
    std::fs::write(
        &p,
        format!(
            "artifacts:\n  - name: kubelet\n    version: v1.30.3\n    url: {url}/kubelet\n    \
             sha256: {sha}\n    install: {{ kind: binary, path: /usr/bin/kubelet }}\n"
        ),
    )
    .expect("write manifest");
    p
}

fn build(dir: &Path, manifest: &Path, extra: &[&str]) -> std::process::Output {
    let out = dir.join("out");
    let mut cmd = bin();
    cmd.args(["build", "--base", "debian-12", "--out"])
        .arg(&out)
        .arg("--repo")
        .arg(common::repo_root())
        .arg("--agent-bin")
        .arg(agent_bin(&dir.join("agent")))
        .arg("--units-dir")
        .arg(units_dir(&dir.join("units")))
        .arg("--artifacts-manifest")
        .arg(manifest)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    run(&mut cmd)
}

fn good_sha() -> String {
    hex::encode(Sha256::digest(BODY))
}

fn assert_no_output(dir: &Path) {
    assert!(!dir.join("out").exists(), "no output may be produced");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    assert!(
        !dir.join("work").exists(),
        "nothing assembled before verification"
    );
}

#[test]
fn flipped_byte_in_served_artifact_fails_with_digest_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut tampered = BODY.to_vec();
    tampered[5] ^= 0x01;
    let actual = hex::encode(Sha256::digest(&tampered));
    let url = serve(Reply::Body(tampered));
    let m = manifest(dir.path(), &url, &good_sha());
    let o = build(dir.path(), &m, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("artifact kubelet"), "{t}");
    assert!(t.contains(&format!("expected {}", good_sha())), "{t}");
    assert!(t.contains(&format!("actual {actual}")), "{t}");
    assert_no_output(dir.path());
    let cached = dir.path().join("cache/artifacts/sha256").join(good_sha());
    assert!(!cached.exists(), "a bad download must not enter the cache");
}

#[test]
fn flipped_byte_in_cached_artifact_fails_with_digest_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache/artifacts/sha256");
    std::fs::create_dir_all(&cache).expect("mkdir");
    let mut tampered = BODY.to_vec();
    tampered[0] ^= 0x80;
    std::fs::write(cache.join(good_sha()), &tampered).expect("write");
    // The server holds the good file: the cache must not be trusted nor silently refetched.
    let url = serve(Reply::Body(BODY.to_vec()));
    let m = manifest(dir.path(), &url, &good_sha());
    let o = build(dir.path(), &m, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("artifact kubelet"), "{t}");
    assert!(t.contains(&format!("expected {}", good_sha())), "{t}");
    assert!(
        t.contains(&format!(
            "actual {}",
            hex::encode(Sha256::digest(&tampered))
        )),
        "{t}"
    );
    assert_no_output(dir.path());
}

#[test]
fn truncated_download_fails_naming_digests() {
    let dir = tempfile::tempdir().expect("tmp");
    let url = serve(Reply::Truncated {
        body: BODY[..10].to_vec(),
        announced: BODY.len(),
    });
    let m = manifest(dir.path(), &url, &good_sha());
    let o = build(dir.path(), &m, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("artifact kubelet"), "{t}");
    assert!(t.contains(&good_sha()), "{t}");
    assert_no_output(dir.path());
}

#[test]
fn unreachable_host_says_so_and_points_to_the_options() {
    let dir = tempfile::tempdir().expect("tmp");
    // A port nobody listens on, on the loopback: refused at once, nothing leaves the machine.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let m = manifest(dir.path(), &url, &good_sha());
    let o = build(dir.path(), &m, &[]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("cannot fetch"), "{t}");
    assert!(
        t.contains("--artifacts-dir") && t.contains("--without-kubernetes"),
        "{t}"
    );
    assert_no_output(dir.path());
}

#[test]
fn local_mirror_with_a_tampered_file_fails() {
    let dir = tempfile::tempdir().expect("tmp");
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).expect("mkdir");
    let mut tampered = BODY.to_vec();
    tampered[7] ^= 0x02;
    std::fs::write(mirror.join("kubelet"), &tampered).expect("write");
    let m = manifest(
        dir.path(),
        "https://dl.k8s.io/release/v1.30.3/bin/linux/amd64",
        &good_sha(),
    );
    let mirror_arg = mirror.to_string_lossy().into_owned();
    let o = build(dir.path(), &m, &["--artifacts-dir", &mirror_arg]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(&format!("expected {}", good_sha())), "{t}");
    assert_no_output(dir.path());
}

#[test]
fn missing_agent_binaries_stop_the_build_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let mut cmd = bin();
    cmd.args([
        "build",
        "--base",
        "debian-12",
        "--without-kubernetes",
        "--out",
    ])
    .arg(dir.path().join("out"))
    .arg("--repo")
    .arg(common::repo_root())
    .arg("--agent-bin")
    .arg(&empty);
    let o = run(&mut cmd);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("kubedna-agent not found"), "{t}");
    assert!(!dir.path().join("out").exists());
}

#[test]
fn ubuntu_base_explains_why_it_cannot_be_built_here() {
    if Path::new(kubedna_image::base::UBUNTU_KEYRING).exists() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = bin();
    cmd.args([
        "build",
        "--base",
        "ubuntu-24.04",
        "--without-kubernetes",
        "--out",
    ])
    .arg(dir.path().join("out"));
    let o = run(&mut cmd);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("archive.ubuntu.com") && t.contains("packer/"),
        "{t}"
    );
}

#[test]
fn good_served_artifact_enters_the_cache_by_digest() {
    use kubedna_image::artifacts::{Cache, Manifest, Source};
    let dir = tempfile::tempdir().expect("tmp");
    let url = serve(Reply::Body(BODY.to_vec()));
    let m = Manifest::load(&manifest(dir.path(), &url, &good_sha())).expect("manifest");
    let cache = Cache::new(dir.path().join("cache"));
    let p = cache
        .obtain(&m.artifacts[0], &Source::Network, &|_| {})
        .expect("fetch");
    assert_eq!(p, cache.path_of(&good_sha()));
    assert_eq!(std::fs::read(&p).expect("read"), BODY);
    // Second use: from the cache, re-verified, no server needed.
    let again = cache
        .obtain(&m.artifacts[0], &Source::Network, &|_| {})
        .expect("cached");
    assert_eq!(again, p);
}

#[test]
fn missing_test_doubles_stop_a_lab_build_before_anything_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let agent = dir.path().join("agent");
    std::fs::create_dir_all(&agent).expect("mkdir");
    for n in ["kubedna-agent", "kubedna"] {
        std::fs::write(agent.join(n), b"#!/bin/sh\n").expect("write");
    }
    let doubles = dir.path().join("doubles");
    std::fs::create_dir_all(&doubles).expect("mkdir");
    std::fs::write(doubles.join("kubeadm"), b"#!/bin/sh\n").expect("write");
    let mut cmd = bin();
    cmd.args([
        "build",
        "--base",
        "debian-12",
        "--without-kubernetes",
        "--out",
    ])
    .arg(dir.path().join("out"))
    .arg("--repo")
    .arg(common::repo_root())
    .arg("--agent-bin")
    .arg(&agent)
    .arg("--test-doubles")
    .arg(&doubles);
    let o = run(&mut cmd);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("test double") && t.contains("kubelet"), "{t}");
    assert!(!dir.path().join("out").exists());
}
