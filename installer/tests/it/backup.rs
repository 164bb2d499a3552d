//! Backups and the install record against the real incusd, in this test's own project
//! (`t-bak-<pid>-<n>`): a busybox container (atlas-init as PID 1, no NIC) with the data volume
//! `mosquitto01-data` at /mosquitto/data; data written and read back through `exec`.
//! A guard deletes everything the test made with a fresh client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use atlas_install::config::{Config, LoadOptions};
use atlas_install::engine::backup::{self, BackupError, IfExists, VolumeSet};
use atlas_install::incus::{
    Client, ImageImport, InstanceCreate, InstanceSource, OptionalExt, Project, StateAction,
    StorageVolume,
};
use atlas_install::progress::NoProgress;
use atlas_install::state::record::{self, InstallRecord, RecordError, ServiceRecord};
use sha2::{Digest, Sha256};

use atlas_test_support::busybox::{self, BusyboxImage};

use crate::common::{atlas, client_or_skip, have_busybox, stderr, stdout, step_async};

const SOCKET: &str = "/var/lib/incus/unix.socket";
const POOL: &str = "default";
const INSTANCE: &str = "mosquitto01";
const VOLUME: &str = "mosquitto01-data";
const MOUNT: &str = "/mosquitto/data";

/// Deletes the test's project and everything in it when dropped.
struct Guard {
    project: String,
    dir: tempfile::TempDir,
}

impl Guard {
    fn new(n: u8) -> Guard {
        Guard {
            project: format!("t-bak-{}-{n}", std::process::id()),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// atlas.toml with only mosquitto01 enabled, in this test's project.
    fn config_file(&self) -> PathBuf {
        let mut t = format!(
            "[incus]\nsocket = \"{SOCKET}\"\nproject = \"{}\"\nstorage_pool = \"{POOL}\"\n",
            self.project
        );
        for off in [
            "caddy01",
            "grafana01",
            "prometheus01",
            "loki01",
            "alertmanager01",
            "node-exporter01",
            "step-ca01",
        ] {
            t += &format!("\n[instances.{off}]\nenabled = false\n");
        }
        let path = self.dir.path().join("atlas.toml");
        std::fs::write(&path, t).expect("write config");
        path
    }

    fn config(&self) -> Config {
        let opts = LoadOptions {
            file: Some(self.config_file()),
            cwd: self.dir.path().to_path_buf(),
            env: vec![],
            project: None,
            incus_socket: None,
        };
        atlas_install::config::load(&opts)
            .expect("test config loads")
            .config
    }

    fn atlas(&self, args: &[&str]) -> Command {
        let mut cmd = atlas();
        cmd.arg("-c")
            .arg(self.config_file())
            .args(["--progress", "plain"])
            .args(args);
        cmd
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::env::var_os("T_BAK_KEEP").is_some() {
            eprintln!("T_BAK_KEEP: leaving project {}", self.project);
            return;
        }
        let project = self.project.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let c = Client::unix_at(Path::new(SOCKET)).expect("cleanup client");
            rt.block_on(cleanup(c, project));
        })
        .join();
    }
}

async fn cleanup(c: Client, project: String) {
    if c.get_project(&project)
        .await
        .optional()
        .ok()
        .flatten()
        .is_none()
    {
        return;
    }
    let pc = c.in_project(&project);
    let t0 = std::time::Instant::now();
    for i in pc.instances().await.unwrap_or_default() {
        if i.is_running() {
            let _ = pc
                .set_instance_state(&i.name, StateAction::Stop, 5, true)
                .await;
        }
        let _ = pc.delete_instance(&i.name).await;
    }
    eprintln!("cleanup: instances gone after {:?}", t0.elapsed());
    for img in pc.images().await.unwrap_or_default() {
        let _ = pc.delete_image(&img.fingerprint).await;
    }
    for v in pc.volumes(POOL).await.unwrap_or_default() {
        for s in pc.volume_snapshots(POOL, &v.name).await.unwrap_or_default() {
            let _ = pc.delete_volume_snapshot(POOL, &v.name, &s.name).await;
        }
        let _ = pc.delete_volume(POOL, &v.name).await;
    }
    eprintln!("cleanup: volumes gone after {:?}", t0.elapsed());
    if let Err(e) = c.delete_project(&project).await {
        eprintln!("cleanup: project {project} left behind: {e}");
    }
}

