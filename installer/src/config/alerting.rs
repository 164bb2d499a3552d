//! `[alertmanager]`: grouping intervals, notification receivers (email, Slack, webhook) and
//! the routes that send each severity to them. The file schema, its resolution into the
//! model, the receivers' secrets and the checks, kept together because they only make sense
//! together (a route names receivers; a receiver's kind decides its keys and its secret).
//!
//! ```toml
//! [alertmanager.receivers.oncall]
//! kind = "email"
//! smarthost = "smtp.example.com:587"
//! from = "atlas@example.com"
//! to = ["oncall@example.com"]
//! auth_username = "atlas@example.com"
//! auth_password_file = "smtp-password"   # or ATLAS_RECEIVER_SECRET_ONCALL
//!
//! [alertmanager.routes.critical]
//! receivers = ["oncall"]
//! repeat_interval = "1h"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::Diagnostic;
use super::formats;
use super::model::*;

/// `ATLAS_RECEIVER_SECRET_<NAME>` (name upper-cased, `-` as `_`): a receiver's secret from the
/// environment, over its `*_file` key. Not a config key (the loader skips the prefix).
pub const RECEIVER_SECRET_ENV_PREFIX: &str = "ATLAS_RECEIVER_SECRET_";

/// The receiver that gets what no route takes: it has no integration, so those alerts stay in
/// Alertmanager. Reserved, so no configured receiver can take its name.
pub const DEFAULT_RECEIVER: &str = "default";

/// The receiver `alertmanager.webhook_url` (the shorthand) becomes.
pub const LEGACY_WEBHOOK_RECEIVER: &str = "webhook";

/// Keys that would hold a receiver's secret inline: refused wherever they appear.
pub(crate) const INLINE_RECEIVER_SECRETS: [&str; 5] = [
    "auth_password",
    "password",
    "webhook_url",
    "api_url",
    "bearer_token",
];

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAlertmanager {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<BTreeMap<String, RawReceiver>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<RawRoutes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ReceiverKind {
    Email,
    Slack,
    Webhook,
}

impl ReceiverKind {
    fn as_str(self) -> &'static str {
        match self {
            ReceiverKind::Email => "email",
            ReceiverKind::Slack => "slack",
            ReceiverKind::Webhook => "webhook",
        }
    }

    /// The keys a receiver of this kind takes (besides `kind`).
    fn keys(self) -> &'static [&'static str] {
        match self {
            ReceiverKind::Email => &[
                "smarthost",
                "from",
                "to",
                "auth_username",
                "auth_password_file",
                "require_tls",
            ],
            ReceiverKind::Slack => &["channel", "webhook_url_file"],
            ReceiverKind::Webhook => &["url", "bearer_token_file"],
        }
    }

    /// What the receiver's secret is, and its file key.
    pub(crate) fn secret(self) -> (&'static str, &'static str) {
        match self {
            ReceiverKind::Email => ("SMTP password", "auth_password_file"),
            ReceiverKind::Slack => ("Slack webhook URL", "webhook_url_file"),
            ReceiverKind::Webhook => ("bearer token", "bearer_token_file"),
        }
    }
}

/// Every key of every kind, flat, so that a key of another kind is reported by name ("`to`
/// is a key of email receivers") rather than as unknown.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReceiver {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ReceiverKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
}

