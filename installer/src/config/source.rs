//! The layers above the embedded defaults, merged as one TOML table: the file, then
//! `ATLAS_*` variables, then flags. Remembers where every value came from (a file span, a
//! variable, a flag) so that a problem found later points at the line or variable to fix.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use super::error::{Diagnostic, Location};
use super::formats::suggest;
use super::raw::RawConfig;

/// `ATLAS_*` variables that are not config keys. Anything else under `ATLAS_` must map to a
/// key, so that a typo in a variable name is an error instead of a silently ignored setting.
pub const RESERVED_ENV: [&str; 9] = [
    "ATLAS_CONFIG",
    // The image cache directory (`--cache-dir`), a place on this machine, not a setting.
    "ATLAS_CACHE_DIR",
    "ATLAS_CLOUDFLARE_API_TOKEN",
    "ATLAS_CLOUDFLARED_TOKEN",
    "ATLAS_TEST_REQUIRE_ALL",
    "ATLAS_TEST_STATE",
    "ATLAS_GIT_COMMIT",
    // The password file of a signing key (`--sign-password-file`), and the release public
    // keys a build embeds (read by the build, never by the binary).
    "ATLAS_SIGN_PASSWORD_FILE",
    "ATLAS_RELEASE_PUBKEYS",
];

/// Test harness knobs live under this prefix and are never config keys.
const RESERVED_ENV_PREFIX: &str = "ATLAS_TEST_";

