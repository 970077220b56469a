//! Hetzner Cloud as a [`Provider`] (API facts: REFERENCES-wave2.md 4.4, hcloud-go
//! `hcloud/schema/server.go`, `action.go`). Lists the cluster's servers by label selector (all
//! pages of 50), powers off with `POST /servers/{id}/actions/poweroff`, deletes with
//! `DELETE /servers/{id}`, creates with `POST /servers` (user data ≤ 32 KiB, labels, started
//! after create), and polls `GET /actions/{id}` until `success` or `error`. A 429 is waited out
//! until `RateLimit-Reset` when that is near, else returned; other errors carry Hetzner's code and
//! message and the request that failed. The token is read from its file at each call (a rotated
//! token needs no restart) and is never logged, never in an error. The base URL is the caller's:
//! production passes [`HETZNER_API`], the lab its bridge address, tests the double.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{NewVm, Provider, ProviderError, Vm};

/// The Hetzner Cloud API.
pub const HETZNER_API: &str = "https://api.hetzner.cloud/v1";
/// Hetzner's limit on `user_data`.
pub const USER_DATA_MAX: usize = 32 * 1024;
/// Servers asked per page (Hetzner's maximum).
const PER_PAGE: u32 = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HetznerConfig {
    pub base_url: String,
    /// File (mode 0600) holding the API token.
    pub token_file: PathBuf,
    /// The cluster's servers, e.g. `kubedna.io/cluster=prod`.
    pub label_selector: String,
    /// For new servers.
    pub server_type: String,
    pub image: String,
    pub location: Option<String>,
    /// Private network ids new servers join.
    pub networks: Vec<u64>,
    /// The longest a call waits out a 429 before returning [`ProviderError::RateLimited`].
    pub max_rate_wait: Duration,
    /// How long an action may run before [`ProviderError::ActionTimeout`].
    pub action_timeout: Duration,
    /// How often a running action is polled.
    pub poll_every: Duration,
}

