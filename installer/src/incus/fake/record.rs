//! The recorder of `recorded/`: asks the real daemon for the answers the fake imitates, in a
//! throwaway project of its own, and removes everything it made, even when it fails.
//!
//! Run it, holding the lock the real-daemon tests share, with:
//! `flock /var/tmp/atlas-incus.lock cargo test -p atlas-install --lib incus::fake::record -- --ignored`
//!
//! It writes `installer/src/incus/fake/recorded/*.json`: each `{request, status, etag,
//! body}` with host-specific values (certificates, fingerprints, addresses, times, ids)
//! replaced by placeholders of the same type, every key kept.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use std::cell::RefCell;

use super::scrub::Scrubber;

const SOCKET: &str = "/var/lib/incus/unix.socket";

/// The recorder's names, from its pid, so a crashed run's leftovers are recognisable.
struct Names {
    project: String,
    bridge: String,
    profile: String,
    volume: String,
    alias: String,
    instance: String,
    pool: String,
    /// A metrics certificate to trust for a moment, and its fingerprint.
    cert_pem: String,
    cert_b64: String,
    cert_fp: String,
}

/// Removes what the recorder made (by CLI, so it also works while unwinding a panic).
struct Cleanup<'a> {
    n: &'a Names,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let n = self.n;
        let p = format!("--project={}", n.project);
        let run = |args: &[&str]| {
            let _ = Command::new("incus").args(args).output();
        };
        run(&["delete", "--force", &p, &n.instance]);
        let images = Command::new("incus")
            .args(["image", "list", &p, "-f", "csv", "-c", "F"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for fp in images.lines().filter(|l| !l.is_empty()) {
            run(&["image", "delete", &p, fp]);
        }
        run(&["storage", "volume", "delete", &p, &n.pool, &n.volume]);
        run(&["storage", "bucket", "delete", &p, &n.pool, "rec-bucket"]);
        run(&["profile", "delete", &p, &n.profile]);
        run(&["project", "delete", &n.project]);
        run(&["network", "delete", "--project=default", &n.bridge]);
        run(&["config", "trust", "remove", &n.cert_fp]);
    }
}

struct Recorder {
    http: reqwest::Client,
    dir: PathBuf,
    /// One for the whole recording, so a fingerprint is the same placeholder in every file.
    scrub: RefCell<Scrubber>,
}

/// One exchange as stored.
struct Got {
    status: u16,
    etag: Option<String>,
    body: Value,
}

impl Recorder {
    async fn ask(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Got {
        let url = format!("http://incus{path}");
        let mut b = self.http.request(method, url);
        if let Some(body) = body {
            b = b.body(body);
        }
        let resp = b.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).expect("a JSON answer");
        Got { status, etag, body }
    }

    async fn json(&self, method: Method, path: &str, body: &Value) -> Got {
        self.ask(method, path, Some(serde_json::to_vec(body).expect("json")))
            .await
    }

    /// Waits for the operation an async answer started; gives the wait's answer.
    async fn wait(&self, started: &Got) -> Got {
        let op = started.body["operation"].as_str().expect("an operation");
        let got = self
            .ask(Method::GET, &format!("{op}/wait?timeout=60"), None)
            .await;
        assert_eq!(got.body["metadata"]["status"], "Success", "{}", got.body);
        got
    }

    /// What a write finally answered: an async answer's operation, waited for.
    async fn settled(&self, got: Got) -> Got {
        if got.body["type"] != "async" {
            return got;
        }
        let op = got.body["operation"].as_str().unwrap_or_default();
        self.ask(Method::GET, &format!("{op}/wait?timeout=60"), None)
            .await
    }

    /// A GET of `path`, stored under `name` as a GET of `shown` (the path without this
    /// recording's names and query).
    async fn read(&self, name: &str, shown: &str, path: &str) {
        let got = self.ask(Method::GET, path, None).await;
        self.save(name, json!({"method": "GET", "path": shown}), &got);
    }

