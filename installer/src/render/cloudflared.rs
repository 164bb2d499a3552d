//! cloudflared: the tunnel token as a file (never on the command line, where `ps` shows it),
//! metrics pinned to a known port for Prometheus. `tunnel run --token-file` exists from
//! cloudflared 2025.4.0; `--metrics` is a flag of `tunnel`, so it goes before `run`.

use crate::config::ServiceKind;

use super::paths::service_user;
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand};

pub const TOKEN_FILE: &str = "/etc/cloudflared/token";

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let Some(token) = &ctx.config.secrets.cloudflared_token else {
        return Err(RenderError::MissingSecret {
            instance: ctx.name.to_string(),
            what: "a Cloudflare tunnel token".to_string(),
            fix: "provide the tunnel token through the environment or cloudflared.token_file, or set instances.{name}.enabled = false".replace("{name}", ctx.name),
        });
    };
    let (uid, gid) = service_user(ServiceKind::Cloudflared);
    let metrics = format!("0.0.0.0:{}", ctx.config.cloudflared.metrics_port);
    Ok(RenderedInstance {
        files: vec![RenderedFile::secret(
            TOKEN_FILE,
            token.trim().as_bytes(),
            uid,
            gid,
        )],
        command: Some(ServiceCommand::plain(&[
            "cloudflared",
            "--no-autoupdate",
            "tunnel",
            "--metrics",
            &metrics,
            "run",
            "--token-file",
            TOKEN_FILE,
        ])),
        ..Default::default()
    })
}
