//! Mosquitto: mosquitto.conf and the password file (hashes computed here, see passwd.rs).

use serde_json::json;

use crate::config::ServiceKind;

use super::passwd::mosquitto_password_line;
use super::paths::{expect_root, expect_service_cert, service_cert, service_user, step_ca_root};
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand, check};

pub const CONFIG: &str = "/mosquitto/config/mosquitto.conf";
pub const PASSWORD_FILE: &str = "/mosquitto/config/passwd";
/// The broker's ports inside its container. The host ports in `[mosquitto]` are only the
/// proxy devices' listen side, so changing them never touches the broker's configuration.
pub const MQTT_PORT: u16 = 1883;
pub const MQTTS_PORT: u16 = 8883;

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let m = &ctx.config.mosquitto;
    let mut out = RenderedInstance::default();
    let mut lines = String::new();
    for user in &m.users {
        // `user:hash` lines: a colon would split the name.
        check::word("mosquitto.users", user)?;
        if user.contains(':') {
            return Err(RenderError::UnsafeValue {
                field: "mosquitto.users".to_string(),
                value: user.clone(),
                why: "Mosquitto user names cannot contain `:`".to_string(),
            });
        }
        let Some(cred) = ctx.creds.mosquitto.get(user) else {
            return Err(RenderError::MissingSecret {
                instance: ctx.name.to_string(),
                what: format!("a generated password for MQTT user `{user}`"),
                fix: "the installer generates one per mosquitto.users entry; this is a bug if you see it".to_string(),
            });
        };
        lines.push_str(&mosquitto_password_line(user, &cred.password, &cred.salt));
        lines.push('\n');
    }
    let tls = m.tls.then(|| {
        let (cert, key) = service_cert(ServiceKind::Mosquitto);
        out.expected_files
            .extend(expect_service_cert(ServiceKind::Mosquitto));
        out.expected_files.push(expect_root(ServiceKind::Mosquitto));
        json!({"ca_file": step_ca_root(ServiceKind::Mosquitto), "cert_file": cert, "key_file": key})
    });
    let data = ctx
        .inst
        .volume
        .as_ref()
        .map_or("/mosquitto/data", |v| v.path.as_str());
    let text = ctx.template(
        "mosquitto/mosquitto.conf.j2",
        json!({
            "instance": ctx.name,
            "password_file": PASSWORD_FILE,
            "persistence_location": format!("{}/", data.trim_end_matches('/')),
            "mqtt_port": MQTT_PORT,
            "mqtts_port": MQTTS_PORT,
            "tls": tls,
        }),
    )?;
    let (uid, gid) = service_user(ServiceKind::Mosquitto);
    out.files.push(RenderedFile::config(CONFIG, text));
    // The image's entrypoint hands /mosquitto to the broker's user, then execs the broker.
    out.command = Some(ServiceCommand::wrapped(
        &["/docker-entrypoint.sh"],
        &["/usr/sbin/mosquitto", "-c", CONFIG],
    ));
    out.files
        .push(RenderedFile::secret(PASSWORD_FILE, lines, uid, gid));
    Ok(out)
}
