//! node-exporter: flags only; the host's /, /proc and /sys come in read-only under /host
//! (see profiles/node-exporter.toml.j2), and every collector reads the host's through them:
//! without `--path.procfs` it would read the container's /proc (LXCFS) and its own mount table,
//! where the /host mounts show up a second time.

use super::{Ctx, RenderError, RenderedInstance, ServiceCommand};

/// Where the profile mounts the host's root filesystem, /proc and /sys.
pub const HOST_ROOT: &str = "/host";
pub const HOST_PROC: &str = "/host/proc";
pub const HOST_SYS: &str = "/host/sys";

pub(super) fn render(_ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    Ok(RenderedInstance {
        command: Some(ServiceCommand::plain(&[
            "/bin/node_exporter".to_string(),
            format!("--path.rootfs={HOST_ROOT}"),
            format!("--path.procfs={HOST_PROC}"),
            format!("--path.sysfs={HOST_SYS}"),
        ])),
        ..Default::default()
    })
}
