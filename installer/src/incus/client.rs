//! The request core: URLs with project/target, the response envelope, error mapping, async
//! operations, ETags, and write accounting.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_MATCH};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::daemon::{Daemon, Http};
use super::error::{IncusError, classify, looks_like_duplicate};
use super::operation::{Operation, WaitAnswer, parse_wait};

/// Called for every request with the method and the path (with query). Never sees bodies or
/// headers: bodies may carry secrets.
pub type RequestLog = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A value read from Incus with the ETag it was served with; pass the ETag back to the update
/// call so a concurrent change gives [`IncusError::PreconditionFailed`] instead of being lost.
#[derive(Debug, Clone, PartialEq)]
pub struct Etagged<T> {
    pub value: T,
    pub etag: Option<String>,
}

/// Where the daemon is.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Unix {
        path: PathBuf,
    },
    Remote {
        url: String,
    },
    /// A daemon of the caller's own ([`Client::with_daemon`]), named for messages.
    Other {
        name: String,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix { path } => write!(f, "unix socket {}", path.display()),
            Endpoint::Remote { url } => write!(f, "{url}"),
            Endpoint::Other { name } => write!(f, "{name}"),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) daemon: Arc<dyn Daemon>,
    pub(crate) base: Url,
    pub(crate) endpoint: Endpoint,
    writes: AtomicU64,
    probes: AtomicU64,
    log: RwLock<Option<RequestLog>>,
    op_timeout: RwLock<Duration>,
    wait_chunk: RwLock<Duration>,
    request_timeout: RwLock<Duration>,
}

/// Typed client of the Incus REST API. Cheap to clone; clones share the connection pool, the
/// write counter and the request log. [`Client::in_project`] and [`Client::on_target`] give
/// views that add `?project=` / `?target=` to the calls that take them.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) project: Option<String>,
    pub(crate) target: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint.to_string())
            .field("project", &self.project)
            .field("target", &self.target)
            .finish()
    }
}

/// Which query parameters a call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Server-wide objects (projects, pools, certificates, cluster).
    Global,
    /// Objects that live in a project (instances, profiles, volumes, images, operations).
    Project,
    /// Networks: always in the `default` project (bridges cannot live elsewhere).
    DefaultProject,
}

pub(crate) enum Payload {
    None,
    Json(Vec<u8>),
    Stream(reqwest::Body),
    Bytes(Vec<u8>),
}

/// How long a request may take before the daemon counts as not answering. A daemon that
/// accepts a connection and never answers would otherwise hold a run forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The whole exchange, answer read, within the client's request timeout.
    Call,
    /// A long poll the daemon holds open on purpose (`GET .../wait?timeout=N`): the request
    /// timeout on top of those N seconds.
    Wait(Duration),
    /// The answer's head within the request timeout; its body is streamed by the caller,
    /// which watches for stalls itself.
    Head,
    /// A body streamed up (an image, a backup): it takes as long as its size needs, so only
    /// the connection's own limits apply.
    Upload,
}

/// One request, built by the resource modules.
pub(crate) struct Req {
    method: Method,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    scope: Scope,
    /// Whether this call accepts `?target=`.
    targeted: bool,
    /// A non-GET that changes nothing in Incus (a health probe's exec and its log cleanup):
    /// counted in [`Client::probes`], not [`Client::writes`].
    observing: bool,
    payload: Payload,
    headers: HeaderMap,
    deadline: Deadline,
}

