//! Loki: single binary, filesystem storage on its volume, retention by the compactor (all in
//! the config file).

use serde_json::json;

use crate::config::ServiceKind;

use super::paths::{expect_service_cert, service_cert};
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand};

/// The path the upstream image's command reads.
pub const CONFIG: &str = "/etc/loki/local-config.yaml";

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let l = &ctx.config.loki;
    let mut out = RenderedInstance::default();
    let tls = ctx.inst.tls.then(|| {
        let (cert, key) = service_cert(ServiceKind::Loki);
        out.expected_files
            .extend(expect_service_cert(ServiceKind::Loki));
        json!({"cert_file": cert, "key_file": key})
    });
    let text = ctx.template(
        "loki/config.yaml.j2",
        json!({
            "instance": ctx.name,
            "tls": tls,
            "retention_period": l.retention_period,
            "retention_delete_delay": l.retention_delete_delay,
        }),
    )?;
    out.files.push(RenderedFile::config(CONFIG, text));
    out.command = Some(ServiceCommand::plain(&[
        "/usr/bin/loki".to_string(),
        format!("-config.file={CONFIG}"),
    ]));
    Ok(out)
}