impl RawReceiver {
    /// The keys set, by name.
    fn set_keys(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, k: &'static str| {
            if set {
                v.push(k);
            }
        };
        add(self.smarthost.is_some(), "smarthost");
        add(self.from.is_some(), "from");
        add(self.to.is_some(), "to");
        add(self.auth_username.is_some(), "auth_username");
        add(self.auth_password_file.is_some(), "auth_password_file");
        add(self.require_tls.is_some(), "require_tls");
        add(self.channel.is_some(), "channel");
        add(self.webhook_url_file.is_some(), "webhook_url_file");
        add(self.url.is_some(), "url");
        add(self.bearer_token_file.is_some(), "bearer_token_file");
        v
    }

    /// The `*_file` key of the receiver's secret, when set.
    pub(crate) fn secret_file(&self) -> Option<(&'static str, &str)> {
        let (_, key) = self.kind?.secret();
        let value = match self.kind? {
            ReceiverKind::Email => self.auth_password_file.as_deref(),
            ReceiverKind::Slack => self.webhook_url_file.as_deref(),
            ReceiverKind::Webhook => self.bearer_token_file.as_deref(),
        };
        value.map(|v| (key, v))
    }

    fn from_model(r: &Receiver) -> RawReceiver {
        match r {
            Receiver::Email(e) => RawReceiver {
                kind: Some(ReceiverKind::Email),
                smarthost: Some(e.smarthost.clone()),
                from: Some(e.from.clone()),
                to: Some(e.to.clone()),
                auth_username: e.auth_username.clone(),
                auth_password_file: e.auth_password_file.clone(),
                require_tls: Some(e.require_tls),
                ..RawReceiver::default()
            },
            Receiver::Slack(s) => RawReceiver {
                kind: Some(ReceiverKind::Slack),
                channel: s.channel.clone(),
                webhook_url_file: s.webhook_url_file.clone(),
                ..RawReceiver::default()
            },
            Receiver::Webhook(w) => RawReceiver {
                kind: Some(ReceiverKind::Webhook),
                url: Some(w.url.clone()),
                bearer_token_file: w.bearer_token_file.clone(),
                ..RawReceiver::default()
            },
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoutes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical: Option<RawRoute>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<RawRoute>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receivers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
}

impl RawAlertmanager {
    pub fn apply(self, m: &mut AlertmanagerConfig, diags: &mut Vec<Diagnostic>) {
        if let Some(v) = self.group_wait {
            m.group_wait = v;
        }
        if let Some(v) = self.group_interval {
            m.group_interval = v;
        }
        if let Some(v) = self.repeat_interval {
            m.repeat_interval = v;
        }
        if let Some(v) = self.webhook_url {
            m.webhook_url = Some(v);
        }
        for (name, raw) in self.receivers.unwrap_or_default() {
            if let Some(r) = receiver(&name, raw, diags) {
                m.receivers.insert(name, r);
            }
        }
        if let Some(routes) = self.routes {
            let route = |r: RawRoute| SeverityRoute {
                receivers: r.receivers.unwrap_or_default(),
                repeat_interval: r.repeat_interval,
            };
            m.routes.critical = routes.critical.map(route);
            m.routes.warning = routes.warning.map(route);
        }
    }

    pub fn from_model(m: &AlertmanagerConfig) -> Self {
        let route = |r: &SeverityRoute| RawRoute {
            receivers: Some(r.receivers.clone()),
            repeat_interval: r.repeat_interval.clone(),
        };
        RawAlertmanager {
            group_wait: Some(m.group_wait.clone()),
            group_interval: Some(m.group_interval.clone()),
            repeat_interval: Some(m.repeat_interval.clone()),
            webhook_url: m.webhook_url.clone(),
            receivers: (!m.receivers.is_empty()).then(|| {
                m.receivers
                    .iter()
                    .map(|(n, r)| (n.clone(), RawReceiver::from_model(r)))
                    .collect()
            }),
            routes: (m.routes != AlertRoutes::default()).then(|| RawRoutes {
                critical: m.routes.critical.as_ref().map(route),
                warning: m.routes.warning.as_ref().map(route),
            }),
        }
    }
}

/// One receiver of the model from its keys; `None` (with the reasons) when a key its kind
/// needs is missing or it has keys of another kind.
fn receiver(name: &str, raw: RawReceiver, diags: &mut Vec<Diagnostic>) -> Option<Receiver> {
    let path = format!("alertmanager.receivers.{name}");
    let Some(kind) = raw.kind else {
        diags.push(
            Diagnostic::new(format!("{path}.kind"), "a receiver needs a `kind`")
                .help("add kind = \"email\", \"slack\" or \"webhook\""),
        );
        return None;
    };
    let mut ok = true;
    for key in raw.set_keys() {
        if !kind.keys().contains(&key) {
            let of = [
                ReceiverKind::Email,
                ReceiverKind::Slack,
                ReceiverKind::Webhook,
            ]
            .into_iter()
            .find(|k| k.keys().contains(&key))
            .map_or("", ReceiverKind::as_str);
            diags.push(
                Diagnostic::new(
                    format!("{path}.{key}"),
                    format!(
                        "`{key}` is a key of {of} receivers; this one is kind = \"{}\"",
                        kind.as_str()
                    ),
                )
                .help(format!(
                    "remove it; {} receivers take: {}",
                    kind.as_str(),
                    kind.keys().join(", ")
                )),
            );
            ok = false;
        }
    }
    let mut need = |value: Option<String>, key: &str, example: &str| match value {
        Some(v) => v,
        None => {
            diags.push(
                Diagnostic::new(
                    format!("{path}.{key}"),
                    format!("{} receivers need `{key}`", kind.as_str()),
                )
                .help(format!("add {key} = {example}")),
            );
            ok = false;
            String::new()
        }
    };
    let r = match kind {
        ReceiverKind::Email => Receiver::Email(EmailReceiver {
            smarthost: need(raw.smarthost, "smarthost", "\"smtp.example.com:587\""),
            from: need(raw.from, "from", "\"atlas@example.com\""),
            to: match raw.to {
                Some(to) => to,
                None => {
                    need(None, "to", "[\"oncall@example.com\"]");
                    Vec::new()
                }
            },
            auth_username: raw.auth_username,
            auth_password_file: raw.auth_password_file,
            require_tls: raw.require_tls.unwrap_or(true),
        }),
        ReceiverKind::Slack => Receiver::Slack(SlackReceiver {
            channel: raw.channel,
            webhook_url_file: raw.webhook_url_file,
        }),
        ReceiverKind::Webhook => Receiver::Webhook(WebhookReceiver {
            url: need(raw.url, "url", "\"https://hooks.example.internal/alerts\""),
            bearer_token_file: raw.bearer_token_file,
        }),
    };
    ok.then_some(r)
}

impl Receiver {
    pub fn kind_name(&self) -> &'static str {
        self.raw_kind().as_str()
    }

    fn raw_kind(&self) -> ReceiverKind {
        match self {
            Receiver::Email(_) => ReceiverKind::Email,
            Receiver::Slack(_) => ReceiverKind::Slack,
            Receiver::Webhook(_) => ReceiverKind::Webhook,
        }
    }
}

