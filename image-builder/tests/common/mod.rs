//! Helpers shared by the integration tests: repository paths, the binary under test, a
//! placeholder agent (a test double standing in for the lead's kubedna-agent until it is
//! built), and a one-file HTTP server on 127.0.0.1 for artifact fetching.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubedna-image"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn kubedna-image")
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Agent binaries for tests: the real ones from target/release when the lead's build made
/// them, else a placeholder that logs a ready line on the console and waits (a double).
pub fn agent_bin(dir: &Path) -> PathBuf {
    let release = repo_root().join("target/release");
    if release.join("kubedna-agent").is_file() && release.join("kubedna").is_file() {
        return release;
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    for name in ["kubedna-agent", "kubedna"] {
        let p = dir.join(name);
        std::fs::write(
            &p,
            "#!/bin/sh\n# Test double for the KubeDNA agent: reports ready and waits.\n\
             echo \"kubedna-agent: ready (placeholder)\"\nexec sleep infinity\n",
        )
        .expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir.to_path_buf()
}

/// units/ as the image installs it; a placeholder kubedna-agent.service (double) is added when
/// the lead's unit is not there yet.
pub fn units_dir(dir: &Path) -> PathBuf {
    let units = repo_root().join("units");
    if units.join("kubedna-agent.service").is_file() {
        return units;
    }
    copy_dir(&units, dir);
    std::fs::write(
        dir.join("kubedna-agent.service"),
        "[Unit]\nDescription=KubeDNA agent (test double unit)\nAfter=network-online.target\n\n\
         [Service]\nExecStart=/usr/bin/kubedna-agent\nStandardOutput=journal+console\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .expect("write");
    dir.to_path_buf()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).expect("copy");
        }
    }
}

/// How the test server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// 200 announcing `announced` bytes but sending only `body`, then closing.
    Truncated { body: Vec<u8>, announced: usize },
}

/// Serves `reply` to every request on 127.0.0.1 (any path) until the process ends.
/// Returns the base URL.
pub fn serve(reply: Reply) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let (body, len) = match &reply {
                Reply::Body(b) => (b.clone(), b.len()),
                Reply::Truncated { body, announced } => (body.clone(), *announced),
            };
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}")
}
