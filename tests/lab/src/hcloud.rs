//! The subset of the Hetzner Cloud API the agents use (servers list, create, power off, delete,
//! action polling), served by the lab on its bridge and backed by the lab's real nodes, so the
//! agents' own Hetzner client (`kubedna_doctor::provider::hetzner`) drives real node lifecycles.
//! Not Hetzner: its contract is the hcloud-double's (`tests/fixtures/hcloud-double`, the same
//! request checks, shapes, error codes and `RateLimit-*` headers), and
//! `tests/hcloud_contract.rs` runs one sequence of the real client against both so they cannot
//! drift. A mutating call returns a `running` action at once and the lab works in the
//! background; the action turns `success` (or `error`) when the work is done. It serves only on
//! the address it is given (the lab bridge's), never routes anything out.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

use crate::lab::Lab;
use crate::Role;

/// Hetzner's limit on `user_data`.
pub const USER_DATA_MAX: usize = 32 * 1024;

/// A server as the backend knows it. `id` is never reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub id: u64,
    pub name: String,
    /// Hetzner's words: `running`, `off`, `starting`, ...
    pub status: String,
    pub labels: BTreeMap<String, String>,
    pub ipv4: Option<String>,
}

/// What the API drives. Errors are Hetzner codes with a message.
pub trait Backend: Send + Sync + 'static {
    fn servers(&self) -> Result<Vec<Server>, (String, String)>;
    fn create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        user_data: &str,
    ) -> Result<Server, (String, String)>;
    fn power_off(&self, id: u64) -> Result<(), (String, String)>;
    fn delete(&self, id: u64) -> Result<(), (String, String)>;
}

fn server_error(e: impl std::fmt::Display) -> (String, String) {
    ("server_error".into(), e.to_string())
}

/// The lab's nodes as servers: the id is the node's never-reused index plus one, the status
/// `off` once the node is stopped (a power cut), the labels the node's.
#[derive(Debug, Clone)]
pub struct LabBackend {
    pub root: PathBuf,
    pub lab: String,
}

impl Backend for LabBackend {
    fn servers(&self) -> Result<Vec<Server>, (String, String)> {
        let lab = Lab::open(&self.root, &self.lab).map_err(server_error)?;
        let states: BTreeMap<String, String> = lab
            .status()
            .into_iter()
            .map(|s| (s.name, s.state))
            .collect();
        Ok(lab
            .state
            .nodes
            .iter()
            .map(|n| Server {
                id: u64::from(n.index) + 1,
                name: n.name.clone(),
                status: match states.get(&n.name).map(String::as_str) {
                    Some("stopped") => "off".into(),
                    Some("starting") => "starting".into(),
                    _ => "running".into(),
                },
                labels: n.labels.clone(),
                ipv4: Some(n.address.to_string()),
            })
            .collect())
    }

    fn create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        user_data: &str,
    ) -> Result<Server, (String, String)> {
        let mut lab = Lab::open(&self.root, &self.lab).map_err(server_error)?;
        let role = if labels.get("kubedna.io/role").map(String::as_str) == Some("control-plane") {
            Role::ControlPlane
        } else {
            Role::Worker
        };
        let r = lab
            .add_named_node(name, role, labels.clone(), Some(user_data))
            .map_err(server_error)?;
        Ok(Server {
            id: u64::from(r.index) + 1,
            name: r.name,
            status: "running".into(),
            labels: r.labels,
            ipv4: Some(r.address.to_string()),
        })
    }

    fn power_off(&self, id: u64) -> Result<(), (String, String)> {
        let lab = Lab::open(&self.root, &self.lab).map_err(server_error)?;
        let name = self.name_of(&lab, id)?;
        lab.kill(&name).map_err(server_error)
    }

    fn delete(&self, id: u64) -> Result<(), (String, String)> {
        let mut lab = Lab::open(&self.root, &self.lab).map_err(server_error)?;
        let name = self.name_of(&lab, id)?;
        lab.remove_node(&name).map_err(server_error)
    }
}

impl LabBackend {
    fn name_of(&self, lab: &Lab, id: u64) -> Result<String, (String, String)> {
        lab.state
            .nodes
            .iter()
            .find(|n| u64::from(n.index) + 1 == id)
            .map(|n| n.name.clone())
            .ok_or_else(|| ("not_found".into(), "server not found".into()))
    }
}

/// In memory, for tests of the API itself.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    pub servers: Mutex<Vec<Server>>,
    next: Mutex<u64>,
}