/// Unified tarball: static busybox and atlas-init running `sleep` (it stops on SIGPWR).
fn image_tarball(dir: &Path) -> PathBuf {
    BusyboxImage::new(&dir.join("image"), "atlas backup test")
        .service(busybox::service(&["/bin/busybox", "sleep", "2147483647"]))
        .tarball(&dir.join("image.tar"))
}

fn data_disk() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("type".to_string(), "disk".to_string()),
        ("pool".to_string(), POOL.to_string()),
        ("source".to_string(), VOLUME.to_string()),
        ("path".to_string(), MOUNT.to_string()),
    ])
}

/// Project, image, volume and a running container using the volume.
async fn stack(c: &Client, g: &Guard) -> Client {
    c.create_project(&Project::new(&g.project))
        .await
        .expect("create project");
    let pc = c.in_project(&g.project);
    let body = reqwest::Body::from(
        tokio::fs::File::open(image_tarball(g.dir.path()))
            .await
            .expect("open image"),
    );
    let import = ImageImport {
        aliases: vec!["t-bak/box".into()],
        ..ImageImport::default()
    };
    pc.import_image(body, &import).await.expect("import image");
    pc.create_volume(POOL, &StorageVolume::filesystem(VOLUME, BTreeMap::new()))
        .await
        .expect("create volume");
    let mut create = InstanceCreate::container(INSTANCE, InstanceSource::alias("t-bak/box"));
    create.devices.insert(
        "root".into(),
        BTreeMap::from([
            ("type".to_string(), "disk".to_string()),
            ("pool".to_string(), POOL.to_string()),
            ("path".to_string(), "/".to_string()),
        ]),
    );
    create.devices.insert("data".into(), data_disk());
    pc.create_instance(&create).await.expect("create instance");
    start(&pc).await;
    pc
}

/// Asks for `action` until the instance is `want`, judged by the state reached: `tries`
/// requests, each followed by up to 10 s of polling. (The hangs this was written against were
/// the client's own silent connection stalling incusd, fixed in the client; the pause and
/// the retries stay as a margin for a busy host.)
async fn reach(pc: &Client, action: StateAction, want: &str, tries: usize) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..tries {
        if let Err(e) = pc.set_instance_state(INSTANCE, action, 30, false).await {
            eprintln!("{want} {INSTANCE}: {e}");
        }
        for _ in 0..10 {
            if status(pc).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    panic!("{INSTANCE} does not reach {want}");
}

async fn start(pc: &Client) {
    reach(pc, StateAction::Start, "Running", 5).await;
}

async fn status(pc: &Client) -> String {
    pc.get_instance(INSTANCE)
        .await
        .expect("instance")
        .value
        .status
        .to_string()
}

async fn sh(pc: &Client, script: &str) -> String {
    let out = pc
        .exec(
            INSTANCE,
            &["/bin/busybox", "sh", "-c", script],
            &BTreeMap::new(),
        )
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 0, "`{script}` failed: {}", out.stderr_str());
    out.stdout_str()
}

