//! The etcd PKI against a real etcd: started with mutual TLS from our certificates, it serves a
//! client holding our client certificate and refuses one from another cluster's CA.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kubedna_controlplane::coord::{Coordinator, InitDecision};
use kubedna_controlplane::pki::EtcdCa;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

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
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("https://127.0.0.1:{peer}");
    let p = |f: &std::path::Path| f.display().to_string();
    let mut etcd = Command::new("etcd")
        .args(["--name", "cp-1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("cp-1={peer_url}")])
        .args([
            "--cert-file",
            &p(&files.server_cert),
            "--key-file",
            &p(&files.server_key),
        ])
        .args(["--client-cert-auth", "--trusted-ca-file", &p(&files.ca)])
        .args([
            "--peer-cert-file",
            &p(&files.peer_cert),
            "--peer-key-file",
            &p(&files.peer_key),
        ])
        .args([
            "--peer-client-cert-auth",
            "--peer-trusted-ca-file",
            &p(&files.ca),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcd is installed (scripts/deps/controlplane.txt)");
    let stderr = etcd.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready to serve client requests") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("etcd with TLS did not become ready");

    let ours = Coordinator::connect_tls(std::slice::from_ref(&url), "lab", &files)
        .await
        .expect("connect");
    assert!(matches!(
        ours.init_once("cp-1").await.expect("init"),
        InitDecision::Won { .. }
    ));

    // A client certificate from another cluster's CA is refused at the handshake or first call.
    let stranger_ca = EtcdCa::derive("lab", b"a-different-cluster-secret-value").expect("ca");
    let mut stranger_files = stranger_ca
        .write_member(&dir.path().join("stranger"), "x", &[], &[])
        .expect("pki");
    stranger_files.ca = files.ca.clone(); // it even trusts our server
    let refused =
        match Coordinator::connect_tls(std::slice::from_ref(&url), "lab", &stranger_files).await {
            Err(_) => true,
            Ok(c) => c.init_once("x").await.is_err(),
        };
    assert!(
        refused,
        "etcd accepted a client certificate from another CA"
    );
    let _ = etcd.kill();
    let _ = etcd.wait();
}
