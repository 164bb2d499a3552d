//! Alertmanager: routes by severity to the configured receivers (email, Slack, webhook), the
//! inhibition of a warning by its critical, and one 0600 file per receiver secret.
//!
//! alertmanager.yml itself never holds a secret (so `render --out` can show it); each
//! secret goes in `/etc/alertmanager/secrets/<receiver>`, referenced by the `*_file` field
//! Alertmanager reads it from. Those fields work from Alertmanager 0.25 on (the Debian
//! binary of the test fixtures) as well as in current releases:
//! - email `auth_password_file`: 0.25 (read as is up to 0.26, so the file has no newline);
//! - slack `api_url_file`: 0.22;
//! - webhook: the URL is configuration, its credential a bearer token from the common HTTP
//!   client's `authorization.credentials_file`. Webhook `url_file` (0.26, fixed in 0.28) is
//!   not used, so 0.25 still works.
//!
//! The shorthand `alertmanager.webhook_url` keeps its old form: the URL inline, the whole
//! file then a secret.

use serde_json::json;

use crate::config::{DEFAULT_RECEIVER, LEGACY_WEBHOOK_RECEIVER, Receiver, ServiceKind, Severity};

use super::paths::service_user;
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand};

pub const CONFIG: &str = "/etc/alertmanager/alertmanager.yml";
pub const SECRET_DIR: &str = "/etc/alertmanager/secrets";

/// Labels a warning and its critical must share to be "the same target" (see the template).
pub const INHIBIT_EQUAL: [&str; 8] = [
    "family",
    "job",
    "instance",
    "member",
    "project",
    "name",
    "mountpoint",
    "device",
];

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let a = &ctx.config.alertmanager;
    let (uid, gid) = service_user(ServiceKind::Alertmanager);
    let mut files = Vec::new();
    let mut receivers = Vec::new();
    for (name, r) in &a.receivers {
        let secret = ctx.config.secrets.receivers.get(name);
        let secret_file = secret.map(|_| format!("{SECRET_DIR}/{name}"));
        if let (Some(value), Some(path)) = (secret, &secret_file) {
            // No trailing newline: Alertmanager before 0.27 takes the file as it is.
            files.push(RenderedFile::secret(path, value.as_bytes(), uid, gid));
        }
        let mut v = json!({"name": name, "kind": r.kind_name(), "secret_file": secret_file});
        match r {
            Receiver::Email(e) => {
                v["to"] = json!(e.to.join(", "));
                v["from"] = json!(e.from);
                v["smarthost"] = json!(e.smarthost);
                v["require_tls"] = json!(e.require_tls);
                v["auth_username"] = json!(e.auth_username);
            }
            Receiver::Slack(s) => v["channel"] = json!(s.channel),
            Receiver::Webhook(w) => v["url"] = json!(w.url),
        }
        receivers.push(v);
    }
    let mut routes = Vec::new();
    for severity in Severity::ALL {
        let Some(route) = a.routes.get(severity) else {
            continue;
        };
        for receiver in &route.receivers {
            routes.push(json!({
                "severity": severity.as_str(),
                "receiver": receiver,
                "repeat_interval": route.repeat_interval,
            }));
        }
    }
    let root_receiver = match a.webhook_url {
        Some(_) => LEGACY_WEBHOOK_RECEIVER,
        None => DEFAULT_RECEIVER,
    };
    let text = ctx.template(
        "alertmanager/alertmanager.yml.j2",
        json!({
            "instance": ctx.name,
            "root_receiver": root_receiver,
            "default_receiver": DEFAULT_RECEIVER,
            "legacy_receiver": LEGACY_WEBHOOK_RECEIVER,
            "legacy_webhook_url": a.webhook_url,
            "group_wait": a.group_wait,
            "group_interval": a.group_interval,
            "repeat_interval": a.repeat_interval,
            "routes": routes,
            "receivers": receivers,
            "inhibit_equal": INHIBIT_EQUAL,
            "secret_dir": (!files.is_empty()).then_some(SECRET_DIR),
        }),
    )?;
    // The shorthand's URL may carry its credential in the path (Slack, Teams): the file that
    // holds it is a secret, as it always was.
    files.push(match a.webhook_url {
        Some(_) => RenderedFile::secret(CONFIG, text, uid, gid),
        None => RenderedFile::config(CONFIG, text),
    });
    let data = ctx
        .inst
        .volume
        .as_ref()
        .map_or("/alertmanager", |v| v.path.as_str());
    Ok(RenderedInstance {
        files,
        command: Some(ServiceCommand::plain(&[
            "/bin/alertmanager".to_string(),
            format!("--config.file={CONFIG}"),
            format!("--storage.path={data}"),
            // Single node: no gossip listener on 9094.
            "--cluster.listen-address=".to_string(),
        ])),
        ..Default::default()
    })
}
