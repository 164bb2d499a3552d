//! Which object a request is about, and the daemon's answer to it.

use reqwest::{Method, Url};
use serde_json::{Value, json};

use super::Answer;
use super::recorded::recorded;
use super::store::{Kind, State, etag, set_status};

/// One request as the fake sees it.
pub(crate) struct Asked<'a> {
    pub(crate) method: &'a Method,
    pub(crate) url: &'a Url,
    pub(crate) if_match: Option<&'a str>,
    /// `None`: no body; `Some(None)`: a streamed body (not modelled).
    pub(crate) body: Option<Option<Vec<u8>>>,
}

impl Asked<'_> {
    fn query(&self, k: &str) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
    }
    fn project(&self) -> String {
        self.query("project").unwrap_or_else(|| "default".into())
    }
    fn json(&self) -> Result<Value, Answer> {
        match &self.body {
            Some(Some(b)) => serde_json::from_slice(b)
                .map_err(|e| Answer::error(400, format!("failed to parse the request: {e}"))),
            Some(None) => Err(Answer::error(501, "a streamed body is not modelled")),
            None => Ok(json!({})),
        }
    }
    fn said(&self) -> String {
        match self.url.query() {
            Some(q) => format!("{} {}?{q}", self.method, self.url.path()),
            None => format!("{} {}", self.method, self.url.path()),
        }
    }
}

/// The answer to `a`, against and onto `s`.
pub(crate) fn answer(s: &mut State, a: &Asked<'_>) -> Answer {
    s.log.push(a.said());
    let segs: Vec<String> = a
        .url
        .path_segments()
        .into_iter()
        .flatten()
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let out = match segs.as_slice() {
        ["1.0"] => server(s, a),
        ["1.0", "cluster"] if a.method == Method::GET => {
            Some(Answer::sync(200, recorded().cluster.metadata().clone()))
        }
        ["1.0", "resources"] if a.method == Method::GET => {
            Some(Answer::sync(200, recorded().resources.metadata().clone()))
        }
        ["1.0", "operations"] if a.method == Method::GET => Some(operations(s)),
        ["1.0", "operations", id] => operation(s, a, id, false),
        ["1.0", "operations", id, "wait"] => operation(s, a, id, true),
        ["1.0", "storage-pools", pool, "resources"] if a.method == Method::GET => {
            Some(match s.object(Kind::Pool, "", pool) {
                Some(_) => Answer::sync(200, recorded().pool_resources.metadata().clone()),
                None => Answer::error(404, "Storage pool not found"),
            })
        }
        ["1.0", "storage-pools", pool, "volumes", "custom", rest @ ..] => {
            match s.object(Kind::Pool, "", pool) {
                Some(_) => collection(s, a, Kind::Volume, rest),
                None => Some(Answer::error(404, "Storage pool not found")),
            }
        }
        ["1.0", "storage-pools", _, "buckets", rest @ ..] => bucket(a, rest),
        ["1.0", "instances"] if a.query("all-projects").as_deref() == Some("true") => {
            let all: Vec<Value> = s
                .names(Kind::Project, "")
                .iter()
                .flat_map(|p| s.list(Kind::Instance, p))
                .collect();
            Some(Answer::sync(200, json!(all)))
        }
        ["1.0", "instances", name, "state"] => state(s, a, name),
        // No instance of the fake ever runs, so no bridge has handed out a lease.
        ["1.0", "networks", name, "leases"] if a.method == Method::GET => {
            Some(match s.object(Kind::Network, "default", name) {
                Some(_) => Answer::sync(200, json!([])),
                None => Kind::Network.not_found(name),
            })
        }
        ["1.0", "images", "aliases", rest @ ..] => collection(s, a, Kind::Alias, rest),
        ["1.0", coll, rest @ ..] => match kind_of(coll) {
            Some(kind) => collection(s, a, kind, rest),
            None => None,
        },
        _ => None,
    };
    out.unwrap_or_else(|| {
        s.unmodelled.push(a.said());
        Answer::error(501, format!("not modelled by the fake Incus: {}", a.said()))
    })
}