impl Req {
    /// `path` like "/1.0/profiles"; `names` are appended as percent-encoded segments.
    pub(crate) fn new(method: Method, path: &str, names: &[&str]) -> Req {
        let mut segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        segments.extend(names.iter().map(|s| s.to_string()));
        Req {
            method,
            segments,
            query: Vec::new(),
            scope: Scope::Global,
            targeted: false,
            observing: false,
            payload: Payload::None,
            headers: HeaderMap::new(),
            deadline: Deadline::Call,
        }
    }
    pub(crate) fn get(path: &str, names: &[&str]) -> Req {
        Req::new(Method::GET, path, names)
    }
    pub(crate) fn scope(mut self, scope: Scope) -> Req {
        self.scope = scope;
        self
    }
    pub(crate) fn targeted(mut self) -> Req {
        self.targeted = true;
        self
    }
    pub(crate) fn observing(mut self, observing: bool) -> Req {
        self.observing = observing;
        self
    }
    pub(crate) fn query(mut self, k: &str, v: impl Into<String>) -> Req {
        self.query.push((k.to_string(), v.into()));
        self
    }
    pub(crate) fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Result<Req, IncusError> {
        let bytes = serde_json::to_vec(body).map_err(|e| IncusError::Invalid(e.to_string()))?;
        self.payload = Payload::Json(bytes);
        Ok(self)
    }
    pub(crate) fn body_stream(mut self, body: reqwest::Body) -> Req {
        self.payload = Payload::Stream(body);
        self.deadline = Deadline::Upload;
        self
    }
    pub(crate) fn deadline(mut self, deadline: Deadline) -> Req {
        self.deadline = deadline;
        self
    }
    pub(crate) fn body_bytes(mut self, body: Vec<u8>) -> Req {
        self.payload = Payload::Bytes(body);
        self
    }
    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Req, IncusError> {
        let v = HeaderValue::from_str(value)
            .map_err(|_| IncusError::Invalid(format!("header {name} cannot hold {value:?}")))?;
        self.headers.insert(HeaderName::from_static(name), v);
        Ok(self)
    }
    /// A copy to send again, unless the body is a stream (it can be read once).
    fn resendable(&self) -> Option<Req> {
        let payload = match &self.payload {
            Payload::None => Payload::None,
            Payload::Json(b) => Payload::Json(b.clone()),
            Payload::Bytes(b) => Payload::Bytes(b.clone()),
            Payload::Stream(_) => return None,
        };
        Some(Req {
            method: self.method.clone(),
            segments: self.segments.clone(),
            query: self.query.clone(),
            scope: self.scope,
            targeted: self.targeted,
            observing: self.observing,
            payload,
            headers: self.headers.clone(),
            deadline: self.deadline,
        })
    }
    pub(crate) fn if_match(mut self, etag: Option<&str>) -> Result<Req, IncusError> {
        if let Some(etag) = etag {
            let v = HeaderValue::from_str(etag)
                .map_err(|_| IncusError::Invalid(format!("ETag {etag:?} is not a header value")))?;
            self.headers.insert(IF_MATCH, v);
        }
        Ok(self)
    }
}

/// The JSON envelope of every answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    #[serde(rename = "type", default, deserialize_with = "super::client::nullable")]
    pub(crate) kind: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub(crate) error_code: u16,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub(crate) error: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub(crate) operation: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub(crate) metadata: Value,
}

/// An answer read whole (JSON envelopes are small; big bodies go through [`Client::send_raw`]).
pub(crate) struct Answer {
    pub(crate) etag: Option<String>,
    pub(crate) envelope: Envelope,
}

const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// Default of [`Client::set_request_timeout`] (and of `incus.request_timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest single `GET .../wait`: shorter than the HTTP timeouts between here and the daemon.
const WAIT_CHUNK: Duration = Duration::from_secs(30);
/// How long a write refused because its instance is busy with another operation is tried
/// again, and the pause between tries. A stop waits for the service to end (Incus' default
/// is 30 s before it kills), so a little more than that.
const BUSY_WAIT: Duration = Duration::from_secs(45);
const BUSY_PAUSE: Duration = Duration::from_millis(500);
/// How often a request is sent at most while an instance's file server breaks under it,
/// and the pause before sending it again.
const FILE_SERVER_TRIES: usize = 3;
const FILE_SERVER_PAUSE: Duration = Duration::from_secs(1);

impl Client {
    pub(crate) fn from_parts(http: reqwest::Client, base: Url, endpoint: Endpoint) -> Client {
        Client::over(Arc::new(Http(http)), base, endpoint)
    }

    /// A client whose requests `daemon` answers (a fake Incus in tests): every typed call
    /// goes through the same request building and answer mapping as on the real socket.
    /// `name` stands for the endpoint in messages.
    pub fn with_daemon(daemon: Arc<dyn Daemon>, name: &str) -> Client {
        let base = Url::parse("http://incus").expect("a constant URL");
        let endpoint = Endpoint::Other {
            name: name.to_string(),
        };
        Client::over(daemon, base, endpoint)
    }

