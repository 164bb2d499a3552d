//! Grafana, as strict as Grafana 12 where our installer depends on it:
//!
//! - `grafana server` takes the command line upstream's `/run.sh` builds (`--homepath`,
//!   `--config`, `--packaging`, `cfg:default.paths.*=`); a flag it does not define stops it.
//! - The config file must be readable and the data directory writable. The admin login is
//!   created on the very first start from `GF_SECURITY_ADMIN_USER`/`_PASSWORD` and kept in
//!   the data directory ([`STATE_FILE`], password salted and hashed); after that only the API
//!   (`PUT /api/user/password`, `PUT /api/admin/users/:id/password`) or `grafana cli admin
//!   reset-admin-password` change it.
//! - Datasources come from `<provisioning>/datasources/*.yaml|yml` (apiVersion 1, or the old
//!   0): a file that is not YAML, a field of the wrong type, `$__file{}` naming a file that
//!   cannot be read, two defaults in one organisation, or a datasource whose name exists with
//!   another uid ("data source not found", Grafana 12's failure) stop the start with
//!   "Datasource provisioning error". Unknown fields are ignored, as Grafana's non-strict
//!   YAML parsing does. They are served on `/api/datasources[/uid/<uid>|/name/<name>]`.
//! - Dashboards: providers from `<provisioning>/dashboards/*.yaml|yml`; a provider file that
//!   is not YAML or a provider without a path stops the start. Each provider's JSON files are
//!   loaded (invalid JSON, no title or a uid used twice: logged and skipped, as Grafana does)
//!   and served on `/api/search` and `/api/dashboards/uid/<uid>`.
//!
//! Not modelled: grafana.ini contents (GF_* variables only), orgs other than 1, users other
//! than the admin, alerting, plugins, data queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde_json::{Value as Json, json};
use serde_yaml_ng::Value as Yaml;
use sha2::{Digest as _, Sha256};

use crate::http::{Request, Response};

/// Where the stand-in keeps what Grafana keeps in grafana.db.
pub const STATE_FILE: &str = "atlas-standin-grafana.json";

/// Flags of `grafana server` (pkg/cmd/grafana/commands/cli.go).
const SERVER_FLAGS: &[&str] = &[
    "homepath",
    "config",
    "pidfile",
    "packaging",
    "configOverrides",
    "profile",
    "profile-addr",
    "profile-port",
    "profile-block-rate",
    "profile-mutex-rate",
    "tracing",
    "tracing-file",
];

/// The paths Grafana runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
    pub config: PathBuf,
    pub data: PathBuf,
    pub provisioning: PathBuf,
    pub plugins: PathBuf,
}

/// `grafana server ARGS` or `grafana cli ARGS` (args after the subcommand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Server(Paths),
    /// `grafana cli admin reset-admin-password PASSWORD`.
    ResetAdminPassword(Paths, String),
    Version,
}

/// Parses argv (argv[0] included) and the environment as `grafana` does.
pub fn parse(argv: &[String], env: &BTreeMap<String, String>) -> Result<Command, String> {
    let mut args = argv.iter().skip(1).cloned().collect::<Vec<_>>();
    // `grafana-server` (and `--role grafana`) run the server without naming it.
    let sub = match args.first().map(String::as_str) {
        Some("server" | "cli") => args.remove(0),
        _ => "server".to_string(),
    };
    let mut flags = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].clone();
        i += 1;
        if let Some(kv) = a.strip_prefix("cfg:") {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            overrides.insert(k.trim_start_matches("default.").to_string(), v.to_string());
        } else if let Some(f) = a.strip_prefix('-') {
            let f = f.trim_start_matches('-');
            if matches!(f, "v" | "version") {
                return Ok(Command::Version);
            }
            let (name, value) = match f.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None if SERVER_FLAGS.contains(&f) && i < args.len() => {
                    i += 1;
                    (f.to_string(), args[i - 1].clone())
                }
                None => (f.to_string(), String::new()),
            };
            if !SERVER_FLAGS.contains(&name.as_str()) {
                return Err(format!("flag provided but not defined: -{name}"));
            }
            flags.insert(name, value);
        } else {
            rest.push(a);
        }
    }
    let home = PathBuf::from(
        flags
            .get("homepath")
            .cloned()
            .or_else(|| env.get("GF_PATHS_HOME").cloned())
            .unwrap_or_else(|| ".".to_string()),
    );
    // GF_PATHS_* override the ini file, cfg:default.* set the defaults under it.
    let path = |key: &str, var: &str, default: &str| {
        env.get(var)
            .filter(|v| !v.is_empty())
            .or_else(|| overrides.get(&format!("paths.{key}")))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(default))
    };
    let paths = Paths {
        config: flags
            .get("config")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("conf/defaults.ini")),
        data: path("data", "GF_PATHS_DATA", "data"),
        provisioning: path("provisioning", "GF_PATHS_PROVISIONING", "conf/provisioning"),
        plugins: path("plugins", "GF_PATHS_PLUGINS", "data/plugins"),
        home,
    };
    match sub.as_str() {
        "server" => match rest.first() {
            None => Ok(Command::Server(paths)),
            Some(extra) => Err(format!("grafana server: unexpected argument {extra:?}")),
        },
        "cli" => match rest.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["admin", "reset-admin-password", pw] => {
                Ok(Command::ResetAdminPassword(paths, pw.to_string()))
            }
            _ => Err(format!(
                "atlas stand-in for grafana: `grafana cli {}` is not stood in for (only `admin reset-admin-password PASSWORD`)",
                rest.join(" ")
            )),
        },
        other => Err(format!("No help topic for '{other}'")),
    }
}

