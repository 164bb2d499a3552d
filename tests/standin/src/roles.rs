//! What each stand-in answers. Every body says it is a stand-in; none claims to be the product.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde_json::json;

use crate::args::Role;
use crate::http::{Request, Response};

/// Label sets of the most recent pushed streams kept for `GET /loki/api/v1/labels`.
const KEEP_STREAMS: usize = 256;

pub struct State {
    pub role: Role,
    /// Grafana: the started server (admin user, datasources, dashboards).
    pub grafana: OnceLock<crate::grafana::Grafana>,
    /// cloudflared: when the tunnel's connections register (never, for a token that does
    /// not reach the fixture edge).
    pub tunnel: OnceLock<Option<Instant>>,
    started: Instant,
    requests: AtomicU64,
    loki: Mutex<LokiState>,
}

#[derive(Default)]
struct LokiState {
    pushes: u64,
    entries: u64,
    bytes: u64,
    unparsed: u64,
    /// Lines and line bytes of JSON pushes, as Loki's distributor counts them (per tenant;
    /// without auth Loki's one tenant is `fake`).
    lines: u64,
    line_bytes: u64,
    streams: VecDeque<BTreeMap<String, String>>,
}

/// The connector ID `/ready` reports (random per process upstream; fixed here).
const CONNECTOR_ID: &str = "00000000-0000-4000-8000-00000000a71a";
/// HA connections a connected cloudflared holds (upstream's default `--ha-connections`).
const HA_CONNECTIONS: u32 = 4;

impl State {
    pub fn new(role: Role) -> Self {
        State {
            role,
            grafana: OnceLock::new(),
            tunnel: OnceLock::new(),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            loki: Mutex::new(LokiState::default()),
        }
    }

    /// cloudflared: registered connections now.
    fn tunnel_connections(&self) -> u32 {
        match self.tunnel.get() {
            Some(Some(at)) if Instant::now() >= *at => HA_CONNECTIONS,
            _ => 0,
        }
    }

    fn loki(&self) -> std::sync::MutexGuard<'_, LokiState> {
        // A panicked handler thread must not take the counters down with it.
        self.loki.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The main port of a role.
pub fn handle(state: &State, req: &Request) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let get = req.method == "GET" || req.method == "HEAD";
    match (state.role, req.path.as_str()) {
        (_, "/metrics") if get => metrics(state),
        (Role::Grafana, _) => match state.grafana.get().and_then(|g| g.handle(req)) {
            Some(r) => r,
            None => not_found(state),
        },
        (Role::Loki, "/ready") if get => Response::text(200, "ready\n"),
        (Role::Cloudflared, "/ready") if get => {
            let n = state.tunnel_connections();
            let status = if n > 0 { 200 } else { 503 };
            Response::json(
                status,
                &json!({"status": status, "readyConnections": n,
                        "connectorId": CONNECTOR_ID}),
            )
        }
        (Role::Loki, "/loki/api/v1/push") if req.method == "POST" => loki_push(state, req),
        (Role::Loki, "/loki/api/v1/labels") if get => {
            let names: BTreeSet<String> = state
                .loki()
                .streams
                .iter()
                .flat_map(|s| s.keys().cloned())
                .collect();
            Response::json(200, &json!({"status": "success", "data": names}))
        }
        (Role::Loki, p)
            if get && p.starts_with("/loki/api/v1/label/") && p.ends_with("/values") =>
        {
            let name = &p["/loki/api/v1/label/".len()..p.len() - "/values".len()];
            let values: BTreeSet<String> = state
                .loki()
                .streams
                .iter()
                .filter_map(|s| s.get(name).cloned())
                .collect();
            Response::json(200, &json!({"status": "success", "data": values}))
        }
        _ => not_found(state),
    }
}

fn not_found(state: &State) -> Response {
    Response::text(
        404,
        format!(
            "atlas stand-in for {}: no such endpoint\n",
            state.role.name()
        ),
    )
}

