//! Real etcd members for tests: Debian's etcd-server 3.4, one process per member on loopback
//! ports, each awaited on its "ready to serve client requests" log line, killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl EtcdMember {
    /// Ports and URLs for a member that is not started yet (`scheme` is http or https).
    pub fn plan(name: &str, dir: &Path, scheme: &str) -> EtcdMember {
        EtcdMember {
            name: name.into(),
            client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
            peer_url: format!("{scheme}://127.0.0.1:{}", free_port()),
            data_dir: dir.join(name),
            child: None,
        }
    }

    /// Starts it with `--initial-cluster` and state `new` or `existing`, plus `extra` flags.
    pub fn start(&mut self, initial_cluster: &str, state: &str, extra: &[String]) {
        let mut child = Command::new(etcd_binary())
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--listen-client-urls",
                &self.client_url,
                "--advertise-client-urls",
                &self.client_url,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
            ])
            .args([
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                state,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to serve client requests") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("etcd member {} did not become ready", self.name));
    }

    /// `name=peer_url`, for `--initial-cluster`.
    pub fn initial(&self) -> String {
        format!("{}={}", self.name, self.peer_url)
    }

    /// Kills the process at once, like a power cut.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A started one-member cluster over plain HTTP.
pub fn single(dir: &Path) -> EtcdMember {
    let mut m = EtcdMember::plan("t", dir, "http");
    let initial = m.initial();
    m.start(&initial, "new", &[]);
    m
}

pub fn etcd_binary() -> &'static str {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("etcd is not installed: scripts/setup installs Debian's etcd-server (scripts/deps/controlplane.txt)");
}
