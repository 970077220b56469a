//! A minimal HTTP/1.1 client for the admin API over a Unix socket, with errors that say what the
//! user can do about them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use kubedna_proto::{ApiError, Role};
use serde::de::DeserializeOwned;

use crate::exit;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach kubedna-agent at {socket}: {reason}; is the agent running? (systemctl status kubedna-agent)")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("permission denied opening {socket}: ask an admin to add your user to the socket's group (admin.socketGroup in agent.yaml)")]
    SocketDenied { socket: PathBuf },
    #[error("{message}")]
    Denied {
        message: String,
        required_role: Option<Role>,
    },
    #[error("the agent rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("the agent failed ({status}): {message}")]
    Server { status: u16, message: String },
    #[error("no answer from kubedna-agent at {socket} within {seconds} s; it may be overloaded or stuck (journalctl -u kubedna-agent)")]
    Timeout { socket: PathBuf, seconds: u64 },
    #[error("talking to kubedna-agent at {socket} failed: {reason}")]
    Protocol { socket: PathBuf, reason: String },
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => exit::UNREACHABLE,
            ClientError::SocketDenied { .. } | ClientError::Denied { .. } => exit::DENIED,
            ClientError::Rejected { .. } => exit::REJECTED,
            ClientError::Server { .. } | ClientError::Protocol { .. } => exit::FAILURE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Client {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// Sends one request; returns the status and body of any answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        match tokio::time::timeout(self.timeout, self.send_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                socket: self.socket.clone(),
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    async fn send_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => ClientError::SocketDenied {
                    socket: self.socket.clone(),
                },
                _ => ClientError::Unreachable {
                    socket: self.socket.clone(),
                    reason: e.to_string(),
                },
            })?;
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
            socket: self.socket.clone(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "kubedna-agent");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| protocol(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Sends a request and decodes a 2xx answer as `T`; maps every other answer to an error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        check_status(status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            socket: self.socket.clone(),
            reason: format!("unexpected answer to {method} {path}: {e}"),
        })
    }
}

/// Turns a non-2xx answer into the matching error.
pub fn check_status(status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
    if status.is_success() {
        return Ok(());
    }
    let api: ApiError = serde_json::from_slice(body).unwrap_or_else(|_| ApiError {
        error: String::from_utf8_lossy(body).into_owned(),
        required_role: None,
    });
    Err(match status {
        StatusCode::FORBIDDEN => ClientError::Denied {
            message: api.error,
            required_role: api.required_role,
        },
        s if s.is_client_error() => ClientError::Rejected {
            status: s.as_u16(),
            message: api.error,
        },
        s => ClientError::Server {
            status: s.as_u16(),
            message: api.error,
        },
    })
}