/// Loki's JSON push format: `{"streams":[{"stream":{labels},"values":[[ts,line],...]}]}`.
/// Protobuf (snappy) pushes are counted but not decoded: nothing here needs their contents.
fn loki_push(state: &State, req: &Request) -> Response {
    let is_json = req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    let mut l = state.loki();
    l.pushes += 1;
    l.bytes += req.body.len() as u64;
    if !is_json {
        l.unparsed += 1;
        return Response::empty(204);
    }
    let body: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            return Response::text(
                400,
                format!("atlas stand-in for loki: bad push body: {e}\n"),
            );
        }
    };
    let Some(streams) = body["streams"].as_array() else {
        return Response::text(
            400,
            "atlas stand-in for loki: push body has no \"streams\" array\n",
        );
    };
    for s in streams {
        let labels: BTreeMap<String, String> = s["stream"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let values = s["values"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        l.entries += values.len() as u64;
        l.lines += values.len() as u64;
        l.line_bytes += values
            .iter()
            .map(|v| v[1].as_str().map_or(0, str::len) as u64)
            .sum::<u64>();
        if l.streams.len() == KEEP_STREAMS {
            l.streams.pop_front();
        }
        l.streams.push_back(labels);
    }
    Response::empty(204)
}

fn metrics(state: &State) -> Response {
    let role = state.role.name();
    let mut m = format!(
        "# HELP standin_info Atlas stand-in for {role} (a test fixture, not the real product).\n\
         # TYPE standin_info gauge\n\
         standin_info{{role=\"{role}\",version=\"standin\"}} 1\n\
         # HELP standin_http_requests_total HTTP requests answered.\n\
         # TYPE standin_http_requests_total counter\n\
         standin_http_requests_total {}\n\
         # HELP standin_uptime_seconds Seconds since start.\n\
         # TYPE standin_uptime_seconds gauge\n\
         standin_uptime_seconds {:.3}\n",
        state.requests.load(Ordering::Relaxed),
        state.started.elapsed().as_secs_f64()
    );
    match state.role {
        Role::Loki => {
            let l = state.loki();
            for (name, help, v) in [
                ("standin_loki_push_total", "Push requests received.", l.pushes),
                ("standin_loki_push_entries_total", "Log entries in JSON pushes.", l.entries),
                ("standin_loki_push_bytes_total", "Bytes of push bodies.", l.bytes),
                ("standin_loki_push_unparsed_total", "Pushes not in JSON (counted, not decoded).", l.unparsed),
            ] {
                m.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
            }
            // Loki's own names: the series appear with a tenant's first lines, as in Loki.
            if l.lines > 0 {
                for (name, help, v) in [
                    ("loki_distributor_lines_received_total", "The total number of lines received per tenant", l.lines),
                    ("loki_distributor_bytes_received_total", "The total number of uncompressed bytes received per tenant", l.line_bytes),
                ] {
                    m.push_str(&format!(
                        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{tenant=\"fake\"}} {v}\n"
                    ));
                }
            }
        }
        Role::Cloudflared => m.push_str(&format!(
            "# HELP cloudflared_tunnel_ha_connections Number of active ha connections\n\
             # TYPE cloudflared_tunnel_ha_connections gauge\ncloudflared_tunnel_ha_connections {}\n",
            state.tunnel_connections()
        )),
        Role::Grafana => {}
    }
    Response::new(200, "text/plain; version=0.0.4; charset=utf-8", m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn push(body: &str, content_type: &str) -> Request {
        Request {
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.as_bytes().to_vec(),
            ..req("POST", "/loki/api/v1/push")
        }
    }

    fn body(r: &Response) -> String {
        String::from_utf8(r.body.clone()).unwrap()
    }

    fn json_body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn grafana_health_login_and_metrics() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("grafana.ini"), "").unwrap();
        let paths = crate::grafana::Paths {
            home: t.path().into(),
            config: t.path().join("grafana.ini"),
            data: t.path().join("data"),
            provisioning: t.path().join("provisioning"),
            plugins: t.path().join("plugins"),
        };
        let s = State::new(Role::Grafana);
        let g = crate::grafana::start(&paths, &BTreeMap::new(), &mut |_| {}).unwrap();
        assert!(s.grafana.set(g).is_ok());
        let r = handle(&s, &req("GET", "/api/health"));
        assert_eq!(r.status, 200);
        let j = json_body(&r);
        assert_eq!(
            (j["database"].as_str(), j["version"].as_str()),
            (Some("ok"), Some("standin"))
        );
        for p in ["/", "/login"] {
            let r = handle(&s, &req("GET", p));
            assert_eq!(r.status, 200);
            assert!(body(&r).contains("Atlas stand-in for Grafana"));
        }
        assert_eq!(handle(&s, &req("GET", "/api/datasources")).status, 401);
        let r = handle(&s, &req("GET", "/metrics"));
        assert!(body(&r).contains("standin_info{role=\"grafana\",version=\"standin\"} 1"));
        assert!(
            body(&r).contains("standin_http_requests_total 5\n"),
            "{}",
            body(&r)
        );
        assert_eq!(handle(&s, &req("GET", "/ready")).status, 404);
    }

    #[test]
    fn loki_counts_pushes_and_keeps_label_sets() {
        let s = State::new(Role::Loki);
        assert_eq!(handle(&s, &req("GET", "/ready")).status, 200);
        let before = body(&handle(&s, &req("GET", "/metrics")));
        assert!(
            !before.contains("loki_distributor"),
            "no tenant yet: {before}"
        );
        let r = handle(
            &s,
            &push(
                r#"{"streams":[{"stream":{"app":"incus","type":"lifecycle"},"values":[["1","a"],["2","b"]]},
                               {"stream":{"app":"incus","instance":"host1"},"values":[["3","c"]]}]}"#,
                "application/json",
            ),
        );
        assert_eq!(r.status, 204);
        assert_eq!(
            handle(&s, &push("\x00snappy", "application/x-protobuf")).status,
            204
        );
        let bad = handle(&s, &push("{not json", "application/json"));
        assert_eq!(bad.status, 400);
        assert!(body(&bad).contains("bad push body"));
        assert_eq!(
            handle(&s, &push(r#"{"x":1}"#, "application/json")).status,
            400
        );

        let m = body(&handle(&s, &req("GET", "/metrics")));
        assert!(m.contains("standin_loki_push_total 4\n"), "{m}");
        assert!(
            m.contains("loki_distributor_lines_received_total{tenant=\"fake\"} 3\n")
                && m.contains("loki_distributor_bytes_received_total{tenant=\"fake\"} 3\n"),
            "{m}"
        );
        assert!(m.contains("standin_loki_push_entries_total 3\n"), "{m}");
        assert!(m.contains("standin_loki_push_unparsed_total 1\n"), "{m}");

        let labels = json_body(&handle(&s, &req("GET", "/loki/api/v1/labels")));
        assert_eq!(
            labels,
            json!({"status":"success","data":["app","instance","type"]})
        );
        let values = json_body(&handle(&s, &req("GET", "/loki/api/v1/label/type/values")));
        assert_eq!(values["data"], json!(["lifecycle"]));
    }

    #[test]
    fn loki_keeps_only_recent_streams() {
        let s = State::new(Role::Loki);
        for i in 0..KEEP_STREAMS + 5 {
            let b = format!(r#"{{"streams":[{{"stream":{{"n":"{i}"}},"values":[]}}]}}"#);
            assert_eq!(handle(&s, &push(&b, "application/json")).status, 204);
        }
        let values = json_body(&handle(&s, &req("GET", "/loki/api/v1/label/n/values")));
        let values = values["data"].as_array().unwrap();
        assert_eq!(values.len(), KEEP_STREAMS);
        assert!(!values.contains(&json!("0")) && values.contains(&json!(KEEP_STREAMS.to_string())));
    }

    #[test]
    fn cloudflared_is_ready_only_once_connected() {
        let s = State::new(Role::Cloudflared);
        let r = handle(&s, &req("GET", "/ready"));
        assert_eq!(r.status, 503);
        assert_eq!(json_body(&r)["readyConnections"], 0);
        assert!(s.tunnel.set(Some(Instant::now())).is_ok());
        let r = handle(&s, &req("GET", "/ready"));
        assert_eq!(
            (r.status, json_body(&r)["readyConnections"].clone()),
            (200, json!(4))
        );
        assert!(
            body(&handle(&s, &req("GET", "/metrics")))
                .contains("cloudflared_tunnel_ha_connections 4\n")
        );
        let never = State::new(Role::Cloudflared);
        assert!(never.tunnel.set(None).is_ok());
        assert_eq!(handle(&never, &req("GET", "/ready")).status, 503);
    }

    #[test]
    fn unknown_paths_name_the_stand_in() {
        let s = State::new(Role::Loki);
        let r = handle(&s, &req("GET", "/nope"));
        assert_eq!(r.status, 404);
        assert!(body(&r).contains("atlas stand-in for loki"));
    }
}
