//! step-ca: the upstream entrypoint initialises the CA on first start from `DOCKER_STEPCA_INIT_*`
//! variables; we give it the key password through a file.

use crate::config::ServiceKind;

use super::paths::service_user;
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand};

/// Outside `/home/step` on purpose: that is the data volume, which a file pushed into the
/// stopped container's root filesystem would sit underneath. The entrypoint (0.28 and later)
/// copies it into `$STEPPATH/secrets/password` during initialisation; note that it also prints
/// the provisioner password (the same value) once to the container's log.
pub const PASSWORD_FILE: &str = "/etc/step-ca/password";

/// `$STEPPATH` of the upstream image: the data volume. After initialisation step-ca reads its
/// key password from `secrets/password` here, and its keys are `secrets/root_ca_key` and
/// `secrets/intermediate_ca_key`, encrypted with it.
pub const STEPPATH: &str = "/home/step";

/// Port of step-ca's Prometheus listener (plain HTTP, `metricsAddress` in ca.json, step-ca
/// 0.25.3 and later). The first-start initialisation has no variable for it: the installer
/// adds `"metricsAddress": ":9290"` to `$STEPPATH/config/ca.json` after initialisation and
/// restarts step-ca (`engine::step_ca`).
pub const STEP_CA_METRICS_PORT: u16 = 9290;

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let s = &ctx.config.step_ca;
    let (uid, gid) = service_user(ServiceKind::StepCa);
    let mut out = RenderedInstance::default();
    let env = &mut out.environment;
    env.insert("DOCKER_STEPCA_INIT_NAME".into(), s.ca_name.clone());
    env.insert("DOCKER_STEPCA_INIT_DNS_NAMES".into(), s.dns_names.join(","));
    env.insert(
        "DOCKER_STEPCA_INIT_PASSWORD_FILE".into(),
        PASSWORD_FILE.into(),
    );
    env.insert("DOCKER_STEPCA_INIT_ADDRESS".into(), ":9000".into());
    if s.acme {
        env.insert("DOCKER_STEPCA_INIT_ACME".into(), "true".into());
    }
    // The image's entrypoint initialises the CA on first start, then execs step-ca.
    out.command = Some(ServiceCommand::wrapped(
        &["/bin/bash", "/entrypoint.sh"],
        &[
            "step-ca".to_string(),
            "--password-file".to_string(),
            format!("{STEPPATH}/secrets/password"),
            format!("{STEPPATH}/config/ca.json"),
        ],
    ));
    // No trailing newline: step reads the whole file as the password.
    out.files.push(RenderedFile::secret(
        PASSWORD_FILE,
        ctx.creds.step_ca_password.as_bytes(),
        uid,
        gid,
    ));
    Ok(out)
}
