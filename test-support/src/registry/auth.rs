//! A second CNCF registry on a free loopback port with authentication, started and stopped
//! by the test that needs it: htpasswd (bcrypt) basic auth, or bearer tokens from a token
//! service this module runs (anonymous pull; push only with credentials), signed ES256 with
//! a key whose certificate the registry trusts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub struct AuthRegistry {
    pub addr: String,
    /// Token requests seen: (scope, had credentials).
    pub token_requests: Arc<Mutex<Vec<(String, bool)>>>,
    child: Child,
    _dir: tempfile::TempDir,
    _token_server: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = &self._token_server {
            t.abort();
        }
    }
}

/// A bcrypt htpasswd hash made with perl's crypt(3) (libxcrypt knows $2b$).
fn bcrypt(password: &str) -> Option<String> {
    let out = Command::new("perl")
        .args([
            "-e",
            r#"print crypt($ARGV[0], '$2b$05$' . $ARGV[1])"#,
            password,
            "atlasinstalltestsalt..",
        ])
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    hash.starts_with("$2b$05$").then_some(hash)
}

fn spawn(dir: &Path, addr: &str, auth_yaml: &str) -> Child {
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {root}}}\n\
         http:\n  addr: {addr}\nauth:\n{auth_yaml}",
        root = dir.join("data").display(),
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_up(reg: &AuthRegistry) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !super::registry_answers(&reg.addr) {
        assert!(
            Instant::now() < deadline,
            "auth registry on {} did not come up",
            reg.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Basic auth with one user; None (after saying why) when a tool is missing.
pub fn start(user: &str, password: &str) -> Option<AuthRegistry> {
    if !crate::skip::have_tool("docker-registry") || !crate::skip::have_tool("perl") {
        return None;
    }
    let Some(hash) = bcrypt(password) else {
        assert!(
            !crate::skip::require_all(),
            "perl crypt() cannot make bcrypt hashes"
        );
        eprintln!("skipping: perl crypt() cannot make bcrypt hashes");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", super::free_port());
    std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
    let auth = format!(
        "  htpasswd: {{realm: atlas-test, path: {}}}\n",
        dir.path().join("htpasswd").display()
    );
    let child = spawn(dir.path(), &addr, &auth);
    let reg = AuthRegistry {
        addr,
        token_requests: Arc::default(),
        child,
        _dir: dir,
        _token_server: None,
    };
    wait_up(&reg);
    Some(reg)
}

const SERVICE: &str = "atlas-test-registry";
const ISSUER: &str = "atlas-test-token-issuer";

/// Token auth: anyone gets a pull token, `user:password` also gets push.
pub async fn start_token(user: &str, password: &str) -> Option<AuthRegistry> {
    if !crate::skip::have_tool("docker-registry") {
        return None;
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["atlas-test-token".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token.pem"), cert.pem()).unwrap();
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_addr = listener.local_addr().unwrap().to_string();
    let requests: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    let (reqs, key) = (requests.clone(), Arc::new(key));
    let server = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (reqs, key, x5c, basic) = (reqs.clone(), key.clone(), x5c.clone(), basic.clone());
            tokio::spawn(async move {
                let _ = serve_token(conn, &reqs, &key, &x5c, &basic).await;
            });
        }
    });

    let addr = format!("127.0.0.1:{}", super::free_port());
    let auth = format!(
        "  token:\n    realm: http://{token_addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        dir.path().join("token.pem").display()
    );
    let child = spawn(dir.path(), &addr, &auth);
    let reg = AuthRegistry {
        addr,
        token_requests: requests,
        child,
        _dir: dir,
        _token_server: Some(server),
    };
    wait_up(&reg);
    Some(reg)
}

async fn serve_token(
    conn: tokio::net::TcpStream,
    requests: &Mutex<Vec<(String, bool)>>,
    key: &rcgen::KeyPair,
    x5c: &str,
    basic: &str,
) -> std::io::Result<()> {
    use tokio::io::{AsyncWriteExt, BufReader};
    let (r, mut w) = conn.into_split();
    let Some(head) = crate::http::read_head(&mut BufReader::new(r)).await? else {
        return Ok(());
    };
    let target = head.target.as_str();
    let authorized = head.values("authorization").any(|v| v == basic);
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("scope=") {
            scopes.push(percent_decode(v));
        }
    }
    let mut access = Vec::new();
    for scope in &scopes {
        requests.lock().unwrap().push((scope.clone(), authorized));
        // repository:<name>:<actions>
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted: Vec<&str> = actions
            .split(',')
            .filter(|a| *a == "pull" || (*a == "push" && authorized))
            .collect();
        access.push(serde_json::json!({"type": kind, "name": name, "actions": granted}));
    }
    let token = jwt(key, x5c, access);
    let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    w.write_all(resp.as_bytes()).await?;
    w.shutdown().await
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn jwt(key: &rcgen::KeyPair, x5c: &str, access: Vec<serde_json::Value>) -> String {
    use rcgen::SigningKey as _;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let der = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64(&der_to_fixed(&der)))
}

/// ECDSA signature: ASN.1 SEQUENCE { INTEGER r, INTEGER s } → r || s, 32 bytes each (JWS).
fn der_to_fixed(der: &[u8]) -> Vec<u8> {
    let mut i = 2; // SEQUENCE tag + short length (P-256 signatures are < 128 bytes)
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "INTEGER expected");
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}