/// The environment variable a receiver's secret can come from.
pub fn secret_env_name(receiver: &str) -> String {
    format!(
        "{RECEIVER_SECRET_ENV_PREFIX}{}",
        receiver.to_ascii_uppercase().replace('-', "_")
    )
}

/// Each receiver's secret: its environment variable, else its `*_file` (relative to `base`).
/// A variable with the prefix that names no receiver is refused (a typo would otherwise leave
/// a receiver without its secret, silently).
pub(crate) fn resolve_secrets(
    env: &[(String, String)],
    raw: Option<&RawAlertmanager>,
    base: &Path,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let receivers = raw
        .and_then(|a| a.receivers.as_ref())
        .cloned()
        .unwrap_or_default();
    for (var, _) in env {
        if var.starts_with(RECEIVER_SECRET_ENV_PREFIX)
            && !receivers.keys().any(|n| secret_env_name(n) == *var)
        {
            let names: Vec<&str> = receivers.keys().map(String::as_str).collect();
            diags.push(Diagnostic {
                path: String::new(),
                location: Some(super::Location::Env {
                    variable: var.clone(),
                }),
                message: format!("`{var}` names no receiver in alertmanager.receivers"),
                help: Some(match names.is_empty() {
                    true => "add the receiver to atlas.toml, or unset the variable".into(),
                    false => format!(
                        "receivers: {}; the variable is {RECEIVER_SECRET_ENV_PREFIX} + the name upper-cased, - as _",
                        names.join(", ")
                    ),
                }),
            });
        }
    }
    let mut out = BTreeMap::new();
    for (name, r) in &receivers {
        let from_env = env
            .iter()
            .find(|(k, v)| *k == secret_env_name(name) && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string());
        let value = from_env.or_else(|| {
            let (key, file) = r.secret_file()?;
            let key = format!("alertmanager.receivers.{name}.{key}");
            super::secrets::read_token(&key, file, base, diags, warnings)
        });
        if let Some(v) = value {
            out.insert(name.clone(), v);
        }
    }
    out
}

