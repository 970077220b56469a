//! The etcd PKI against a real etcd: started with mutual TLS from our certificates, it serves a
//! client holding our client certificate and refuses one from another cluster's CA.

mod common;

use std::os::unix::fs::MetadataExt;

use kubedna_controlplane::coord::{Coordinator, InitDecision};
use kubedna_controlplane::pki::EtcdCa;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

#[test]
fn every_node_derives_the_same_ca_and_only_from_the_same_secret() {
    let a = EtcdCa::derive("lab", SECRET).expect("a");
    let b = EtcdCa::derive("lab", SECRET).expect("b");
    assert_eq!(
        a.cert_pem(),
        b.cert_pem(),
        "the CA must be identical on every control plane"
    );
    assert_ne!(
        a.cert_pem(),
        EtcdCa::derive("lab", b"another-secret-another-secret-xx")
            .expect("c")
            .cert_pem()
    );
    assert_ne!(
        a.cert_pem(),
        EtcdCa::derive("prod", SECRET).expect("d").cert_pem()
    );
    assert!(
        !format!("{a:?}").contains("PRIVATE"),
        "Debug shows key material"
    );
}

#[test]
fn member_files_have_private_keys_at_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = EtcdCa::derive("lab", SECRET).expect("ca");
    let files = ca
        .write_member(dir.path(), "cp-1", &["cp-1.lab.kubedna".into()], &[])
        .expect("write");
    for key in [&files.server_key, &files.peer_key, &files.client_key] {
        assert_eq!(
            std::fs::metadata(key).expect("meta").mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
        assert!(std::fs::read_to_string(key)
            .expect("read")
            .contains("PRIVATE KEY"));
    }
    assert_eq!(
        std::fs::read_to_string(&files.ca).expect("ca"),
        ca.cert_pem()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_mutual_tls_from_our_pki_serves_us_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = EtcdCa::derive("lab", SECRET).expect("ca");
    let files = ca
        .write_member(
            &dir.path().join("pki"),
            "cp-1",
            &["cp-1.lab.kubedna".into()],
            &[],
        )
        .expect("pki");
    let mut etcd = common::EtcdMember::plan("cp-1", dir.path(), "https");
    let p = |f: &std::path::Path| f.display().to_string();
    let tls: Vec<String> = [
        "--cert-file",
        &p(&files.server_cert),
        "--key-file",
        &p(&files.server_key),
        "--client-cert-auth",
        "--trusted-ca-file",
        &p(&files.ca),
        "--peer-cert-file",
        &p(&files.peer_cert),
        "--peer-key-file",
        &p(&files.peer_key),
        "--peer-client-cert-auth",
        "--peer-trusted-ca-file",
        &p(&files.ca),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let initial = etcd.initial();
    etcd.start(&initial, "new", &tls);
    let url = etcd.client_url.clone();

    let ours = Coordinator::connect_tls(std::slice::from_ref(&url), "lab", &files)
        .await
        .expect("connect");
    assert!(matches!(
        ours.init_once("cp-1", "n1").await.expect("init"),
        InitDecision::Won { .. }
    ));
    // The doctor's quorum guard probes each member with the same credentials: a TLS member
    // answers as healthy (a plain probe never did, so it refused every removal in the lab).
    let members = ours.members().await.expect("members");
    let healthy = ours
        .probe_health(&members, std::time::Duration::from_secs(5))
        .await;
    assert_eq!(
        healthy.len(),
        1,
        "the one TLS member probes healthy: {members:?}"
    );

    // A client certificate from another cluster's CA is refused at the handshake or first call.
    let stranger_ca = EtcdCa::derive("lab", b"a-different-cluster-secret-value").expect("ca");
    let mut stranger_files = stranger_ca
        .write_member(&dir.path().join("stranger"), "x", &[], &[])
        .expect("pki");
    stranger_files.ca = files.ca.clone(); // it even trusts our server
    let refused =
        match Coordinator::connect_tls(std::slice::from_ref(&url), "lab", &stranger_files).await {
            Err(_) => true,
            Ok(c) => c.init_once("x", "n2").await.is_err(),
        };
    assert!(
        refused,
        "etcd accepted a client certificate from another CA"
    );
    etcd.kill();
}