    fn save(&self, name: &str, request: Value, got: &Got) {
        let v = json!({
            "request": request,
            "status": got.status,
            "etag": got.etag.as_ref().map(|_| "\"<sha256>\""),
            "body": got.body,
        });
        let v = self.scrub.borrow_mut().value(v);
        let text = serde_json::to_string_pretty(&v).expect("json");
        std::fs::write(self.dir.join(format!("{name}.json")), text + "\n").expect("write");
    }
}

impl Names {
    fn new() -> Names {
        let pid = std::process::id();
        let ck = rcgen::generate_simple_self_signed(vec!["rec-cert".into()]).expect("rcgen");
        Names {
            project: format!("rec-{pid}"),
            bridge: format!("recbr{}", pid % 1000),
            profile: "rec-profile".into(),
            volume: "rec-volume".into(),
            alias: "rec/image".into(),
            instance: "rec-instance".into(),
            pool: "default".into(),
            cert_pem: ck.cert.pem(),
            cert_b64: {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(ck.cert.der())
            },
            cert_fp: super::super::transport::cert_fingerprint(ck.cert.der()),
        }
    }

    /// What the recording calls its objects, replaced by stable names in the files.
    fn project_names(&self) -> Vec<(String, String)> {
        vec![
            (self.project.clone(), "rec".into()),
            (self.bridge.clone(), "recbr".into()),
        ]
    }
}

/// A unified image tarball: metadata and an empty root filesystem (enough for a stopped
/// instance; the recorder never starts it).
fn tiny_image() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let meta = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  description: recorder\n  os: none\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "metadata.yaml", &meta[..])
        .expect("tar");
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_mode(0o755);
    d.set_size(0);
    b.append_data(&mut d, "rootfs/", std::io::empty())
        .expect("tar");
    b.into_inner().expect("tar")
}