/// What the data looks like from inside: file list with owners, and content sums.
async fn fingerprint(pc: &Client) -> String {
    sh(
        pc,
        &format!(
            "cd {MOUNT} && /bin/busybox find . | /bin/busybox sort | while read f; do /bin/busybox stat -c '%n %u %s' \"$f\"; done; /bin/busybox cat note.txt; /bin/busybox sha256sum sub/blob"
        ),
    )
    .await
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

/// Volumes with their snapshots, for "nothing changed" and "nothing left over" checks.
async fn volumes(pc: &Client) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    // 6.0.4 also lists each snapshot as a volume `<volume>/<snapshot>`: the client drops them.
    for v in pc.volumes(POOL).await.expect("volumes") {
        let mut snaps: Vec<String> = pc
            .volume_snapshots(POOL, &v.name)
            .await
            .expect("snapshots")
            .into_iter()
            .map(|s| s.name)
            .collect();
        snaps.sort();
        m.insert(v.name, snaps);
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_list_export_and_restore_bring_the_data_back() {
    let c = client_or_skip!();
    if !have_busybox() {
        return;
    }
    let t0 = std::time::Instant::now();
    // Deletes the project and everything in it at the end of the test, also on panic.
    let g = Guard::new(1);
    let (set, pc, before) = step_async("1 stack with data", stack_with_data(&c, &g)).await;
    let s = Scenario {
        c: &c,
        g: &g,
        set,
        pc,
        before,
        t0,
    };
    s.done("stack up");
    // One stack, steps in order over it: a failure names its step.
    step_async("2 snapshot and list", snapshot_and_list(&s)).await;
    step_async("3 same name again", same_name_is_refused_or_kept(&s)).await;
    let snaps = step_async("4 CLI list and snapshot", cli_list_and_snapshot(&s)).await;
    let file = step_async("5 export", export_while_running(&s, snaps)).await;
    step_async("6 export again", second_export_is_refused(&s)).await;
    step_async("7 corrupt export", corrupt_export_is_refused(&s, &file)).await;
    step_async("8 restore via CLI", restore_via_cli(&s)).await;
    step_async("9 restore into a new volume", restore_into_a_new_volume(&s)).await;
}

/// What the steps of the backup scenario share: the daemon, the guard (project, temporary
/// directory, CLI), the volume set, the project client, the data's fingerprint as written,
/// and the start of the test for the timing lines.
struct Scenario<'a> {
    c: &'a Client,
    g: &'a Guard,
    set: VolumeSet,
    pc: Client,
    before: String,
    t0: std::time::Instant,
}

impl Scenario<'_> {
    /// Where step 5 exports to.
    fn out(&self) -> PathBuf {
        self.g.dir.path().join("export")
    }

    fn done(&self, what: &str) {
        eprintln!("[{:?}] {what}", self.t0.elapsed());
    }
}

/// The config's one data volume, the stack using it, data written into it (an owner other
/// than root, a random blob); returns the set, the project client and the data's fingerprint.
async fn stack_with_data(c: &Client, g: &Guard) -> (VolumeSet, Client, String) {
    let cfg = g.config();
    let set = VolumeSet::from_config(&cfg);
    assert_eq!(set.volumes.len(), 1, "{set:?}");
    let pc = stack(c, g).await;
    let pid = std::process::id();
    sh(
        &pc,
        &format!(
            "cd {MOUNT} && echo note-{pid} > note.txt && /bin/busybox mkdir sub && \
             /bin/busybox dd if=/dev/urandom of=sub/blob bs=1024 count=300 2>/dev/null && \
             /bin/busybox chown 1883:1883 note.txt"
        ),
    )
    .await;
    let before = fingerprint(&pc).await;
    assert!(
        before.contains(&format!("note-{pid}")) && before.contains("./note.txt 1883"),
        "{before}"
    );
    (set, pc, before)
}

/// snapshot -> list shows it.
async fn snapshot_and_list(s: &Scenario<'_>) {
    let Scenario { c, set, .. } = s;
    let taken = backup::snapshot(c, set, Some("t-snap"), &NoProgress)
        .await
        .expect("snapshot");
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].volume.as_str(), taken[0].snapshot.as_str()),
        (VOLUME, "t-snap")
    );
    let listing = backup::list(c, set).await.expect("list");
    assert_eq!(listing.len(), 1);
    assert!(listing[0].exists);
    assert_eq!(
        listing[0]
            .snapshots
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["t-snap"]
    );
    assert!(listing[0].snapshots[0].created_at.is_some());
}

/// The same name again is refused and changes nothing; kept if asked; a set without data
/// volumes takes nothing.
async fn same_name_is_refused_or_kept(s: &Scenario<'_>) {
    let Scenario { c, set, .. } = s;
    let w0 = c.writes();
    let e = backup::snapshot(c, set, Some("t-snap"), &NoProgress)
        .await
        .expect_err("duplicate name");
    assert!(
        matches!(e, BackupError::SnapshotExists { .. }) && e.to_string().contains(VOLUME),
        "{e}"
    );
    assert_eq!(c.writes(), w0, "a refused snapshot sends no write");
    let kept = backup::snapshot_with(c, set, "t-snap", IfExists::Keep, &NoProgress)
        .await
        .expect("keep existing");
    assert_eq!(kept.len(), 1);
    assert_eq!(
        c.writes(),
        w0,
        "an existing snapshot is kept, not rewritten"
    );
    let none = backup::snapshot_with(c, &set.only(&["caddy01"]), "x", IfExists::Keep, &NoProgress)
        .await
        .expect("no data volumes");
    assert!(none.is_empty());
    assert_eq!(c.writes(), w0);
}