/// Semantic checks: names, addresses, durations, every route's receivers known, every
/// receiver used and holding the secret it needs.
pub(crate) fn validate(c: &Config, d: &mut Vec<Diagnostic>) {
    let a = &c.alertmanager;
    if a.webhook_url.is_some() && !a.receivers.is_empty() {
        d.push(
            Diagnostic::new(
                "alertmanager.webhook_url",
                "is set together with alertmanager.receivers",
            )
            .help(
                "move it into a receiver: [alertmanager.receivers.webhook] kind = \"webhook\", url = \"...\", and route the severities to it",
            ),
        );
    }
    for (name, r) in &a.receivers {
        receiver_checks(name, r, c.secrets.receivers.get(name), d);
    }
    for severity in Severity::ALL {
        let Some(route) = a.routes.get(severity) else {
            continue;
        };
        let path = format!("alertmanager.routes.{}", severity.as_str());
        if route.receivers.is_empty() {
            d.push(
                Diagnostic::new(format!("{path}.receivers"), "is empty")
                    .help("name at least one receiver, or remove the route"),
            );
        }
        for (i, r) in route.receivers.iter().enumerate() {
            if !a.receivers.contains_key(r) {
                let known: Vec<&str> = a.receivers.keys().map(String::as_str).collect();
                d.push(
                    Diagnostic::new(
                        format!("{path}.receivers[{i}]"),
                        format!("`{r}` is not a receiver"),
                    )
                    .help(match known.is_empty() {
                        true => format!("add [alertmanager.receivers.{r}] with its kind and keys"),
                        false => format!("receivers: {}", known.join(", ")),
                    }),
                );
            }
        }
        if let Some(e) = route
            .repeat_interval
            .as_deref()
            .and_then(|v| formats::prometheus_duration(v).err())
        {
            d.push(
                Diagnostic::new(format!("{path}.repeat_interval"), e)
                    .help("e.g. 1h for critical, 12h for warning"),
            );
        }
    }
    for name in a.receivers.keys() {
        let used = Severity::ALL
            .iter()
            .filter_map(|s| a.routes.get(*s))
            .any(|r| r.receivers.contains(name));
        if !used {
            d.push(
                Diagnostic::new(
                    format!("alertmanager.receivers.{name}"),
                    "no route sends alerts to this receiver",
                )
                .help(format!(
                    "add it to alertmanager.routes.critical and/or .warning: receivers = [\"{name}\"]"
                )),
            );
        }
    }
}

