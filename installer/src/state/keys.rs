//! Every `user.atlas.*` config key atlas-install writes, named once. Keys of the Atlas
//! project's config are read and written only through [`super::ProjectState`]; the others sit
//! on the objects they describe (the ownership stamp on everything atlas owns, a network's
//! owning project, Caddy's external address) or in the `default` project (the lock).

use std::collections::BTreeMap;

/// What every atlas key starts with.
pub const PREFIX: &str = "user.atlas.";

// The ownership stamp, on every object atlas creates.
/// `"true"` on every object atlas created; anything without it is foreign and left alone.
pub const MANAGED: &str = "user.atlas.managed";
/// atlas-install version that last wrote the object.
pub const VERSION: &str = "user.atlas.version";
/// Hash of the desired state the object was written from.
pub const HASH: &str = "user.atlas.hash";

// On single objects.
/// On a network (which lives outside projects): the Atlas project that owns it.
pub const NETWORK_PROJECT: &str = "user.atlas.project";
/// On an instance: its address on the external bridge, chosen once.
pub const EXTERNAL_ADDRESS: &str = "user.atlas.external-address";

// In the Atlas project's config: the project state.
/// Prefix of every stored secret (`user.atlas.secret.<name>`).
pub const SECRET_PREFIX: &str = "user.atlas.secret.";
/// The current install record.
pub const RECORD: &str = "user.atlas.record";
/// The install before it (what `rollback` returns to).
pub const RECORD_PREVIOUS: &str = "user.atlas.record.previous";
/// The cluster member the stack was placed on at first install.
pub const PLACEMENT_MEMBER: &str = "user.atlas.placement.member";
/// Why the state bucket is not there (`unsupported`, `blocked`).
pub const STATE_BUCKET: &str = "user.atlas.state-bucket";
/// Prefix of what an instance was before an upgrade replaced it
/// (`user.atlas.upgrade.<instance>`).
pub const UPGRADE_PREFIX: &str = "user.atlas.upgrade.";
/// JSON object of the server config keys atlas set, with the value it set.
pub const SERVER_KEYS: &str = "user.atlas.server-keys";
/// Comma-separated fingerprints of the certificates atlas trusted.
pub const METRICS_CERTS: &str = "user.atlas.metrics-certificates";
/// Comma-separated server keys atlas set to a value the server then dropped as its default
/// (6.0.4 keeps no `loki.types` equal to `lifecycle,logging`): unset counts as set.
pub const SERVER_DEFAULTS: &str = "user.atlas.server-keys-default";

// In the `default` project's config, which always exists.
/// Prefix of the lock keys (`user.atlas.lock.<project>`).
pub const LOCK_PREFIX: &str = "user.atlas.lock.";

/// The stored secret `name` (`grafana-admin-password`, `mosquitto.<user>.password`, ...).
pub fn secret(name: &str) -> String {
    format!("{SECRET_PREFIX}{name}")
}

/// What `instance` was before an upgrade replaced it.
pub fn upgrade(instance: &str) -> String {
    format!("{UPGRADE_PREFIX}{instance}")
}

/// The lock of Atlas project `project`, in the `default` project's config.
pub fn lock(project: &str) -> String {
    format!("{LOCK_PREFIX}{project}")
}

/// Whether a config map carries the managed marker.
pub fn is_owned(config: &BTreeMap<String, String>) -> bool {
    config.get(MANAGED).is_some_and(|v| v == "true")
}

/// The stamp keys: written on every update, never part of an object's content hash.
pub const STAMP: [&str; 3] = [MANAGED, VERSION, HASH];

/// Names of the generated secrets (`user.atlas.secret.<name>`).
pub mod secrets {
    pub const GRAFANA_ADMIN: &str = "grafana-admin-password";
    pub const STEP_CA: &str = "step-ca-password";
    pub const METRICS_CERT: &str = "metrics-certificate";
    pub const METRICS_KEY: &str = "metrics-key";
    /// The key of the HMACs that stand for pushed files in hashes and records.
    pub const HASH_KEY: &str = "hash-key";
    /// The Grafana password being rotated to, until Grafana has it.
    pub const GRAFANA_NEXT: &str = "grafana-admin-password.next";
    /// The step-ca password being rotated to, until every key is re-encrypted.
    pub const STEP_CA_NEXT: &str = "step-ca-password.next";

    pub fn mosquitto_password(user: &str) -> String {
        format!("mosquitto.{user}.password")
    }

    pub fn mosquitto_salt(user: &str) -> String {
        format!("mosquitto.{user}.salt")
    }

    /// The Mosquitto user of a `mosquitto.<user>.password` or `.salt` name.
    pub fn mosquitto_user(name: &str) -> Option<&str> {
        let rest = name.strip_prefix("mosquitto.")?;
        rest.strip_suffix(".password")
            .or_else(|| rest.strip_suffix(".salt"))
    }
}
