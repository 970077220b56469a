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

/// A loopback port for a member to listen on, chosen below the kernel's ephemeral range.
///
/// A port from `bind(0)` lies inside the ephemeral range, where the kernel also picks the source
/// port of every outgoing connection: with many etcd members dialling each other, one of those
/// connections can hold the port by the time the member binds it ("address already in use").
/// Ports below the range are never handed out as source ports. Each port is given out once per
/// test process and checked free before it is returned.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let mut given = GIVEN.lock().expect("port list lock");
    let given = given.get_or_insert_with(HashSet::new);
    let mut seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    for _ in 0..10_000 {
        // xorshift: no extra dependency for a test helper.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = low + (seed % u64::from(high - low)) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
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