/// Keys that would hold a secret inline; refused, with the way to pass it instead.
const INLINE_SECRETS: [(&str, &str); 4] = [
    (
        "caddy.cloudflare_api_token",
        "set ATLAS_CLOUDFLARE_API_TOKEN or put the token in a file (mode 0600) named by caddy.cloudflare_api_token_file",
    ),
    (
        "cloudflared.token",
        "set ATLAS_CLOUDFLARED_TOKEN or put the token in a file (mode 0600) named by cloudflared.token_file",
    ),
    (
        "cloudflared.tunnel_token",
        "set ATLAS_CLOUDFLARED_TOKEN or put the token in a file (mode 0600) named by cloudflared.token_file",
    ),
    (
        "caddy.cloudflare_token",
        "set ATLAS_CLOUDFLARE_API_TOKEN or put the token in a file (mode 0600) named by caddy.cloudflare_api_token_file",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render_path(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[derive(Debug, Clone, Default)]
struct Spans {
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

#[derive(Debug, Clone)]
struct Override {
    location: Location,
    /// The text as given, used when a TOML reading of it has the wrong type.
    raw: String,
}

pub(crate) struct Source {
    /// The file as the operator named it, for `FILE:LINE:COL`.
    file: Option<String>,
    text: String,
    spans: HashMap<String, Spans>,
    table: toml::Table,
    overrides: BTreeMap<String, Override>,
}

impl Source {
    /// No file: only the embedded defaults, plus whatever env and flags add.
    pub fn empty() -> Source {
        Source {
            file: None,
            text: String::new(),
            spans: HashMap::new(),
            table: toml::Table::new(),
            overrides: BTreeMap::new(),
        }
    }

    /// Parses the file; a syntax error comes back as `FILE:LINE:COL: message`.
    pub fn parse(file: &str, text: &str) -> Result<Source, Diagnostic> {
        let doc = toml_edit::Document::parse(text).map_err(|e| {
            let location = e.span().map(|s| file_location(file, text, s.start));
            Diagnostic {
                path: String::new(),
                location,
                message: format!("TOML syntax error: {}", e.message().trim_end()),
                help: Some(
                    "fix the syntax at that position (strings need quotes, tables are [section])"
                        .into(),
                ),
            }
        })?;
        let mut spans = HashMap::new();
        index_item(doc.as_item(), &[], &mut spans);
        let table: toml::Table = toml::from_str(text).map_err(|e| Diagnostic {
            path: String::new(),
            location: e.span().map(|s| file_location(file, text, s.start)),
            message: format!("TOML syntax error: {}", e.message().trim_end()),
            help: None,
        })?;
        Ok(Source {
            file: Some(file.to_string()),
            text: text.to_string(),
            spans,
            table,
            overrides: BTreeMap::new(),
        })
    }

    /// Lays `ATLAS_*` variables over the file. `ATLAS_A__B__C=v` sets `a.b.c`; `v` is read as
    /// a TOML value when it is one (numbers, booleans, arrays), else as a string.
    pub fn apply_env(&mut self, vars: &[(String, String)], diags: &mut Vec<Diagnostic>) {
        for (var, value) in vars {
            let Some(rest) = var.strip_prefix("ATLAS_") else {
                continue;
            };
            if RESERVED_ENV.contains(&var.as_str())
                || var.starts_with(RESERVED_ENV_PREFIX)
                || var.starts_with(super::alerting::RECEIVER_SECRET_ENV_PREFIX)
            {
                continue;
            }
            let location = Location::Env {
                variable: var.clone(),
            };
            let Some(segs) = self.env_path(rest) else {
                diags.push(Diagnostic {
                    path: String::new(),
                    location: Some(location),
                    message: format!("`{var}` does not name a config key"),
                    help: Some("write ATLAS_ followed by the key path joined with __, e.g. ATLAS_INCUS__PROJECT or ATLAS_INSTANCES__GRAFANA01__MEMORY".into()),
                });
                continue;
            };
            self.set(
                &segs,
                env_value(value),
                Override {
                    location,
                    raw: value.clone(),
                },
                diags,
            );
        }
    }

    /// A flag's value, the top layer.
    pub fn apply_flag(
        &mut self,
        path: &[&str],
        value: String,
        flag: &str,
        diags: &mut Vec<Diagnostic>,
    ) {
        let segs: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let ov = Override {
            location: Location::Flag {
                flag: flag.to_string(),
            },
            raw: value.clone(),
        };
        self.set(&segs, toml::Value::String(value), ov, diags);
    }

    /// Key path of an env variable: segments lower-cased, except below `environment` (those
    /// are variable names) and instance names, matched to an existing instance with `_` for
    /// `-` (`STEP_CA01` is `step-ca01`).
    fn env_path(&self, rest: &str) -> Option<Vec<String>> {
        let raw: Vec<&str> = rest.split("__").collect();
        if raw.iter().any(|s| s.is_empty()) {
            return None;
        }
        let mut out: Vec<String> = Vec::new();
        for seg in raw {
            let parent = out.last().map(String::as_str);
            let next = match (out.len(), parent) {
                (1, Some("instances")) => self.instance_name(seg),
                (3, Some("environment")) if out[0] == "instances" => seg.to_string(),
                _ => seg.to_ascii_lowercase(),
            };
            out.push(next);
        }
        Some(out)
    }

    fn instance_name(&self, seg: &str) -> String {
        let norm = |s: &str| s.to_ascii_uppercase().replace('-', "_");
        let builtin = super::Config::builtin();
        let file_names = self
            .table
            .get("instances")
            .and_then(|v| v.as_table())
            .into_iter()
            .flat_map(|t| t.keys());
        builtin
            .instances
            .keys()
            .chain(file_names)
            .find(|n| norm(n) == norm(seg))
            .cloned()
            .unwrap_or_else(|| seg.to_ascii_lowercase())
    }

    fn set(
        &mut self,
        segs: &[String],
        value: toml::Value,
        ov: Override,
        diags: &mut Vec<Diagnostic>,
    ) {
        let path = segs.join(".");
        let mut table = &mut self.table;
        for (i, seg) in segs[..segs.len() - 1].iter().enumerate() {
            let entry = table
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => table = t,
                _ => {
                    diags.push(Diagnostic {
                        path: path.clone(),
                        location: Some(ov.location.clone()),
                        message: format!(
                            "`{}` is a single value, not a section",
                            segs[..=i].join(".")
                        ),
                        help: Some("drop the extra key parts from the name".into()),
                    });
                    return;
                }
            }
        }
        table.insert(segs[segs.len() - 1].clone(), value);
        self.overrides.insert(path, ov);
    }

    /// Where the value at `path` came from: the innermost flag or variable that set it, else
    /// its file position (`key` picks the key's position over the value's).
    pub fn locate(&self, path: &str, key: bool) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(ov) = self.overrides.get(p) {
                return Some(ov.location.clone());
            }
            if let Some(s) = self.spans.get(p) {
                let range = if key {
                    s.key.clone().or(s.value.clone())
                } else {
                    s.value.clone().or(s.key.clone())
                };
                if let (Some(r), Some(file)) = (range, &self.file) {
                    return Some(file_location(file, &self.text, r.start));
                }
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }

    /// Whether the operator set exactly this key (in the file, env or a flag).
    pub fn is_set(&self, path: &str) -> bool {
        self.overrides.contains_key(path) || self.spans.contains_key(path)
    }

    /// Refuses secrets written inline, without ever repeating their value.
    pub fn take_inline_secrets(&mut self, diags: &mut Vec<Diagnostic>) {
        self.take_inline_receiver_secrets(diags);
        for (path, how) in INLINE_SECRETS {
            let (section, key) = path.split_once('.').expect("static paths have a section");
            let removed = self
                .table
                .get_mut(section)
                .and_then(|v| v.as_table_mut())
                .and_then(|t| t.remove(key));
            if removed.is_some() {
                let location = self.locate(path, true);
                let message = match location {
                    Some(Location::Env { .. }) => "a secret cannot be set as a config key",
                    _ => {
                        "secrets are not accepted in the config file (it gets copied, shown and committed)"
                    }
                };
                diags.push(Diagnostic {
                    path: path.to_string(),
                    location,
                    message: message.into(),
                    help: Some(how.to_string()),
                });
            }
        }
    }

    /// The same for alert receivers: their one secret never goes in the file either.
    fn take_inline_receiver_secrets(&mut self, diags: &mut Vec<Diagnostic>) {
        let Some(receivers) = self
            .table
            .get_mut("alertmanager")
            .and_then(|v| v.as_table_mut())
            .and_then(|t| t.get_mut("receivers"))
            .and_then(|v| v.as_table_mut())
        else {
            return;
        };
        let mut found = Vec::new();
        for (name, r) in receivers.iter_mut() {
            let Some(t) = r.as_table_mut() else { continue };
            for key in super::alerting::INLINE_RECEIVER_SECRETS {
                if t.remove(key).is_some() {
                    found.push((name.clone(), key));
                }
            }
        }
        for (name, key) in found {
            let path = format!("alertmanager.receivers.{name}.{key}");
            let env = super::alerting::secret_env_name(&name);
            let help = match key {
                "webhook_url" | "api_url" => format!(
                    "a Slack receiver reads its webhook URL from webhook_url_file (a file, mode 0600) or {env}; a generic webhook takes `url` (not a secret) and a token from bearer_token_file"
                ),
                "bearer_token" => {
                    format!(
                        "put the token in a file (mode 0600) named by bearer_token_file, or set {env}"
                    )
                }
                _ => format!(
                    "put the password in a file (mode 0600) named by auth_password_file, or set {env}"
                ),
            };
            diags.push(Diagnostic {
                location: self.locate(&path, true),
                path,
                message: "secrets are not accepted in the config file (it gets copied, shown and committed)".into(),
                help: Some(help),
            });
        }
    }

    /// Deserializes the merged layers into the file schema, collecting every unknown key and
    /// wrongly typed value: each bad entry is reported, dropped, and the rest read again.
    pub fn deserialize(&mut self, diags: &mut Vec<Diagnostic>) -> RawConfig {
        // Each round removes one entry, so this ends; the cap guards against a serde surprise.
        for _ in 0..500 {
            let value = toml::Value::Table(self.table.clone());
            let err = match serde_path_to_error::deserialize::<_, RawConfig>(value) {
                Ok(raw) => return raw,
                Err(e) => e,
            };
            let segs: Vec<Seg> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    _ => None,
                })
                .collect();
            let message = err.into_inner().message().trim_end().to_string();
            let path = render_path(&segs);
            if message.starts_with("invalid type") && self.env_text_retry(&segs, &path) {
                continue;
            }
            diags.push(self.serde_diagnostic(&path, &message));
            if !remove_at(&mut self.table, &segs) {
                break;
            }
        }
        RawConfig::default()
    }

    /// An env value read as a number or boolean where the key wants text: use the text.
    fn env_text_retry(&mut self, segs: &[Seg], path: &str) -> bool {
        let Some(ov) = self.overrides.get(path) else {
            return false;
        };
        if !matches!(ov.location, Location::Env { .. }) {
            return false;
        }
        let raw = ov.raw.clone();
        match value_at(&mut self.table, segs) {
            Some(v) if !v.is_str() => {
                *v = toml::Value::String(raw);
                true
            }
            _ => false,
        }
    }

    fn serde_diagnostic(&self, path: &str, message: &str) -> Diagnostic {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let key = rest.split('`').next().unwrap_or_default();
            let valid: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
            let mut help = String::new();
            if let Some(s) = suggest(key, &valid) {
                help.push_str(&format!("did you mean `{s}`? "));
            }
            if valid.is_empty() {
                help.push_str("this section takes no keys");
            } else {
                help.push_str(&format!("valid keys here: {}", valid.join(", ")));
            }
            return Diagnostic {
                path: path.to_string(),
                location: self.locate(path, true),
                message: format!("unknown key `{key}`"),
                help: Some(help),
            };
        }
        Diagnostic {
            path: path.to_string(),
            location: self.locate(path, false),
            message: message.to_string(),
            help: None,
        }
    }
}

