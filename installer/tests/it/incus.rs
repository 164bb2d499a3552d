//! The Incus client against the real incusd of this machine. Every test works in its own
//! project (`t-incus-<pid>-<tag>`) and names, and a guard deletes it all, on panic too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atlas_install::incus::{
    Client, FileMeta, ImageImport, IncusError, InstanceCreate, InstanceSource, Network,
    OptionalExt, Profile, Project, StateAction, StorageBucket, StorageVolume,
};

use crate::common::client_or_skip;

const SOCKET: &str = "/var/lib/incus/unix.socket";
const POOL: &str = "default";

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn unique(tag: &str) -> String {
    format!("t-incus-{}-{tag}", std::process::id())
}

/// Deletes what a test made, in dependency order, even when the test panics.
struct Guard {
    /// Used to create the project; cleanup uses a fresh client (see Drop).
    client: Client,
    project: Option<String>,
    networks: Vec<String>,
    certificates: Vec<String>,
}

impl Guard {
    fn new(client: &Client) -> Guard {
        Guard {
            client: client.clone(),
            project: None,
            networks: Vec::new(),
            certificates: Vec::new(),
        }
    }

    /// Creates the test's own project with images, profiles and volumes of its own.
    async fn project(&mut self, tag: &str) -> Client {
        let name = unique(tag);
        let mut p = Project::new(&name);
        p.config = map(&[
            ("features.images", "true"),
            ("features.profiles", "true"),
            ("features.storage.volumes", "true"),
        ]);
        p.description = "atlas-install incus client test".into();
        self.project = Some(name.clone());
        self.client
            .create_project(&p)
            .await
            .expect("create test project");
        self.client.in_project(&name)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let project = self.project.take();
        let (networks, certs) = (
            std::mem::take(&mut self.networks),
            std::mem::take(&mut self.certificates),
        );
        // Drop cannot await, so cleanup runs on a thread with its own runtime, and with its own
        // client: pooled connections of the test's client are driven by the test's runtime,
        // which is blocked in this join.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let client = Client::unix_at(Path::new(SOCKET)).expect("cleanup client");
            rt.block_on(cleanup(client, project, networks, certs));
        })
        .join();
    }
}

async fn cleanup(
    client: Client,
    project: Option<String>,
    networks: Vec<String>,
    certs: Vec<String>,
) {
    if let Some(project) = project {
        let c = client.in_project(&project);
        for i in c.instances().await.unwrap_or_default() {
            if i.is_running() {
                let _ = c
                    .set_instance_state(&i.name, StateAction::Stop, 60, true)
                    .await;
            }
            let _ = c.delete_instance(&i.name).await;
        }
        for img in c.images().await.unwrap_or_default() {
            let _ = c.delete_image(&img.fingerprint).await;
        }
        for v in c.volumes(POOL).await.unwrap_or_default() {
            let _ = c.delete_volume(POOL, &v.name).await;
        }
        for p in c.profiles().await.unwrap_or_default() {
            if p.name != "default" {
                let _ = c.delete_profile(&p.name).await;
            }
        }
        if let Err(e) = client.delete_project(&project).await {
            eprintln!("cleanup: project {project} left behind: {e}");
        }
    }
    for n in networks {
        let _ = client.delete_network(&n).await;
    }
    for fp in certs {
        let _ = client.delete_certificate(&fp).await;
    }
}