/// The CLI lists it too, and snapshots with its default name; returns the volume's
/// snapshots, sorted.
async fn cli_list_and_snapshot(s: &Scenario<'_>) -> Vec<String> {
    let g = s.g;
    let o = g
        .atlas(&["--json", "backup", "list"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["volumes"][0]["volume"], VOLUME);
    assert_eq!(v["volumes"][0]["snapshots"][0]["name"], "t-snap");
    let o = g
        .atlas(&["--json", "backup", "snapshot"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let auto = v["snapshots"][0]["snapshot"]
        .as_str()
        .expect("name")
        .to_string();
    assert!(auto.starts_with("backup-20"), "{auto}");
    assert_eq!(v["snapshots"][0]["volume"], VOLUME);
    let mut snaps = vec![auto, "t-snap".to_string()];
    snaps.sort();
    s.done("snapshot+list");
    snaps
}

/// export (CLI): the container keeps running; manifest sums are those of the files; only
/// the `snaps` stay. Returns the volume's file in the export.
async fn export_while_running(s: &Scenario<'_>, snaps: Vec<String>) -> String {
    let (g, pc, out) = (s.g, &s.pc, s.out());
    let o = g
        .atlas(&["--json", "backup", "export", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(o.status.success(), "export failed: {}", stderr(&o));
    assert_eq!(status(pc).await, "Running", "export does not stop services");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(
        manifest,
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).expect("stdout json")
    );
    let entry = &manifest["volumes"][0];
    assert_eq!(entry["volume"], VOLUME);
    let name = entry["file"].as_str().expect("file").to_string();
    let file = out.join(&name);
    assert_eq!(entry["sha256"], sha256_file(&file));
    assert_eq!(entry["size"], std::fs::metadata(&file).expect("stat").len());
    let listed = Command::new("tar")
        .arg("tzf")
        .arg(&file)
        .output()
        .expect("tar");
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(
        names.contains("backup/volume/note.txt") && names.contains("backup/volume/sub/blob"),
        "{names}"
    );
    assert_eq!(
        volumes(pc).await,
        BTreeMap::from([(VOLUME.to_string(), snaps)]),
        "the export's snapshot and temporary volume are gone"
    );
    name
}

/// A second export into the same directory is refused.
async fn second_export_is_refused(s: &Scenario<'_>) {
    let o =
        s.g.atlas(&["backup", "export", "--out"])
            .arg(s.out())
            .output()
            .expect("run");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already holds an export"),
        "{}",
        stderr(&o)
    );
    s.done("export");
}

/// A flipped byte in the export's `file`: refused before Incus is touched, naming the file,
/// by the library and the CLI alike; nothing changed.
async fn corrupt_export_is_refused(s: &Scenario<'_>, file: &str) {
    let Scenario { c, g, set, pc, .. } = s;
    let (bad, bad_file) = corrupt_copy(&s.out(), &g.dir.path().join("bad"), file);
    let before_vols = volumes(pc).await;
    let w0 = c.writes();
    let e = backup::restore(c, set, &bad, &NoProgress)
        .await
        .expect_err("corrupt export");
    assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains(&bad_file.display().to_string()),
        "{e}"
    );
    assert_eq!(c.writes(), w0, "nothing sent to Incus");
    let o = g
        .atlas(&["--yes", "backup", "restore"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&bad_file.display().to_string()) && err.contains("Nothing was restored"),
        "{err}"
    );
    assert_eq!(volumes(pc).await, before_vols);
    assert_eq!(status(pc).await, "Running");
    assert_eq!(fingerprint(pc).await, s.before);
    s.done("corrupt refused");
}

/// Copies the export `out` into `bad` with a byte of its `file` flipped; returns `bad` and
/// the flipped file's path.
fn corrupt_copy(out: &Path, bad: &Path, file: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir(bad).expect("mkdir");
    for f in std::fs::read_dir(out).expect("ls") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, bad.join(f.file_name().expect("name"))).expect("copy");
    }
    let bad_file = bad.join(file);
    let mut bytes = std::fs::read(&bad_file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&bad_file, bytes).expect("write");
    (bad.to_path_buf(), bad_file)
}

