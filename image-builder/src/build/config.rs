//! The service description and the OCI config/manifest of an Atlas image, from the base
//! image's config and the recipe (the recipe wins; what it leaves out is inherited).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    ATLAS_LABEL, AtlasSpec, BASE_DIGEST_LABEL, BASE_NAME_LABEL, RECIPE_HASH_LABEL, SERVICE_LABEL,
    SERVICE_SPEC_LABEL,
};
use crate::init::{ServiceSpec, SpecError};
use crate::manifest::{
    DOCKER_LAYER_FOREIGN_GZIP, DOCKER_LAYER_GZIP, Descriptor, OCI_LAYER_GZIP, OCI_MANIFEST,
    RuntimeConfig,
};
use crate::source::PulledImage;

/// Base `Env` with the recipe's variables laid over it: a key the base has keeps its place
/// with the recipe's value, new keys follow in name order. `HOME` is added when neither has
/// it, because atlas-init does not take the runtime's (`/root` for root, else `/`, as
/// container engines do when they cannot look the user up).
pub fn merge_env(
    base: &[String],
    recipe: &BTreeMap<String, String>,
    user: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for kv in base {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        if !seen.insert(key.to_owned()) {
            continue;
        }
        match recipe.get(key) {
            Some(v) => out.push(format!("{key}={v}")),
            None => out.push(kv.clone()),
        }
    }
    for (k, v) in recipe {
        if seen.insert(k.clone()) {
            out.push(format!("{k}={v}"));
        }
    }
    if !seen.contains("HOME") {
        let root = user.is_none_or(|u| {
            let name = u.split(':').next().unwrap_or("");
            name.is_empty() || name == "0" || name == "root"
        });
        out.push(format!("HOME={}", if root { "/root" } else { "/" }));
    }
    out
}

/// The service atlas-init starts: entrypoint, cmd, user, workdir and env of the recipe over
/// the base config. Setting an entrypoint without a cmd drops the base's cmd (Dockerfile
/// semantics: the base cmd was written for the base entrypoint).
pub fn service_spec(base: &RuntimeConfig, spec: &AtlasSpec) -> Result<ServiceSpec, SpecError> {
    let rt = &spec.runtime;
    let entrypoint = rt
        .entrypoint
        .clone()
        .unwrap_or_else(|| base.entrypoint.clone());
    let cmd = match (&rt.entrypoint, &rt.cmd) {
        (_, Some(cmd)) => cmd.clone(),
        (Some(_), None) => Vec::new(),
        (None, None) => base.cmd.clone(),
    };
    let user = rt
        .user
        .clone()
        .or_else(|| Some(base.user.clone()).filter(|u| !u.is_empty()));
    let working_dir = rt
        .workdir
        .clone()
        .or_else(|| Some(base.working_dir.clone()).filter(|w| !w.is_empty()));
    let service = ServiceSpec {
        entrypoint,
        cmd,
        env: merge_env(&base.env, &rt.env, user.as_deref()),
        working_dir,
        user,
        stop_grace_period: spec.stop_grace_period,
    };
    // Validates (entrypoint and cmd not both empty, absolute workdir, unique keys...).
    service.to_json()?;
    Ok(service)
}

/// Docker layer media types name the same bytes as the OCI ones; an OCI manifest (what umoci
/// and every registry read) must use the OCI names.
pub fn oci_layer_type(media_type: &str) -> String {
    match media_type {
        DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => OCI_LAYER_GZIP.to_owned(),
        other => other.to_owned(),
    }
}