fn percent_decode(p: &str) -> String {
    let b = p.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&p[i + 1..i + 3], 16) {
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

fn kind_of(coll: &str) -> Option<Kind> {
    Some(match coll {
        "projects" => Kind::Project,
        "networks" => Kind::Network,
        "profiles" => Kind::Profile,
        "storage-pools" => Kind::Pool,
        "images" => Kind::Image,
        "instances" => Kind::Instance,
        "certificates" => Kind::Certificate,
        _ => return None,
    })
}

/// The URL a list without recursion gives for one object, as recorded.
fn url_of(kind: Kind, project: &str, name: &str) -> String {
    let base = match kind {
        Kind::Project => "/1.0/projects",
        Kind::Network => "/1.0/networks",
        Kind::Profile => "/1.0/profiles",
        Kind::Pool => "/1.0/storage-pools",
        Kind::Volume => "/1.0/storage-pools/default/volumes/custom",
        Kind::Image => "/1.0/images",
        Kind::Alias => "/1.0/images/aliases",
        Kind::Instance => "/1.0/instances",
        Kind::Certificate => "/1.0/certificates",
    };
    let name = name.replace('/', "%2F");
    match kind.global() || project == "default" {
        true => format!("{base}/{name}"),
        false => format!("{base}/{name}?project={project}"),
    }
}

fn collection(s: &mut State, a: &Asked<'_>, kind: Kind, rest: &[&str]) -> Option<Answer> {
    let project = a.project();
    if !kind.global() && !s.project_exists(&project) {
        // As recorded: a list in a project that does not exist is empty; reading or
        // changing one object in it is refused. Creating is refused by the store.
        let r = recorded();
        match (a.method.as_str(), rest) {
            ("GET", []) => return Some(r.error_404_in_missing_project.error_answer(String::new())),
            (_, [_]) => {
                return Some(
                    r.error_get_in_missing_project
                        .error_about("rec-missing", &project),
                );
            }
            _ => {}
        }
    }
    Some(match (a.method.as_str(), rest) {
        ("GET", []) => {
            let p = s.effective(kind, &project);
            match a.query("recursion").as_deref() {
                Some("1") | Some("2") => Answer::sync(200, json!(s.list(kind, &project))),
                _ => {
                    let urls: Vec<String> = s
                        .names(kind, &project)
                        .iter()
                        .map(|n| url_of(kind, &p, n))
                        .collect();
                    Answer::sync(200, json!(urls))
                }
            }
        }
        ("POST", []) => create(s, a, kind, &project),
        ("GET", [name]) => match s.object(kind, &project, name) {
            Some(o) => {
                let mut ans = Answer::sync(200, o.clone());
                ans.etag = Some(etag(o));
                ans
            }
            None => kind.not_found(name),
        },
        ("PUT", [name]) | ("PATCH", [name]) => update(s, a, kind, &project, name),
        ("DELETE", [name]) => delete(s, kind, &project, name),
        _ => return None,
    })
}

fn create(s: &mut State, a: &Asked<'_>, kind: Kind, project: &str) -> Answer {
    if kind == Kind::Image || kind == Kind::Pool {
        return Answer::error(501, format!("not modelled by the fake Incus: {}", a.said()));
    }
    let body = match a.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    match s.try_create(kind, project, body) {
        // Refusals recorded from a background operation's wait come the same way.
        Err(e) if kind == Kind::Instance && e.status < 300 => {
            s.failed_operation("Creating instance", e)
        }
        Err(e) => e,
        Ok(_) => {
            let r = recorded();
            let rec = match kind {
                Kind::Project => &r.project_post,
                Kind::Network => &r.network_post,
                Kind::Profile => &r.profile_post,
                Kind::Alias => &r.alias_post,
                Kind::Certificate => &r.certificate_post,
                Kind::Volume => &r.volume_post,
                _ => &r.instance_post_async,
            };
            match rec.envelope()["type"] == "async" {
                true => s.operation(&format!("Creating {kind:?}").to_lowercase(), Value::Null),
                false => Answer {
                    status: rec.status(),
                    etag: None,
                    body: rec.envelope().clone(),
                },
            }
        }
    }
}

/// The fields a PUT replaces: what the create of that kind posts, less the name and how it
/// was made.
fn writable(kind: Kind, k: &str) -> bool {
    match kind {
        Kind::Instance => matches!(
            k,
            "config"
                | "devices"
                | "profiles"
                | "description"
                | "ephemeral"
                | "stateful"
                | "architecture"
        ),
        Kind::Alias => matches!(k, "target" | "description"),
        Kind::Profile => matches!(k, "config" | "devices" | "description"),
        Kind::Certificate => matches!(
            k,
            "name" | "type" | "restricted" | "projects" | "description"
        ),
        _ => matches!(k, "config" | "description"),
    }
}

fn update(s: &mut State, a: &Asked<'_>, kind: Kind, project: &str, name: &str) -> Answer {
    let body = match a.json() {
        Ok(b) => b,
        Err(e) => return e,
    };
    s.race(kind, project, name);
    let Some(current) = s.object(kind, project, name).cloned() else {
        return kind.not_found(name);
    };
    if let Some(want) = a.if_match {
        if want != etag(&current) {
            return stale(want, &etag(&current));
        }
    }
    let patch = a.method == Method::PATCH;
    let mut next = current.clone();
    for (k, v) in body.as_object().into_iter().flatten() {
        if !writable(kind, k) {
            continue;
        }
        match (patch, k.as_str()) {
            (true, "config") | (true, "devices") => {
                for (ck, cv) in v.as_object().into_iter().flatten() {
                    next[k][ck] = cv.clone();
                }
            }
            _ => next[k] = v.clone(),
        }
    }
    if kind == Kind::Instance {
        // Incus keeps its own volatile keys whatever a PUT says.
        for (ck, cv) in current["config"].as_object().into_iter().flatten() {
            if ck.starts_with("volatile.") && next["config"].get(ck).is_none() {
                next["config"][ck] = cv.clone();
            }
        }
        s.expand(project, &mut next);
    }
    if let Some(o) = s.object_mut(kind, project, name) {
        *o = next;
    }
    match kind {
        Kind::Instance => s.operation("Updating instance", json!({})),
        _ => Answer::sync(200, json!({})),
    }
}

fn delete(s: &mut State, kind: Kind, project: &str, name: &str) -> Answer {
    let Some(current) = s.object(kind, project, name).cloned() else {
        return kind.not_found(name);
    };
    match kind {
        Kind::Instance if current["status"] == "Running" => {
            return Answer::error(400, "The instance is currently running, stop it first");
        }
        Kind::Project if holds_objects(s, name) => {
            return Answer::error(400, "Only empty projects can be removed");
        }
        _ => {}
    }
    s.remove(kind, project, name);
    if kind == Kind::Project {
        s.remove(Kind::Profile, name, "default");
    }
    match kind {
        Kind::Instance | Kind::Image => s.operation("Deleting", json!({})),
        _ => Answer::sync(200, json!({})),
    }
}

fn holds_objects(s: &State, project: &str) -> bool {
    [
        Kind::Instance,
        Kind::Profile,
        Kind::Volume,
        Kind::Image,
        Kind::Alias,
    ]
    .iter()
    .any(|k| {
        s.effective(*k, project) == project
            && s.names(*k, project)
                .iter()
                .any(|n| !(*k == Kind::Profile && n == "default"))
    })
}

fn server(s: &mut State, a: &Asked<'_>) -> Option<Answer> {
    let tag = etag(&s.server);
    Some(match a.method.as_str() {
        "GET" => {
            let mut ans = Answer::sync(200, s.server.clone());
            ans.etag = Some(tag);
            ans
        }
        "PUT" | "PATCH" => {
            if let Some(w) = a.if_match.filter(|w| *w != tag) {
                return Some(stale(w, &tag));
            }
            let body = match a.json() {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            if a.method == Method::PUT {
                s.server["config"] = json!({});
            }
            for (k, v) in body["config"].as_object().into_iter().flatten() {
                match v.as_str() {
                    Some("") | None => {
                        if let Some(c) = s.server["config"].as_object_mut() {
                            c.remove(k);
                        }
                    }
                    Some(_) => s.server["config"][k] = v.clone(),
                }
            }
            Answer::sync(200, json!({}))
        }
        _ => return None,
    })
}

fn operation(s: &mut State, a: &Asked<'_>, id: &str, wait: bool) -> Option<Answer> {
    if a.method != Method::GET {
        return None;
    }
    if let Some(failed) = s.failed_waits.get(id) {
        return Some(Answer {
            status: failed.status,
            etag: None,
            body: failed.body.clone(),
        });
    }
    Some(match s.operations.get(id) {
        Some(op) => {
            let r = recorded();
            let mut body = r.operation_wait.envelope().clone();
            body["metadata"] = op.clone();
            let _ = wait;
            Answer {
                status: r.operation_wait.status(),
                etag: None,
                body,
            }
        }
        None => recorded().error_404_operation.error_about("", ""),
    })
}

/// `GET` and `PUT /1.0/instances/<name>/state`: start, stop, restart take effect at once;
/// stopping a stopped instance is refused as the daemon refuses it.
fn state(s: &mut State, a: &Asked<'_>, name: &str) -> Option<Answer> {
    let project = a.project();
    let Some(inst) = s.object(Kind::Instance, &project, name).cloned() else {
        // (in a missing project too: the instance is not found there)
        return Some(Kind::Instance.not_found(name));
    };
    Some(match a.method.as_str() {
        "GET" => {
            let mut st = recorded().instance_state.metadata().clone();
            st["status"] = inst["status"].clone();
            st["status_code"] = inst["status_code"].clone();
            Answer::sync(200, st)
        }
        "PUT" => {
            let body = match a.json() {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            let running = match body["action"].as_str() {
                Some("start") | Some("restart") | Some("unfreeze") => true,
                Some("stop") => false,
                other => return Some(Answer::error(400, format!("Unknown action {other:?}"))),
            };
            // A stale read asks to stop what is stopped: refused when the operation runs.
            if !running && inst["status"] == "Stopped" {
                let refused = recorded().error_stop_stopped.error_about("", "");
                return Some(s.failed_operation("Stopping instance", refused));
            }
            if let Some(o) = s.object_mut(Kind::Instance, &project, name) {
                set_status(o, running);
            }
            s.operation("Changing instance state", json!({}))
        }
        _ => return None,
    })
}

/// Buckets as this host's 6.0 serves them on a dir pool without MinIO: none exists, and a
/// creation is refused with the recorded answer.
fn bucket(a: &Asked<'_>, rest: &[&str]) -> Option<Answer> {
    let r = recorded();
    match (a.method.as_str(), rest) {
        ("GET", [_]) => Some(r.error_404_bucket.error_about("", "")),
        ("POST", []) => {
            let rec = &r.bucket_post;
            let env = rec.envelope();
            let message = match env["type"].as_str() {
                Some("error") => env["error"].as_str().unwrap_or_default().to_string(),
                _ => env["metadata"]["err"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            };
            Some(match message.is_empty() || rec.status() < 400 {
                true => Answer::error(501, "bucket creation is not modelled"),
                false => rec.error_answer(message),
            })
        }
        _ => None,
    }
}

/// The 412 of a write whose `If-Match` is not the object's ETag, in the recorded words
/// ("ETag doesn't match: <sent> vs <current>", both without quotes).
fn stale(sent: &str, current: &str) -> Answer {
    let r = &recorded().error_412_profile;
    let text = r.error_for("", "");
    let prefix = text.split(": ").next().unwrap_or_default();
    let bare = |t: &str| t.trim_matches('"').to_string();
    r.error_answer(format!("{prefix}: {} vs {}", bare(sent), bare(current)))
}

/// `GET /1.0/operations`: URLs by status (`success`, `failure`), as recorded; the fake's
/// operations are all over by the time anyone asks.
fn operations(s: &State) -> Answer {
    let mut by: serde_json::Map<String, Value> = serde_json::Map::new();
    for (id, op) in &s.operations {
        let status = op["status"].as_str().unwrap_or("Success").to_lowercase();
        let url = json!(format!("/1.0/operations/{id}"));
        match by.get_mut(&status).and_then(Value::as_array_mut) {
            Some(l) => l.push(url),
            None => {
                by.insert(status, json!([url]));
            }
        }
    }
    let mut ans = Answer::sync(200, Value::Object(by));
    ans.body = {
        let mut b = recorded().operations_list.envelope().clone();
        b["metadata"] = ans.body["metadata"].take();
        b
    };
    ans
}