impl MemoryBackend {
    pub fn with(servers: Vec<Server>) -> Self {
        let next = servers.iter().map(|s| s.id).max().unwrap_or(0) + 1;
        MemoryBackend {
            servers: Mutex::new(servers),
            next: Mutex::new(next),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backend for MemoryBackend {
    fn servers(&self) -> Result<Vec<Server>, (String, String)> {
        Ok(lock(&self.servers).clone())
    }
    fn create(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        _user_data: &str,
    ) -> Result<Server, (String, String)> {
        let mut next = lock(&self.next);
        let s = Server {
            id: *next,
            name: name.into(),
            status: "running".into(),
            labels: labels.clone(),
            ipv4: None,
        };
        *next += 1;
        lock(&self.servers).push(s.clone());
        Ok(s)
    }
    fn power_off(&self, id: u64) -> Result<(), (String, String)> {
        let mut servers = lock(&self.servers);
        let s = servers
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| ("not_found".to_string(), "server not found".to_string()))?;
        s.status = "off".into();
        Ok(())
    }
    fn delete(&self, id: u64) -> Result<(), (String, String)> {
        let mut servers = lock(&self.servers);
        let before = servers.len();
        servers.retain(|s| s.id != id);
        if servers.len() == before {
            return Err(("not_found".into(), "server not found".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Action {
    command: String,
    server: u64,
    /// running, success or error
    status: String,
    error: Option<(String, String)>,
}

struct Shared {
    token: String,
    backend: Arc<dyn Backend>,
    actions: Mutex<BTreeMap<u64, Action>>,
    next_action: Mutex<u64>,
    /// Names being created (their action still running): a second create is refused.
    creating: Mutex<Vec<String>>,
    /// Injected faults: the next authenticated requests are answered with these statuses.
    faults: Mutex<std::collections::VecDeque<u16>>,
}

/// The API, serving until the process exits.
#[derive(Debug)]
pub struct HcloudApi {
    pub addr: SocketAddr,
    pub base_url: String,
    shared: Arc<Shared>,
    _thread: JoinHandle<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared(<token redacted>)")
    }
}

impl HcloudApi {
    /// Serves on `listen` (the lab bridge's address in the lab, loopback in tests) to callers
    /// presenting `token`.
    pub fn serve(listen: &str, token: &str, backend: Arc<dyn Backend>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            token: token.to_string(),
            backend,
            actions: Mutex::new(BTreeMap::new()),
            next_action: Mutex::new(1),
            creating: Mutex::new(Vec::new()),
            faults: Mutex::new(std::collections::VecDeque::new()),
        });
        let served = shared.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = handle(&shared, stream);
                });
            }
        });
        Ok(HcloudApi {
            addr,
            base_url: format!("http://{addr}/v1"),
            shared: served,
            _thread: thread,
        })
    }

    /// Answers the next authenticated requests, one each, with these statuses instead of doing
    /// them: 429 as Hetzner's rate limit (`rate_limit_exceeded`, `RateLimit-Remaining: 0`, a
    /// reset 2 s ahead), anything else as `unavailable`. Nothing is changed by a faulted request.
    pub fn fail_next(&self, statuses: &[u16]) {
        lock(&self.shared.faults).extend(statuses.iter().copied());
    }

    /// Injected faults not yet answered.
    pub fn faults_left(&self) -> usize {
        lock(&self.shared.faults).len()
    }
}

type Answer = (u16, Value);

fn error(status: u16, code: &str, message: &str) -> Answer {
    (
        status,
        json!({"error": {"code": code, "message": message, "details": {}}}),
    )
}

struct Request {
    method: String,
    target: String,
    auth: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.trim_end().split(' ');
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let (mut auth, mut content_type, mut length) = (None, None, 0usize);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim().to_string();
            match k.to_ascii_lowercase().as_str() {
                "authorization" => auth = Some(v),
                "content-type" => content_type = Some(v),
                "content-length" => length = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        target,
        auth,
        content_type,
        body,
    })
}

fn handle(shared: &Arc<Shared>, mut stream: TcpStream) -> std::io::Result<()> {
    let req = read_request(&stream)?;
    let authorized = req.auth.as_deref() == Some(&format!("Bearer {}", shared.token));
    let fault = if authorized {
        lock(&shared.faults).pop_front()
    } else {
        None
    };
    let (status, body) = match fault {
        Some(429) => error(
            429,
            "rate_limit_exceeded",
            "limit of 3600 requests per hour reached",
        ),
        Some(s) => error(
            s,
            "unavailable",
            "the service is unavailable (injected by the lab)",
        ),
        None => answer(shared, &req),
    };
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        _ => "Error",
    };
    let (remaining, ahead) = if status == 429 { (0, 2) } else { (3599, 1) };
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + ahead;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nratelimit-limit: 3600\r\nratelimit-remaining: {remaining}\r\nratelimit-reset: {reset}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn server_json(s: &Server) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "labels": s.labels,
        "public_net": {
            "ipv4": s.ipv4.as_ref().map(|ip| json!({"ip": ip, "blocked": false, "dns_ptr": "lab"})),
            "ipv6": null, "floating_ips": [], "firewalls": []
        },
        "private_net": [],
        "server_type": {"name": "lab"},
        "image": {"name": "lab"},
    })
}

