//! Alertmanager: one route to one receiver (a webhook when configured).

use serde_json::json;

use crate::config::ServiceKind;

use super::paths::service_user;
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand};

pub const CONFIG: &str = "/etc/alertmanager/alertmanager.yml";

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let a = &ctx.config.alertmanager;
    let text = ctx.template(
        "alertmanager/alertmanager.yml.j2",
        json!({
            "instance": ctx.name,
            "receiver": if a.webhook_url.is_some() { "webhook" } else { "default" },
            "webhook_url": a.webhook_url,
            "group_wait": a.group_wait,
            "group_interval": a.group_interval,
            "repeat_interval": a.repeat_interval,
        }),
    )?;
    // Webhook URLs often carry their credential in the path (Slack, Teams): treat as secret.
    let file = if a.webhook_url.is_some() {
        let (uid, gid) = service_user(ServiceKind::Alertmanager);
        RenderedFile::secret(CONFIG, text, uid, gid)
    } else {
        RenderedFile::config(CONFIG, text)
    };
    let data = ctx
        .inst
        .volume
        .as_ref()
        .map_or("/alertmanager", |v| v.path.as_str());
    Ok(RenderedInstance {
        files: vec![file],
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