/// One provisioned datasource, as `/api/datasources` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Datasource {
    pub org_id: i64,
    pub name: String,
    pub uid: String,
    pub kind: String,
    pub access: String,
    pub url: String,
    pub user: String,
    pub database: String,
    pub basic_auth: bool,
    pub is_default: bool,
    pub json_data: Json,
    /// Names of the secure fields (their values are never served).
    pub secure_fields: Vec<String>,
    pub editable: bool,
}

impl Datasource {
    fn to_json(&self, id: usize) -> Json {
        let secure: serde_json::Map<String, Json> = self
            .secure_fields
            .iter()
            .map(|k| (k.clone(), Json::Bool(true)))
            .collect();
        json!({
            "id": id, "uid": self.uid, "orgId": self.org_id, "name": self.name,
            "type": self.kind, "access": self.access, "url": self.url, "user": self.user,
            "database": self.database, "basicAuth": self.basic_auth,
            "isDefault": self.is_default, "jsonData": self.json_data,
            "secureJsonFields": secure, "readOnly": !self.editable,
        })
    }
}

/// A dashboard loaded from a provider's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub uid: String,
    pub title: String,
    pub folder: String,
    pub file: PathBuf,
    pub provider: String,
    pub json: Json,
}

/// What grafana.db holds for us.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stored {
    login: String,
    salt: String,
    password_sha256: String,
    /// (orgId, name) -> uid of every datasource ever provisioned.
    datasources: Vec<(i64, String, String)>,
}

impl Stored {
    fn matches(&self, password: &str) -> bool {
        hash(&self.salt, password) == self.password_sha256
    }

    fn set_password(&mut self, password: &str) {
        self.salt = random_id(16);
        self.password_sha256 = hash(&self.salt, password);
    }
}

fn hash(salt: &str, password: &str) -> String {
    hex(&Sha256::digest(format!("{salt}:{password}").as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_id(n: usize) -> String {
    use rand::Rng as _;
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| A[r.random_range(0..A.len())] as char)
        .collect()
}

/// A started Grafana: its state file, datasources and dashboards.
pub struct Grafana {
    state_file: PathBuf,
    stored: Mutex<Stored>,
    pub datasources: Vec<Datasource>,
    pub dashboards: Vec<Dashboard>,
}

/// Files the stand-in reads (injected in tests).
pub type Read<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Grafana's start up to serving: config, data directory, admin user, provisioning.
/// `log` gets the lines Grafana would log without stopping.
pub fn start(
    paths: &Paths,
    env: &BTreeMap<String, String>,
    log: &mut dyn FnMut(String),
) -> Result<Grafana, String> {
    let fail = |e: String| format!("Failed to start grafana. error: {e}");
    std::fs::read(&paths.config).map_err(|e| {
        fail(format!(
            "failed to parse {:?}: open {}: {}",
            paths.config.display().to_string(),
            paths.config.display(),
            io(&e)
        ))
    })?;
    std::fs::create_dir_all(&paths.data)
        .map_err(|e| fail(format!("mkdir {}: {}", paths.data.display(), io(&e))))?;
    let state_file = paths.data.join(STATE_FILE);
    let mut stored = match std::fs::read_to_string(&state_file) {
        Ok(t) => {
            serde_json::from_str(&t).map_err(|e| fail(format!("{}: {e}", state_file.display())))?
        }
        Err(_) => {
            let mut s = Stored {
                login: env
                    .get("GF_SECURITY_ADMIN_USER")
                    .cloned()
                    .unwrap_or_else(|| "admin".to_string()),
                salt: String::new(),
                password_sha256: String::new(),
                datasources: Vec::new(),
            };
            s.set_password(
                env.get("GF_SECURITY_ADMIN_PASSWORD")
                    .map_or("admin", String::as_str),
            );
            log(format!("Created default admin user={}", s.login));
            s
        }
    };
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io(&e).to_string());
    let datasources = provision_datasources(
        &paths.provisioning.join("datasources"),
        env,
        &read,
        &mut stored,
    )
    .map_err(|e| fail(format!("Datasource provisioning error: {e}")))?;
    let dashboards = provision_dashboards(&paths.provisioning.join("dashboards"), &read, log)
        .map_err(|e| fail(format!("Failed to provision dashboards: {e}")))?;
    save(&state_file, &stored).map_err(fail)?;
    Ok(Grafana {
        state_file,
        stored: Mutex::new(stored),
        datasources,
        dashboards,
    })
}

/// `grafana cli admin reset-admin-password`: the stored login gets `password`.
pub fn reset_admin_password(paths: &Paths, password: &str) -> Result<String, String> {
    let file = paths.data.join(STATE_FILE);
    let text = std::fs::read_to_string(&file).map_err(|_| {
        "Could not find admin user: Grafana has not started on this data directory yet".to_string()
    })?;
    let mut stored: Stored = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if password.len() < 4 {
        return Err("New password is too short".to_string());
    }
    stored.set_password(password);
    save(&file, &stored)?;
    Ok("Admin password changed successfully ✔".to_string())
}

fn save(file: &Path, stored: &Stored) -> Result<(), String> {
    let text = serde_json::to_string_pretty(stored).map_err(|e| e.to_string())?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| format!("open {}: {}", file.display(), io(&e)))
}