    fn over(daemon: Arc<dyn Daemon>, base: Url, endpoint: Endpoint) -> Client {
        Client {
            inner: Arc::new(Inner {
                daemon,
                base,
                endpoint,
                writes: AtomicU64::new(0),
                probes: AtomicU64::new(0),
                log: RwLock::new(None),
                op_timeout: RwLock::new(DEFAULT_OPERATION_TIMEOUT),
                wait_chunk: RwLock::new(WAIT_CHUNK),
                request_timeout: RwLock::new(DEFAULT_REQUEST_TIMEOUT),
            }),
            project: None,
            target: None,
        }
    }

    /// A view of this client whose project-scoped calls use `project`.
    pub fn in_project(&self, project: &str) -> Client {
        Client {
            project: Some(project.to_string()),
            ..self.clone()
        }
    }

    /// A view whose member-aware calls (server config, pools, networks, volumes, instance
    /// create) carry `?target=<member>` (or `@group` for instance placement). `None` clears it.
    pub fn on_target(&self, target: Option<&str>) -> Client {
        Client {
            target: target.map(str::to_string),
            ..self.clone()
        }
    }

    /// The project of project-scoped calls (`default` when none was chosen).
    pub fn project(&self) -> &str {
        self.project.as_deref().unwrap_or("default")
    }