/// Data deleted and replaced -> restore (CLI) -> data back, instance running again, a
/// safety snapshot kept, no temporary volume left.
async fn restore_via_cli(s: &Scenario<'_>) {
    let (g, pc) = (s.g, &s.pc);
    sh(
        pc,
        &format!("cd {MOUNT} && /bin/busybox rm -rf note.txt sub && echo junk > junk.txt"),
    )
    .await;
    assert_ne!(fingerprint_or_empty(pc).await, s.before);
    let o = g
        .atlas(&["--yes", "--json", "backup", "restore"])
        .arg(s.out())
        .output()
        .expect("run");
    assert!(o.status.success(), "restore failed: {}", stderr(&o));
    let restored: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(restored[0]["volume"], VOLUME);
    assert_eq!(restored[0]["restarted"][0], INSTANCE);
    let safety = restored[0]["safety_snapshot"]
        .as_str()
        .expect("safety snapshot")
        .to_string();
    assert!(safety.starts_with("pre-restore-"), "{safety}");
    assert_eq!(status(pc).await, "Running");
    assert_eq!(
        fingerprint(pc).await,
        s.before,
        "data back, owners included"
    );
    let vols = volumes(pc).await;
    assert_eq!(
        vols.keys().collect::<Vec<_>>(),
        vec![VOLUME],
        "no temporary volume left"
    );
    assert!(vols[VOLUME].contains(&safety), "{vols:?}");
    s.done("restore via CLI");
}

/// Whole volume gone (instance detached from it) -> restore creates it from the backup.
async fn restore_into_a_new_volume(s: &Scenario<'_>) {
    let Scenario { c, set, pc, .. } = s;
    stop(pc).await;
    let mut inst = pc.get_instance(INSTANCE).await.expect("instance");
    inst.value.devices.remove("data");
    pc.update_instance(&inst.value, inst.etag.as_deref())
        .await
        .expect("detach");
    for snap in pc.volume_snapshots(POOL, VOLUME).await.expect("snapshots") {
        pc.delete_volume_snapshot(POOL, VOLUME, &snap.name)
            .await
            .expect("delete snapshot");
    }
    pc.delete_volume(POOL, VOLUME).await.expect("delete volume");
    let report = backup::restore(c, set, &s.out(), &NoProgress)
        .await
        .expect("restore into a missing volume");
    assert!(report.volumes[0].created, "{report:?}");
    let mut inst = pc.get_instance(INSTANCE).await.expect("instance");
    inst.value.devices.insert("data".into(), data_disk());
    pc.update_instance(&inst.value, inst.etag.as_deref())
        .await
        .expect("attach");
    start(pc).await;
    assert_eq!(fingerprint(pc).await, s.before, "data back in a new volume");
    s.done("restore into a new volume");
}

async fn fingerprint_or_empty(pc: &Client) -> String {
    let out = pc
        .exec(
            INSTANCE,
            &[
                "/bin/busybox",
                "sh",
                "-c",
                &format!("cd {MOUNT} && /bin/busybox find . | /bin/busybox sort"),
            ],
            &BTreeMap::new(),
        )
        .await
        .expect("exec");
    out.stdout_str()
}

/// A clean stop (atlas-init handles SIGPWR).
async fn stop(pc: &Client) {
    reach(pc, StateAction::Stop, "Stopped", 3).await;
}