impl HetznerConfig {
    pub fn new(base_url: &str, token_file: PathBuf, label_selector: &str) -> HetznerConfig {
        HetznerConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            token_file,
            label_selector: label_selector.to_string(),
            server_type: "cx22".into(),
            image: "ubuntu-24.04".into(),
            location: None,
            networks: Vec::new(),
            max_rate_wait: Duration::from_secs(60),
            action_timeout: Duration::from_secs(300),
            poll_every: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hetzner {
    http: reqwest::Client,
    cfg: HetznerConfig,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    id: u64,
    status: String,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
struct ActionAnswer {
    action: Action,
}

#[derive(Debug, Deserialize)]
struct ServersPage {
    servers: Vec<Vm>,
    meta: Meta,
}

#[derive(Debug, Deserialize)]
struct Meta {
    pagination: Pagination,
}

#[derive(Debug, Deserialize)]
struct Pagination {
    next_page: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CreateAnswer {
    server: Vm,
    action: Action,
    #[serde(default)]
    next_actions: Vec<Action>,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Hetzner {
    pub fn new(cfg: HetznerConfig) -> Hetzner {
        Hetzner {
            http: reqwest::Client::new(),
            cfg,
        }
    }

    fn token(&self) -> Result<String, ProviderError> {
        let t = std::fs::read_to_string(&self.cfg.token_file).map_err(|source| {
            ProviderError::TokenFile {
                path: self.cfg.token_file.clone(),
                source,
            }
        })?;
        Ok(t.trim().to_string())
    }

    /// One API call; `request` names it in errors (`POST /servers/42/actions/poweroff`).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let request = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let url = format!("{}{path}", self.cfg.base_url);
        let token = self.token()?;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&token)
                .timeout(Duration::from_secs(30));
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.map_err(|e| ProviderError::Transport {
                request: request.clone(),
                detail: e.without_url().to_string(),
            })?;
            let status = resp.status().as_u16();
            if status == 429 {
                let reset = resp
                    .headers()
                    .get("ratelimit-reset")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let reset_in_secs = reset.map_or(1, |r| r.saturating_sub(now_unix()).max(1));
                let max_wait_secs = self.cfg.max_rate_wait.as_secs();
                if reset_in_secs > max_wait_secs {
                    return Err(ProviderError::RateLimited {
                        request,
                        reset_in_secs,
                        max_wait_secs,
                    });
                }
                tracing::info!(%request, reset_in_secs, "provider rate limit reached: waiting for RateLimit-Reset");
                tokio::time::sleep(Duration::from_secs(reset_in_secs)).await;
                continue;
            }
            let bytes = resp.bytes().await.map_err(|e| ProviderError::Transport {
                request: request.clone(),
                detail: e.without_url().to_string(),
            })?;
            if !(200..300).contains(&status) {
                let (code, message) = serde_json::from_slice::<ErrorBody>(&bytes)
                    .map(|e| (e.error.code, e.error.message))
                    .unwrap_or_else(|_| ("unknown".into(), "no error body".into()));
                let hint = match status {
                    401 => "; the token in provider.hetzner.tokenFile is not valid: replace it",
                    403 => "; the token may be read-only: the doctor needs a read-write token",
                    _ => "",
                };
                return Err(ProviderError::Api {
                    request,
                    status,
                    code,
                    message,
                    hint,
                });
            }
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| ProviderError::Answer {
                request,
                detail: e.to_string(),
            });
        }
    }

    fn parse<T: for<'de> Deserialize<'de>>(request: &str, v: Value) -> Result<T, ProviderError> {
        serde_json::from_value(v).map_err(|e| ProviderError::Answer {
            request: request.to_string(),
            detail: e.to_string(),
        })
    }

    /// Polls the action until it succeeded.
    async fn wait_action(&self, request: &str, action: Action) -> Result<(), ProviderError> {
        let started = tokio::time::Instant::now();
        let mut action = action;
        loop {
            match action.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    let e = action.error.unwrap_or(ErrorDetail {
                        code: "unknown".into(),
                        message: "no error detail".into(),
                    });
                    return Err(ProviderError::ActionFailed {
                        request: request.to_string(),
                        action: action.id,
                        code: e.code,
                        message: e.message,
                    });
                }
                _ => {}
            }
            if started.elapsed() >= self.cfg.action_timeout {
                return Err(ProviderError::ActionTimeout {
                    request: request.to_string(),
                    action: action.id,
                    secs: self.cfg.action_timeout.as_secs(),
                });
            }
            tokio::time::sleep(self.cfg.poll_every).await;
            let v = self
                .call(
                    reqwest::Method::GET,
                    &format!("/actions/{}", action.id),
                    None,
                )
                .await?;
            action = Self::parse::<ActionAnswer>("GET /actions", v)?.action;
        }
    }

    async fn server_action(
        &self,
        method: reqwest::Method,
        path: String,
    ) -> Result<(), ProviderError> {
        let request = format!("{method} {path}");
        match self.call(method, &path, None).await {
            Ok(v) => {
                let a = Self::parse::<ActionAnswer>(&request, v)?.action;
                self.wait_action(&request, a).await
            }
            // Gone already: off and deleted are both true of it.
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Provider for Hetzner {
    async fn list(&self) -> Result<Vec<Vm>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let path = format!(
                "/servers?label_selector={}&page={page}&per_page={PER_PAGE}",
                encode(&self.cfg.label_selector)
            );
            let v = self.call(reqwest::Method::GET, &path, None).await?;
            let p: ServersPage = Self::parse("GET /servers", v)?;
            out.extend(p.servers);
            match p.meta.pagination.next_page {
                Some(next) if next > page => page = next,
                _ => return Ok(out),
            }
        }
    }

    async fn power_off(&self, id: u64) -> Result<(), ProviderError> {
        self.server_action(
            reqwest::Method::POST,
            format!("/servers/{id}/actions/poweroff"),
        )
        .await
    }

    async fn delete(&self, id: u64) -> Result<(), ProviderError> {
        self.server_action(reqwest::Method::DELETE, format!("/servers/{id}"))
            .await
    }

    async fn create(&self, vm: &NewVm) -> Result<Vm, ProviderError> {
        if vm.user_data.len() > USER_DATA_MAX {
            return Err(ProviderError::UserDataTooLarge {
                name: vm.name.clone(),
                len: vm.user_data.len(),
                max: USER_DATA_MAX,
            });
        }
        let labels: BTreeMap<&str, &str> = vm
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut body = json!({
            "name": vm.name,
            "server_type": self.cfg.server_type,
            "image": self.cfg.image,
            "user_data": vm.user_data,
            "labels": labels,
            "start_after_create": true,
        });
        if let Some(l) = &self.cfg.location {
            body["location"] = json!(l);
        }
        if !self.cfg.networks.is_empty() {
            body["networks"] = json!(self.cfg.networks);
        }
        let request = "POST /servers";
        let v = self
            .call(reqwest::Method::POST, "/servers", Some(&body))
            .await?;
        let created: CreateAnswer = Self::parse(request, v)?;
        self.wait_action(request, created.action).await?;
        for a in created.next_actions {
            self.wait_action(request, a).await?;
        }
        Ok(created.server)
    }
}