fn io(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied",
        std::io::ErrorKind::NotFound => "no such file or directory",
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system",
        _ => "input/output error",
    }
}

/// `*.yaml` and `*.yml` in `dir`, by name; a missing directory has none (Grafana logs it).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

/// Reads every datasource file, checks it as Grafana does and applies it to `stored`.
fn provision_datasources(
    dir: &Path,
    env: &BTreeMap<String, String>,
    read: Read,
    stored: &mut Stored,
) -> Result<Vec<Datasource>, String> {
    let mut all = Vec::new();
    let mut deletes = Vec::new();
    for file in yaml_files(dir) {
        let text = read(&file)?;
        let (ds, del) = parse_datasource_file(&text, env, read)
            .map_err(|e| format!("{e} (in {})", file.display()))?;
        all.extend(ds);
        deletes.extend(del);
    }
    let mut defaults = BTreeMap::new();
    for ds in &all {
        if ds.is_default {
            let n = defaults.entry(ds.org_id).or_insert(0);
            *n += 1;
            if *n > 1 {
                return Err("datasource.yaml config is invalid. Only one datasource per organization can be marked as default".to_string());
            }
        }
    }
    stored
        .datasources
        .retain(|(org, name, _)| !deletes.contains(&(*org, name.clone())));
    for ds in &mut all {
        match stored
            .datasources
            .iter()
            .find(|(org, name, _)| *org == ds.org_id && *name == ds.name)
        {
            // Grafana 12 updates by name with the file's uid: another uid matches no row.
            Some((_, _, uid)) if !ds.uid.is_empty() && *uid != ds.uid => {
                return Err("data source not found".to_string());
            }
            Some((_, _, uid)) => ds.uid = uid.clone(),
            None => {
                if ds.uid.is_empty() {
                    ds.uid = random_id(14);
                }
                stored
                    .datasources
                    .push((ds.org_id, ds.name.clone(), ds.uid.clone()));
            }
        }
    }
    Ok(all)
}

type Parsed = (Vec<Datasource>, Vec<(i64, String)>);

/// One datasource file (apiVersion 1 names fields in camelCase, 0 in snake_case).
fn parse_datasource_file(
    text: &str,
    env: &BTreeMap<String, String>,
    read: Read,
) -> Result<Parsed, String> {
    let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| format!("yaml: {e}"))?;
    if doc.is_null() {
        return Ok((Vec::new(), Vec::new()));
    }
    let f = Fields { doc: &doc, at: "" };
    let version = f.int("apiVersion")?.unwrap_or(0);
    let (list, del_list, org_key, camel) = match version {
        0 => ("datasources", "delete_datasources", "org_id", false),
        _ => ("datasources", "deleteDatasources", "orgId", true),
    };
    let key =
        |camel_name: &'static str, snake: &'static str| if camel { camel_name } else { snake };
    let mut out = Vec::new();
    for (i, d) in f.list(list)?.iter().enumerate() {
        let at = format!("datasources[{i}]");
        let f = Fields { doc: d, at: &at };
        let text_of = |k: &str| -> Result<String, String> {
            f.string(k)?
                .map_or(Ok(String::new()), |s| expand(&s, env, read))
        };
        let mut access = text_of("access")?;
        if access.is_empty() || (access != "proxy" && access != "direct") {
            access = "proxy".to_string();
        }
        let json_data = match d.get(key("jsonData", "json_data")) {
            None | Some(Yaml::Null) => json!({}),
            Some(m @ Yaml::Mapping(_)) => expand_json(yaml_to_json(m), env, read)?,
            Some(other) => {
                return Err(unmarshal(&at, "jsonData", other, "map[string]interface {}"));
            }
        };
        let secure_fields = match d.get(key("secureJsonData", "secure_json_data")) {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Mapping(m)) => {
                let mut names = Vec::new();
                for (k, v) in m {
                    let name = k.as_str().unwrap_or_default().to_string();
                    match v {
                        Yaml::String(s) => {
                            expand(s, env, read)?;
                        }
                        Yaml::Null | Yaml::Bool(_) | Yaml::Number(_) => {}
                        other => {
                            return Err(unmarshal(&at, &name, other, "string"));
                        }
                    }
                    names.push(name);
                }
                names
            }
            Some(other) => {
                return Err(unmarshal(&at, "secureJsonData", other, "map[string]string"));
            }
        };
        out.push(Datasource {
            org_id: f.int(org_key)?.unwrap_or(1).max(1),
            name: text_of("name")?,
            uid: text_of("uid")?,
            kind: text_of("type")?,
            access,
            url: text_of("url")?,
            user: text_of("user")?,
            database: text_of("database")?,
            basic_auth: f.boolean(key("basicAuth", "basic_auth"))?.unwrap_or(false),
            is_default: f.boolean(key("isDefault", "is_default"))?.unwrap_or(false),
            json_data,
            secure_fields,
            editable: f.boolean("editable")?.unwrap_or(false),
        });
        f.int("version")?;
        f.boolean(key("withCredentials", "with_credentials"))?;
    }
    let mut deletes = Vec::new();
    for (i, d) in f.list(del_list)?.iter().enumerate() {
        let at = format!("{del_list}[{i}]");
        let f = Fields { doc: d, at: &at };
        deletes.push((
            f.int(org_key)?.unwrap_or(1).max(1),
            f.string("name")?.unwrap_or_default(),
        ));
    }
    Ok((out, deletes))
}