fn snapshot_of_incus() -> String {
    let mut out = String::new();
    for args in [
        &["project", "list", "-f", "csv"][..],
        &["network", "list", "-f", "csv"],
        &["config", "show"],
        &["image", "list", "-f", "csv", "--all-projects"],
        &["storage", "volume", "list", "-f", "csv", "--all-projects"],
    ] {
        let o = Command::new("incus")
            .args(args)
            .output()
            .expect("incus CLI");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}

#[tokio::test]
#[ignore = "asks the real Incus daemon: run holding /var/tmp/atlas-incus.lock"]
async fn record() {
    let before = snapshot_of_incus();
    let n = Names::new();
    {
        // Dropped at the end of this block, or while a failed assertion unwinds.
        let _cleanup = Cleanup { n: &n };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/incus/fake/recorded");
        std::fs::create_dir_all(&dir).expect("dir");
        let http = reqwest::Client::builder()
            .unix_socket(SOCKET)
            .tls_backend_preconfigured(super::super::transport::unused_tls().expect("tls"))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let rec = Recorder {
            http,
            dir,
            scrub: RefCell::new(Scrubber::new(n.project_names())),
        };
        record_all(&rec, &n).await;
    }
    let after = snapshot_of_incus();
    assert_eq!(before, after, "Incus is not as it was before the recording");
}

async fn record_all(rec: &Recorder, n: &Names) {
    let q = format!("project={}", n.project);
    record_project(rec, n).await;
    record_network(rec, n).await;
    record_profile(rec, n, &q).await;
    record_storage(rec, n, &q).await;
    record_image(rec, n, &q).await;
    record_instance(rec, n, &q).await;
    record_instance_reads(rec, &q).await;
    record_certificate_and_host(rec, n).await;
}

/// The server, a project, its duplicate and missing ones.
async fn record_project(rec: &Recorder, n: &Names) {
    // The server.
    rec.read("server", "/1.0", "/1.0").await;
    // A project, its duplicate, and a missing one.
    let body = json!({"name": n.project, "description": "recorder", "config": {
        "features.images": "true", "features.profiles": "true",
        "features.storage.volumes": "true", "features.storage.buckets": "true",
        "features.networks": "false", "user.recorded": "yes"}});
    let got = rec.json(Method::POST, "/1.0/projects", &body).await;
    assert!(got.status < 400, "{}", got.body);
    rec.save(
        "project_post",
        json!({"method": "POST", "path": "/1.0/projects", "body": body}),
        &got,
    );
    let got = rec.json(Method::POST, "/1.0/projects", &body).await;
    rec.save(
        "error_409_project",
        json!({"method": "POST", "path": "/1.0/projects", "body": body}),
        &got,
    );
    let path = format!("/1.0/projects/{}", n.project);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "project",
        json!({"method": "GET", "path": path, "posted": body}),
        &got,
    );
    rec.read(
        "error_404_project",
        "/1.0/projects/rec-missing",
        "/1.0/projects/rec-missing",
    )
    .await;
    rec.read(
        "error_404_in_missing_project",
        "/1.0/instances?project=rec-missing",
        "/1.0/instances?project=rec-missing",
    )
    .await;
    rec.read(
        "error_get_in_missing_project",
        "/1.0/profiles/default?project=rec-missing",
        "/1.0/profiles/default?project=rec-missing",
    )
    .await;
    let missing = json!({"name": "rec-nowhere", "config": {}, "devices": {}});
    let got = rec
        .json(Method::POST, "/1.0/profiles?project=rec-missing", &missing)
        .await;
    rec.save(
        "error_create_in_missing_project",
        json!({"method": "POST", "path": "/1.0/profiles?project=rec-missing"}),
        &got,
    );
    let mut got = rec
        .ask(Method::GET, "/1.0/projects?recursion=1", None)
        .await;
    if let Some(l) = got.body["metadata"].as_array_mut() {
        l.retain(|p| p["name"] == "default" || p["name"] == n.project.as_str());
    }
    rec.save(
        "projects_list",
        json!({"method": "GET", "path": "/1.0/projects?recursion=1"}),
        &got,
    );
}

/// The host's networks, then a bridge of the recorder's own.
async fn record_network(rec: &Recorder, n: &Names) {
    // The host's networks as a fresh daemon has them (before the recorder's own).
    let mut got = rec
        .ask(
            Method::GET,
            "/1.0/networks?project=default&recursion=1",
            None,
        )
        .await;
    // Only what a fresh host has: not an Atlas install that happens to be there.
    if let Some(l) = got.body["metadata"].as_array_mut() {
        l.retain(|net| {
            !net["config"]
                .as_object()
                .is_some_and(|c| c.keys().any(|k| k.starts_with("user.atlas")))
        });
    }
    rec.save(
        "networks_list",
        json!({"method": "GET", "path": "/1.0/networks?recursion=1"}),
        &got,
    );
    // A bridge in the default project.
    let body = json!({"name": n.bridge, "type": "bridge", "description": "", "config": {
        "ipv4.address": "none", "ipv6.address": "none", "user.recorded": "yes"}});
    let got = rec
        .json(Method::POST, "/1.0/networks?project=default", &body)
        .await;
    assert!(got.status < 400, "{}", got.body);
    rec.save(
        "network_post",
        json!({"method": "POST", "path": "/1.0/networks?project=default", "body": body}),
        &got,
    );
    let got = rec
        .json(Method::POST, "/1.0/networks?project=default", &body)
        .await;
    rec.save(
        "error_409_network",
        json!({"method": "POST", "path": "/1.0/networks"}),
        &got,
    );
    let path = format!("/1.0/networks/{}?project=default", n.bridge);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "network",
        json!({"method": "GET", "path": path, "posted": body}),
        &got,
    );
    let path = format!("/1.0/networks/{}/leases?project=default", n.bridge);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "network_leases",
        json!({"method": "GET", "path": "/1.0/networks/<name>/leases"}),
        &got,
    );
    rec.read(
        "error_404_network",
        "/1.0/networks/recbr-missing",
        "/1.0/networks/recbr-missing?project=default",
    )
    .await;
}

