//! The fake's state: every object as the daemon would answer its GET, created from the
//! recorded template of its kind with the posted fields laid over it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::Answer;
use super::recorded::{Exchange, names, recorded};

/// The kinds of object the fake keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Project,
    Network,
    Profile,
    Pool,
    /// Custom volumes of the `default` pool.
    Volume,
    Image,
    Alias,
    Instance,
    Certificate,
}

impl Kind {
    /// The `features.*` key that gives a project its own objects of this kind; `None`:
    /// always the project's own (instances) or server-wide.
    fn feature(self) -> Option<&'static str> {
        match self {
            Kind::Profile => Some("features.profiles"),
            Kind::Image | Kind::Alias => Some("features.images"),
            Kind::Volume => Some("features.storage.volumes"),
            Kind::Network => Some("features.networks"),
            _ => None,
        }
    }

    pub(crate) fn global(self) -> bool {
        matches!(self, Kind::Project | Kind::Pool | Kind::Certificate)
    }

    /// The recorded GET of one object of this kind, and the name it had.
    fn template(self) -> (&'static Exchange, &'static str) {
        let r = recorded();
        match self {
            Kind::Project => (&r.project, names::PROJECT),
            Kind::Network => (&r.network, names::NETWORK),
            Kind::Profile => (&r.profile, names::PROFILE),
            Kind::Volume => (&r.volume, names::VOLUME),
            Kind::Image => (&r.image, ""),
            Kind::Alias => (&r.alias, names::ALIAS),
            Kind::Instance => (&r.instance, names::INSTANCE),
            Kind::Certificate => (&r.certificate, ""),
            Kind::Pool => (&r.profile, ""),
        }
    }

    /// Incus' 404 for this kind.
    pub(crate) fn not_found(self, name: &str) -> Answer {
        let r = recorded();
        let (e, recorded_name) = match self {
            Kind::Project => (&r.error_404_project, "rec-missing"),
            Kind::Network => (&r.error_404_network, "recbr-missing"),
            Kind::Profile => (&r.error_404_profile, "rec-missing"),
            Kind::Volume => (&r.error_404_volume, "rec-missing"),
            Kind::Alias => (&r.error_404_alias, "rec/missing"),
            Kind::Instance => (&r.error_404_instance, "rec-missing"),
            Kind::Image | Kind::Pool | Kind::Certificate => {
                return Answer::error(404, "not found");
            }
        };
        e.error_about(recorded_name, name)
    }

    /// Incus' answer to a duplicate of this kind, as recorded: its status varies (409 for
    /// networks, volumes and aliases; 500 for profiles and projects; instances fail in
    /// their background operation, whose wait answers 200 with the error).
    fn duplicate(self, name: &str) -> Answer {
        let r = recorded();
        let (e, recorded_name) = match self {
            Kind::Project => (&r.error_409_project, names::PROJECT),
            Kind::Network => (&r.error_409_network, names::NETWORK),
            Kind::Profile => (&r.error_409_profile, names::PROFILE),
            Kind::Volume => (&r.error_409_volume, names::VOLUME),
            Kind::Alias => (&r.error_409_alias, names::ALIAS),
            Kind::Instance => (&r.error_409_instance, names::INSTANCE),
            Kind::Image | Kind::Pool | Kind::Certificate => {
                return Answer::error(409, format!("\"{name}\" already exists"));
            }
        };
        e.error_about(recorded_name, name)
    }
}

type Key = (Kind, String, String);

/// A change another client makes just before the next write to one object.
pub(crate) type Race = (Kind, String, String, Box<dyn FnOnce(&mut Value) + Send>);

pub(crate) struct State {
    pub(crate) server: Value,
    objects: BTreeMap<Key, Value>,
    pub(crate) operations: BTreeMap<String, Value>,
    counter: u64,
    pub(crate) unmodelled: Vec<String>,
    pub(crate) log: Vec<String>,
    pub(crate) races: Vec<Race>,
    /// What the wait of a failed operation answers.
    pub(crate) failed_waits: BTreeMap<String, Answer>,
}