#[tokio::test]
async fn server_info_capabilities_and_no_writes_for_reads() {
    let c = client_or_skip!();
    let before = c.writes();
    let server = c.server().await.expect("GET /1.0");
    let s = &server.value;
    assert_eq!(s.auth, "trusted");
    assert!(
        s.api_extensions.len() > 100,
        "extensions: {}",
        s.api_extensions.len()
    );
    // 6.0.4 and later all have these; the helpers must see them.
    assert!(s.has("storage_buckets") && s.supports_local_buckets());
    assert!(!s.has("no_such_extension_atlas"));
    assert!(!s.environment.server_version.is_empty() && !s.environment.kernel_version.is_empty());
    assert!(
        s.storage_drivers().contains(&"dir"),
        "{:?}",
        s.storage_drivers()
    );
    assert!(server.etag.is_some(), "GET /1.0 serves an ETag");
    if !s.is_clustered() {
        assert!(c.cluster_members().await.expect("members").is_empty());
    }
    // `?target=` reaches the server; an unknown member is an error, never "object absent".
    let e = c
        .on_target(Some("t-incus-no-member"))
        .server()
        .await
        .expect_err("unknown member");
    assert!(
        !e.is_not_found() && e.to_string().contains("Cluster member not found"),
        "{e}"
    );
    let e = c
        .in_project("t-incus-no-project")
        .get_profile("default")
        .await
        .expect_err("no project");
    assert!(
        !e.is_not_found(),
        "a missing project must not read as a missing profile: {e}"
    );

    let pool = c.get_storage_pool(POOL).await.expect("default pool").value;
    assert_eq!(pool.driver, "dir");
    let res = c.storage_pool_resources(POOL).await.expect("resources");
    assert!(res.space.total > 0 && res.space.free() <= res.space.total);
    // 6.0.4 sometimes answers a bare "# EOF" while refreshing its metrics cache.
    let mut metrics = String::new();
    for _ in 0..10 {
        metrics = c.metrics().await.expect("metrics");
        if metrics.contains("# TYPE") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        metrics.contains("# TYPE"),
        "not Prometheus text: {}",
        &metrics[..metrics.len().min(200)]
    );
    assert_eq!(c.writes(), before, "reads must not count as writes");
}

#[tokio::test]
async fn project_lifecycle_duplicates_and_write_log() {
    let c = client_or_skip!();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    c.set_request_log(Some(Arc::new(move |m: &str, p: &str| {
        sink.lock().unwrap().push(format!("{m} {p}"))
    })));

    let mut g = Guard::new(&c);
    let w0 = c.writes();
    let pc = g.project("proj").await;
    let name = pc.project().to_string();
    assert_eq!(c.writes(), w0 + 1);

    let got = c.get_project(&name).await.expect("get project");
    assert_eq!(got.value.config["features.profiles"], "true");
    assert!(got.etag.is_some());
    assert_eq!(c.writes(), w0 + 1, "GET counted as write");

    let dup = c
        .create_project(&Project::new(&name))
        .await
        .expect_err("duplicate project");
    assert!(
        dup.is_already_exists(),
        "project duplicate (500 UNIQUE) must map: {dup}"
    );

    let mut p = got.value.clone();
    p.config.insert("user.atlas.managed".into(), "true".into());
    c.update_project(&p, got.etag.as_deref())
        .await
        .expect("update with fresh etag");
    let stale = c
        .update_project(&p, got.etag.as_deref())
        .await
        .expect_err("stale etag");
    assert!(
        matches!(stale, IncusError::PreconditionFailed { .. }),
        "{stale}"
    );
    assert_eq!(
        c.get_project(&name).await.expect("get").value.config["user.atlas.managed"],
        "true"
    );
    assert_eq!(c.writes(), w0 + 4);

    drop(g);
    let gone = c
        .get_project(&name)
        .await
        .optional()
        .expect("get after delete");
    assert!(gone.is_none(), "guard must delete the project");

    let lines = log.lock().unwrap().clone();
    c.set_request_log(None);
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&name)).collect();
    assert!(
        mine.iter().any(|l| l.starts_with("PUT /1.0/projects/")),
        "{mine:?}"
    );
    assert!(lines.iter().any(|l| l == "POST /1.0/projects"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("features.profiles")),
        "bodies must never reach the log"
    );
}

