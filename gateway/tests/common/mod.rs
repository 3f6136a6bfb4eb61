//! Starts the real `waping-gateway` binary on ephemeral ports for integration tests.
#![allow(dead_code)]

/// WebSocket subscriber client (`GET /v1/events/stream`).
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use waping_client::{ClientConfig, Connection, Trust};

/// A workspace to create: id, devices, rate, burst.
pub struct Ws {
    pub id: &'static str,
    pub devices: &'static [&'static str],
    pub rate: u32,
    pub burst: u32,
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub pin: String,
    pub keys: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    /// Prometheus listener, when started with metrics on.
    pub metrics: Option<SocketAddr>,
    /// HTTP API (plain http on loopback in tests).
    pub http: SocketAddr,
    /// Node-admin token.
    pub admin_token: String,
}

/// A random byte from the OS (the test crates have no RNG dependency of their own).
fn rand_byte() -> u8 {
    use std::io::Read;
    let mut b = [0u8; 1];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[0]
}

/// The node-admin token every test gateway uses.
pub const ADMIN_TOKEN: &str = "it-admin-token-0123456789abcdef-0123456789";

impl Gateway {
    /// Starts the binary with the given workspaces and extra TOML appended to `[upstream.sim]`.
    pub fn start(workspaces: &[Ws], sim_extra: &str) -> Gateway {
        Gateway::start_with(workspaces, sim_extra, false)
    }

    /// Like [`Gateway::start`]; `metrics` turns the Prometheus listener on (ephemeral port).
    pub fn start_with(workspaces: &[Ws], sim_extra: &str, metrics: bool) -> Gateway {
        Gateway::start_upstream(workspaces, &format!("[upstream.sim]\n{sim_extra}\n"), metrics)
    }

    /// Like [`Gateway::start_with`] with the whole upstream part of the config given (TOML tables).
    pub fn start_upstream(workspaces: &[Ws], upstream: &str, metrics: bool) -> Gateway {
        Gateway::start_full(workspaces, upstream, metrics, "")
    }

    /// Like [`Gateway::start_upstream`] with extra `[api]` settings (TOML lines).
    pub fn start_full(workspaces: &[Ws], upstream: &str, metrics: bool, api_extra: &str) -> Gateway {
        Gateway::start_config(workspaces, upstream, metrics, "", api_extra)
    }

    /// Like [`Gateway::start_upstream`] with metrics on and extra `[metrics]` settings (TOML lines).
    pub fn start_metrics(workspaces: &[Ws], upstream: &str, metrics_extra: &str) -> Gateway {
        Gateway::start_config(workspaces, upstream, true, metrics_extra, "")
    }