/// The ETag Incus would serve `v` with (a SHA-256 in quotes, as recorded).
pub(crate) fn etag(v: &Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    format!("\"{}\"", hex::encode(Sha256::digest(bytes)))
}

/// The empty value of `v`'s type.
fn empty_like(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(""),
        Value::Array(_) => json!([]),
        Value::Object(_) => json!({}),
        Value::Bool(_) => json!(false),
        Value::Number(_) => json!(0),
        Value::Null => Value::Null,
    }
}

impl State {
    pub(crate) fn new() -> State {
        let r = recorded();
        let mut server = r.server.metadata().clone();
        server["config"] = json!({});
        // A certificate of its own: the recorded one was scrubbed, and the engine reads it.
        let ck = rcgen::generate_simple_self_signed(vec!["fake-incus".into()]).expect("rcgen");
        server["environment"]["certificate"] = json!(ck.cert.pem());
        server["environment"]["certificate_fingerprint"] =
            json!(hex::encode(Sha256::digest(ck.cert.der())));
        let mut s = State {
            server,
            objects: BTreeMap::new(),
            operations: BTreeMap::new(),
            counter: 0,
            unmodelled: Vec::new(),
            log: Vec::new(),
            races: Vec::new(),
            failed_waits: BTreeMap::new(),
        };
        let default = r
            .projects_list
            .metadata()
            .as_array()
            .and_then(|l| l.iter().find(|p| p["name"] == "default").cloned());
        let mut default = default.unwrap_or_else(|| r.project.metadata().clone());
        default["used_by"] = json!([]);
        s.put(Kind::Project, "", "default", default);
        for pool in r.pools_list.metadata().as_array().into_iter().flatten() {
            let mut pool = pool.clone();
            pool["used_by"] = json!([]);
            let name = pool["name"].as_str().unwrap_or_default().to_string();
            s.put(Kind::Pool, "", &name, pool);
        }
        s.put(
            Kind::Profile,
            "default",
            "default",
            default_profile("default", true),
        );
        // The host's own networks (its uplink, the seed's incusbr0), as recorded.
        for net in r.networks_list.metadata().as_array().into_iter().flatten() {
            let name = net["name"].as_str().unwrap_or_default().to_string();
            s.put(Kind::Network, "default", &name, net.clone());
        }
        s
    }

    fn key(kind: Kind, project: &str, name: &str) -> Key {
        let project = if kind.global() { "" } else { project };
        (kind, project.to_string(), name.to_string())
    }

    /// The project whose objects of `kind` a request in `project` sees.
    pub(crate) fn effective(&self, kind: Kind, project: &str) -> String {
        if kind.global() {
            return String::new();
        }
        match kind.feature() {
            Some(f) if project != "default" => {
                let own = self
                    .object(Kind::Project, "", project)
                    .and_then(|p| p["config"][f].as_str())
                    == Some("true");
                if own { project } else { "default" }.to_string()
            }
            _ => project.to_string(),
        }
    }

    pub(crate) fn project_exists(&self, project: &str) -> bool {
        self.object(Kind::Project, "", project).is_some()
    }

    pub(crate) fn object(&self, kind: Kind, project: &str, name: &str) -> Option<&Value> {
        let p = self.effective(kind, project);
        self.objects.get(&State::key(kind, &p, name))
    }

    pub(crate) fn object_mut(
        &mut self,
        kind: Kind,
        project: &str,
        name: &str,
    ) -> Option<&mut Value> {
        let p = self.effective(kind, project);
        self.objects.get_mut(&State::key(kind, &p, name))
    }

    fn put(&mut self, kind: Kind, project: &str, name: &str, v: Value) {
        let p = self.effective(kind, project);
        self.objects.insert(State::key(kind, &p, name), v);
    }