/// A profile in the project, a write with a stale ETag, the lists.
async fn record_profile(rec: &Recorder, n: &Names, q: &str) {
    // A profile in the project, then a write with a stale ETag.
    let body = json!({"name": n.profile, "description": "recorder", "config": {"user.recorded": "yes"},
        "devices": {"eth0": {"type": "nic", "nictype": "bridged", "parent": n.bridge, "name": "eth0"}}});
    let got = rec
        .json(Method::POST, &format!("/1.0/profiles?{q}"), &body)
        .await;
    assert!(got.status < 400, "{}", got.body);
    rec.save(
        "profile_post",
        json!({"method": "POST", "path": "/1.0/profiles", "body": body}),
        &got,
    );
    let got = rec
        .json(Method::POST, &format!("/1.0/profiles?{q}"), &body)
        .await;
    rec.save(
        "error_409_profile",
        json!({"method": "POST", "path": "/1.0/profiles"}),
        &got,
    );
    let path = format!("/1.0/profiles/{}?{q}", n.profile);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "profile",
        json!({"method": "GET", "path": path, "posted": body}),
        &got,
    );
    let stale = rec
        .http
        .put(format!("http://incus{path}"))
        .header(
            "If-Match",
            "\"0000000000000000000000000000000000000000000000000000000000000000\"",
        )
        .body(serde_json::to_vec(&body).expect("json"))
        .send()
        .await
        .expect("answer");
    let got = Got {
        status: stale.status().as_u16(),
        etag: None,
        body: serde_json::from_slice(&stale.bytes().await.expect("body")).expect("json"),
    };
    rec.save(
        "error_412_profile",
        json!({"method": "PUT", "path": path}),
        &got,
    );
    rec.read(
        "profiles_urls",
        "/1.0/profiles",
        &format!("/1.0/profiles?{q}"),
    )
    .await;
    rec.read(
        "profiles_list",
        "/1.0/profiles?recursion=1",
        &format!("/1.0/profiles?{q}&recursion=1"),
    )
    .await;
}

/// A metrics certificate (PEM refused, base64 DER taken), then what the host says of itself.
async fn record_certificate_and_host(rec: &Recorder, n: &Names) {
    let body = json!({"name": format!("{}-cert", n.project), "type": "metrics", "restricted": false,
        "certificate": n.cert_pem, "projects": []});
    // PEM is refused: 6.0.4 wants base64 DER.
    let got = rec.json(Method::POST, "/1.0/certificates", &body).await;
    rec.save(
        "error_certificate_pem",
        json!({"method": "POST", "path": "/1.0/certificates"}),
        &got,
    );
    let mut body = body;
    body["certificate"] = json!(n.cert_b64);
    let got = rec.json(Method::POST, "/1.0/certificates", &body).await;
    assert!(got.status < 400, "{}", got.body);
    rec.save(
        "certificate_post",
        json!({"method": "POST", "path": "/1.0/certificates"}),
        &got,
    );
    let path = format!("/1.0/certificates/{}", n.cert_fp);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "certificate",
        json!({"method": "GET", "path": "/1.0/certificates/<fingerprint>",
        "posted": {"name": body["name"], "type": "metrics", "restricted": false, "projects": []}}),
        &got,
    );
    rec.ask(Method::DELETE, &path, None).await;
    for (name, path) in [
        ("cluster", "/1.0/cluster"),
        ("resources", "/1.0/resources"),
        ("pools_list", "/1.0/storage-pools?recursion=1"),
        ("pool_resources", "/1.0/storage-pools/default/resources"),
        ("certificates_list", "/1.0/certificates?recursion=1"),
    ] {
        let got = rec.ask(Method::GET, path, None).await;
        rec.save(name, json!({"method": "GET", "path": path}), &got);
    }
}

