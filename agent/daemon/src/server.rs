//! The admin socket: bound with its mode and group set before readiness, each connection's peer
//! credentials read from the kernel, HTTP/1.1 served per connection, and a graceful drain with a
//! deadline at shutdown.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use kubedna_config::Config;
use kubedna_host::creds;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::api::{self, AppState};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another process is already serving this socket; stop it first (systemctl stop kubedna-agent)")]
    InUse { path: PathBuf },
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the admin socket and sets its mode and group. A stale socket file (nobody listening)
/// is replaced; a live one is an error.
pub fn bind(config: &Config) -> Result<UnixListener, SocketError> {
    let path = config.socket_path().to_path_buf();
    let io = |what: &'static str| {
        let path = path.clone();
        move |source| SocketError::Io { path, what, source }
    };
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("cannot create the socket's directory"))?;
    }
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(SocketError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(io("cannot remove the stale socket"))?;
        }
        Ok(_) => {
            return Err(SocketError::Io {
                path: path.clone(),
                what: "exists and is not a socket; remove it or choose another admin.socket",
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            })
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path).map_err(io("cannot bind"))?;
    // Until chmod the socket has the umask's mode, which never grants others write (connect).
    if let Some(gid) = config.socket_gid {
        nix::unistd::chown(&path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io("cannot set the socket's group")(e.into()))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))
        .map_err(io("cannot set the socket's mode"))?;
    Ok(listener)
}

/// Serves until `shutdown` turns true, then drains in-flight calls for at most `drain`.
pub async fn serve(
    listener: UnixListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let tasks = state.tasks().clone();
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let caller = match stream.peer_cred() {
                    Ok(c) => creds::caller_from_peer(c.uid(), c.gid(), c.pid()),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the peer's credentials; closing the connection");
                        continue;
                    }
                };
                let state = Arc::clone(&state);
                let service = service_fn(move |req| {
                    api::handle(Arc::clone(&state), caller.clone(), req)
                });
                let conn = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tasks.spawn("admin connection", async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all admin calls drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(deadline_seconds = drain.as_secs(), "drain deadline passed; closing the remaining admin connections");
        }
    }
}

/// Where the metrics listener binds: `metrics.listen`, else this node's mesh address on the
/// default port once the mesh runs; None when metrics are off.
pub async fn metrics_addr(
    config: &Config,
    mesh: &crate::mesh::MeshSlot,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<std::net::SocketAddr> {
    if !config.spec.metrics.enabled {
        return None;
    }
    if let Some(a) = config.spec.metrics.listen {
        return Some(a);
    }
    tokio::select! {
        h = mesh.running() => Some(std::net::SocketAddr::new(
            h.local_addr().ip(),
            kubedna_config::DEFAULT_METRICS_PORT,
        )),
        _ = shutdown.wait_for(|s| *s) => None,
    }
}

/// Serves `GET /metrics` (OpenMetrics text; anything else is 404) on `listener` until
/// `shutdown`. Unauthenticated, like every Prometheus endpoint: it carries no secret, and it
/// listens on the node's own address, not on every interface.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    use bytes::Bytes;
    use http_body_util::Full;
    let tasks = state.tasks().clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = Arc::clone(&state);
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        let resp = if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", crate::metrics::CONTENT_TYPE)
                                .body(Full::new(Bytes::from(state.metrics_text().await)))
                        } else {
                            hyper::Response::builder()
                                .status(hyper::StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"only GET /metrics is served here\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.expect("static response parts are valid"))
                    }
                });
                // Ends with the agent: a scraper keeps its connection open between scrapes.
                let mut stop = shutdown.clone();
                tasks.spawn("metrics connection", async move {
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