    fn start_config(
        workspaces: &[Ws],
        upstream: &str,
        metrics: bool,
        metrics_extra: &str,
        api_extra: &str,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\nhandshake_timeout_ms = 2000\ndrain_timeout_ms = 2000\n\
             [metrics]\nenabled = {metrics}\nlisten = \"127.0.0.1:0\"\n{metrics_extra}\n[limits]\ndevice_rate_per_second = 0\n\
             [api]\nlisten = \"127.0.0.1:0\"\nscheme = \"http\"\nadmin_token_file = {:?}\n{api_extra}\n[security]\nmaster_key_file = {:?}\n{upstream}\n",
            dir.path().join("state").display().to_string(),
            dir.path().join("admin-token").display().to_string(),
            dir.path().join("master.key").display().to_string(),
        );
        {
            // A master key kept outside the state directory, as in production.
            use std::os::unix::fs::PermissionsExt;
            let key: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
            std::fs::write(dir.path().join("master.key"), key).expect("master key");
            std::fs::set_permissions(
                dir.path().join("master.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod master key");
        }
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).expect("admin token");
        let mut keys = Vec::new();
        for w in workspaces {
            let k = waping_gateway::auth::generate_key();
            toml.push_str(&format!(
                "[[workspaces]]\nid = \"{}\"\nrate_per_second = {}\nburst = {}\ndevices = {:?}\n[[workspaces.keys]]\nid = \"{}\"\nhash = \"{}\"\n",
                w.id, w.rate, w.burst, w.devices, k.id, k.hash
            ));
            keys.push((w.id.to_string(), k.key));
        }
        let cfg_path = dir.path().join("gateway.toml");
        std::fs::write(&cfg_path, toml).expect("write config");
        let (child, info) = spawn(&dir);
        Gateway {
            child,
            addr: info["quic"].as_str().unwrap().parse().unwrap(),
            pin: info["fingerprint"].as_str().unwrap().to_string(),
            keys,
            dir,
            metrics: info["metrics"].as_str().map(|a| a.parse().unwrap()),
            http: info["http"].as_str().unwrap().parse().unwrap(),
            admin_token: ADMIN_TOKEN.to_string(),
        }
    }

    /// `kill -9`: no drain, no flush, nothing the process could still do.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again on the same config and state directory (after [`Gateway::kill9`]
    /// or [`Gateway::terminate`]).
    pub fn respawn(&mut self) {
        self.respawn_env(&[]);
    }

    /// [`Gateway::respawn`] with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn respawn_env(&mut self, env: &[(&str, &str)]) {
        // A killed gateway leaves its runtime.json behind; wait for the new one.
        let _ = std::fs::remove_file(self.state_dir().join("runtime.json"));
        let (child, info) = spawn_env(&self.dir, env);
        self.child = child;
        self.addr = info["quic"].as_str().unwrap().parse().unwrap();
        self.http = info["http"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            self.pin,
            info["fingerprint"].as_str().unwrap(),
            "the certificate survives restarts"
        );
    }

    pub fn key(&self, ws: &str) -> String {
        self.keys
            .iter()
            .find(|(w, _)| w == ws)
            .map(|(_, k)| k.clone())
            .expect("workspace key")
    }

    pub fn client_config(&self, key: &str) -> ClientConfig {
        ClientConfig {
            addr: self.addr,
            server_name: "localhost".into(),
            trust: Trust::parse_pin(&self.pin).unwrap(),
            api_key: key.to_string(),
            client_name: "it".into(),
            connect_timeout: Duration::from_secs(10),
            identity: None,
        }
    }

    pub async fn connect(&self, ws: &str) -> Connection {
        Connection::connect(&self.client_config(&self.key(ws)))
            .await
            .expect("connect")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The configuration file the gateway runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// The gateway's current runtime.json.
    pub fn runtime(&self) -> serde_json::Value {
        let t = std::fs::read_to_string(self.state_dir().join("runtime.json")).expect("runtime.json");
        serde_json::from_str(&t).expect("runtime.json is JSON")
    }

    /// Rewrites the configuration file with `edit`, sends SIGHUP and waits until the gateway
    /// has finished that reload; returns runtime.json's `reload` summary.
    pub fn reload_with(&self, edit: impl FnOnce(String) -> String) -> serde_json::Value {
        let text = std::fs::read_to_string(self.config_path()).expect("read config");
        std::fs::write(self.config_path(), edit(text)).expect("write config");
        let before = self.runtime()["reload"]["attempts"].as_u64().unwrap_or(0);
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // runtime.json is replaced atomically, but tolerate a read between processes.
            if let Some(r) = std::fs::read_to_string(self.state_dir().join("runtime.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                && r["reload"]["attempts"].as_u64().unwrap_or(0) > before
            {
                return r["reload"].clone();
            }
            assert!(Instant::now() < deadline, "the gateway did not finish the reload");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            assert!(Instant::now() < deadline, "gateway did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns the binary on `dir/gateway.toml` and waits for its runtime.json.
fn spawn(dir: &tempfile::TempDir) -> (Child, serde_json::Value) {
    spawn_env(dir, &[])
}

fn spawn_env(dir: &tempfile::TempDir, env: &[(&str, &str)]) -> (Child, serde_json::Value) {
    let cfg_path = dir.path().join("gateway.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_waping-gateway"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .envs(env.iter().copied())
        .env("RUST_LOG", std::env::var("IT_LOG").unwrap_or("warn".into()))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gateway");
    let runtime = dir.path().join("state").join("runtime.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = std::fs::read_to_string(&runtime)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
        {
            return (child, v);
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("gateway exited during start: {st}");
        }
        assert!(Instant::now() < deadline, "gateway did not write runtime.json");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next frame of a stream; panics if none arrives within 30 s or the stream ends.
pub async fn next_frame(s: &mut waping_client::FrameStream) -> waping_protocol::Frame {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("timely frame")
        .expect("frame")
        .expect("open stream")
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as the tests read it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error body.
    pub fn code(&self) -> u64 {
        self.json()["error"]["code"].as_u64().unwrap_or(0)
    }
}

/// A minimal HTTP/1.1 client (one request per connection) so the tests need no HTTP crate.
pub fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> HttpResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

impl Gateway {
    /// One API request with a bearer credential and an optional JSON body.
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> HttpResponse {
        let b = body.map(|v| v.to_string());
        http_raw(self.http, method, path, Some(token), b.as_deref(), &[])
    }

    /// Creates a workspace through the admin API and an owner key in it; returns the key.
    pub fn create_workspace(&self, id: &str) -> String {
        let r = self.api(
            "POST",
            "/v1/admin/workspaces",
            &self.admin_token,
            Some(serde_json::json!({"id": id})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        self.admin_key(id, "owner")
    }

    /// Polls `GET /v1/messages/{id}` until the message is sent, failed or dead; returns the
    /// state (panics after 30 s).
    pub fn wait_message(&self, key: &str, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.api("GET", &format!("/v1/messages/{id}"), key, None);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            if matches!(v["state"].as_str(), Some("sent" | "dead" | "failed")) {
                return v;
            }
            assert!(Instant::now() < deadline, "message {id} stuck: {}", r.body);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new key of `role` in workspace `ws`, created by the node admin.
    pub fn admin_key(&self, ws: &str, role: &str) -> String {
        let r = self.api(
            "POST",
            &format!("/v1/admin/workspaces/{ws}/keys"),
            &self.admin_token,
            Some(serde_json::json!({"name": format!("{role} key"), "role": role})),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.json()["key"].as_str().unwrap().to_string()
    }
}
