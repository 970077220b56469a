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

/// How often to ping the watchdog: half of `WatchdogSec`, or none when it is off.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}
