//! Figures for docs/benchmarks.md: agent RSS after start and after 10,000 status calls, binary
//! sizes, admin API and CLI round-trip latency (p50/p99), and audit appends per second with
//! fsync. Each figure that has a natural baseline is printed beside it, measured in the same run.
//!
//! cargo build --release -p kubedna-agent -p kubedna-cli
//! cargo run --release -p kubedna-agent --example agent-bench

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

fn main() -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("cannot find the target directory"))?;
    let agent_bin = bin_dir.join("kubedna-agent");
    let cli_bin = bin_dir.join("kubedna");
    for b in [&agent_bin, &cli_bin] {
        anyhow::ensure!(
            b.exists(),
            "{} missing: cargo build --release -p kubedna-agent -p kubedna-cli",
            b.display()
        );
    }

    println!("## binary sizes");
    for b in [&agent_bin, &cli_bin] {
        let size = std::fs::metadata(b)?.len();
        let stripped =
            std::env::temp_dir().join(format!("kubedna-bench-strip-{}", std::process::id()));
        std::fs::copy(b, &stripped)?;
        let ok = Command::new("strip")
            .arg(&stripped)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let ssize = std::fs::metadata(&stripped)?.len();
        let _ = std::fs::remove_file(&stripped);
        println!(
            "{}: release {:.2} MiB, stripped {}",
            b.file_name().unwrap_or_default().to_string_lossy(),
            mib(size),
            if ok {
                format!("{:.2} MiB", mib(ssize))
            } else {
                "n/a (no strip)".into()
            }
        );
    }

    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let secret = dir.path().join("cluster.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let socket = dir.path().join("agent.sock");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubedna.io/v1alpha1\nkind: AgentConfig\ncluster:\n  name: bench\n  secretFile: {}\nnode:\n  name: bench-1\n  role: control-plane\nstate:\n  dir: {}\nadmin:\n  socket: {}\nlog:\n  level: warn\n",
            secret.display(),
            dir.path().join("state").display(),
            socket.display()
        ),
    )?;
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let started = Instant::now();
    let mut child = Command::new(&agent_bin)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()?;
    let mut buf = [0u8; 1024];
    loop {
        let n = notify.recv(&mut buf)?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
    let ready = started.elapsed();
    let pid = child.id();
    println!("\n## agent memory");
    println!("start to READY=1: {:.1} ms", ready.as_secs_f64() * 1e3);
    println!("RSS after start: {:.2} MiB", mib(rss_kib(pid)? * 1024));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut api = Vec::with_capacity(10_000);
    rt.block_on(async {
        for _ in 0..10_000 {
            let t = Instant::now();
            status_call(&socket).await?;
            api.push(t.elapsed());
        }
        anyhow::Ok(())
    })?;
    println!(
        "RSS after 10,000 status calls: {:.2} MiB (goal < 15 MiB)",
        mib(rss_kib(pid)? * 1024)
    );

    println!("\n## round trips");
    let (p50, p99) = percentiles(&mut api);
    println!("admin API status call (new connection each, in-process client), n=10000: p50 {:.3} ms, p99 {:.3} ms", p50, p99);
    let n = 300;
    let mut cli = Vec::with_capacity(n);
    let mut base = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = Command::new(&cli_bin)
            .arg("--socket")
            .arg(&socket)
            .arg("status")
            .stdout(Stdio::null())
            .status()?;
        cli.push(t.elapsed());
        anyhow::ensure!(s.success(), "kubedna status failed");
        let t = Instant::now();
        Command::new("/bin/true").status()?;
        base.push(t.elapsed());
    }
    let (c50, c99) = percentiles(&mut cli);
    let (b50, b99) = percentiles(&mut base);
    println!("`kubedna status` process round trip, n={n}: p50 {c50:.3} ms, p99 {c99:.3} ms (goal p99 < 5 ms)");
    println!("baseline `/bin/true` spawn, same run: p50 {b50:.3} ms, p99 {b99:.3} ms; CLI/baseline p50 ratio {:.2}", c50 / b50);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    child.wait()?;

    println!("\n## audit appends with fsync");
    audit_bench(dir.path())?;
    Ok(())
}

async fn status_call(socket: &Path) -> anyhow::Result<()> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(kubedna_proto::paths::STATUS)
        .header("host", "agent")
        .body(Full::new(Bytes::new()))?;
    let resp = tx.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    resp.into_body().collect().await?;
    Ok(())
}

fn audit_bench(base: &Path) -> anyhow::Result<()> {
    use kubedna_audit::{AuditHandle, Entry, Writer};
    use kubedna_proto::{AuditResult, Caller, Outcome, Role, Via};
    let entry = || Entry {
        caller: Caller {
            uid: 1000,
            gid: 1000,
            pid: Some(1),
            user: Some("alice".into()),
            via: Via::Socket,
        },
        role: Some(Role::Operator),
        action: "log.level.set".into(),
        args: serde_json::json!({"filter": "debug"}),
        result: AuditResult {
            outcome: Outcome::Ok,
            status: 200,
            message: None,
        },
        time: None,
    };
    // Baseline: the same bytes appended with write + fdatasync and nothing else.
    let line = {
        let d = base.join("probe");
        let mut w = Writer::open(&d, 365)?;
        w.append_batch(vec![entry()])?;
        let f = std::fs::read_dir(&d)?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
            .ok_or_else(|| anyhow::anyhow!("no file"))?;
        std::fs::read(f.path())?
    };
    let n = 2000;
    let raw_path = base.join("raw.jsonl");
    let mut raw = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)?;
    let t = Instant::now();
    for _ in 0..n {
        use std::io::Write;
        raw.write_all(&line)?;
        raw.sync_data()?;
    }
    let raw_rate = n as f64 / t.elapsed().as_secs_f64();

    let mut w = Writer::open(&base.join("seq"), 365)?;
    let t = Instant::now();
    for _ in 0..n {
        w.append_batch(vec![entry()])?;
    }
    let seq_rate = n as f64 / t.elapsed().as_secs_f64();

    let handle = AuditHandle::spawn(Writer::open(&base.join("conc"), 365)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let total = 20_000;
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..total / 64 {
                    h.append(entry()).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let conc_rate = (total / 64 * 64) as f64 / t.elapsed().as_secs_f64();
    println!(
        "baseline write+fdatasync of one {}-byte line, n={n}: {raw_rate:.0}/s",
        line.len()
    );
    println!("audit append, one caller (flock + fsync per record), n={n}: {seq_rate:.0}/s ({:.2}x baseline)", seq_rate / raw_rate);
    println!("audit append, 64 concurrent callers (group commit), n={}: {conc_rate:.0}/s ({:.2}x baseline)", total / 64 * 64, conc_rate / raw_rate);
    Ok(())
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

fn percentiles(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
