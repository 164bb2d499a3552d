//! The fake against its own recordings: what it answers has the daemon's shape.

use std::collections::BTreeSet;
use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use super::recorded::{Exchange, names, recorded};
use super::{Daemon, FakeIncus};

async fn ask(
    fake: &Arc<FakeIncus>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let url = reqwest::Url::parse(&format!("http://incus{path}")).expect("url");
    let mut req = reqwest::Request::new(method, url);
    if let Some(b) = body {
        *req.body_mut() = Some(serde_json::to_vec(b).expect("json").into());
    }
    let resp = fake.execute(req).await.expect("answered");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// Every key path of `v` (objects only; the first element stands for a list).
fn shape(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                // Config and device maps hold the user's keys, not the daemon's shape.
                let p = format!("{at}/{k}");
                out.insert(p.clone());
                if !matches!(
                    k.as_str(),
                    "config"
                        | "devices"
                        | "expanded_config"
                        | "expanded_devices"
                        | "properties"
                        | "resources"
                        | "metadata"
                ) {
                    shape(x, &p, out);
                }
            }
        }
        Value::Array(a) => {
            if let Some(x) = a.first() {
                shape(x, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    shape(v, "", &mut out);
    out
}

/// The recorder's objects, made again in the fake from what the recorder posted.
async fn replay() -> Arc<FakeIncus> {
    let fake = FakeIncus::new();
    let r = recorded();
    let q = format!("project={}", names::PROJECT);
    let posts: [(&str, &Exchange); 4] = [
        ("/1.0/projects", &r.project),
        ("/1.0/networks?project=default", &r.network),
        ("/1.0/profiles?project=rec", &r.profile),
        (
            "/1.0/storage-pools/default/volumes/custom?project=rec",
            &r.volume,
        ),
    ];
    for (path, e) in posts {
        let (status, body) = ask(&fake, Method::POST, path, Some(e.posted())).await;
        assert!(status < 400, "{path}: {body}");
    }
    let fp = fake.seed_image(
        names::PROJECT,
        names::ALIAS,
        &[("description", "recorder"), ("os", "none")],
    );
    assert_eq!(
        fake.get(super::Kind::Alias, names::PROJECT, names::ALIAS)
            .expect("alias")["target"],
        json!(fp)
    );
    let mut inst = r.instance.posted().clone();
    inst["devices"] = json!({"root": {"type": "disk", "path": "/", "pool": "default"}});
    let (status, body) = ask(
        &fake,
        Method::POST,
        &format!("/1.0/instances?{q}"),
        Some(&inst),
    )
    .await;
    assert_eq!(status, r.instance_post_async.status(), "{body}");
    assert_eq!(keys(&body), keys(r.instance_post_async.envelope()));
    fake
}

#[tokio::test]
async fn objects_made_in_the_fake_have_the_recorded_shape() {
    let fake = replay().await;
    let r = recorded();
    for (path, e) in [
        ("/1.0/projects/rec", &r.project),
        ("/1.0/networks/recbr?project=default", &r.network),
        ("/1.0/profiles/rec-profile?project=rec", &r.profile),
        (
            "/1.0/storage-pools/default/volumes/custom/rec-volume?project=rec",
            &r.volume,
        ),
        ("/1.0/instances/rec-instance?project=rec", &r.instance),
        ("/1.0/images/aliases/rec%2Fimage?project=rec", &r.alias),
    ] {
        let (status, body) = ask(&fake, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(keys(&body), keys(e.envelope()), "{path}");
        let config = |v: &Value| -> BTreeSet<String> {
            v["metadata"]["config"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect()
        };
        assert_eq!(config(&body), config(e.envelope()), "{path}: config keys");
    }
    let (_, i) = ask(
        &fake,
        Method::GET,
        "/1.0/instances/rec-instance?project=rec",
        None,
    )
    .await;
    assert_eq!(i["metadata"]["status"], r.instance.metadata()["status"]);
    assert_eq!(
        i["metadata"]["expanded_devices"],
        r.instance.metadata()["expanded_devices"]
    );
}

#[tokio::test]
async fn lists_have_the_recorded_shape() {
    let fake = replay().await;
    let r = recorded();
    let (_, urls) = ask(&fake, Method::GET, "/1.0/profiles?project=rec", None).await;
    assert_eq!(urls["metadata"], r.profiles_urls.metadata().clone());
    for (path, e) in [
        ("/1.0/profiles?project=rec&recursion=1", &r.profiles_list),
        ("/1.0/instances?project=rec&recursion=1", &r.instances_list),
        (
            "/1.0/storage-pools/default/volumes/custom?project=rec&recursion=1",
            &r.volumes_list,
        ),
        (
            "/1.0/networks/recbr/leases?project=default",
            &r.network_leases,
        ),
        ("/1.0/operations?project=rec", &r.operations_list),
    ] {
        let (status, body) = ask(&fake, Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(keys(&body), keys(e.envelope()), "{path}");
    }
    let cert = rcgen::generate_simple_self_signed(vec!["m".into()]).expect("rcgen");
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(cert.cert.der())
    };
    let body = json!({"name": "m", "type": "metrics", "restricted": false, "projects": [], "certificate": b64});
    let (status, _) = ask(&fake, Method::POST, "/1.0/certificates", Some(&body)).await;
    assert_eq!(status, r.certificate_post.status());
    let (_, list) = ask(&fake, Method::GET, "/1.0/certificates?recursion=1", None).await;
    assert_eq!(keys(&list), keys(r.certificates_list.envelope()));
    let _ = &r.image_post_async;
}

#[tokio::test]
async fn refusals_are_the_recorded_ones() {
    let fake = replay().await;
    let r = recorded();
    for (path, body, e) in [
        ("/1.0/projects", r.project.posted(), &r.error_409_project),
        (
            "/1.0/networks?project=default",
            r.network.posted(),
            &r.error_409_network,
        ),
        (
            "/1.0/profiles?project=rec",
            r.profile.posted(),
            &r.error_409_profile,
        ),
        (
            "/1.0/storage-pools/default/volumes/custom?project=rec",
            r.volume.posted(),
            &r.error_409_volume,
        ),
        (
            "/1.0/profiles?project=rec-missing",
            &json!({"name": "rec-nowhere"}),
            &r.error_create_in_missing_project,
        ),
    ] {
        let (status, got) = ask(&fake, Method::POST, path, Some(body)).await;
        assert_eq!((status, &got), (e.status(), e.envelope()), "{path}");
    }
    for (path, e) in [
        ("/1.0/projects/rec-missing", &r.error_404_project),
        (
            "/1.0/profiles/rec-missing?project=rec",
            &r.error_404_profile,
        ),
        (
            "/1.0/instances/rec-missing?project=rec",
            &r.error_404_instance,
        ),
        (
            "/1.0/profiles/default?project=rec-missing",
            &r.error_get_in_missing_project,
        ),
        (
            "/1.0/instances?project=rec-missing",
            &r.error_404_in_missing_project,
        ),
    ] {
        let (status, got) = ask(&fake, Method::GET, path, None).await;
        assert_eq!((status, &got), (e.status(), e.envelope()), "{path}");
    }
}

#[tokio::test]
async fn stopping_a_stopped_instance_fails_as_the_recorded_operation_does() {
    let fake = replay().await;
    let r = recorded();
    let path = format!(
        "/1.0/instances/{}/state?project={}",
        names::INSTANCE,
        names::PROJECT
    );
    let (status, started) = ask(
        &fake,
        Method::PUT,
        &path,
        Some(&r.error_stop_stopped.posted_body()),
    )
    .await;
    assert_eq!(
        (status, started["type"].as_str()),
        (202, Some("async")),
        "{started}"
    );
    let op = started["operation"].as_str().expect("an operation");
    let (status, got) = ask(&fake, Method::GET, &format!("{op}/wait?timeout=60"), None).await;
    let e = &r.error_stop_stopped;
    assert_eq!((status, &got), (e.status(), e.envelope()));
}