fn receiver_checks(name: &str, r: &Receiver, secret: Option<&String>, d: &mut Vec<Diagnostic>) {
    let path = format!("alertmanager.receivers.{name}");
    if let Err(e) = receiver_name(name) {
        d.push(
            Diagnostic::new(path.clone(), format!("receiver name {e}"))
                .help("use lower-case letters, digits and -, e.g. oncall-mail"),
        );
    }
    let (what, file_key) = r.raw_kind().secret();
    let how = format!(
        "set {} or name a file (mode 0600) holding it with {file_key}",
        secret_env_name(name)
    );
    match r {
        Receiver::Email(e) => {
            if let Err(why) = smarthost(&e.smarthost) {
                d.push(
                    Diagnostic::new(format!("{path}.smarthost"), why)
                        .help("write host:port, e.g. smtp.example.com:587"),
                );
            }
            for (key, addr) in std::iter::once(("from".to_string(), &e.from)).chain(
                e.to.iter()
                    .enumerate()
                    .map(|(i, t)| (format!("to[{i}]"), t)),
            ) {
                if !is_address(addr) {
                    d.push(
                        Diagnostic::new(
                            format!("{path}.{key}"),
                            format!("`{addr}` is not an email address"),
                        )
                        .help("write it like ops@example.com"),
                    );
                }
            }
            if e.to.is_empty() {
                d.push(
                    Diagnostic::new(format!("{path}.to"), "is empty")
                        .help("list at least one address"),
                );
            }
            match (&e.auth_username, secret) {
                (Some(_), None) => d.push(
                    Diagnostic::new(
                        format!("{path}.auth_username"),
                        format!("is set but the {what} is missing"),
                    )
                    .help(how),
                ),
                (None, Some(_)) => d.push(
                    Diagnostic::new(
                        format!("{path}.auth_username"),
                        format!("the {what} is given but no auth_username"),
                    )
                    .help("add auth_username, or drop the password for a server without SMTP AUTH"),
                ),
                _ => {}
            }
        }
        Receiver::Slack(s) => {
            match secret {
                None => d.push(
                    Diagnostic::new(format!("{path}.webhook_url_file"), format!("the {what} is missing"))
                        .help(how),
                ),
                Some(url) if !url.starts_with("https://") && !url.starts_with("http://") => d.push(
                    // Never repeat the value: it is the secret.
                    Diagnostic::new(
                        format!("{path}.webhook_url_file"),
                        format!("the {what} is not an http(s) URL"),
                    )
                    .help("the file (or variable) holds the whole https://hooks.slack.com/services/... URL"),
                ),
                Some(_) => {}
            }
            if let Some(ch) = s.channel.as_ref().filter(|c| c.trim().is_empty()) {
                d.push(
                    Diagnostic::new(format!("{path}.channel"), format!("`{ch}` is empty"))
                        .help("write it like #alerts, or remove it to use the webhook's channel"),
                );
            }
        }
        Receiver::Webhook(w) => {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                d.push(
                    Diagnostic::new(
                        format!("{path}.url"),
                        format!("`{}` is not an http(s) URL", w.url),
                    )
                    .help("write it like https://hooks.example.internal/alerts"),
                );
            } else if has_userinfo(&w.url) {
                // Said without the URL: the part before @ may be a password.
                d.push(
                    Diagnostic::new(
                        format!("{path}.url"),
                        "carries a user name or password, which would end up in the rendered alertmanager.yml",
                    )
                    .help(format!("drop it from the URL and pass a token instead: {how}")),
                );
            }
        }
    }
}

fn receiver_name(name: &str) -> Result<(), String> {
    if name == DEFAULT_RECEIVER {
        return Err(format!(
            "`{name}` is reserved (it keeps the alerts no route takes)"
        ));
    }
    // `-` only: names become environment variables with `-` as `_`, so `a_b` would collide.
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "`{name}` is not lower-case letters, digits and - (at most 63)"
        )),
    }
}

fn smarthost(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("`{s}` is not host:port")),
    }
}

fn is_address(a: &str) -> bool {
    let a = a.trim();
    // `Name <addr>` is what Alertmanager's from/to accept too.
    let addr = match (a.find('<'), a.ends_with('>')) {
        (Some(i), true) => &a[i + 1..a.len() - 1],
        _ => a,
    };
    matches!(addr.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !addr.contains(' '))
}

fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{errors, has};
    use super::super::{ConfigError, LoadOptions, from_layers, to_json, to_toml};
    use super::*;

    fn load(text: &str, env: &[(&str, &str)], base: &Path) -> Result<Config, ConfigError> {
        let opts = LoadOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LoadOptions::default()
        };
        from_layers(Some("atlas.toml"), Some(text), base, &opts).map(|(c, _)| c)
    }

    const ALL_KINDS: &str = r##"
[alertmanager.receivers.oncall]
kind = "email"
smarthost = "smtp.example.com:587"
from = "Atlas <atlas@example.com>"
to = ["oncall@example.com", "ops@example.com"]
auth_username = "atlas@example.com"
auth_password_file = "smtp-password"