#[tokio::test]
async fn volumes_with_snapshot_config_and_snapshots() {
    let c = client_or_skip!();
    let mut g = Guard::new(&c);
    let pc = g.project("vol").await;
    let name = "t-incus-data";
    let cfg = map(&[
        ("snapshots.schedule", "@daily"),
        ("snapshots.expiry", "7d"),
        ("snapshots.pattern", "snap-%d"),
        ("user.atlas.managed", "true"),
    ]);
    pc.create_volume(POOL, &StorageVolume::filesystem(name, cfg.clone()))
        .await
        .expect("create volume");
    let dup = pc
        .create_volume(POOL, &StorageVolume::filesystem(name, cfg.clone()))
        .await
        .expect_err("dup");
    assert!(dup.is_already_exists(), "volume duplicate (409): {dup}");

    let got = pc.get_volume(POOL, name).await.expect("get volume");
    for (k, v) in &cfg {
        assert_eq!(got.value.config.get(k), Some(v), "{k}");
    }
    assert_eq!(got.value.content_type, "filesystem");
    assert!(
        pc.volumes(POOL)
            .await
            .expect("list")
            .iter()
            .any(|v| v.name == name)
    );
    // The volume lives in the test project, not in default.
    assert!(
        c.get_volume(POOL, name)
            .await
            .optional()
            .expect("default project")
            .is_none()
    );

    let mut v = got.value.clone();
    v.description = "changed".into();
    pc.update_volume(POOL, &v, got.etag.as_deref())
        .await
        .expect("update volume");

    pc.create_volume_snapshot(POOL, name, "s1", None)
        .await
        .expect("snapshot");
    let snaps = pc.volume_snapshots(POOL, name).await.expect("snapshots");
    assert_eq!(
        snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["s1"]
    );
    assert!(
        snaps[0].expires_at.is_some(),
        "snapshots.expiry=7d gives an expiry"
    );
    pc.restore_volume_snapshot(POOL, name, "s1")
        .await
        .expect("restore");
    pc.delete_volume_snapshot(POOL, name, "s1")
        .await
        .expect("delete snapshot");
    assert!(
        pc.volume_snapshots(POOL, name)
            .await
            .expect("snapshots")
            .is_empty()
    );

    pc.delete_volume(POOL, name).await.expect("delete volume");
    let e = pc.get_volume(POOL, name).await.expect_err("deleted");
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn network_etag_update_and_stale_etag() {
    let c = client_or_skip!();
    let mut g = Guard::new(&c);
    let pid = std::process::id();
    let name = format!("t-incus-br{}", pid % 10000);
    let cidr = crate::common::hermetic::free_subnets(1)[0].to_string();
    g.networks.push(name.clone());
    let cfg = map(&[
        ("ipv4.address", &cidr),
        ("ipv4.nat", "false"),
        ("ipv6.address", "none"),
    ]);
    // A client scoped to a project must still put networks in `default`.
    let scoped = c.in_project("t-incus-nonexistent-project");
    scoped
        .create_network(&Network::bridge(&name, cfg.clone()))
        .await
        .expect("create bridge");
    let dup = c
        .create_network(&Network::bridge(&name, cfg.clone()))
        .await
        .expect_err("dup");
    assert!(dup.is_already_exists(), "network duplicate (409): {dup}");

    let got = c.get_network(&name).await.expect("get network");
    let etag = got.etag.clone().expect("network ETag");
    assert!(got.value.managed && got.value.kind == "bridge");
    assert_eq!(got.value.config["ipv4.address"], cidr);
    assert!(
        c.networks()
            .await
            .expect("list")
            .iter()
            .any(|n| n.name == name)
    );

    let mut n = got.value.clone();
    n.description = "first".into();
    c.update_network(&n, Some(&etag))
        .await
        .expect("update with etag");

    // Server PATCH with a stale ETag: refused, nothing changes (empty patch: harmless anyway).
    let e = c
        .patch_server_config(&BTreeMap::new(), Some("\"0000\""))
        .await
        .expect_err("stale server etag");
    assert!(matches!(e, IncusError::PreconditionFailed { .. }), "{e}");

    let writes = c.writes();
    let mut stale = got.value.clone();
    stale.description = "lost update".into();
    let e = c
        .update_network(&stale, Some(&etag))
        .await
        .expect_err("stale etag must fail");
    assert!(matches!(e, IncusError::PreconditionFailed { .. }), "{e}");
    assert!(e.to_string().contains(&name), "error names the object: {e}");
    assert_eq!(
        c.writes(),
        writes + 1,
        "the refused PUT was still sent once"
    );
    let now = c.get_network(&name).await.expect("get").value;
    assert_eq!(now.description, "first", "a refused update changes nothing");
    assert_eq!(now.config["ipv4.address"], cidr);
}

#[tokio::test]
async fn profile_create_update_duplicate() {
    let c = client_or_skip!();
    let mut g = Guard::new(&c);
    let pc = g.project("prof").await;
    let mut p = Profile::new("t-incus-svc");
    p.config = map(&[
        ("limits.cpu", "1"),
        ("limits.memory", "128MiB"),
        ("user.atlas.managed", "true"),
    ]);
    p.devices.insert(
        "root".into(),
        map(&[("type", "disk"), ("path", "/"), ("pool", POOL)]),
    );
    pc.create_profile(&p).await.expect("create profile");
    let dup = pc.create_profile(&p).await.expect_err("dup");
    assert!(
        dup.is_already_exists(),
        "profile duplicate (500 already exists): {dup}"
    );

    let got = pc.get_profile("t-incus-svc").await.expect("get");
    assert_eq!(got.value.config, p.config);
    assert_eq!(got.value.devices, p.devices);
    let mut changed = got.value.clone();
    changed
        .config
        .insert("limits.memory".into(), "256MiB".into());
    pc.update_profile(&changed, got.etag.as_deref())
        .await
        .expect("update");
    let again = pc.get_profile("t-incus-svc").await.expect("get");
    assert_eq!(again.value.config["limits.memory"], "256MiB");
    assert_ne!(again.etag, got.etag, "ETag follows the content");
    let e = pc
        .update_profile(&p, got.etag.as_deref())
        .await
        .expect_err("stale");
    assert!(matches!(e, IncusError::PreconditionFailed { .. }), "{e}");
    // The profile is in the test project only.
    assert!(
        c.get_profile("t-incus-svc")
            .await
            .optional()
            .expect("default")
            .is_none()
    );
}

#[tokio::test]
async fn bucket_on_dir_pool_needs_minio() {
    let c = client_or_skip!();
    let mut g = Guard::new(&c);
    let pc = g.project("bkt").await;
    let has_mc = ["mc", "mcli"].iter().any(|t| which(t).is_some()) && which("minio").is_some();
    let bucket = StorageBucket {
        name: "t-incus-state".into(),
        ..StorageBucket::default()
    };
    match pc.create_bucket(POOL, &bucket).await {
        Err(IncusError::Unsupported { what, reason }) => {
            assert!(
                !has_mc,
                "MinIO is installed, yet buckets are unsupported: {reason}"
            );
            assert!(what.contains(POOL), "{what}");
            assert!(
                reason.contains("MinIO") && reason.contains("7.0"),
                "{reason}"
            );
            assert!(
                pc.get_bucket(POOL, "t-incus-state")
                    .await
                    .expect_err("none")
                    .is_not_found()
            );
        }
        Ok(key) => {
            assert!(
                has_mc,
                "bucket created without MinIO tools: this server serves S3 itself"
            );
            assert!(!format!("{key:?}").contains(&key.secret_key) || key.secret_key.is_empty());
            pc.delete_bucket(POOL, "t-incus-state")
                .await
                .expect("delete bucket");
        }
        Err(e) => panic!("expected Unsupported or success, got {e}"),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A unified image tarball: metadata.yaml + rootfs with a static busybox when the host has
/// one (then the container can start), else a rootfs with one file.
fn build_image(dir: &Path) -> (PathBuf, bool) {
    let root = dir.join("img");
    let rootfs = root.join("rootfs");
    for d in [
        "bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "run", "root",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let meta = format!(
        "architecture: x86_64\ncreation_date: {created}\nproperties:\n  description: atlas test image\n  os: atlas-test\n"
    );
    std::fs::write(root.join("metadata.yaml"), meta).expect("metadata");
    std::fs::write(rootfs.join("etc/hostname"), "atlas-test\n").expect("file");
    let bb = Path::new("/bin/busybox");
    let bootable = bb.exists() && is_static(bb);
    if bootable {
        std::fs::copy(bb, rootfs.join("bin/busybox")).expect("copy busybox");
        for (link, target) in [("bin/sh", "busybox"), ("sbin/init", "../bin/busybox")] {
            std::os::unix::fs::symlink(target, rootfs.join(link)).expect("symlink");
        }
    }
    let tarball = dir.join("image.tar");
    let st = std::process::Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tarball)
        .args(["-C"])
        .arg(&root)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .expect("tar");
    assert!(st.success());
    (tarball, bootable)
}

fn is_static(path: &Path) -> bool {
    // A dynamic ELF has a PT_INTERP naming the loader; look for it in the first pages.
    let bytes = std::fs::read(path).unwrap_or_default();
    !bytes
        .windows(14)
        .take(8192)
        .any(|w| w == b"/lib64/ld-linu" || w == b"/lib/ld-linux-")
}

#[tokio::test]
async fn image_import_instance_files_exec_and_certificates() {
    let c = client_or_skip!();
    let mut g = Guard::new(&c);
    let pc = g.project("inst").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tarball, bootable) = build_image(dir.path());
    let bytes = std::fs::read(&tarball).expect("read tarball");
    let want_fp = atlas_install::incus::cert_fingerprint(&bytes); // sha256 hex of the upload

    let import = ImageImport {
        aliases: vec!["t-incus/base".into()],
        properties: map(&[
            ("atlas.service", "test"),
            ("description", "atlas test & co"),
        ]),
        fingerprint: Some(want_fp.clone()),
        public: false,
    };
    let file = tokio::fs::File::open(&tarball).await.expect("open");
    let fp = pc
        .import_image(reqwest::Body::from(file), &import)
        .await
        .expect("import image");
    assert_eq!(
        fp, want_fp,
        "Incus' fingerprint is the SHA-256 of the upload"
    );

    let img = pc.get_image(&fp).await.expect("get image").value;
    assert_eq!(
        img.properties.get("atlas.service").map(String::as_str),
        Some("test")
    );
    assert_eq!(
        img.properties.get("description").map(String::as_str),
        Some("atlas test & co")
    );
    assert!(
        img.aliases.iter().any(|a| a.name == "t-incus/base"),
        "{:?}",
        img.aliases
    );
    let alias = pc
        .get_image_alias("t-incus/base")
        .await
        .expect("alias")
        .value;
    assert_eq!(alias.target, fp);

    // Same bytes again: the operation fails "already exists" (async failure, 6.0.4 wait shape).
    let again = tokio::fs::File::open(&tarball).await.expect("open");
    let e = pc
        .import_image(reqwest::Body::from(again), &ImageImport::default())
        .await
        .expect_err("re-import");
    assert!(e.is_already_exists(), "{e}");

    pc.create_image_alias("t-incus-second", &fp, "second")
        .await
        .expect("alias create");
    let e = pc
        .create_image_alias("t-incus-second", &fp, "")
        .await
        .expect_err("alias dup");
    assert!(e.is_already_exists(), "{e}");
    pc.delete_image_alias("t-incus-second")
        .await
        .expect("alias delete");
    assert!(
        pc.get_image_alias("t-incus-second")
            .await
            .optional()
            .expect("get")
            .is_none()
    );

    // Instances: from the alias, and from the fingerprint.
    let root = map(&[("type", "disk"), ("path", "/"), ("pool", POOL)]);
    let mut create = InstanceCreate::container("t-incus-c1", InstanceSource::alias("t-incus/base"));
    create.devices.insert("root".into(), root.clone());
    create.config = map(&[("user.atlas.managed", "true")]);
    pc.create_instance(&create)
        .await
        .expect("create from alias");
    let e = pc
        .create_instance(&create)
        .await
        .expect_err("duplicate instance");
    assert!(
        e.is_already_exists(),
        "instance duplicate (202 then failed operation): {e}"
    );
    let mut by_fp = InstanceCreate::container("t-incus-c2", InstanceSource::fingerprint(&fp));
    by_fp.devices.insert("root".into(), root);
    pc.create_instance(&by_fp)
        .await
        .expect("create from fingerprint");
    pc.delete_instance("t-incus-c2").await.expect("delete c2");

    let inst = pc.get_instance("t-incus-c1").await.expect("get instance");
    assert_eq!(inst.value.status, "Stopped");
    assert_eq!(inst.value.config["user.atlas.managed"], "true");
    let mut changed = inst.value.clone();
    changed
        .config
        .insert("user.atlas.hash".into(), "abc".into());
    pc.update_instance(&changed, inst.etag.as_deref())
        .await
        .expect("update instance");
    assert_eq!(
        pc.get_instance("t-incus-c1")
            .await
            .expect("get")
            .value
            .config["user.atlas.hash"],
        "abc"
    );

    // Files on the stopped instance.
    pc.mkdir("t-incus-c1", "/etc/atlas", FileMeta::new(0, 0, 0o750))
        .await
        .expect("mkdir");
    let content = b"listen = 1883\nsecret = not-logged\n".to_vec();
    pc.push_file(
        "t-incus-c1",
        "/etc/atlas/app.conf",
        content.clone(),
        FileMeta::new(0, 0, 0o640),
    )
    .await
    .expect("push");
    assert_eq!(
        pc.pull_file("t-incus-c1", "/etc/atlas/app.conf")
            .await
            .expect("pull"),
        content
    );
    assert_eq!(
        pc.pull_file("t-incus-c1", "/etc/hostname")
            .await
            .expect("pull"),
        b"atlas-test\n"
    );
    let e = pc
        .push_file(
            "t-incus-c1",
            "/no/such/dir/x",
            b"x".to_vec(),
            FileMeta::new(0, 0, 0o644),
        )
        .await
        .expect_err("missing parent");
    assert!(e.is_not_found(), "{e}");
    let e = pc
        .pull_file("t-incus-c1", "/etc/nothing-here")
        .await
        .expect_err("missing file");
    assert!(e.is_not_found(), "{e}");

    if bootable {
        pc.set_instance_state("t-incus-c1", StateAction::Start, 30, false)
            .await
            .expect("start");
        assert_eq!(
            pc.instance_state("t-incus-c1").await.expect("state").status,
            "Running"
        );
        let out = pc
            .exec(
                "t-incus-c1",
                &[
                    "/bin/busybox",
                    "sh",
                    "-c",
                    "cat /etc/atlas/app.conf; echo err >&2; exit 3",
                ],
                &BTreeMap::new(),
            )
            .await
            .expect("exec");
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout, content);
        assert_eq!(out.stderr_str(), "err\n");
        // An operation that outlasts one wait: 6.0.4 answers the timed-out wait like a
        // failure ("context deadline exceeded"); the client must keep waiting instead.
        pc.set_wait_chunk(std::time::Duration::from_secs(1));
        let slow = pc
            .exec(
                "t-incus-c1",
                &["/bin/busybox", "sh", "-c", "sleep 3; echo slept"],
                &BTreeMap::new(),
            )
            .await
            .expect("an exec longer than the wait chunk is waited for");
        pc.set_wait_chunk(std::time::Duration::from_secs(30));
        assert_eq!(
            (slow.exit_code, slow.stdout.as_slice()),
            (0, b"slept\n".as_slice())
        );
        pc.set_instance_state("t-incus-c1", StateAction::Stop, 60, true)
            .await
            .expect("stop");
        assert_eq!(
            pc.get_instance("t-incus-c1")
                .await
                .expect("get")
                .value
                .status,
            "Stopped"
        );
    } else {
        eprintln!("no static /bin/busybox (apt-get install busybox-static): exec not tested");
    }
    pc.delete_instance("t-incus-c1").await.expect("delete c1");
    pc.delete_image(&fp).await.expect("delete image");
    assert!(pc.get_image(&fp).await.optional().expect("get").is_none());

    // A metrics certificate, as the engine trusts Prometheus' client cert.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["atlas-prometheus".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = cert.der().to_vec();
    let name = unique("metrics");
    let cfp = c
        .add_certificate(&name, "metrics", &der)
        .await
        .expect("add metrics cert");
    g.certificates.push(cfp.clone());
    let listed = c.certificates().await.expect("list");
    let mine = listed
        .iter()
        .find(|x| x.fingerprint == cfp)
        .expect("listed by our fingerprint");
    assert_eq!(
        (mine.name.as_str(), mine.kind.as_str()),
        (name.as_str(), "metrics")
    );
    c.delete_certificate(&cfp).await.expect("delete cert");
    assert!(
        c.get_certificate(&cfp)
            .await
            .expect_err("gone")
            .is_not_found()
    );
}