fn action_json(id: u64, a: &Action) -> Value {
    json!({
        "id": id,
        "command": a.command,
        "status": a.status,
        "progress": if a.status == "running" { 0 } else { 100 },
        "started": "2026-01-01T00:00:00+00:00",
        "finished": if a.status == "running" { Value::Null } else { json!("2026-01-01T00:00:01+00:00") },
        "resources": [{"id": a.server, "type": "server"}],
        "error": a.error.as_ref().map(|(code, message)| json!({"code": code, "message": message})),
    })
}

fn label_part_ok(s: &str, empty_ok: bool) -> bool {
    if s.is_empty() {
        return empty_ok;
    }
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn label_ok(k: &str, v: &str) -> bool {
    let name = match k.rsplit_once('/') {
        Some((prefix, name)) => {
            if prefix.starts_with("hetzner.cloud") || prefix.is_empty() {
                return false;
            }
            name
        }
        None => k,
    };
    label_part_ok(name, false) && label_part_ok(v, true)
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// Starts `work` in the background under a new running action.
fn start_action(
    shared: &Arc<Shared>,
    command: &str,
    server: u64,
    work: impl FnOnce() -> Result<(), (String, String)> + Send + 'static,
) -> Value {
    let id = {
        let mut n = lock(&shared.next_action);
        *n += 1;
        *n
    };
    let a = Action {
        command: command.into(),
        server,
        status: "running".into(),
        error: None,
    };
    let v = action_json(id, &a);
    lock(&shared.actions).insert(id, a);
    let shared = shared.clone();
    std::thread::spawn(move || {
        let r = work();
        if let Some(a) = lock(&shared.actions).get_mut(&id) {
            match r {
                Ok(()) => a.status = "success".into(),
                Err(e) => {
                    a.status = "error".into();
                    a.error = Some(e);
                }
            }
        }
    });
    v
}

fn list(shared: &Shared, query: &str) -> Answer {
    let mut selector = None;
    let (mut page, mut per_page) = (1usize, 25usize);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "label_selector" => selector = Some(decode(v)),
            "page" => page = v.parse().unwrap_or(0),
            "per_page" => per_page = v.parse().unwrap_or(0),
            _ => return error(400, "invalid_input", "unknown query parameter"),
        }
    }
    if page == 0 || per_page == 0 || per_page > 50 {
        return error(
            400,
            "invalid_input",
            "page must be >= 1 and per_page 1..=50",
        );
    }
    let servers = match shared.backend.servers() {
        Ok(s) => s,
        Err((code, m)) => return error(500, &code, &m),
    };
    let matching: Vec<&Server> = match &selector {
        None => servers.iter().collect(),
        Some(sel) => {
            let Some((k, v)) = sel.split_once('=') else {
                return error(
                    400,
                    "invalid_input",
                    "label_selector must be key=value here",
                );
            };
            let v = v.strip_prefix('=').unwrap_or(v);
            servers
                .iter()
                .filter(|s| s.labels.get(k).map(String::as_str) == Some(v))
                .collect()
        }
    };
    let last_page = matching.len().div_ceil(per_page).max(1);
    let chunk: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|s| server_json(s))
        .collect();
    (
        200,
        json!({"servers": chunk, "meta": {"pagination": {
            "page": page, "per_page": per_page,
            "previous_page": (page > 1).then(|| page - 1),
            "next_page": (page < last_page).then_some(page + 1),
            "last_page": last_page, "total_entries": matching.len(),
        }}}),
    )
}