    /// How many non-GET requests this client (and its clones) has sent, failed ones included,
    /// except health probes (see [`Client::probes`]): what "zero writes" of a converged run
    /// is measured by.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::SeqCst)
    }

    /// Non-GET requests that only observe: health probes run with [`Client::probe_exec`]
    /// (the exec and the removal of its recorded output).
    pub fn probes(&self) -> u64 {
        self.inner.probes.load(Ordering::SeqCst)
    }

    /// Installs a hook that sees method and path (with query) of every request.
    pub fn set_request_log(&self, log: Option<RequestLog>) {
        *self.inner.log.write().unwrap_or_else(|e| e.into_inner()) = log;
    }

    /// Upper bound for waiting on one background operation (default 10 minutes).
    pub fn set_operation_timeout(&self, timeout: Duration) {
        *self
            .inner
            .op_timeout
            .write()
            .unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// How long one request may take (default [`DEFAULT_REQUEST_TIMEOUT`]) before it fails
    /// with [`IncusError::NoAnswer`]. Uploads, operation waits (each chunk gets this on top
    /// of what the daemon holds it) and streamed downloads keep their own pace.
    pub fn set_request_timeout(&self, timeout: Duration) {
        *self
            .inner
            .request_timeout
            .write()
            .unwrap_or_else(|e| e.into_inner()) = timeout.max(Duration::from_secs(1));
    }

    pub fn request_timeout(&self) -> Duration {
        *self
            .inner
            .request_timeout
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The error for a request to this daemon that got no answer in time.
    pub(crate) fn no_answer(&self, method: &str, path: &str) -> IncusError {
        IncusError::NoAnswer {
            endpoint: self.endpoint(),
            method: method.to_string(),
            path: path.to_string(),
            seconds: self.request_timeout().as_secs(),
        }
    }

    /// A failed read of an answer's body: a timeout is the daemon not answering.
    pub(crate) fn read_error(&self, e: &reqwest::Error, method: &str, path: &str) -> IncusError {
        if e.is_timeout() {
            return self.no_answer(method, path);
        }
        IncusError::Transport {
            endpoint: self.endpoint(),
            method: method.to_string(),
            path: path.to_string(),
            message: e.to_string(),
        }
    }

    /// Longest single `GET .../wait` (default 30 s); an operation that outlasts it is waited
    /// for again, up to the operation timeout. Tests shorten it to cover that path.
    pub fn set_wait_chunk(&self, chunk: Duration) {
        *self
            .inner
            .wait_chunk
            .write()
            .unwrap_or_else(|e| e.into_inner()) = chunk.max(Duration::from_secs(1));
    }

    /// Where this client talks to, for messages.
    pub fn endpoint(&self) -> String {
        self.inner.endpoint.to_string()
    }

    fn url(&self, req: &Req) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.clear().extend(req.segments.iter());
        }
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &req.query {
                q.append_pair(k, v);
            }
            match req.scope {
                Scope::Global => {}
                Scope::Project => {
                    if let Some(p) = &self.project {
                        q.append_pair("project", p);
                    }
                }
                Scope::DefaultProject => {
                    q.append_pair("project", "default");
                }
            }
            if let (true, Some(t)) = (req.targeted, &self.target) {
                q.append_pair("target", t);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// [`Client::send_raw`] for a body read as a stream (an export, a download): an error
    /// status is read whole and mapped like any other answer's.
    pub(crate) async fn send_streaming(
        &self,
        req: Req,
    ) -> Result<(reqwest::Response, String, String), IncusError> {
        let (resp, method, path) = self.send_raw(req).await?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let bytes = resp.bytes().await.unwrap_or_default();
            let env = decode_envelope(status, &bytes, &method, &path)?;
            return Err(super::error::classify(
                status,
                env.error_code,
                env.error,
                &method,
                &path,
            ));
        }
        Ok((resp, method, path))
    }

    /// Sends a request and returns the raw response, with write counting, logging and
    /// transport errors mapped. Error statuses are NOT mapped here.
    pub(crate) async fn send_raw(
        &self,
        req: Req,
    ) -> Result<(reqwest::Response, String, String), IncusError> {
        let url = self.url(&req);
        let deadline = req.deadline;
        let method = req.method.to_string();
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        if req.observing {
            self.inner.probes.fetch_add(1, Ordering::SeqCst);
        } else if req.method != Method::GET {
            self.inner.writes.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(log) = self
            .inner
            .log
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            log(&method, &path);
        }
        let limit = self.request_timeout();
        let request = build_request(req, url, limit);
        let sent = match deadline {
            Deadline::Head => tokio::time::timeout(limit, self.inner.daemon.execute(request))
                .await
                .map_err(|_| self.no_answer(&method, &path))?,
            _ => self.inner.daemon.execute(request).await,
        };
        match sent {
            Ok(resp) => Ok((resp, method, path)),
            // Connected, asked, and no answer: the daemon is stuck (a connect timeout is
            // "unreachable", below).
            Err(e) if e.is_timeout() && !e.is_connect() => Err(self.no_answer(&method, &path)),
            Err(e) => Err(super::transport::map_send_error(
                &self.inner.endpoint,
                &method,
                &path,
                &e,
            )),
        }
    }

    /// Sends and reads the JSON envelope; error answers become typed errors.
    pub(crate) async fn call(&self, req: Req) -> Result<(Answer, String, String), IncusError> {
        let (resp, method, path) = self.send_raw(req).await?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.read_error(&e, &method, &path))?;
        let envelope = decode_envelope(status, &bytes, &method, &path)?;
        if envelope.kind == "error" || status >= 400 {
            let message = if envelope.error.is_empty() {
                format!("HTTP {status} without an error message")
            } else {
                envelope.error.clone()
            };
            return Err(classify(
                status,
                envelope.error_code,
                message,
                &method,
                &path,
            ));
        }
        Ok((Answer { etag, envelope }, method, path))
    }

    /// GET a single object with its ETag.
    pub(crate) async fn get_tagged<T: DeserializeOwned>(
        &self,
        req: Req,
    ) -> Result<Etagged<T>, IncusError> {
        let (answer, method, path) = self.call(req).await?;
        let value = decode(answer.envelope.metadata, &method, &path)?;
        Ok(Etagged {
            value,
            etag: answer.etag,
        })
    }

    /// Escape hatch for endpoints without a typed call (network forwards, cluster groups,
    /// warnings...). `path` is the API path ("/1.0/cluster/groups"); each segment is
    /// percent-encoded; `project_scoped` adds `?project=`, and `?target=` is added when this
    /// view has one.
    pub async fn get_path<T: DeserializeOwned>(
        &self,
        path: &str,
        project_scoped: bool,
    ) -> Result<Etagged<T>, IncusError> {
        let mut req = Req::get(path, &[]).targeted();
        if project_scoped {
            req = req.scope(Scope::Project);
        }
        self.get_tagged(req).await
    }

    /// Escape hatch for writes: sends `body` as JSON (with `If-Match` when `etag` is given),
    /// waits for a background operation, and returns the metadata. Counted in [`Client::writes`].
    pub async fn send_path(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        project_scoped: bool,
        etag: Option<&str>,
    ) -> Result<Value, IncusError> {
        let mut req = Req::new(method, path, &[]).targeted().if_match(etag)?;
        if project_scoped {
            req = req.scope(Scope::Project);
        }
        if let Some(body) = body {
            req = req.json(body)?;
        }
        self.write(req).await
    }

    /// GET and decode the metadata.
    pub(crate) async fn get_value<T: DeserializeOwned>(&self, req: Req) -> Result<T, IncusError> {
        Ok(self.get_tagged(req).await?.value)
    }

    /// A writing call: sync answers give their metadata, async ones are waited for and give
    /// the finished operation's metadata.
    pub(crate) async fn write(&self, req: Req) -> Result<Value, IncusError> {
        self.resent_while_transient(req, |answer, method, path| async move {
            if answer.envelope.kind != "async" {
                return Ok(answer.envelope.metadata);
            }
            let op = self.wait_started(&answer.envelope, &method, &path).await?;
            Ok(op.metadata)
        })
        .await
    }

    /// Like [`Client::write`] but returns the finished operation itself.
    pub(crate) async fn write_op(&self, req: Req) -> Result<Operation, IncusError> {
        self.resent_while_transient(req, |answer, method, path| async move {
            if answer.envelope.kind != "async" {
                return Err(IncusError::Decode {
                    method,
                    path,
                    message: format!(
                        "expected a background operation, got a {} answer",
                        answer.envelope.kind
                    ),
                });
            }
            self.wait_started(&answer.envelope, &method, &path).await
        })
        .await
    }

    /// Sends a writing call and finishes it with `then`. Two refusals changed nothing and
    /// pass, so the same request is sent again after a pause: the instance busy with another
    /// operation (a stop or an autorestart still running, [`IncusError::is_instance_busy`]),
    /// for up to [`BUSY_WAIT`] in all; and its file server broken under the request
    /// ([`IncusError::is_file_server_hiccup`]), up to [`FILE_SERVER_TRIES`] sends while it
    /// keeps breaking. A streamed body is sent once.
    async fn resent_while_transient<T, F, Fut>(&self, req: Req, then: F) -> Result<T, IncusError>
    where
        F: Fn(Answer, String, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, IncusError>>,
    {
        let start = Instant::now();
        // Hiccups so far: the file server's bound counts its own refusals, not busy ones.
        let mut hiccups = 0;
        let mut next = Some(req);
        loop {
            let req = next.take().expect("a request to send");
            let again = req.resendable();
            let result = match self.call(req).await {
                Ok((answer, method, path)) => then(answer, method, path).await,
                Err(e) => Err(e),
            };
            let pause = match &result {
                Err(e) if e.is_instance_busy() && start.elapsed() < BUSY_WAIT => BUSY_PAUSE,
                Err(e) if e.is_file_server_hiccup() && hiccups + 1 < FILE_SERVER_TRIES => {
                    hiccups += 1;
                    FILE_SERVER_PAUSE
                }
                _ => return result,
            };
            let Some(again) = again else { return result };
            tokio::time::sleep(pause).await;
            next = Some(again);
        }
    }

    async fn wait_started(
        &self,
        env: &Envelope,
        method: &str,
        path: &str,
    ) -> Result<Operation, IncusError> {
        let id = operation_id(env).ok_or_else(|| IncusError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            message: "async answer without an operation id".into(),
        })?;
        self.wait_operation(&id, method, path).await
    }

    /// Waits for operation `id` (started by `method path`) to finish; failure and
    /// cancellation become [`IncusError::Operation`] (or `AlreadyExists` for duplicates).
    pub(crate) async fn wait_operation(
        &self,
        id: &str,
        method: &str,
        path: &str,
    ) -> Result<Operation, IncusError> {
        let limit = *self
            .inner
            .op_timeout
            .read()
            .unwrap_or_else(|e| e.into_inner());
        // At least 1 s: set_wait_chunk says so.
        let chunk = self
            .inner
            .wait_chunk
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_secs();
        let start = Instant::now();
        loop {
            let left = limit
                .saturating_sub(start.elapsed())
                .as_secs()
                .clamp(1, chunk);
            let req = Req::get("/1.0/operations", &[id, "wait"])
                .scope(Scope::Project)
                .query("timeout", left.to_string())
                .deadline(Deadline::Wait(Duration::from_secs(left)));
            let (resp, wmethod, wpath) = self.send_raw(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| self.read_error(&e, &wmethod, &wpath))?;
            let envelope = decode_envelope(status, &bytes, &wmethod, &wpath)?;
            match parse_wait(status, envelope) {
                WaitAnswer::Done(op) => return op_result(op, method, path),
                WaitAnswer::Running if start.elapsed() >= limit => {
                    return Err(IncusError::Timeout {
                        id: id.to_string(),
                        seconds: limit.as_secs(),
                        method: method.to_string(),
                        path: path.to_string(),
                    });
                }
                WaitAnswer::Running => continue,
                // 6.0.4 answers a wait that timed out like a failed operation, with the
                // deadline of the wait as its error. Only the operation itself can tell.
                WaitAnswer::Failed { message } if message.contains("context deadline exceeded") => {
                    match self.operation(id).await {
                        Ok(op) if op.is_final() => return op_result(op, method, path),
                        Ok(_) if start.elapsed() < limit => continue,
                        Ok(_) => {
                            return Err(IncusError::Timeout {
                                id: id.to_string(),
                                seconds: limit.as_secs(),
                                method: method.to_string(),
                                path: path.to_string(),
                            });
                        }
                        Err(_) => return Err(op_error(id, "", false, message, method, path)),
                    }
                }
                WaitAnswer::Failed { message } => {
                    return Err(op_error(id, "", false, message, method, path));
                }
                WaitAnswer::Error {
                    status,
                    code,
                    message,
                } => {
                    return Err(classify(status, code, message, &wmethod, &wpath));
                }
                WaitAnswer::Garbled(message) => {
                    return Err(IncusError::Decode {
                        method: wmethod,
                        path: wpath,
                        message,
                    });
                }
            }
        }
    }
}