#[tokio::test]
async fn unreachable_socket_says_what_was_tried_and_how_to_fix() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let missing = Path::new("/nonexistent/atlas/incus/unix.socket");
    let e = Client::unix(Some(missing)).expect_err("no socket");
    let msg = e.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("incusd running"),
        "{msg}"
    );

    // A socket file nobody listens on (stale socket of a stopped daemon).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("unix.socket");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let c = Client::unix(Some(&path)).expect("socket file exists");
    let e = c.server().await.expect_err("nobody listens");
    let msg = e.to_string();
    assert!(matches!(e, IncusError::Unreachable { .. }), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("Is incusd running"),
        "{msg}"
    );
    let e = c
        .create_project(&Project::new("t-incus-never"))
        .await
        .expect_err("nobody listens");
    assert!(matches!(e, IncusError::Unreachable { .. }), "{e}");
    assert_eq!(c.writes(), 1, "only the attempted POST counts");
}

/// A local TLS endpoint (rustls, loopback) standing in for a remote Incus: proves the pinned
/// verifier, the client certificate and reqwest's preconfigured rustls work end to end.
/// Returns the address and a handle yielding the client certificate each connection showed.
fn tls_endpoint(
    server_cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    connections: usize,
) -> (
    std::net::SocketAddr,
    std::thread::JoinHandle<Vec<Option<Vec<u8>>>>,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::{Read, Write};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(
            vec![CertificateDer::from(server_cert.cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                server_cert.signing_key.serialize_der(),
            )),
        )
        .expect("server config");
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..connections {
            let Ok((tcp, _)) = listener.accept() else {
                break;
            };
            let conn = rustls::ServerConnection::new(config.clone()).expect("conn");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut ok = true;
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        ok = false;
                        break;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let peer = tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            seen.push(peer);
            if ok {
                let body = r#"{"type":"sync","status":"Success","status_code":200,"metadata":{"auth":"trusted","api_extensions":["server_logging"],"environment":{"server_version":"7.0"}}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        }
        seen
    });
    (addr, handle)
}

