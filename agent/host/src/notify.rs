//! systemd's notify protocol (sd_notify): READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 sent to
//! `$NOTIFY_SOCKET`. Outside systemd (no such variable) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd that start-up is complete. Call only after the socket is bound and state loaded.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

pub fn reloading() {
    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
}

/// Re-announces readiness after a reload.
pub fn reloaded() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

pub fn watchdog_ping() {
    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WatchdogSec`, or none when it is off. As in
/// libsystemd's `sd_watchdog_enabled`, `$WATCHDOG_PID`, when set, must be this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