fn env_value(value: &str) -> toml::Value {
    // A one-key document, so that `a = 1\nb = 2` smuggled in a value stays a string.
    match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) if t.len() == 1 && !value.contains('\n') => t.remove("v").expect("one key"),
        _ => toml::Value::String(value.to_string()),
    }
}

fn value_at<'a>(table: &'a mut toml::Table, segs: &[Seg]) -> Option<&'a mut toml::Value> {
    let (first, rest) = segs.split_first()?;
    let Seg::Key(k) = first else { return None };
    let mut v = table.get_mut(k)?;
    for seg in rest {
        v = match (seg, v) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Drops the entry at `segs` (a whole array when an element is bad). False when nothing
/// could be removed.
fn remove_at(table: &mut toml::Table, segs: &[Seg]) -> bool {
    let keep = segs
        .iter()
        .rposition(|s| matches!(s, Seg::Key(_)))
        .map(|i| i + 1)
        .unwrap_or(0);
    let segs = &segs[..keep];
    let Some((Seg::Key(last), parent)) = segs.split_last() else {
        return false;
    };
    if parent.is_empty() {
        return table.remove(last).is_some();
    }
    match value_at(table, parent) {
        Some(toml::Value::Table(t)) => t.remove(last).is_some(),
        _ => false,
    }
}

fn index_item(item: &toml_edit::Item, path: &[Seg], out: &mut HashMap<String, Spans>) {
    if let Some(t) = item.as_table_like() {
        index_table(t, path, out);
        return;
    }
    match item {
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
            for (i, v) in a.iter().enumerate() {
                index_element(path, i, v.span(), out);
            }
        }
        toml_edit::Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = index_element(path, i, t.span(), out);
                index_table(t, &p, out);
            }
        }
        _ => {}
    }
}

/// Every entry of a table or inline table at `path`.
fn index_table(t: &dyn toml_edit::TableLike, path: &[Seg], out: &mut HashMap<String, Spans>) {
    for (k, _) in t.iter() {
        if let Some((key, v)) = t.get_key_value(k) {
            index_entry(key, v, path, out);
        }
    }
}

/// Element `i` of the array at `path` (it has no key of its own); returns its path.
fn index_element(
    path: &[Seg],
    i: usize,
    value: Option<Range<usize>>,
    out: &mut HashMap<String, Spans>,
) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Index(i));
    out.insert(render_path(&p), Spans { key: None, value });
    p
}

fn index_entry(
    key: &toml_edit::Key,
    v: &toml_edit::Item,
    path: &[Seg],
    out: &mut HashMap<String, Spans>,
) {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.get().to_string()));
    out.insert(
        render_path(&p),
        Spans {
            key: key.span(),
            value: v.span(),
        },
    );
    index_item(v, &p, out);
}

fn file_location(file: &str, text: &str, offset: usize) -> Location {
    // Spans start on token boundaries; `get` keeps a surprise from becoming a panic.
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    Location::File {
        file: file.to_string(),
        line,
        column,
    }
}