/// The HTTP request of `req`, with the timeout its deadline asks for (the daemon honours a
/// request's own timeout).
fn build_request(req: Req, url: Url, limit: Duration) -> reqwest::Request {
    let mut request = reqwest::Request::new(req.method, url);
    *request.headers_mut() = req.headers;
    *request.timeout_mut() = match req.deadline {
        Deadline::Call => Some(limit),
        Deadline::Wait(held) => Some(limit + held),
        Deadline::Head | Deadline::Upload => None,
    };
    let (kind, body) = match req.payload {
        Payload::None => return request,
        Payload::Json(b) => ("application/json", reqwest::Body::from(b)),
        Payload::Stream(b) => ("application/octet-stream", b),
        Payload::Bytes(b) => ("application/octet-stream", reqwest::Body::from(b)),
    };
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    *request.body_mut() = Some(body);
    request
}

fn op_result(op: Operation, method: &str, path: &str) -> Result<Operation, IncusError> {
    if op.is_success() {
        return Ok(op);
    }
    let cancelled = op.status_code == super::operation::STATUS_CANCELLED;
    Err(op_error(
        &op.id,
        &op.description,
        cancelled,
        op.err.clone(),
        method,
        path,
    ))
}

fn op_error(
    id: &str,
    description: &str,
    cancelled: bool,
    message: String,
    method: &str,
    path: &str,
) -> IncusError {
    if method == "POST" && looks_like_duplicate(&message) {
        return IncusError::AlreadyExists {
            method: method.to_string(),
            path: path.to_string(),
            message,
        };
    }
    IncusError::Operation {
        id: id.to_string(),
        description: description.to_string(),
        message,
        method: method.to_string(),
        path: path.to_string(),
        cancelled,
    }
}