/// Typed access to one YAML mapping, with yaml.v2's error texts.
struct Fields<'a> {
    doc: &'a Yaml,
    at: &'a str,
}

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Yaml> {
        self.doc.get(k).filter(|v| !v.is_null())
    }

    fn string(&self, k: &str) -> Result<Option<String>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Yaml::String(s)) => Ok(Some(s.clone())),
            Some(Yaml::Number(n)) => Ok(Some(n.to_string())),
            Some(Yaml::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(unmarshal(self.at, k, other, "string")),
        }
    }

    fn int(&self, k: &str) -> Result<Option<i64>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Yaml::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(other) => Err(unmarshal(self.at, k, other, "int64")),
        }
    }

    /// yaml.v2 (YAML 1.1) also takes yes/no/on/off.
    fn boolean(&self, k: &str) -> Result<Option<bool>, String> {
        match self.get(k) {
            None => Ok(None),
            Some(Yaml::Bool(b)) => Ok(Some(*b)),
            Some(Yaml::String(s)) => match s.to_ascii_lowercase().as_str() {
                "yes" | "on" | "y" => Ok(Some(true)),
                "no" | "off" | "n" => Ok(Some(false)),
                _ => Err(unmarshal(self.at, k, &Yaml::String(s.clone()), "bool")),
            },
            Some(other) => Err(unmarshal(self.at, k, other, "bool")),
        }
    }

    fn list(&self, k: &str) -> Result<Vec<Yaml>, String> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Yaml::Sequence(s)) => Ok(s.clone()),
            Some(other) => Err(unmarshal(self.at, k, other, "[]*v1DataSource")),
        }
    }
}

fn unmarshal(at: &str, key: &str, v: &Yaml, into: &str) -> String {
    let tag = match v {
        Yaml::Bool(_) => "!!bool",
        Yaml::Number(_) => "!!int",
        Yaml::String(_) => "!!str",
        Yaml::Sequence(_) => "!!seq",
        Yaml::Mapping(_) => "!!map",
        _ => "!!null",
    };
    let shown = match v {
        Yaml::String(s) => format!(" `{s}`"),
        Yaml::Bool(_) | Yaml::Number(_) => format!(
            " `{}`",
            serde_yaml_ng::to_string(v).unwrap_or_default().trim()
        ),
        _ => String::new(),
    };
    let field = if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    };
    format!("yaml: unmarshal errors:\n  {field}: cannot unmarshal {tag}{shown} into {into}")
}