    pub(crate) fn remove(&mut self, kind: Kind, project: &str, name: &str) -> Option<Value> {
        let p = self.effective(kind, project);
        self.objects.remove(&State::key(kind, &p, name))
    }

    pub(crate) fn names(&self, kind: Kind, project: &str) -> Vec<String> {
        let p = self.effective(kind, project);
        self.objects
            .keys()
            .filter(|(k, pr, _)| *k == kind && (kind.global() || *pr == p))
            .map(|(_, _, n)| n.clone())
            .collect()
    }

    pub(crate) fn list(&self, kind: Kind, project: &str) -> Vec<Value> {
        self.names(kind, project)
            .iter()
            .filter_map(|n| self.object(kind, project, n).cloned())
            .collect()
    }

    /// Runs the change raced against a write to this object, if one is set.
    pub(crate) fn race(&mut self, kind: Kind, project: &str, name: &str) {
        let Some(i) = self
            .races
            .iter()
            .position(|(k, p, n, _)| *k == kind && p == project && n == name)
        else {
            return;
        };
        let (.., edit) = self.races.remove(i);
        if let Some(o) = self.object_mut(kind, project, name) {
            edit(o);
        }
    }

    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A new object of `kind` from the posted `body`: its status and, on success, its name
    /// (in the answer's `metadata` as `{"name": ...}`), or Incus' refusal.
    pub(crate) fn create(&mut self, kind: Kind, project: &str, body: Value) -> (u16, Value) {
        match self.try_create(kind, project, body) {
            Ok(name) => (201, json!({ "name": name })),
            Err(a) => (a.status, a.body),
        }
    }

    pub(crate) fn try_create(
        &mut self,
        kind: Kind,
        project: &str,
        body: Value,
    ) -> Result<String, Answer> {
        let name = body["name"].as_str().unwrap_or_default().to_string();
        if !kind.global() && !self.project_exists(project) {
            let r = &recorded().error_create_in_missing_project;
            return Err(r.error_about("rec-missing", project));
        }
        if name.is_empty() {
            return Err(Answer::error(400, "No name provided"));
        }
        if self.object(kind, project, &name).is_some() {
            return Err(kind.duplicate(&name));
        }
        let mut obj = overlay(kind, &body);
        obj["name"] = json!(name);
        if obj.get("project").is_some() {
            obj["project"] = json!(self.effective(kind, project));
        }
        match kind {
            Kind::Project => self.new_project(&name, &mut obj),
            Kind::Instance => self.new_instance(project, &body, &mut obj)?,
            Kind::Alias => {
                let target = body["target"].as_str().unwrap_or_default();
                if self.object(Kind::Image, project, target).is_none() {
                    return Err(Answer::error(404, "Image not found"));
                }
                self.link_alias(project, &name, target);
            }
            Kind::Certificate => certificate(&body, &mut obj)?,
            _ => {}
        }
        let key = match kind {
            Kind::Certificate => obj["fingerprint"].as_str().unwrap_or_default().to_string(),
            _ => name.clone(),
        };
        self.put(kind, project, &key, obj);
        Ok(name)
    }

    fn new_project(&mut self, name: &str, obj: &mut Value) {
        for f in [
            "features.images",
            "features.profiles",
            "features.storage.volumes",
            "features.storage.buckets",
        ] {
            if obj["config"].get(f).is_none() {
                obj["config"][f] = json!("true");
            }
        }
        if obj["config"].get("features.networks").is_none() {
            obj["config"]["features.networks"] = json!("false");
        }
        let own_profiles = obj["config"]["features.profiles"] == "true";
        // The project exists before its default profile does.
        self.objects
            .insert(State::key(Kind::Project, "", name), obj.clone());
        if own_profiles {
            self.put(Kind::Profile, name, "default", default_profile(name, false));
        }
    }

