//! node-exporter: flags only; the host's /, /proc and /sys come in read-only under /host
//! (see profiles/node-exporter.toml.j2).

use super::{Ctx, RenderError, RenderedInstance};

pub(super) fn render(_ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    Ok(RenderedInstance {
        command: Some(
            [
                "/bin/node_exporter",
                "--path.rootfs=/host",
                "--path.procfs=/host/proc",
                "--path.sysfs=/host/sys",
            ]
            .map(String::from)
            .to_vec(),
        ),
        ..Default::default()
    })
}