fn record(version: &str, fp: &str) -> InstallRecord {
    let svc = ServiceRecord {
        image_fingerprint: fp.into(),
        image: "atlas/mosquitto".into(),
        files: BTreeMap::from([(
            "/mosquitto/config/mosquitto.conf".to_string(),
            "00ff".to_string(),
        )]),
    };
    InstallRecord::new(version, BTreeMap::from([(INSTANCE.to_string(), svc)]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_record_rotates_in_the_project_config() {
    let c = client_or_skip!();
    let g = Guard::new(2);
    let e = record::write(&c, &g.project, &record("0.1.0", "f1"))
        .await
        .expect_err("no project yet");
    assert!(matches!(e, RecordError::MissingProject { .. }), "{e}");
    assert_eq!(
        record::read(&c, &g.project).await.expect("read"),
        record::Records::default()
    );
    c.create_project(&Project::new(&g.project))
        .await
        .expect("create project");
    let v1 = record("0.1.0", "f1");
    assert!(record::write(&c, &g.project, &v1).await.expect("write v1"));
    let got = record::read(&c, &g.project).await.expect("read");
    assert_eq!(got.current.as_ref(), Some(&v1));
    assert_eq!(got.previous, None);

    // Same install again (a converged re-run): nothing written, previous untouched.
    let w0 = c.writes();
    let mut again = v1.clone();
    again.installed_at = "2099-01-01T00:00:00Z".into();
    assert!(
        !record::write(&c, &g.project, &again)
            .await
            .expect("rewrite")
    );
    assert_eq!(c.writes(), w0);

    let v2 = record("0.2.0", "f2");
    assert!(record::write(&c, &g.project, &v2).await.expect("write v2"));
    let got = record::read(&c, &g.project).await.expect("read");
    assert_eq!(got.current, Some(v2.clone()));
    assert_eq!(got.previous, Some(v1));
    // Other project keys survive the rotation.
    let p = c.get_project(&g.project).await.expect("project");
    assert_eq!(
        p.value.config.get("features.images").map(String::as_str),
        Some("true"),
        "{:?}",
        p.value.config
    );
    assert_eq!(
        serde_json::from_str::<InstallRecord>(&p.value.config[atlas_install::state::keys::RECORD])
            .expect("stored JSON"),
        v2
    );
}

#[test]
fn bad_snapshot_name_and_missing_export_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = atlas()
        .args(["backup", "snapshot", "--name", "a/b"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("\"a/b\"") && err.contains("not usable"),
        "{err}"
    );
    let missing = dir.path().join("nope");
    let o = atlas()
        .args(["--yes", "backup", "restore"])
        .arg(&missing)
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&missing.join("manifest.json").display().to_string())
            && err.contains("Nothing was restored"),
        "{err}"
    );
}

/// An export into a disk that fills up half-way (a 1 MB tmpfs; the first volume's tarball
/// fits, the second's 4 MB of noise do not) fails saying so and leaves the directory as it
/// was: no `.partial`, no half set of tarballs, no manifest; nothing left in Incus either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_into_a_full_disk_removes_what_it_wrote() {
    let c = client_or_skip!();
    if !have_busybox() {
        return;
    }
    let g = Guard::new(5);
    let pc = stack(&c, &g).await;
    let small = "alertmanager01-data";
    pc.create_volume(POOL, &StorageVolume::filesystem(small, BTreeMap::new()))
        .await
        .expect("create the small volume");
    sh(
        &pc,
        &format!("/bin/busybox head -c 4000000 /dev/urandom > {MOUNT}/noise"),
    )
    .await;
    let volumes_before = volumes(&pc).await;
    let disk = crate::common::hermetic::Tmpfs::mount(1);
    let out = disk.path().join("export");
    let set = VolumeSet {
        project: g.project.clone(),
        pool: POOL.into(),
        volumes: vec![
            backup::DataVolume {
                volume: small.into(),
                instance: "alertmanager01".into(),
            },
            backup::DataVolume {
                volume: VOLUME.into(),
                instance: INSTANCE.into(),
            },
        ],
    };
    let e = backup::export(&c, &set, &out, &NoProgress)
        .await
        .expect_err("the disk is full");
    let msg = e.to_string();
    assert!(
        msg.contains("No space left on device") && msg.contains(".partial"),
        "{msg}"
    );
    assert!(
        !out.exists(),
        "the export directory it made is gone, with everything in it: {:?}",
        std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // Into a directory that was there before: it stays, empty as it was.
    std::fs::create_dir(&out).expect("mkdir");
    backup::export(&c, &set, &out, &NoProgress)
        .await
        .expect_err("the disk is still full");
    assert_eq!(
        std::fs::read_dir(&out).expect("read").count(),
        0,
        "nothing left in the directory"
    );
    assert_eq!(
        volumes(&pc).await,
        volumes_before,
        "no snapshot or temporary volume left"
    );
}