async fn record_storage(rec: &Recorder, n: &Names, q: &str) {
    let vols = format!("/1.0/storage-pools/{}/volumes/custom?{q}", n.pool);
    let body = json!({"name": n.volume, "description": "recorder", "config": {"user.recorded": "yes"}, "content_type": "filesystem"});
    let got = rec.json(Method::POST, &vols, &body).await;
    rec.save(
        "volume_post",
        json!({"method": "POST", "path": vols, "body": body}),
        &got,
    );
    if got.body["type"] == "async" {
        rec.wait(&got).await;
    }
    let got = rec.json(Method::POST, &vols, &body).await;
    let dup = rec.settled(got).await;
    rec.save(
        "error_409_volume",
        json!({"method": "POST", "path": vols, "body": body}),
        &dup,
    );
    let path = format!(
        "/1.0/storage-pools/{}/volumes/custom/{}?{q}",
        n.pool, n.volume
    );
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "volume",
        json!({"method": "GET", "path": path, "posted": body}),
        &got,
    );
    rec.read(
        "volumes_list",
        "/1.0/storage-pools/default/volumes/custom?recursion=1",
        &format!(
            "/1.0/storage-pools/{}/volumes/custom?{q}&recursion=1",
            n.pool
        ),
    )
    .await;
    record_buckets(rec, n, q).await;
}

/// Buckets: 6.0 on a dir pool needs MinIO on the host; what it says without.
async fn record_buckets(rec: &Recorder, n: &Names, q: &str) {
    // Buckets: 6.0 on a dir pool needs MinIO on the host; what it says without.
    rec.read(
        "error_404_bucket",
        "/1.0/storage-pools/default/buckets/<missing>",
        &format!("/1.0/storage-pools/{}/buckets/rec-missing?{q}", n.pool),
    )
    .await;
    let bucket = json!({"name": "rec-bucket", "description": "", "config": {}});
    let got = rec
        .json(
            Method::POST,
            &format!("/1.0/storage-pools/{}/buckets?{q}", n.pool),
            &bucket,
        )
        .await;
    let got = rec.settled(got).await;
    rec.save(
        "bucket_post",
        json!({"method": "POST", "path": "/1.0/storage-pools/default/buckets", "body": bucket}),
        &got,
    );
    if got.status < 400 && got.body["type"] != "error" {
        rec.ask(
            Method::DELETE,
            &format!("/1.0/storage-pools/{}/buckets/rec-bucket?{q}", n.pool),
            None,
        )
        .await;
    }
}

async fn record_image(rec: &Recorder, n: &Names, q: &str) {
    let got = rec
        .ask(
            Method::POST,
            &format!("/1.0/images?{q}"),
            Some(tiny_image()),
        )
        .await;
    rec.save(
        "image_post_async",
        json!({"method": "POST", "path": "/1.0/images"}),
        &got,
    );
    let done = rec.wait(&got).await;
    rec.save(
        "operation_wait",
        json!({"method": "GET", "path": "/1.0/operations/<id>/wait"}),
        &done,
    );
    let fp = done.body["metadata"]["metadata"]["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let path = format!("/1.0/images/{fp}?{q}");
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "image",
        json!({"method": "GET", "path": "/1.0/images/<fingerprint>"}),
        &got,
    );
    let body = json!({"name": n.alias, "description": "", "target": fp});
    let got = rec
        .json(Method::POST, &format!("/1.0/images/aliases?{q}"), &body)
        .await;
    rec.save(
        "alias_post",
        json!({"method": "POST", "path": "/1.0/images/aliases", "body": body}),
        &got,
    );
    let got = rec
        .json(Method::POST, &format!("/1.0/images/aliases?{q}"), &body)
        .await;
    rec.save(
        "error_409_alias",
        json!({"method": "POST", "path": "/1.0/images/aliases"}),
        &got,
    );
    let path = format!("/1.0/images/aliases/{}?{q}", n.alias.replace('/', "%2F"));
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "alias",
        json!({"method": "GET", "path": "/1.0/images/aliases/<name>", "posted": body}),
        &got,
    );
    rec.read(
        "error_404_alias",
        "/1.0/images/aliases/<missing>",
        &format!("/1.0/images/aliases/rec%2Fmissing?{q}"),
    )
    .await;
}

