//! Running each command: ask the agent, render the answer, choose the exit code.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use kubedna_proto::{
    paths, AuditRecordsResponse, AuditVerifyResponse, ClusterAuditResponse, ClusterStatusResponse,
    DoctorHistoryResponse, DoctorPauseRequest, DoctorStatusResponse, LogLevelRequest,
    LogLevelResponse, PeersResponse, ReloadResponse, StatusResponse, VersionResponse,
};

use crate::cli::{AuditCommand, CatalogueCommand, Cli, Command, DoctorCommand, Format};
use crate::client::{check_status, Client};
use crate::exit;
use crate::{cluster_output, output};

/// Runs `cli`; returns the exit code for outcomes that are not errors (audit verify's).
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kubedna", &mut std::io::stdout());
            return Ok(exit::OK);
        }
        Command::Man { out_dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    clap_mangen::generate_to(cmd, &dir)
                        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
                }
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
            }
            return Ok(exit::OK);
        }
        Command::Version { client: true } => {
            let v = output::Versions {
                client_version: env!("CARGO_PKG_VERSION").into(),
                agent: None,
            };
            print(&output::render(cli.output, &v, output::version_table))?;
            return Ok(exit::OK);
        }
        Command::Audit(AuditCommand::Verify { dir: Some(dir) }) => {
            let report = kubedna_audit::verify(&dir)
                .with_context(|| format!("cannot verify the audit files in {}", dir.display()))?;
            return finish_verify(cli.output, &report);
        }
        _ => {}
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let client = Client::new(&cli.socket, Duration::from_secs(cli.timeout.max(1)));
    let format = cli.output;
    runtime.block_on(async move {
        match cli.command {
            Command::Status { cluster: false } => {
                let s: StatusResponse = client.call("GET", paths::STATUS, None).await?;
                print(&output::render(format, &s, output::status_table))?;
            }
            Command::Status { cluster: true } => {
                let s: ClusterStatusResponse =
                    client.call("GET", paths::CLUSTER_STATUS, None).await?;
                print(&output::render(
                    format,
                    &s,
                    cluster_output::cluster_status_table,
                ))?;
            }
            Command::Peers => {
                let p: PeersResponse = client.call("GET", paths::PEERS, None).await?;
                print(&output::render(format, &p, output::peers_table))?;
            }
            Command::Metrics => {
                let (status, body) = client.send("GET", paths::METRICS, None).await?;
                check_status(status, &body)?;
                print(&String::from_utf8_lossy(&body))?;
            }
            Command::Catalogue(CatalogueCommand::Status) => {
                let r: kubedna_proto::CatalogueStatusResponse =
                    client.call("GET", paths::CATALOGUE_STATUS, None).await?;
                print(&output::render(format, &r, output::catalogue_status_table))?;
            }
            Command::Catalogue(CatalogueCommand::Diff) => {
                let r: kubedna_proto::CatalogueDiffResponse =
                    client.call("GET", paths::CATALOGUE_DIFF, None).await?;
                print(&output::render(format, &r, output::catalogue_diff_table))?;
            }
            Command::Version { .. } => {
                let agent: VersionResponse = client.call("GET", paths::VERSION, None).await?;
                let v = output::Versions {
                    client_version: env!("CARGO_PKG_VERSION").into(),
                    agent: Some(agent),
                };
                print(&output::render(format, &v, output::version_table))?;
            }
            Command::Audit(AuditCommand::List {
                since,
                action,
                actor,
                limit,
                cluster,
            }) => {
                let mut query = vec![format!("limit={limit}")];
                if let Some(s) = since {
                    let t = parse_since(&s, Utc::now())?;
                    query.push(format!(
                        "since={}",
                        encode(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    ));
                }
                if let Some(a) = action {
                    query.push(format!("action={}", encode(&a)));
                }
                if let Some(a) = actor {
                    query.push(format!("actor={a}"));
                }
                if cluster {
                    let path = format!("{}?{}", paths::CLUSTER_AUDIT_RECORDS, query.join("&"));
                    let r: ClusterAuditResponse = client.call("GET", &path, None).await?;
                    print(&output::render(
                        format,
                        &r,
                        cluster_output::cluster_audit_table,
                    ))?;
                    if r.nodes.iter().any(|n| n.chain_break.is_some()) {
                        return Ok(exit::AUDIT_BROKEN);
                    }
                    return Ok(exit::OK);
                }
                let path = format!("{}?{}", paths::AUDIT_RECORDS, query.join("&"));
                let r: AuditRecordsResponse = client.call("GET", &path, None).await?;
                print(&output::render(format, &r, output::audit_table))?;
            }
            Command::Audit(AuditCommand::Verify { dir: None }) => {
                let report: AuditVerifyResponse =
                    client.call("GET", paths::AUDIT_VERIFY, None).await?;
                return finish_verify(format, &report);
            }
            Command::LogLevel { filter } => {
                let body = serde_json::to_vec(&LogLevelRequest { filter })?;
                let r: LogLevelResponse = client.call("PUT", paths::LOG_LEVEL, Some(body)).await?;
                print(&output::render(format, &r, output::log_level_table))?;
            }
            Command::Reload => {
                let r: ReloadResponse = client
                    .call("POST", paths::CONFIG_RELOAD, Some(b"{}".to_vec()))
                    .await?;
                print(&output::render(format, &r, output::reload_table))?;
            }
            Command::Doctor(DoctorCommand::Status) => {
                let r: DoctorStatusResponse = client.call("GET", paths::DOCTOR, None).await?;
                print(&output::render(format, &r, output::doctor_table))?;
            }
            Command::Doctor(DoctorCommand::History) => {
                let r: DoctorHistoryResponse =
                    client.call("GET", paths::DOCTOR_HISTORY, None).await?;
                print(&output::render(format, &r, output::doctor_history_table))?;
            }
            Command::Doctor(DoctorCommand::Pause { reason }) => {
                let body = serde_json::to_vec(&DoctorPauseRequest { reason })?;
                let r: serde_json::Value =
                    client.call("POST", paths::DOCTOR_PAUSE, Some(body)).await?;
                print(&output::render(format, &r, |_| {
                    "doctor paused: no further step until `kubedna doctor resume`\n".into()
                }))?;
            }
            Command::Doctor(DoctorCommand::Resume) => {
                let r: serde_json::Value = client
                    .call("POST", paths::DOCTOR_RESUME, Some(b"{}".to_vec()))
                    .await?;
                print(&output::render(format, &r, |_| "doctor resumed\n".into()))?;
            }
            Command::Api { method, path, data } => {
                let method = method.to_ascii_uppercase();
                let (status, body) = client
                    .send(&method, &path, data.map(String::into_bytes))
                    .await?;
                check_status(status, &body)?;
                // A text endpoint (/v1/metrics) is printed as it came.
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    print(&String::from_utf8_lossy(&body))?;
                    return Ok(0);
                };
                print(&output::render(format, &value, |v| {
                    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
                    s.push('\n');
                    s
                }))?;
            }
            Command::Completions { .. }
            | Command::Man { .. }
            | Command::Audit(AuditCommand::Verify { dir: Some(_) }) => {
                unreachable!("handled before the runtime starts")
            }
        }
        Ok(exit::OK)
    })
}

fn finish_verify(format: Format, report: &AuditVerifyResponse) -> anyhow::Result<u8> {
    print(&output::render(format, report, output::verify_table))?;
    Ok(if report.ok {
        exit::OK
    } else {
        exit::AUDIT_BROKEN
    })
}

fn print(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        // A closed pipe (`kubedna audit list | head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// An RFC 3339 time, or an age such as 30m, 24h or 7d counted back from `now`.
pub fn parse_since(s: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        anyhow::Error::new(UsageError(format!(
            "--since {s:?}: use an RFC 3339 time (2026-11-23T08:00:00Z) or an age such as 90s, 30m, 24h or 7d"
        )))
    };
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad()),
    };
    Ok(now - chrono::Duration::seconds(secs))
}

/// A bad argument found after parsing; exits with [`exit::USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