    fn new_instance(&mut self, project: &str, body: &Value, obj: &mut Value) -> Result<(), Answer> {
        let profiles: Vec<String> = match body["profiles"].as_array() {
            Some(l) => l
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect(),
            None => vec!["default".into()],
        };
        for p in &profiles {
            if self.object(Kind::Profile, project, p).is_none() {
                return Err(Kind::Profile.not_found(p));
            }
        }
        obj["profiles"] = json!(profiles);
        let src = &body["source"];
        let fingerprint = match (src["alias"].as_str(), src["fingerprint"].as_str()) {
            (Some(a), _) => match self.object(Kind::Alias, project, a) {
                Some(alias) => alias["target"].as_str().unwrap_or_default().to_string(),
                None => return Err(Kind::Alias.not_found(a)),
            },
            (None, Some(f)) => f.to_string(),
            (None, None) => return Err(Answer::error(400, "Only image sources are modelled")),
        };
        let Some(image) = self.object(Kind::Image, project, &fingerprint).cloned() else {
            return Err(Answer::error(404, "Image not found"));
        };
        let config = obj["config"].as_object_mut().expect("an object");
        config.retain(|k, _| !k.starts_with("image."));
        for (k, v) in image["properties"].as_object().into_iter().flatten() {
            config.insert(format!("image.{k}"), v.clone());
        }
        config.insert("volatile.base_image".into(), json!(fingerprint));
        let id = self.next_id();
        config.insert(
            "volatile.uuid".into(),
            json!(format!("00000000-0000-4000-8000-{id:012x}")),
        );
        let start = body["start"].as_bool().unwrap_or(false);
        set_status(obj, start);
        self.expand(project, obj);
        let rooted = obj["expanded_devices"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(_, d)| d["type"] == "disk" && d["path"] == "/");
        if !rooted {
            return Err(recorded().error_instance_no_root.error_about("", ""));
        }
        Ok(())
    }

    /// `expanded_config` and `expanded_devices`: the profiles in order, then the instance.
    pub(crate) fn expand(&self, project: &str, obj: &mut Value) {
        let mut config = Map::new();
        let mut devices = Map::new();
        for p in obj["profiles"].as_array().cloned().unwrap_or_default() {
            let Some(profile) = self.object(Kind::Profile, project, p.as_str().unwrap_or(""))
            else {
                continue;
            };
            config.extend(profile["config"].as_object().cloned().unwrap_or_default());
            devices.extend(profile["devices"].as_object().cloned().unwrap_or_default());
        }
        config.extend(obj["config"].as_object().cloned().unwrap_or_default());
        devices.extend(obj["devices"].as_object().cloned().unwrap_or_default());
        obj["expanded_config"] = Value::Object(config);
        obj["expanded_devices"] = Value::Object(devices);
    }

    fn link_alias(&mut self, project: &str, alias: &str, target: &str) {
        if let Some(img) = self.object_mut(Kind::Image, project, target) {
            let entry = json!({"name": alias, "description": ""});
            match img["aliases"].as_array_mut() {
                Some(l) => l.push(entry),
                None => img["aliases"] = json!([entry]),
            }
        }
    }

    pub(crate) fn seed_image(
        &mut self,
        project: &str,
        alias: &str,
        properties: BTreeMap<String, String>,
    ) -> String {
        let id = self.next_id();
        let fingerprint = hex::encode(Sha256::digest(format!("{alias}/{id}")));
        let mut img = recorded().image.metadata().clone();
        img["fingerprint"] = json!(fingerprint);
        img["properties"] = json!(properties);
        img["aliases"] = json!([]);
        img["filename"] = json!(format!("{fingerprint}.tar"));
        self.put(Kind::Image, project, &fingerprint, img);
        let body = json!({"name": alias, "target": fingerprint, "description": ""});
        self.try_create(Kind::Alias, project, body)
            .unwrap_or_else(|a| panic!("seeding alias {alias}: {}", a.body));
        fingerprint
    }