/// The id of the operation an async answer started: from `operation` ("/1.0/operations/<id>",
/// on a cluster with "?project=..." when the request was forwarded to another member) or the
/// embedded operation's `id`.
pub(crate) fn operation_id(env: &Envelope) -> Option<String> {
    let path = env.operation.split('?').next().unwrap_or_default();
    if let Some(id) = path.rsplit('/').next().filter(|s| !s.is_empty()) {
        return Some(id.to_string());
    }
    env.metadata
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

pub(crate) fn decode_envelope(
    status: u16,
    bytes: &[u8],
    method: &str,
    path: &str,
) -> Result<Envelope, IncusError> {
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(e) => Ok(e),
        Err(_) if status >= 400 => {
            // Something in front of Incus (or a very old server) answered with plain text.
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                .trim()
                .to_string();
            Err(classify(status, status, text, method, path))
        }
        Err(e) => Err(IncusError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            message: format!("not an Incus JSON answer: {e}"),
        }),
    }
}

/// Go encodes empty lists and maps as `null`; read those as the empty value.
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub(crate) fn decode<T: DeserializeOwned>(
    v: Value,
    method: &str,
    path: &str,
) -> Result<T, IncusError> {
    serde_path_to_error::deserialize(v).map_err(|e| IncusError::Decode {
        method: method.to_string(),
        path: path.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_client() -> Client {
        let tls = super::super::transport::unused_tls().expect("tls");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .expect("client");
        let base = Url::parse("http://incus.invalid").expect("url");
        Client::from_parts(
            http,
            base,
            Endpoint::Unix {
                path: "/nonexistent".into(),
            },
        )
    }

    #[test]
    fn url_carries_project_and_target_only_where_taken() {
        let c = test_client().in_project("atlas").on_target(Some("m1"));
        let u = c.url(&Req::get("/1.0/instances", &["grafana01"]).scope(Scope::Project));
        assert_eq!(
            u.as_str(),
            "http://incus.invalid/1.0/instances/grafana01?project=atlas"
        );
        let u = c.url(
            &Req::get("/1.0/networks", &["br"])
                .scope(Scope::DefaultProject)
                .targeted(),
        );
        assert_eq!(
            u.as_str(),
            "http://incus.invalid/1.0/networks/br?project=default&target=m1"
        );
        let u = c.url(&Req::get("/1.0", &[]));
        assert_eq!(u.as_str(), "http://incus.invalid/1.0");
    }

    #[test]
    fn names_are_percent_encoded() {
        let c = test_client();
        let u = c.url(&Req::get("/1.0/images/aliases", &["atlas/grafana 1"]));
        assert_eq!(u.path(), "/1.0/images/aliases/atlas%2Fgrafana%201");
    }

    #[test]
    fn operation_id_from_either_place() {
        let env: Envelope = serde_json::from_str(
            r#"{"type":"async","operation":"/1.0/operations/abc-1","metadata":{"id":"zzz"}}"#,
        )
        .expect("json");
        assert_eq!(operation_id(&env).as_deref(), Some("abc-1"));
        let env: Envelope =
            serde_json::from_str(r#"{"type":"async","operation":"","metadata":{"id":"zzz"}}"#)
                .expect("json");
        assert_eq!(operation_id(&env).as_deref(), Some("zzz"));
        // [seen] 6.0.4 cluster, instance created with ?target= on another member.
        let env: Envelope = serde_json::from_str(
            r#"{"type":"async","operation":"/1.0/operations/ff60-4370?project=t9c-tatlas"}"#,
        )
        .expect("json");
        assert_eq!(operation_id(&env).as_deref(), Some("ff60-4370"));
    }

    #[test]
    fn plain_text_error_bodies_still_give_typed_errors() {
        let e = decode_envelope(502, b"Bad Gateway", "GET", "/1.0").expect_err("error");
        assert!(matches!(e, IncusError::Api { status: 502, .. }), "{e}");
        assert!(e.to_string().contains("Bad Gateway"));
        let e = decode_envelope(200, b"<html>", "GET", "/1.0").expect_err("error");
        assert!(matches!(e, IncusError::Decode { .. }));
    }

    #[test]
    fn duplicate_operation_failure_is_already_exists() {
        let e = op_error(
            "id",
            "Creating instance",
            false,
            "Instance \"c1\" already exists".into(),
            "POST",
            "/1.0/instances",
        );
        assert!(e.is_already_exists());
        let e = op_error(
            "id",
            "Starting instance",
            false,
            "boom".into(),
            "PUT",
            "/1.0/instances/c1/state",
        );
        assert!(matches!(e, IncusError::Operation { .. }));
        assert!(
            e.to_string().contains("(Starting instance) failed: boom"),
            "{e}"
        );
        let e = op_error("id", "Stopping instance", true, "".into(), "PUT", "/x");
        assert!(e.to_string().contains("was cancelled"), "{e}");
    }
}
