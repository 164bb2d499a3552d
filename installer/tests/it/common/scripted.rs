//! A scripted Incus on a unix socket: answers each request with what the test's handler
//! says, and records what was asked. For faults the real daemon cannot be made to show on
//! demand (a transient error, then success).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `(method, path with query)` -> `(HTTP status, JSON body)`.
pub type Handler = dyn Fn(&str, &str) -> (u16, serde_json::Value) + Send + Sync;

pub struct ScriptedIncus {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Every request as `METHOD path?query`, in order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl ScriptedIncus {
    pub fn start(
        handler: impl Fn(&str, &str) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> ScriptedIncus {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("incus.socket");
        let listener = UnixListener::bind(&socket).expect("bind");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, handler): (_, Arc<Handler>) = (seen.clone(), Arc::new(handler));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = r.read_exact(&mut body);
                log.lock().unwrap().push(format!("{method} {path}"));
                let (status, json) = handler(&method, &path);
                let text = json.to_string();
                let mut w = conn;
                let _ = write!(
                    w,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        ScriptedIncus {
            _dir: dir,
            socket,
            seen,
        }
    }
}

/// A synchronous success answer carrying `metadata`.
pub fn sync(metadata: serde_json::Value) -> (u16, serde_json::Value) {
    (
        200,
        serde_json::json!({"type": "sync", "status": "Success", "status_code": 200, "metadata": metadata}),
    )
}

/// An error answer.
pub fn error(status: u16, message: &str) -> (u16, serde_json::Value) {
    (
        status,
        serde_json::json!({"type": "error", "error": message, "error_code": status}),
    )
}