fn create(shared: &Arc<Shared>, body: &[u8]) -> Answer {
    let Ok(Value::Object(b)) = serde_json::from_slice::<Value>(body) else {
        return error(400, "json_error", "request body must be a JSON object");
    };
    const KNOWN: [&str; 15] = [
        "name",
        "server_type",
        "image",
        "location",
        "datacenter",
        "ssh_keys",
        "user_data",
        "start_after_create",
        "labels",
        "networks",
        "firewalls",
        "placement_group",
        "public_net",
        "volumes",
        "automount",
    ];
    if let Some(k) = b.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return error(400, "invalid_input", &format!("unknown field {k}"));
    }
    let text = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(name), Some(_), Some(_)) = (text("name"), text("server_type"), text("image")) else {
        return error(
            400,
            "invalid_input",
            "name, server_type and image are required",
        );
    };
    if !name_ok(&name) {
        return error(
            400,
            "invalid_input",
            "name must be a valid RFC 1123 host name",
        );
    }
    if b.contains_key("location") && b.contains_key("datacenter") {
        return error(
            400,
            "invalid_input",
            "location and datacenter are mutually exclusive",
        );
    }
    let user_data = match b.get("user_data") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(u)) if u.len() <= USER_DATA_MAX => u.clone(),
        Some(Value::String(_)) => {
            return error(400, "invalid_input", "user_data must not exceed 32 KiB")
        }
        Some(_) => return error(400, "invalid_input", "user_data must be a string"),
    };
    let mut labels = BTreeMap::new();
    match b.get("labels") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return error(400, "invalid_input", "label values must be strings");
                };
                if !label_ok(k, v) {
                    return error(400, "invalid_input", &format!("invalid label {k}={v}"));
                }
                labels.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return error(400, "invalid_input", "labels must be an object"),
    }
    let taken = match shared.backend.servers() {
        Ok(s) => s.iter().any(|s| s.name == name),
        Err((code, m)) => return error(500, &code, &m),
    };
    {
        let mut creating = lock(&shared.creating);
        if taken || creating.contains(&name) {
            return error(409, "uniqueness_error", "server name is already used");
        }
        creating.push(name.clone());
    }
    // The lab creates synchronously (the node's container starts in seconds), then the action
    // reports what happened; the doctor waits for the node to join by itself.
    let created = shared.backend.create(&name, &labels, &user_data);
    lock(&shared.creating).retain(|n| *n != name);
    match created {
        Ok(s) => {
            let action = start_action(shared, "create_server", s.id, || Ok(()));
            let mut server = server_json(&s);
            server["status"] = json!("initializing");
            (
                201,
                json!({"server": server, "action": action, "next_actions": [], "root_password": null}),
            )
        }
        Err((code, m)) => error(500, &code, &m),
    }
}

fn answer(shared: &Arc<Shared>, req: &Request) -> Answer {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let known = matches!(
        (req.method.as_str(), segments.as_slice()),
        ("GET", ["v1", "servers"])
            | ("POST", ["v1", "servers"])
            | ("DELETE", ["v1", "servers", _])
            | ("POST", ["v1", "servers", _, "actions", "poweroff"])
            | ("GET", ["v1", "actions", _])
    );
    if !known {
        return error(404, "not_found", "no such route in the lab's API");
    }
    if req.auth.as_deref() != Some(&format!("Bearer {}", shared.token)) {
        return error(401, "unauthorized", "unable to authenticate");
    }
    if req.method == "POST"
        && segments.len() == 2
        && !req
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))
    {
        return error(400, "json_error", "Content-Type must be application/json");
    }
    let exists = |id: u64| {
        shared
            .backend
            .servers()
            .map(|s| s.iter().any(|s| s.id == id))
            .unwrap_or(false)
    };
    let id = |s: &str| s.parse::<u64>().ok();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "servers"]) => list(shared, query),
        ("POST", ["v1", "servers"]) => create(shared, &req.body),
        ("DELETE", ["v1", "servers", s]) => match id(s).filter(|i| exists(*i)) {
            Some(i) => {
                let backend = shared.backend.clone();
                let a = start_action(shared, "delete_server", i, move || backend.delete(i));
                (200, json!({"action": a}))
            }
            None => error(404, "not_found", "server not found"),
        },
        ("POST", ["v1", "servers", s, "actions", "poweroff"]) => {
            match id(s).filter(|i| exists(*i)) {
                Some(i) => {
                    let backend = shared.backend.clone();
                    let a = start_action(shared, "poweroff", i, move || backend.power_off(i));
                    (201, json!({"action": a}))
                }
                None => error(404, "not_found", "server not found"),
            }
        }
        ("GET", ["v1", "actions", s]) => {
            let actions = lock(&shared.actions);
            match id(s).and_then(|i| actions.get(&i).map(|a| (i, a))) {
                Some((i, a)) => (200, json!({"action": action_json(i, a)})),
                None => error(404, "not_found", "action not found"),
            }
        }
        _ => error(404, "not_found", "no such route in the lab's API"),
    }
}