[alertmanager.receivers.chat]
kind = "slack"
channel = "#alerts"
webhook_url_file = "/nonexistent/ignored-when-env-is-set"

[alertmanager.receivers.hook]
kind = "webhook"
url = "https://hooks.example.internal/alerts"

[alertmanager.routes.critical]
receivers = ["oncall", "chat", "hook"]
repeat_interval = "1h"

[alertmanager.routes.warning]
receivers = ["chat"]
"##;

    #[test]
    fn receivers_and_routes_load_with_their_secrets_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("smtp-password"), "smtp-s3cret\n").unwrap();
        let env = [(
            "ATLAS_RECEIVER_SECRET_CHAT",
            "https://hooks.slack.com/services/T/B/slack-s3cret",
        )];
        let c = load(ALL_KINDS, &env, dir.path()).unwrap();
        let a = &c.alertmanager;
        assert_eq!(a.receivers.len(), 3);
        let Receiver::Email(e) = &a.receivers["oncall"] else {
            panic!("{:?}", a.receivers["oncall"])
        };
        assert!(e.require_tls, "STARTTLS unless turned off");
        assert_eq!(e.to.len(), 2);
        assert_eq!(c.secrets.receivers["oncall"], "smtp-s3cret");
        assert!(c.secrets.receivers["chat"].ends_with("slack-s3cret"));
        assert!(!c.secrets.receivers.contains_key("hook"), "no token given");
        let critical = a.routes.critical.as_ref().unwrap();
        assert_eq!(critical.receivers, ["oncall", "chat", "hook"]);
        assert_eq!(critical.repeat_interval.as_deref(), Some("1h"));
        assert_eq!(a.routes.warning.as_ref().unwrap().repeat_interval, None);
        // Shown, it loads back to the same configuration, and no secret is in it.
        for out in [to_toml(&c), to_json(&c).to_string(), format!("{c:?}")] {
            assert!(!out.contains("s3cret"), "{out}");
        }
        let shown = to_toml(&c);
        let back = load(&shown, &env, dir.path()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn inline_secrets_in_a_receiver_are_refused_without_echoing_them() {
        let text = "[alertmanager.receivers.m]\nkind = \"email\"\nsmarthost = \"h:25\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\nauth_username = \"u\"\nauth_password = \"pw-s3cret\"\n\
                    [alertmanager.receivers.s]\nkind = \"slack\"\nwebhook_url = \"https://hooks.slack.com/services/s3cret\"\n\
                    [alertmanager.routes.critical]\nreceivers = [\"m\", \"s\"]\n";
        let errs = errors(text, &[]);
        has(
            &errs,
            "atlas.toml:7:1: alertmanager.receivers.m.auth_password: secrets are not accepted in the config file",
        );
        has(&errs, "ATLAS_RECEIVER_SECRET_M");
        has(
            &errs,
            "alertmanager.receivers.s.webhook_url: secrets are not accepted",
        );
        has(&errs, "webhook_url_file");
        assert!(errs.iter().all(|e| !e.contains("s3cret")), "{errs:?}");
    }

    #[test]
    fn receivers_are_checked_with_path_position_and_fix() {
        let text = r##"
[alertmanager.receivers.mail]
kind = "email"
smarthost = "smtp.example.com"
from = "atlas"
to = []
auth_username = "atlas@example.com"
channel = "#x"

[alertmanager.receivers.nokind]
url = "http://x:1/"

[alertmanager.receivers.hook]
kind = "webhook"
url = "https://user:pw-s3cret@hooks.example.internal/a"

[alertmanager.receivers.unused]
kind = "webhook"
url = "ftp://x"

[alertmanager.routes.critical]
receivers = ["mail", "hook", "pager"]
repeat_interval = "soon"
"##;
        let errs = errors(text, &[]);
        // `channel` belongs to slack receivers: the receiver is dropped, said once.
        has(
            &errs,
            "atlas.toml:8:11: alertmanager.receivers.mail.channel: `channel` is a key of slack receivers; this one is kind = \"email\"",
        );
        has(
            &errs,
            "atlas.toml:10:1: alertmanager.receivers.nokind.kind: a receiver needs a `kind`",
        );
        has(
            &errs,
            "alertmanager.receivers.hook.url: carries a user name or password",
        );
        has(
            &errs,
            "atlas.toml:19:7: alertmanager.receivers.unused.url: `ftp://x` is not an http(s) URL",
        );
        has(
            &errs,
            "alertmanager.receivers.unused: no route sends alerts to this receiver",
        );
        has(
            &errs,
            "atlas.toml:22:30: alertmanager.routes.critical.receivers[2]: `pager` is not a receiver",
        );
        has(&errs, "alertmanager.routes.critical.repeat_interval:");
        assert!(errs.iter().all(|e| !e.contains("s3cret")), "{errs:?}");

        let text = "[alertmanager.receivers.mail]\nkind = \"email\"\nsmarthost = \"smtp.example.com\"\nfrom = \"atlas\"\nto = []\nauth_username = \"u\"\n[alertmanager.routes.warning]\nreceivers = [\"mail\"]\n";
        let errs = errors(text, &[]);
        has(
            &errs,
            "atlas.toml:3:13: alertmanager.receivers.mail.smarthost: `smtp.example.com` is not host:port",
        );
        has(
            &errs,
            "alertmanager.receivers.mail.from: `atlas` is not an email address",
        );
        has(&errs, "alertmanager.receivers.mail.to: is empty");
        has(
            &errs,
            "alertmanager.receivers.mail.auth_username: is set but the SMTP password is missing",
        );
        has(&errs, "set ATLAS_RECEIVER_SECRET_MAIL");
    }

    #[test]
    fn slack_needs_its_url_and_env_names_must_name_a_receiver() {
        let text = "[alertmanager.receivers.chat]\nkind = \"slack\"\n[alertmanager.routes.critical]\nreceivers = [\"chat\"]\n";
        let errs = errors(text, &[("ATLAS_RECEIVER_SECRET_CAHT", "x")]);
        has(
            &errs,
            "alertmanager.receivers.chat.webhook_url_file: the Slack webhook URL is missing",
        );
        has(
            &errs,
            "ATLAS_RECEIVER_SECRET_CAHT (environment): `ATLAS_RECEIVER_SECRET_CAHT` names no receiver",
        );
        let errs = errors(text, &[("ATLAS_RECEIVER_SECRET_CHAT", "not-a-url-s3cret")]);
        has(&errs, "the Slack webhook URL is not an http(s) URL");
        assert!(errs.iter().all(|e| !e.contains("s3cret")), "{errs:?}");
    }

    #[test]
    fn the_shorthand_webhook_stays_and_excludes_receivers() {
        let c = load(
            "[alertmanager]\nwebhook_url = \"https://hooks.example.internal/a\"\n",
            &[],
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(
            c.alertmanager.webhook_url.as_deref(),
            Some("https://hooks.example.internal/a")
        );
        let errs = errors(
            &format!("[alertmanager]\nwebhook_url = \"https://h.example/a\"\n{ALL_KINDS}"),
            &[
                ("ATLAS_RECEIVER_SECRET_ONCALL", "p"),
                ("ATLAS_RECEIVER_SECRET_CHAT", "https://h/x"),
            ],
        );
        has(
            &errs,
            "atlas.toml:2:15: alertmanager.webhook_url: is set together with alertmanager.receivers",
        );
    }

    #[test]
    fn receiver_names_are_plain_and_default_is_reserved() {
        for (name, ok) in [
            ("oncall-mail", true),
            ("ops2", true),
            ("default", false),
            ("Ops", false),
            ("a_b", false),
            ("-x", false),
        ] {
            assert_eq!(receiver_name(name).is_ok(), ok, "{name}");
        }
        assert_eq!(
            secret_env_name("oncall-mail"),
            "ATLAS_RECEIVER_SECRET_ONCALL_MAIL"
        );
    }
}