fn yaml_to_json(v: &Yaml) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// Provisioning values: `$__file{path}` (the file's contents), `$__env{VAR}`, `${VAR}` and
/// `$VAR` (empty when unset). A file that cannot be read is an error.
fn expand(s: &str, env: &BTreeMap<String, String>, read: Read) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let braced = |prefix: &str| tail.strip_prefix(prefix).and_then(|t| t.split_once('}'));
        if let Some((path, after)) = braced("__file{") {
            let text = read(Path::new(path)).map_err(|e| format!("open {path}: {e}"))?;
            out.push_str(&text);
            rest = after;
        } else if let Some((var, after)) = braced("__env{").or_else(|| braced("{")) {
            out.push_str(env.get(var).map_or("", String::as_str));
            rest = after;
        } else {
            let n = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if n == 0 {
                out.push('$');
            } else {
                out.push_str(env.get(&tail[..n]).map_or("", String::as_str));
            }
            rest = &tail[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_json(v: Json, env: &BTreeMap<String, String>, read: Read) -> Result<Json, String> {
    Ok(match v {
        Json::String(s) => Json::String(expand(&s, env, read)?),
        Json::Array(a) => Json::Array(
            a.into_iter()
                .map(|x| expand_json(x, env, read))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(m) => Json::Object(
            m.into_iter()
                .map(|(k, x)| Ok((k, expand_json(x, env, read)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other,
    })
}

/// Dashboard providers and the dashboards in their directories.
fn provision_dashboards(
    dir: &Path,
    read: Read,
    log: &mut dyn FnMut(String),
) -> Result<Vec<Dashboard>, String> {
    let mut out: Vec<Dashboard> = Vec::new();
    for file in yaml_files(dir) {
        let text = read(&file)?;
        let doc: Yaml = serde_yaml_ng::from_str(&text).map_err(|e| {
            format!("Failed to read dashboards config: could not parse provisioning config file: {} error: yaml: {e}", file.display())
        })?;
        let f = Fields { doc: &doc, at: "" };
        let version = f.int("apiVersion")?.unwrap_or(0);
        let providers = match (version, &doc) {
            (0, Yaml::Sequence(s)) => s.clone(),
            (0, Yaml::Null) => Vec::new(),
            _ => f.list("providers")?,
        };
        for (i, p) in providers.iter().enumerate() {
            let at = format!("providers[{i}]");
            let pf = Fields { doc: p, at: &at };
            let name = pf.string("name")?.unwrap_or_default();
            let kind = pf.string("type")?.unwrap_or_else(|| "file".to_string());
            if kind != "file" {
                return Err(format!(
                    "unknown dashboard provider type {kind:?} (provider {name:?})"
                ));
            }
            let folder = pf.string("folder")?.unwrap_or_default();
            pf.int(if version == 0 { "org_id" } else { "orgId" })?;
            pf.int(if version == 0 {
                "update_interval_seconds"
            } else {
                "updateIntervalSeconds"
            })?;
            pf.boolean(if version == 0 {
                "disable_deletion"
            } else {
                "disableDeletion"
            })?;
            pf.boolean(if version == 0 {
                "allow_ui_updates"
            } else {
                "allowUiUpdates"
            })?;
            let options = p.get("options");
            let path = options
                .and_then(|o| o.get("path").or_else(|| o.get("folder")))
                .and_then(Yaml::as_str)
                .ok_or("failed to load dashboards, path param is not a string")?;
            let files = json_files(Path::new(path));
            if files.is_empty() && std::fs::metadata(path).is_err() {
                log(format!(
                    "logger=provisioning.dashboard level=error msg=\"Cannot read directory\" path={path}"
                ));
            }
            for file in files {
                let loaded = read(&file)
                    .and_then(|t| serde_json::from_str::<Json>(&t).map_err(|e| e.to_string()));
                let json = match loaded {
                    Ok(j) if j.is_object() => j,
                    Ok(_) => {
                        log(format!(
                            "logger=provisioning.dashboard level=error msg=\"failed to load dashboard from \" file={} error=\"dashboard is not a JSON object\"",
                            file.display()
                        ));
                        continue;
                    }
                    Err(e) => {
                        log(format!(
                            "logger=provisioning.dashboard level=error msg=\"failed to load dashboard from \" file={} error=\"{e}\"",
                            file.display()
                        ));
                        continue;
                    }
                };
                let title = json["title"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                if title.is_empty() {
                    log(format!(
                        "logger=provisioning.dashboard level=error msg=\"failed to save dashboard\" file={} error=\"Dashboard title cannot be empty\"",
                        file.display()
                    ));
                    continue;
                }
                let uid = json["uid"]
                    .as_str()
                    .filter(|u| !u.is_empty())
                    .map_or_else(|| random_id(14), str::to_string);
                if out.iter().any(|d| d.uid == uid) {
                    log(format!(
                        "logger=provisioning.dashboard level=error msg=\"the same UID is used more than once\" uid={uid} file={}",
                        file.display()
                    ));
                    continue;
                }
                out.push(Dashboard {
                    uid,
                    title,
                    folder: folder.clone(),
                    file,
                    provider: name.clone(),
                    json,
                });
            }
        }
    }
    Ok(out)
}

/// `*.json` under `dir`, recursively, sorted.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Grafana {
    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The login of a request's basic auth, if it is the admin's current one.
    fn admin(&self, req: &Request) -> Option<String> {
        let b64 = req.header("authorization")?.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let (user, pw) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
        let s = self.stored();
        (user == s.login && s.matches(pw)).then(|| user.to_string())
    }

    fn set_password(&self, new: &str) -> Response {
        let mut s = self.stored();
        s.set_password(new);
        match save(&self.state_file, &s) {
            Ok(()) => Response::json(200, &json!({"message": "User password changed"})),
            Err(e) => Response::json(
                500,
                &json!({"message": format!("Failed to change user password: {e}")}),
            ),
        }
    }

    /// Grafana's API and pages; `None` for paths that are not Grafana's (the caller 404s).
    pub fn handle(&self, req: &Request) -> Option<Response> {
        let get = req.method == "GET" || req.method == "HEAD";
        let path = req.path.as_str();
        if path == "/api/health" && get {
            return Some(Response::json(
                200,
                &json!({"database": "ok", "version": "standin", "commit": "atlas-standin",
                        "standin": "atlas stand-in for Grafana, not Grafana"}),
            ));
        }
        if matches!(path, "/" | "/login") && get {
            return Some(Response::new(
                200,
                "text/html; charset=utf-8",
                "<!doctype html><html><head><title>Atlas stand-in for Grafana</title></head>\
                 <body><h1>Atlas stand-in for Grafana</h1><p>This test fixture is not Grafana.</p></body></html>\n",
            ));
        }
        if !path.starts_with("/api/") {
            return None;
        }
        let Some(login) = self.admin(req) else {
            return Some(Response::json(401, &json!({"message": "Unauthorized"})));
        };
        let body = || serde_json::from_slice::<Json>(&req.body).unwrap_or(Json::Null);
        let not_found =
            |what: &str| Response::json(404, &json!({"message": format!("{what} not found")}));
        Some(match (req.method.as_str(), path) {
            ("GET", "/api/user") => Response::json(
                200,
                &json!({"id": 1, "login": login, "isGrafanaAdmin": true, "orgId": 1,
                        "standin": true}),
            ),
            ("PUT", "/api/user/password") => {
                let b = body();
                let (old, new) = (b["oldPassword"].as_str(), b["newPassword"].as_str());
                match (old, new) {
                    (Some(old), _) if !self.stored().matches(old) => {
                        Response::json(401, &json!({"message": "Invalid old password"}))
                    }
                    (Some(_), Some(new)) if new.len() >= 4 => self.set_password(new),
                    (Some(_), Some(_)) => {
                        Response::json(400, &json!({"message": "New password is too short"}))
                    }
                    _ => Response::json(400, &json!({"message": "bad request data"})),
                }
            }
            ("PUT", "/api/admin/users/1/password") => match body()["password"].as_str() {
                Some(new) if new.len() >= 4 => {
                    let r = self.set_password(new);
                    match r.status {
                        200 => Response::json(200, &json!({"message": "User password updated"})),
                        _ => r,
                    }
                }
                Some(_) => Response::json(400, &json!({"message": "New password is too short"})),
                None => Response::json(400, &json!({"message": "bad request data"})),
            },
            ("GET", "/api/datasources") => Response::json(
                200,
                &Json::Array(
                    self.datasources
                        .iter()
                        .enumerate()
                        .map(|(i, d)| d.to_json(i + 1))
                        .collect(),
                ),
            ),
            ("GET", p)
                if p.starts_with("/api/datasources/uid/")
                    || p.starts_with("/api/datasources/name/") =>
            {
                let (by_uid, key) = match p.strip_prefix("/api/datasources/uid/") {
                    Some(k) => (true, k),
                    None => (false, &p["/api/datasources/name/".len()..]),
                };
                match self
                    .datasources
                    .iter()
                    .enumerate()
                    .find(|(_, d)| if by_uid { d.uid == key } else { d.name == key })
                {
                    Some((i, d)) => Response::json(200, &d.to_json(i + 1)),
                    None => not_found("Data source"),
                }
            }
            ("GET", "/api/search") => {
                let q = query_param(&req.query, "query")
                    .unwrap_or_default()
                    .to_lowercase();
                let hits: Vec<Json> = self
                    .dashboards
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| d.title.to_lowercase().contains(&q))
                    .map(|(i, d)| {
                        json!({"id": i + 1, "uid": d.uid, "title": d.title, "type": "dash-db",
                               "url": format!("/d/{}", d.uid), "tags": d.json["tags"].clone(),
                               "folderTitle": d.folder, "isStarred": false})
                    })
                    .collect();
                Response::json(200, &Json::Array(hits))
            }
            ("GET", p) if p.starts_with("/api/dashboards/uid/") => {
                let uid = &p["/api/dashboards/uid/".len()..];
                match self.dashboards.iter().find(|d| d.uid == uid) {
                    Some(d) => {
                        let mut dash = d.json.clone();
                        dash["uid"] = Json::String(d.uid.clone());
                        Response::json(
                            200,
                            &json!({"dashboard": dash,
                                    "meta": {"provisioned": true, "folderTitle": d.folder,
                                             "provisionedExternalId": d.file.display().to_string(),
                                             "slug": d.title.to_lowercase().replace(' ', "-")}}),
                        )
                    }
                    None => not_found("Dashboard"),
                }
            }
            _ => not_found("Not"),
        })
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.replace('+', " ").replace("%20", " "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    /// A home with grafana.ini, data and provisioning, like the image.
    fn setup(datasources: &str) -> (tempfile::TempDir, Paths) {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        std::fs::create_dir_all(p("provisioning/datasources")).unwrap();
        std::fs::create_dir_all(p("provisioning/dashboards")).unwrap();
        std::fs::write(p("grafana.ini"), "; ini\n").unwrap();
        std::fs::write(p("provisioning/datasources/atlas.yaml"), datasources).unwrap();
        let paths = Paths {
            home: t.path().into(),
            config: p("grafana.ini"),
            data: p("data"),
            provisioning: p("provisioning"),
            plugins: p("plugins"),
        };
        (t, paths)
    }

    const RENDERED: &str = "apiVersion: 1\n\ndatasources:\n  - name: \"Prometheus\"\n    uid: \"atlas-prometheus01\"\n    type: \"prometheus\"\n    access: proxy\n    url: \"http://prometheus01:9090\"\n    isDefault: true\n    editable: false\n  - name: \"Loki\"\n    uid: \"atlas-loki01\"\n    type: \"loki\"\n    access: proxy\n    url: \"https://loki01:3100\"\n    isDefault: false\n    editable: false\n    jsonData:\n      tlsAuthWithCACert: true\n    secureJsonData:\n      tlsCACert: \"$__file{CAFILE}\"\n";

    fn started(paths: &Paths, e: &BTreeMap<String, String>) -> Result<Grafana, String> {
        start(paths, e, &mut |_| {})
    }

    #[test]
    fn the_command_line_of_run_sh_is_understood() {
        let a = argv(&[
            "grafana",
            "server",
            "--homepath=/usr/share/grafana",
            "--config=/etc/grafana/grafana.ini",
            "--packaging=docker",
            "cfg:default.log.mode=console",
            "cfg:default.paths.data=/var/lib/grafana",
            "cfg:default.paths.logs=/var/log/grafana",
            "cfg:default.paths.plugins=/opt/p",
            "cfg:default.paths.provisioning=/etc/grafana/provisioning",
        ]);
        let Command::Server(p) = parse(&a, &env(&[])).unwrap() else {
            panic!()
        };
        assert_eq!(p.data, PathBuf::from("/var/lib/grafana"));
        assert_eq!(p.provisioning, PathBuf::from("/etc/grafana/provisioning"));
        assert_eq!(p.config, PathBuf::from("/etc/grafana/grafana.ini"));
        let Command::Server(p) = parse(&a, &env(&[("GF_PATHS_DATA", "/data")])).unwrap() else {
            panic!()
        };
        assert_eq!(p.data, PathBuf::from("/data"), "GF_PATHS_* win");
        let e = parse(&argv(&["grafana", "server", "--home=/x"]), &env(&[])).unwrap_err();
        assert_eq!(e, "flag provided but not defined: -home");
        assert!(matches!(
            parse(&argv(&["grafana", "cli", "admin", "reset-admin-password", "pw12"]), &env(&[])),
            Ok(Command::ResetAdminPassword(_, pw)) if pw == "pw12"
        ));
    }

    #[test]
    fn provisioned_datasources_are_served_and_the_ca_file_must_exist() {
        let (t, paths) = setup("");
        let ca = t.path().join("root_ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let file = paths.provisioning.join("datasources/atlas.yaml");
        std::fs::write(&file, RENDERED.replace("CAFILE", &ca.display().to_string())).unwrap();
        let g = started(&paths, &env(&[])).unwrap();
        assert_eq!(g.datasources.len(), 2);
        let loki = &g.datasources[1];
        assert_eq!(
            (loki.uid.as_str(), loki.url.as_str()),
            ("atlas-loki01", "https://loki01:3100")
        );
        assert_eq!(loki.secure_fields, ["tlsCACert"]);
        assert_eq!(loki.json_data["tlsAuthWithCACert"], true);

        std::fs::remove_file(&ca).unwrap();
        let e = started(&paths, &env(&[])).err().unwrap();
        assert!(
            e.starts_with("Failed to start grafana. error: Datasource provisioning error: open "),
            "{e}"
        );
        assert!(e.contains("root_ca.crt: no such file or directory"), "{e}");
    }

    #[test]
    fn broken_datasource_files_stop_the_start() {
        let cases = [
            (
                "apiVersion: 1\ndatasources:\n  - name: [unclosed\n",
                "yaml:",
            ),
            (
                "apiVersion: 1\ndatasources:\n  - name: P\n    isDefault: maybe\n",
                "cannot unmarshal !!str `maybe` into bool",
            ),
            (
                "apiVersion: 1\ndatasources:\n  name: P\n",
                "cannot unmarshal !!map into",
            ),
            (
                "apiVersion: one\n",
                "cannot unmarshal !!str `one` into int64",
            ),
            (
                "apiVersion: 1\ndatasources:\n  - name: A\n    isDefault: true\n  - name: B\n    isDefault: true\n",
                "Only one datasource per organization can be marked as default",
            ),
        ];
        for (text, want) in cases {
            let (_t, paths) = setup(text);
            let e = started(&paths, &env(&[]))
                .err()
                .unwrap_or_else(|| panic!("accepted {text:?}"));
            assert!(
                e.contains("Datasource provisioning error") && e.contains(want),
                "{text:?}: {e}"
            );
        }
        // Unknown fields are ignored, as Grafana does.
        let (_t, paths) = setup("apiVersion: 1\ndatasources:\n  - name: P\n    colour: red\n");
        assert_eq!(started(&paths, &env(&[])).unwrap().datasources[0].name, "P");
    }

    #[test]
    fn a_datasource_that_changes_uid_is_not_found_as_in_grafana_12() {
        let (_t, paths) = setup("apiVersion: 1\ndatasources:\n  - name: P\n    type: prometheus\n");
        let first = started(&paths, &env(&[])).unwrap();
        let generated = first.datasources[0].uid.clone();
        assert_eq!(generated.len(), 14);
        // A restart keeps the uid; pinning another one later fails the start.
        assert_eq!(
            started(&paths, &env(&[])).unwrap().datasources[0].uid,
            generated
        );
        let file = paths.provisioning.join("datasources/atlas.yaml");
        std::fs::write(
            &file,
            "apiVersion: 1\ndatasources:\n  - name: P\n    uid: pinned\n",
        )
        .unwrap();
        let e = started(&paths, &env(&[])).err().unwrap();
        assert!(
            e.ends_with("Datasource provisioning error: data source not found"),
            "{e}"
        );
        // deleteDatasources first, then it is created again with the pinned uid.
        std::fs::write(&file, "apiVersion: 1\ndeleteDatasources:\n  - name: P\n    orgId: 1\ndatasources:\n  - name: P\n    uid: pinned\n").unwrap();
        assert_eq!(
            started(&paths, &env(&[])).unwrap().datasources[0].uid,
            "pinned"
        );
    }

    #[test]
    fn the_admin_password_is_taken_on_the_first_start_only() {
        let (_t, paths) = setup("");
        let first = env(&[("GF_SECURITY_ADMIN_PASSWORD", "first-pw")]);
        let g = started(&paths, &first).unwrap();
        let auth = |pw: &str| {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("admin:{pw}"));
            vec![("Authorization".to_string(), format!("Basic {b}"))]
        };
        let req = |m: &str, p: &str, pw: &str, body: &str| Request {
            method: m.into(),
            path: p.into(),
            query: String::new(),
            headers: auth(pw),
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            g.handle(&req("GET", "/api/user", "first-pw", ""))
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            g.handle(&req("GET", "/api/datasources", "wrong", ""))
                .unwrap()
                .status,
            401
        );
        let change = r#"{"oldPassword":"nope","newPassword":"second-pw","confirmNew":"second-pw"}"#;
        assert_eq!(
            g.handle(&req("PUT", "/api/user/password", "first-pw", change))
                .unwrap()
                .status,
            401
        );
        let change = change.replace("nope", "first-pw");
        assert_eq!(
            g.handle(&req("PUT", "/api/user/password", "first-pw", &change))
                .unwrap()
                .status,
            200
        );
        // Restarted with the old password still in the environment: the stored one stands.
        let again = started(&paths, &first).unwrap();
        assert_eq!(
            again
                .handle(&req("GET", "/api/user", "first-pw", ""))
                .unwrap()
                .status,
            401
        );
        assert_eq!(
            again
                .handle(&req("GET", "/api/user", "second-pw", ""))
                .unwrap()
                .status,
            200
        );
        let admin = r#"{"password":"third-pw"}"#;
        assert_eq!(
            again
                .handle(&req(
                    "PUT",
                    "/api/admin/users/1/password",
                    "second-pw",
                    admin
                ))
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            reset_admin_password(&paths, "fourth-pw").unwrap(),
            "Admin password changed successfully ✔"
        );
        let third = started(&paths, &first).unwrap();
        assert_eq!(
            third
                .handle(&req("GET", "/api/user", "fourth-pw", ""))
                .unwrap()
                .status,
            200
        );
        let stored = std::fs::read_to_string(paths.data.join(STATE_FILE)).unwrap();
        assert!(
            !stored.contains("fourth-pw") && !stored.contains("first-pw"),
            "hashed, not stored"
        );
    }

    #[test]
    fn dashboards_from_providers_with_invalid_json_skipped() {
        let (t, paths) = setup("");
        let dir = t.path().join("dashboards");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("a.json"),
            r#"{"uid":"atlas-a","title":"Atlas A","tags":["atlas"]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("sub/b.json"), r#"{"title":"B"}"#).unwrap();
        std::fs::write(dir.join("broken.json"), "{not json").unwrap();
        std::fs::write(dir.join("untitled.json"), r#"{"uid":"x"}"#).unwrap();
        let prov = paths.provisioning.join("dashboards/atlas.yaml");
        std::fs::write(
            &prov,
            format!("apiVersion: 1\nproviders:\n  - name: atlas\n    folder: Atlas\n    type: file\n    options:\n      path: {}\n", dir.display()),
        )
        .unwrap();
        let mut logged = Vec::new();
        let g = start(&paths, &env(&[]), &mut |l| logged.push(l)).unwrap();
        let titles: Vec<&str> = g.dashboards.iter().map(|d| d.title.as_str()).collect();
        assert_eq!(titles, ["Atlas A", "B"]);
        assert!(
            logged.iter().any(|l| l.contains("broken.json")),
            "{logged:?}"
        );
        assert!(
            logged.iter().any(|l| l.contains("title cannot be empty")),
            "{logged:?}"
        );
        std::fs::write(
            &prov,
            "apiVersion: 1\nproviders:\n  - name: atlas\n    options: {}\n",
        )
        .unwrap();
        let e = started(&paths, &env(&[])).err().unwrap();
        assert!(e.contains("path param is not a string"), "{e}");
        std::fs::write(&prov, "apiVersion: 1\nproviders: [\n").unwrap();
        assert!(
            started(&paths, &env(&[]))
                .err()
                .unwrap()
                .contains("Failed to provision dashboards")
        );
    }

    #[test]
    fn values_expand_env_and_files() {
        let read = |p: &Path| match p.to_str() {
            Some("/ca") => Ok("PEM".to_string()),
            _ => Err("no such file or directory".to_string()),
        };
        let e = env(&[("HOST", "loki01")]);
        assert_eq!(
            expand("https://$HOST:3100/${HOST}/$__env{HOST}", &e, &read).unwrap(),
            "https://loki01:3100/loki01/loki01"
        );
        assert_eq!(expand("$__file{/ca}", &e, &read).unwrap(), "PEM");
        assert!(
            expand("$__file{/nope}", &e, &read)
                .unwrap_err()
                .contains("open /nope")
        );
        assert_eq!(expand("cost: 5$", &e, &read).unwrap(), "cost: 5$");
    }
}