    /// A background operation that failed: the POST answers as usual (202), its wait
    /// answers `failure` (6.0.4: HTTP 200 with the error object, as recorded).
    pub(crate) fn failed_operation(&mut self, description: &str, failure: Answer) -> Answer {
        let started = self.operation(description, Value::Null);
        let id = started.body["metadata"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(op) = self.operations.get_mut(&id) {
            op["status"] = json!("Failure");
            op["status_code"] = json!(400);
            op["err"] = failure.body["error"].clone();
        }
        self.failed_waits.insert(id, failure);
        started
    }

    /// A new background operation, finished at once with `metadata`: the async answer
    /// (recorded envelope, HTTP 202).
    pub(crate) fn operation(&mut self, description: &str, metadata: Value) -> Answer {
        let r = recorded();
        let id = format!("00000000-0000-4000-9000-{:012x}", self.next_id());
        let mut op = r.operation_wait.metadata().clone();
        op["id"] = json!(id);
        op["description"] = json!(description);
        op["metadata"] = metadata;
        op["resources"] = json!({});
        let mut body = r.instance_post_async.envelope().clone();
        body["operation"] = json!(format!("/1.0/operations/{id}"));
        let mut running = op.clone();
        running["status"] = r.instance_post_async.envelope()["metadata"]["status"].clone();
        running["status_code"] =
            r.instance_post_async.envelope()["metadata"]["status_code"].clone();
        body["metadata"] = running;
        self.operations.insert(id, op);
        Answer {
            status: r.instance_post_async.status(),
            etag: None,
            body,
        }
    }
}

/// The recorded object of `kind` with what `body` posts laid over it: every field the
/// recorder posted is taken from `body` (empty when `body` lacks it), and the config keys
/// the daemon added are kept.
fn overlay(kind: Kind, body: &Value) -> Value {
    let (template, _) = kind.template();
    let mut obj = template.metadata().clone();
    if let Some(posted) = template.posted().as_object() {
        for (k, v) in posted {
            obj[k] = body.get(k).cloned().unwrap_or_else(|| empty_like(v));
        }
    }
    if let (Some(o), Some(b)) = (obj.as_object_mut(), body.as_object()) {
        for (k, v) in b {
            if o.contains_key(k) && k != "config" {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    let mut config = template.added_config();
    config.extend(body["config"].as_object().cloned().unwrap_or_default());
    if obj.get("config").is_some() {
        obj["config"] = Value::Object(config);
    }
    if obj.get("used_by").is_some() {
        obj["used_by"] = json!([]);
    }
    obj
}

/// The `default` profile of a project (the server's own has the root disk).
fn default_profile(project: &str, with_root: bool) -> Value {
    let listed = recorded()
        .profiles_list
        .metadata()
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == "default").cloned());
    let mut p = listed.unwrap_or_else(
        || json!({"name": "default", "config": {}, "devices": {}, "description": ""}),
    );
    p["project"] = json!(project);
    p["used_by"] = json!([]);
    if with_root {
        p["description"] = json!("Default Incus profile");
        p["devices"] = json!({"root": {"path": "/", "pool": "default", "type": "disk"}});
    }
    p
}

pub(crate) fn set_status(obj: &mut Value, running: bool) {
    let (status, code) = match running {
        true => ("Running", 103),
        false => ("Stopped", 102),
    };
    obj["status"] = json!(status);
    obj["status_code"] = json!(code);
}

/// A trust entry: the fingerprint is the SHA-256 of the certificate's DER, which is posted
/// as base64 (PEM is refused, as recorded).
fn certificate(body: &Value, obj: &mut Value) -> Result<(), Answer> {
    use base64::Engine;
    let text = body["certificate"].as_str().unwrap_or_default();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(text) else {
        return Err(recorded().error_certificate_pem.error_about("", ""));
    };
    obj["fingerprint"] = json!(hex::encode(Sha256::digest(der)));
    for k in [
        "type",
        "restricted",
        "projects",
        "description",
        "certificate",
    ] {
        if let Some(v) = body.get(k) {
            obj[k] = v.clone();
        }
    }
    Ok(())
}