/// The base config JSON with the runtime part pointed at atlas-init and the Atlas layer's
/// diff_id appended. Fields we do not model (created, history, ...) are kept.
pub(super) fn image_config(
    base: &PulledImage,
    spec: &AtlasSpec,
    service: &ServiceSpec,
    diff_id: &str,
) -> Result<Vec<u8>, String> {
    let mut root: Map<String, Value> = match serde_json::from_slice(&base.config_bytes) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("not an object".to_owned()),
        Err(e) => return Err(e.to_string()),
    };
    let mut labels: BTreeMap<String, String> = base.config.config.labels.clone();
    labels.extend(spec.runtime.labels.clone());
    labels.insert(ATLAS_LABEL.to_owned(), "1".to_owned());
    labels.insert(
        BASE_DIGEST_LABEL.to_owned(),
        base.manifest_digest.to_string(),
    );
    if let Some(r) = &base.reference {
        labels.insert(BASE_NAME_LABEL.to_owned(), r.to_string());
    }
    if let Some(h) = &spec.recipe_hash {
        labels.insert(RECIPE_HASH_LABEL.to_owned(), h.clone());
    }
    labels.insert(SERVICE_LABEL.to_owned(), spec.name.clone());
    labels.insert(
        SERVICE_SPEC_LABEL.to_owned(),
        service.to_json_compact().map_err(|e| e.to_string())?,
    );
    let mut ports: BTreeMap<String, Value> = base.config.config.exposed_ports.clone();
    for p in &spec.runtime.ports {
        ports.insert(p.clone(), json!({}));
    }
    let mut rc = match root.remove("config") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // atlas-init runs as root (it configures the network) and drops to the service's user.
    rc.remove("User");
    rc.remove("Cmd");
    rc.remove("Healthcheck");
    rc.insert("Entrypoint".into(), json!(["/sbin/init"]));
    rc.insert("Env".into(), json!(service.env));
    rc.insert("WorkingDir".into(), json!("/"));
    rc.insert("Labels".into(), json!(labels));
    if !ports.is_empty() {
        rc.insert("ExposedPorts".into(), json!(ports));
    }
    rc.insert("StopSignal".into(), json!("SIGTERM"));
    root.insert("config".into(), Value::Object(rc));

    let mut rootfs = match root.remove("rootfs") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut diff_ids = match rootfs.remove("diff_ids") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    diff_ids.push(json!(diff_id));
    rootfs.insert("type".into(), json!("layers"));
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));
    root.insert("rootfs".into(), Value::Object(rootfs));

    let created = root
        .get("created")
        .cloned()
        .unwrap_or(json!("1970-01-01T00:00:00Z"));
    let mut history = match root.remove("history") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    history.push(json!({
        "created": created,
        "created_by": format!("atlas-install image build {} (atlas-init, service.json, network.json)", spec.name),
        "comment": "atlas layer",
    }));
    root.insert("history".into(), Value::Array(history));
    serde_json::to_vec(&Value::Object(root)).map_err(|e| e.to_string())
}

/// The OCI manifest of the Atlas image, annotated with its base.
pub(super) fn manifest(config: &Descriptor, layers: &[Descriptor], base: &PulledImage) -> Vec<u8> {
    let mut annotations = BTreeMap::from([(
        BASE_DIGEST_LABEL.to_owned(),
        base.manifest_digest.to_string(),
    )]);
    if let Some(r) = &base.reference {
        annotations.insert(BASE_NAME_LABEL.to_owned(), r.to_string());
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": annotations,
    });
    serde_json::to_vec(&m).unwrap_or_else(|_| unreachable!("a JSON value always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_recipe_wins_base_kept_home_added() {
        let base = vec!["PATH=/bin".to_owned(), "A=1".to_owned(), "A=dup".to_owned()];
        let recipe = BTreeMap::from([
            ("A".to_owned(), "2".to_owned()),
            ("B".to_owned(), "3".to_owned()),
        ]);
        assert_eq!(
            merge_env(&base, &recipe, Some("nobody")),
            ["PATH=/bin", "A=2", "B=3", "HOME=/"]
        );
        assert_eq!(merge_env(&[], &BTreeMap::new(), None), ["HOME=/root"]);
        assert_eq!(
            merge_env(&["HOME=/x".into()], &BTreeMap::new(), Some("1:1")),
            ["HOME=/x"]
        );
    }

    #[test]
    fn entrypoint_resets_base_cmd() {
        let base = RuntimeConfig {
            entrypoint: vec!["/old".into()],
            cmd: vec!["--old".into()],
            user: "1000".into(),
            working_dir: "/srv".into(),
            ..RuntimeConfig::default()
        };
        let mut spec = AtlasSpec::convert("x");
        let s = service_spec(&base, &spec).unwrap();
        assert_eq!(
            (s.entrypoint.as_slice(), s.cmd.as_slice()),
            (&["/old".to_owned()][..], &["--old".to_owned()][..])
        );
        assert_eq!(s.user.as_deref(), Some("1000"));
        assert_eq!(s.working_dir.as_deref(), Some("/srv"));
        spec.runtime.entrypoint = Some(vec!["/new".into()]);
        let s = service_spec(&base, &spec).unwrap();
        assert!(s.cmd.is_empty());
        spec.runtime.cmd = Some(vec!["c".into()]);
        spec.runtime.user = Some("nobody".into());
        let s = service_spec(&base, &spec).unwrap();
        assert_eq!(s.cmd, ["c"]);
        assert_eq!(s.user.as_deref(), Some("nobody"));
        let empty = RuntimeConfig::default();
        let e = service_spec(&empty, &AtlasSpec::convert("x")).unwrap_err();
        assert!(e.to_string().contains("entrypoint"), "{e}");
    }
}
