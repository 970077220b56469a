//! systemd over D-Bus: the [`Systemd`] trait the agent's logic uses, and [`DbusSystemd`], its
//! implementation on `org.freedesktop.systemd1.Manager`. A job is awaited on its `JobRemoved`
//! signal (subscribed before the job is queued, so it cannot be missed), never by sleeping; a job
//! that ends in anything but `done` is an error naming the unit, the result and the last lines of
//! the unit's journal.

use std::future::Future;

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on the system bus; is this a systemd host with D-Bus running?")]
    Connect(#[source] Box<zbus::Error>),
    #[error("systemd refused {method} for {unit}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("{unit}: the {verb} job ended with result {result:?}; last journal lines:\n{journal}")]
    JobFailed {
        unit: String,
        verb: &'static str,
        result: String,
        journal: String,
    },
    #[error("{unit}: the signal stream ended before the {verb} job finished")]
    SignalLost { unit: String, verb: &'static str },
}

/// What the agent asks of systemd. Start, restart and stop return when the job has finished.
pub trait Systemd: Send + Sync {
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    fn stop(&self, unit: &str) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Enables unit files (idempotent); returns whether anything changed.
    fn enable(&self, units: &[&str]) -> impl Future<Output = Result<bool, SystemdError>> + Send;
    /// Masks unit files (idempotent); returns whether anything changed.
    fn mask(&self, units: &[&str]) -> impl Future<Output = Result<bool, SystemdError>> + Send;
    fn daemon_reload(&self) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Names of loaded units in `state` (e.g. "active") matching `pattern` (e.g. "*.swap").
    fn units(
        &self,
        state: &str,
        pattern: &str,
    ) -> impl Future<Output = Result<Vec<String>, SystemdError>> + Send;
}

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn mask_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn reload(&self) -> zbus::Result<()>;
    #[allow(clippy::type_complexity)]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, zbus::zvariant::Value<'_>)],
        aux: &[(&str, &[(&str, zbus::zvariant::Value<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitRow>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

/// systemd on the system bus.
#[derive(Debug, Clone)]
pub struct DbusSystemd {
    manager: ManagerProxy<'static>,
}

impl DbusSystemd {
    pub async fn connect() -> Result<Self, SystemdError> {
        let conn = zbus::Connection::system()
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        // Without Subscribe, systemd does not emit JobRemoved to us.
        manager
            .subscribe()
            .await
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        Ok(DbusSystemd { manager })
    }

    /// Runs `argv` as a transient oneshot service `unit` (outside the agent's sandbox, as the
    /// agent's unit promises for privileged work), waits for it to exit, and returns its
    /// standard output, which systemd writes to `stdout_file` (the journal gets stderr). A
    /// non-zero exit is [`SystemdError::JobFailed`] with the journal's last lines. `description`
    /// is what systemd logs; it must not carry secrets that `argv` may hold.
    pub async fn run_oneshot(
        &self,
        unit: &str,
        description: &str,
        argv: &[String],
        stdout_file: &std::path::Path,
    ) -> Result<String, SystemdError> {
        use zbus::zvariant::Value;
        let program = argv.first().cloned().unwrap_or_default();
        let exec = vec![(program, argv.to_vec(), false)];
        let out = stdout_file.display().to_string();
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("Type", Value::from("oneshot")),
            ("ExecStart", Value::from(exec)),
            ("StandardOutputFile", Value::from(out.as_str())),
            ("StandardError", Value::from("journal")),
            // A failed run is unloaded too (its journal stays), so repeated runs never pile up.
            ("CollectMode", Value::from("inactive-or-failed")),
        ];
        let _ = std::fs::remove_file(stdout_file);
        self.job_with("run", unit, || {
            self.manager.start_transient_unit(unit, "fail", &props, &[])
        })
        .await?;
        let output = std::fs::read_to_string(stdout_file).unwrap_or_default();
        let _ = std::fs::remove_file(stdout_file);
        Ok(output)
    }

    async fn job(&self, verb: &'static str, unit: &str) -> Result<(), SystemdError> {
        match verb {
            "start" => {
                self.job_with(verb, unit, || self.manager.start_unit(unit, "replace"))
                    .await
            }
            "restart" => {
                self.job_with(verb, unit, || self.manager.restart_unit(unit, "replace"))
                    .await
            }
            _ => {
                self.job_with(verb, unit, || self.manager.stop_unit(unit, "replace"))
                    .await
            }
        }
    }

    /// Subscribes to JobRemoved, creates the job with `make`, and awaits that job's result.
    async fn job_with<F, Fut>(
        &self,
        verb: &'static str,
        unit: &str,
        make: F,
    ) -> Result<(), SystemdError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = zbus::Result<OwnedObjectPath>>,
    {
        let call = |source: zbus::Error| SystemdError::Call {
            method: verb,
            unit: unit.to_string(),
            source: Box::new(source),
        };
        let mut removed = self.manager.receive_job_removed().await.map_err(call)?;
        let job = make().await.map_err(call)?;
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job != job {
                continue;
            }
            return if args.result == "done" {
                tracing::debug!(unit, verb, "systemd job done");
                Ok(())
            } else {
                Err(SystemdError::JobFailed {
                    unit: unit.to_string(),
                    verb,
                    result: args.result.clone(),
                    journal: journal_tail(unit).await,
                })
            };
        }
        Err(SystemdError::SignalLost {
            unit: unit.to_string(),
            verb,
        })
    }
}

impl DbusSystemd {
    /// A loaded unit's (ActiveState, SubState), such as ("activating", "auto-restart") for a
    /// service that keeps failing; None when systemd has not loaded it.
    pub async fn unit_state(&self, unit: &str) -> Result<Option<(String, String)>, SystemdError> {
        let rows = self
            .manager
            .list_units_by_patterns(&[], &[unit])
            .await
            .map_err(|e| SystemdError::Call {
                method: "ListUnitsByPatterns",
                unit: unit.to_string(),
                source: Box::new(e),
            })?;
        Ok(rows.into_iter().next().map(|r| (r.3, r.4)))
    }
}

/// The last lines of a unit's journal, for error messages.
pub async fn journal_tail(unit: &str) -> String {
    match tokio::process::Command::new("journalctl")
        .args(["-u", unit, "-n", "15", "--no-pager", "-o", "cat"])
        .output()
        .await
    {
        Ok(o) if !o.stdout.is_empty() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => format!("(journalctl failed: {e})"),
    }
}

impl Systemd for DbusSystemd {
    async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("start", unit).await
    }

    async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("restart", unit).await
    }

    async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.job("stop", unit).await
    }

    async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let (_, changes) = self
            .manager
            .enable_unit_files(units, false, false)
            .await
            .map_err(|source| SystemdError::Call {
                method: "EnableUnitFiles",
                unit: units.join(" "),
                source: Box::new(source),
            })?;
        Ok(!changes.is_empty())
    }

    async fn mask(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let changes = self
            .manager
            .mask_unit_files(units, false, true)
            .await
            .map_err(|source| SystemdError::Call {
                method: "MaskUnitFiles",
                unit: units.join(" "),
                source: Box::new(source),
            })?;
        Ok(!changes.is_empty())
    }

    async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(|source| SystemdError::Call {
                method: "Reload",
                unit: "(manager)".into(),
                source: Box::new(source),
            })
    }

    async fn units(&self, state: &str, pattern: &str) -> Result<Vec<String>, SystemdError> {
        let rows = self
            .manager
            .list_units_by_patterns(&[state], &[pattern])
            .await
            .map_err(|source| SystemdError::Call {
                method: "ListUnitsByPatterns",
                unit: pattern.into(),
                source: Box::new(source),
            })?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
