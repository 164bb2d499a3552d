//! The embedded templates (`assets/`, `profiles/`) and the one Jinja environment that renders
//! them. Embedding means the binary runs from any directory with nothing on disk.

use minijinja::{Environment, UndefinedBehavior, Value};

use super::RenderError;

/// (name, source) of every template; names are paths under `assets/` or `profiles/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "caddy/Caddyfile.j2",
        include_str!("../../../assets/caddy/Caddyfile.j2"),
    ),
    (
        "caddy/site.j2",
        include_str!("../../../assets/caddy/site.j2"),
    ),
    (
        "prometheus/prometheus.yml.j2",
        include_str!("../../../assets/prometheus/prometheus.yml.j2"),
    ),
    (
        "prometheus/web.yml.j2",
        include_str!("../../../assets/prometheus/web.yml.j2"),
    ),
    (
        "alertmanager/alertmanager.yml.j2",
        include_str!("../../../assets/alertmanager/alertmanager.yml.j2"),
    ),
    (
        "loki/config.yaml.j2",
        include_str!("../../../assets/loki/config.yaml.j2"),
    ),
    (
        "grafana/datasources.yaml.j2",
        include_str!("../../../assets/grafana/datasources.yaml.j2"),
    ),
    (
        "mosquitto/mosquitto.conf.j2",
        include_str!("../../../assets/mosquitto/mosquitto.conf.j2"),
    ),
    (
        "profiles/base.toml.j2",
        include_str!("../../../profiles/base.toml.j2"),
    ),
    (
        "profiles/caddy.toml.j2",
        include_str!("../../../profiles/caddy.toml.j2"),
    ),
    (
        "profiles/grafana.toml.j2",
        include_str!("../../../profiles/grafana.toml.j2"),
    ),
    (
        "profiles/prometheus.toml.j2",
        include_str!("../../../profiles/prometheus.toml.j2"),
    ),
    (
        "profiles/loki.toml.j2",
        include_str!("../../../profiles/loki.toml.j2"),
    ),
    (
        "profiles/alertmanager.toml.j2",
        include_str!("../../../profiles/alertmanager.toml.j2"),
    ),
    (
        "profiles/step-ca.toml.j2",
        include_str!("../../../profiles/step-ca.toml.j2"),
    ),
    (
        "profiles/node-exporter.toml.j2",
        include_str!("../../../profiles/node-exporter.toml.j2"),
    ),
    (
        "profiles/mosquitto.toml.j2",
        include_str!("../../../profiles/mosquitto.toml.j2"),
    ),
    (
        "profiles/cloudflared.toml.j2",
        include_str!("../../../profiles/cloudflared.toml.j2"),
    ),
];

/// The alert rules are Prometheus templates themselves (`{{ $value }}`), so they are embedded
/// as they are, not rendered through Jinja.
pub const ALERT_RULES: &str = include_str!("../../../assets/prometheus/alerts.yml");

pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt variable must fail loudly, not render as an empty string into a config file.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("default delimiters are valid");
    env.set_syntax(syntax);
    // Profiles extend `base.toml.j2` by its short name.
    env.set_loader(|name| {
        Ok(TEMPLATES
            .iter()
            .find(|(n, _)| *n == name || n.strip_prefix("profiles/") == Some(name))
            .map(|(_, src)| src.to_string()))
    });
    env.add_filter("q", quote);
    env
}

/// A string as a double-quoted scalar. JSON escaping is valid in YAML and TOML alike, so one
/// filter keeps every value (domains, URLs, paths) from breaking the file around it.
fn quote(v: Value) -> Result<String, minijinja::Error> {
    // Strict mode does not stop an undefined value at a filter's door: do it here.
    if v.is_undefined() || v.is_none() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::UndefinedError,
            "quoting a missing value",
        ));
    }
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    Ok(serde_json::to_string(&s).unwrap_or_default())
}

pub fn render(
    env: &Environment<'static>,
    name: &str,
    ctx: serde_json::Value,
) -> Result<String, RenderError> {
    let err = |source| RenderError::Template {
        name: name.to_string(),
        source,
    };
    let tmpl = env.get_template(name).map_err(err)?;
    tmpl.render(to_value(ctx)).map_err(err)
}

/// serde_json values into template values (the crate's `serde` feature is not enabled).
fn to_value(v: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or_default()),
        },
        J::String(s) => Value::from(s),
        J::Array(a) => Value::from(a.into_iter().map(to_value).collect::<Vec<_>>()),
        J::Object(o) => Value::from(
            o.into_iter()
                .map(|(k, v)| (k, to_value(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = environment();
        for (name, _) in TEMPLATES {
            env.get_template(name)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn undefined_variables_are_errors() {
        let err = render(
            &environment(),
            "prometheus/web.yml.j2",
            serde_json::json!({"instance": "p"}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("prometheus/web.yml.j2"), "{err}");
    }

    #[test]
    fn quoting_survives_hostile_strings() {
        assert_eq!(quote(Value::from("a\"b\n")).unwrap(), r#""a\"b\n""#);
    }
}
