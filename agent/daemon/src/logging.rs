//! Logging: tracing to stderr, plain lines (no timestamps under journald, which adds its own) or
//! JSON with `--log-format json`, with a filter that can be swapped at run time.

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Changes the active log filter.
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<String>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.current())
            .finish()
    }
}

impl LogControl {
    /// Installs the global subscriber. A second call in one process (tests) keeps the first
    /// subscriber and returns a control that only tracks the filter string.
    pub fn init(format: LogFormat, filter: &str) -> LogControl {
        let env_filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let (layer, handle) = reload::Layer::new(env_filter);
        let journald = std::env::var_os("JOURNAL_STREAM").is_some();
        let installed = match format {
            LogFormat::Json => tracing_subscriber::registry()
                .with(layer)
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init()
                .is_ok(),
            LogFormat::Plain if journald => tracing_subscriber::registry()
                .with(layer)
                .with(
                    tracing_subscriber::fmt::layer()
                        .without_time()
                        .with_ansi(false)
                        .with_writer(std::io::stderr),
                )
                .try_init()
                .is_ok(),
            LogFormat::Plain => tracing_subscriber::registry()
                .with(layer)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(std::io::stderr),
                )
                .try_init()
                .is_ok(),
        };
        LogControl {
            handle: installed.then_some(handle),
            current: Mutex::new(filter.to_string()),
        }
    }

    pub fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Checks a filter without applying it.
    pub fn parse(filter: &str) -> Result<EnvFilter, String> {
        EnvFilter::try_new(filter).map_err(|e| format!("{filter:?} is not a log filter: {e}"))
    }

    /// Applies a filter checked by [`LogControl::parse`]; returns the previous one.
    pub fn apply(&self, filter: &str, parsed: EnvFilter) -> String {
        if let Some(h) = &self.handle {
            let _ = h.reload(parsed);
        }
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, filter.to_string())
    }
}