/// A stopped instance: refused without a root disk, made with one, its duplicate.
async fn record_instance(rec: &Recorder, n: &Names, q: &str) {
    let body = json!({"name": n.instance, "type": "container", "description": "",
        "source": {"type": "image", "alias": n.alias},
        "profiles": [n.profile], "config": {"user.recorded": "yes"}, "devices": {}, "start": false});
    // Without a root disk (the project's default profile has none): refused.
    let got = rec
        .json(Method::POST, &format!("/1.0/instances?{q}"), &body)
        .await;
    let got = rec.settled(got).await;
    rec.save(
        "error_instance_no_root",
        json!({"method": "POST", "path": "/1.0/instances"}),
        &got,
    );
    let mut body = body;
    body["devices"] = json!({"root": {"type": "disk", "path": "/", "pool": n.pool}});
    let got = rec
        .json(Method::POST, &format!("/1.0/instances?{q}"), &body)
        .await;
    rec.save(
        "instance_post_async",
        json!({"method": "POST", "path": "/1.0/instances", "body": body}),
        &got,
    );
    rec.wait(&got).await;
    let got = rec
        .json(Method::POST, &format!("/1.0/instances?{q}"), &body)
        .await;
    let dup = rec.settled(got).await;
    rec.save(
        "error_409_instance",
        json!({"method": "POST", "path": "/1.0/instances"}),
        &dup,
    );
    let path = format!("/1.0/instances/{}?{q}", n.instance);
    let got = rec.ask(Method::GET, &path, None).await;
    rec.save(
        "instance",
        json!({"method": "GET", "path": "/1.0/instances/<name>", "posted": body}),
        &got,
    );
    rec.read(
        "instance_state",
        "/1.0/instances/<name>/state",
        &format!("/1.0/instances/{}/state?{q}", n.instance),
    )
    .await;
    // Stopping it although it is stopped: how the daemon refuses what a stale read asks.
    let stop = json!({"action": "stop", "timeout": 30, "force": true});
    let path = format!("/1.0/instances/{}/state?{q}", n.instance);
    let got = rec.json(Method::PUT, &path, &stop).await;
    let got = rec.settled(got).await;
    rec.save(
        "error_stop_stopped",
        json!({"method": "PUT", "path": "/1.0/instances/<name>/state", "body": stop}),
        &got,
    );
}

/// The instance read back, lists, and missing objects.
async fn record_instance_reads(rec: &Recorder, q: &str) {
    let reads = [
        (
            "instances_list",
            "/1.0/instances?recursion=1",
            format!("/1.0/instances?{q}&recursion=1"),
        ),
        (
            "operations_list",
            "/1.0/operations",
            format!("/1.0/operations?{q}"),
        ),
        (
            "error_404_instance",
            "/1.0/instances/<missing>",
            format!("/1.0/instances/rec-missing?{q}"),
        ),
        (
            "error_404_profile",
            "/1.0/profiles/<missing>",
            format!("/1.0/profiles/rec-missing?{q}"),
        ),
        (
            "error_404_volume",
            "/1.0/storage-pools/default/volumes/custom/<missing>",
            format!("/1.0/storage-pools/default/volumes/custom/rec-missing?{q}"),
        ),
        (
            "error_404_operation",
            "/1.0/operations/<missing>",
            "/1.0/operations/00000000-0000-0000-0000-000000000000".to_string(),
        ),
    ];
    for (name, shown, path) in &reads {
        rec.read(name, shown, path).await;
    }
}