/// Asks for a client certificate and accepts any that proves possession of its key, like
/// Incus does before it looks the fingerprint up in its trust store.
#[derive(Debug)]
struct AnyClientCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn remote_https_pins_the_server_and_presents_the_client_cert() {
    use atlas_install::incus::{RemoteSpec, cert_fingerprint};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = rcgen::generate_simple_self_signed(vec!["incus.test".into(), "127.0.0.1".into()])
        .expect("cert");
    let impostor = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let client_cert = rcgen::CertificateParams::new(vec!["atlas".to_string()])
        .expect("params")
        .self_signed(&client_key)
        .expect("client cert");

    let (addr, handle) = tls_endpoint(&server, 2);
    let spec = RemoteSpec {
        url: format!("https://{addr}"),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        server_fingerprint: cert_fingerprint(server.cert.der()),
    };
    let c = Client::remote(&spec).expect("remote client");
    let s = c.server().await.expect("GET /1.0 over pinned HTTPS").value;
    assert!(s.supports_server_logging() && s.auth == "trusted");

    let wrong = RemoteSpec {
        server_fingerprint: cert_fingerprint(impostor.cert.der()),
        ..spec.clone()
    };
    let e = Client::remote(&wrong)
        .expect("client")
        .server()
        .await
        .expect_err("pin mismatch must fail");
    assert!(matches!(e, IncusError::Tls(_)), "{e:?}");
    assert!(e.to_string().contains("not the pinned"), "{e}");

    let seen = handle.join().expect("server thread");
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].as_deref(),
        Some(client_cert.der().as_ref()),
        "server saw our client certificate"
    );

    let plain = RemoteSpec {
        url: format!("http://{addr}"),
        ..spec
    };
    assert!(matches!(Client::remote(&plain), Err(IncusError::Tls(m)) if m.contains("https://")));
}

#[tokio::test]
async fn client_from_config_uses_socket_project_and_remote_pem_files() {
    use atlas_install::config::{Config, IncusRemote};
    let c = client_or_skip!();
    let mut cfg = Config::builtin().incus;
    cfg.socket = SOCKET.to_string();
    cfg.project = "t-incus-cfg".to_string();
    let from_cfg = Client::from_config(&cfg).expect("from config");
    assert_eq!(from_cfg.project(), "t-incus-cfg");
    assert!(from_cfg.endpoint().contains(SOCKET));
    let remote = from_cfg.server().await.expect("server").value;
    assert_eq!(
        remote.environment.server_name,
        c.server()
            .await
            .expect("server")
            .value
            .environment
            .server_name
    );

    // Remote: cert/key may be files; a missing file names the key to fix and sends nothing.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["atlas".to_string()])
        .expect("p")
        .self_signed(&key)
        .expect("c");
    std::fs::write(dir.path().join("client.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("client.key"), key.serialize_pem()).expect("write");
    cfg.remote = Some(IncusRemote {
        url: "https://127.0.0.1:1".into(),
        client_cert: dir.path().join("client.crt").display().to_string(),
        client_key: dir.path().join("client.key").display().to_string(),
        server_fingerprint: "ab".repeat(32),
    });
    let r = Client::from_config(&cfg).expect("remote from files");
    assert_eq!(r.endpoint(), "https://127.0.0.1:1");
    let e = r.server().await.expect_err("nothing listens on port 1");
    assert!(matches!(e, IncusError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("core.https_address"), "{e}");

    if let Some(remote) = cfg.remote.as_mut() {
        remote.client_key = dir.path().join("missing.key").display().to_string();
    }
    let e = Client::from_config(&cfg).expect_err("missing key file");
    assert!(
        e.to_string().contains("incus.remote.client_key") && e.to_string().contains("missing.key"),
        "{e}"
    );
}
