//! `atlas-install image build|convert|import` end to end: a small busybox base image made
//! here, pushed to the local registry (127.0.0.1:5000), built into an Atlas image with a test
//! recipe, converted, imported into the real incusd (project `t-img-<pid>`), started with
//! atlas-init on our own bridge `t-img-br`, answering through a proxy device, restarted in
//! under 5 s. A guard removes everything (through the incus CLI: a fresh client).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use atlas_image::layer::deterministic::LayerBuilder;
use atlas_image::oci_layout::OciLayoutWriter;
use sha2::{Digest as _, Sha256};

use crate::common::{atlas, have_path, have_tool, require_all, run, stderr, stdout, step};
use atlas_test_support::free_port;
use atlas_test_support::incus::{ProjectGuard, incus, incus_ok};
use atlas_test_support::oci::{Layer, write_image};

const SOCKET: &str = "/var/lib/incus/unix.socket";
const REGISTRY: crate::common::FixtureRegistry = crate::common::FixtureRegistry;
const BRIDGE: &str = "t-img-br";
const PAGE: &str = "hello from an atlas image\n";

fn ready() -> bool {
    let tools = ["incus", "skopeo", "umoci", "tar", "curl"]
        .iter()
        .all(|t| have_tool(t));
    if !tools || !have_path(Path::new(SOCKET), "the Incus socket") {
        return false;
    }
    let up = Command::new("incus")
        .args(["info"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let reg = Command::new("curl")
        .args(["-sf", &format!("http://{REGISTRY}/v2/")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !(up && reg) {
        assert!(
            !require_all(),
            "incusd and the registry on {REGISTRY} are required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh"
        );
        eprintln!("skipping: incusd or the registry is down (run tests/start-services.sh)");
        return false;
    }
    true
}

/// A two-layer OCI image: static busybox, a passwd with nobody, a web root; the second layer
/// whites out a file of the first and adds another.
fn base_layout(dir: &Path) {
    let busybox = std::fs::read("/usr/bin/busybox").expect("a static busybox at /usr/bin/busybox");
    let mut l1 = LayerBuilder::new();
    l1.file("bin/busybox", 0o755, busybox).unwrap();
    for applet in ["sh", "ls", "cat", "ip"] {
        l1.symlink(&format!("bin/{applet}"), "busybox").unwrap();
    }
    l1.file(
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    l1.file("etc/group", 0o644, "root:x:0:\nnogroup:x:65534:\n")
        .unwrap();
    l1.dir("tmp", 0o1777).unwrap();
    l1.dir("root", 0o700).unwrap();
    l1.file("www/index.html", 0o644, PAGE).unwrap();
    l1.file("junk/old.txt", 0o644, "deleted in layer 2")
        .unwrap();
    let mut l2 = LayerBuilder::new();
    l2.file("junk/.wh.old.txt", 0o644, "").unwrap();
    l2.file("www/extra.txt", 0o644, "layer 2\n").unwrap();
    let (l1, l2) = (l1.build().unwrap(), l2.build().unwrap());

    let mut w = OciLayoutWriter::create(dir).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
    });
    let layers = [l1, l2].map(|l| Layer::gzip(l.gzip, l.diff_id));
    write_image(&mut w, &layers, config, "1");
    w.finish().unwrap();
}

fn recipe(root: &Path, base: &str) -> PathBuf {
    let dir = root.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "web"
description = "atlas test web server"
[base]
image = "{base}"
[config]
cmd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
user = "nobody"
ports = ["8080/tcp"]
[health]
http = {{ port = 8080, path = "/" }}
"#
        ),
    )
    .unwrap();
    path
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "atlas-install failed: {}", stderr(o));
    serde_json::from_str(stdout(o).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn build(recipe: &Path, cache: &Path, extra: &[&str]) -> Output {
    run(atlas()
        .args(["--progress", "none", "--json", "image", "build", "--recipe"])
        .arg(recipe)
        .arg("--cache-dir")
        .arg(cache)
        .args(extra))
}

/// The first three octets of a /24 nothing on the host uses (`common::hermetic`).
fn free_subnet() -> String {
    let o = crate::common::hermetic::free_subnets(1)[0]
        .network()
        .octets();
    format!("{}.{}.{}", o[0], o[1], o[2])
}

fn curl(port: u16) -> (String, String) {
    let o = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    let text = stdout(&o);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_owned(), body.to_owned())
}

fn wait_for_200(port: u16, within: Duration) -> (String, String) {
    let start = Instant::now();
    loop {
        let r = curl(port);
        if r.0 == "200" || start.elapsed() > within {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates our bridge (a free /24, no NAT, no DHCP) and instance `name` from image `alias` on
/// it, with a network.json giving it `<net>.10`; returns `<net>` (the first three octets).
fn on_own_bridge(project: &str, alias: &str, name: &str) -> String {
    let net = free_subnet();
    incus_ok(&[
        "network",
        "create",
        BRIDGE,
        &format!("ipv4.address={net}.1/24"),
        "ipv4.nat=false",
        "ipv4.dhcp=false",
        "ipv6.address=none",
    ]);
    incus_ok(&[
        "init",
        alias,
        name,
        "--project",
        project,
        "--storage",
        "default",
        "--network",
        BRIDGE,
    ]);
    let netfile = format!(
        "{{\"version\":1,\"interfaces\":[{{\"name\":\"eth0\",\"ipv4\":\"{net}.10/24\",\"gateway4\":\"{net}.1\"}}]}}"
    );
    let mut push = Command::new("incus")
        .args(["file", "push", "--project", project, "-"])
        .arg(format!("{name}/etc/atlas/network.json"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    push.stdin
        .take()
        .unwrap()
        .write_all(netfile.as_bytes())
        .unwrap();
    assert!(
        push.wait().unwrap().success(),
        "incus file push network.json"
    );
    net
}

fn image_count(project: &str) -> usize {
    stdout(&incus(&[
        "image",
        "list",
        "--project",
        project,
        "-c",
        "F",
        "-f",
        "csv",
    ]))
    .lines()
    .filter(|l| !l.is_empty())
    .count()
}

#[test]
fn image_build_convert_import_launch_restart() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let s = Scenario::new(tmp.path());
    // One scenario, steps in order over it: a failure names its step.
    let recipe = step("1 base image", || push_base(&s));
    step("2 build", || builds_agree(&s, &recipe));
    step("3 umoci unpack", || umoci_reads_the_oci_output(&s));
    let fingerprint = step("4 convert", || convert_to_a_file(&s));
    step("5 convert to stdout", || convert_to_stdout(&s));

    // Removes what the test made, in dependency order, also on panic.
    let mut guard = ProjectGuard::new(&s.project);
    guard.network(BRIDGE);
    incus_ok(&["project", "create", &s.project]);

    s.phase("convert done");
    step("6 incus image import", || {
        incus_imports_the_file(&s, &fingerprint)
    });
    step("7 import into a missing project", || {
        missing_project_is_named(&s)
    });
    step("8 corrupt layer", || corrupt_layer_imports_nothing(&s));
    step("9 streaming import", || streaming_import(&s, &fingerprint));
    let (net, port) = step("10 launch", || launch_behind_a_proxy(&s));
    step("11 inside", || address_and_pid_1(&s, &net));
    step("12 restart", || restart_is_quick(&s, port));
    drop(guard);
    s.phase("cleaned up");
    step("13 cleaned up", || {
        assert!(
            !stdout(&incus(&["project", "list", "-f", "csv"])).contains(&s.project),
            "cleaned up"
        )
    });
}

/// What the steps of the image scenario share: the test's pid and project, its temporary
/// directory, the base image's reference in the registry, the OCI layout the first build
/// writes, and the start of the test for the phase lines.
struct Scenario<'a> {
    pid: u32,
    project: String,
    t: &'a Path,
    base_ref: String,
    src: String,
    t0: Instant,
}

/// The instance the scenario launches.
const INSTANCE: &str = "t-img-c1";

impl<'a> Scenario<'a> {
    fn new(t: &'a Path) -> Scenario<'a> {
        let pid = std::process::id();
        Scenario {
            pid,
            project: format!("t-img-{pid}"),
            t,
            base_ref: format!("{REGISTRY}/t-img-{pid}/base:1"),
            src: format!("oci:{}:web", t.join("oci").display()),
            t0: Instant::now(),
        }
    }

    fn phase(&self, what: &str) {
        eprintln!("[{:>6.1}s] {what}", self.t0.elapsed().as_secs_f64());
    }

    /// The instance's console log, for a failure's message.
    fn log(&self) -> String {
        stdout(&incus(&[
            "console",
            "--project",
            &self.project,
            INSTANCE,
            "--show-log",
        ]))
    }
}

/// Base image: written here, pushed by skopeo; returns the recipe built on it.
fn push_base(s: &Scenario<'_>) -> PathBuf {
    let t = s.t;
    base_layout(&t.join("base"));
    let o = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", t.join("base").display()))
        .arg(format!("docker://{}", s.base_ref))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    recipe(t, &s.base_ref)
}

/// Build twice with one cache (the second uses the pin), once with another: one digest.
fn builds_agree(s: &Scenario<'_>, recipe: &Path) {
    let (t, base_ref) = (s.t, &s.base_ref);
    let started = Instant::now();
    let first = build(
        recipe,
        &t.join("cache-a"),
        &["--oci", t.join("oci").to_str().unwrap()],
    );
    let d1 = json_of(&first)["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    eprintln!("first build: {:?}", started.elapsed());
    assert!(
        stderr(&first).contains(&format!("not in images.lock: pinned {base_ref} to sha256:")),
        "first pull of an unlocked base must say it pinned: {}",
        stderr(&first)
    );
    let pins = t.join("cache-a/pins.toml");
    assert_eq!(
        std::fs::metadata(&pins).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(std::fs::read_to_string(&pins).unwrap().contains(base_ref));
    let second = build(recipe, &t.join("cache-a"), &[]);
    assert_eq!(json_of(&second)["images"][0]["digest"], d1.as_str());
    assert!(!stderr(&second).contains("pinned"), "{}", stderr(&second));
    let other = build(recipe, &t.join("cache-b"), &[]);
    assert_eq!(
        json_of(&other)["images"][0]["digest"],
        d1.as_str(),
        "another cache, same digest"
    );
    s.phase("builds done");
}

/// The OCI output, read by umoci: our init, the service, the whiteout applied.
fn umoci_reads_the_oci_output(s: &Scenario<'_>) {
    let t = s.t;
    let bundle = t.join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:web", t.join("oci").display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "umoci unpack: {}", stderr(&o));
    assert_eq!(
        std::fs::read(bundle.join("rootfs/sbin/init")).unwrap(),
        atlas_image::init::binary()
    );
    let svc = std::fs::read_to_string(bundle.join("rootfs/etc/atlas/service.json")).unwrap();
    assert!(
        svc.contains("\"user\": \"nobody\"") && svc.contains("httpd"),
        "{svc}"
    );
    assert!(
        !bundle.join("rootfs/junk/old.txt").exists(),
        "whiteout applied"
    );
    s.phase("umoci done");
}

/// convert: a file GNU tar lists; returns its sha256 (the fingerprint Incus gives it).
fn convert_to_a_file(s: &Scenario<'_>) -> String {
    let t = s.t;
    let tarball = t.join("web.tar");
    let o = run(atlas()
        .args(["--progress", "none", "image", "convert", &s.src, "--out"])
        .arg(&tarball)
        .arg("--cache-dir")
        .arg(t.join("cache-a")));
    assert!(o.status.success(), "convert: {}", stderr(&o));
    let list = Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()
        .unwrap();
    let names = stdout(&list);
    assert!(names.lines().next() == Some("metadata.yaml"), "{names}");
    for want in [
        "rootfs/sbin/init",
        "rootfs/etc/atlas/service.json",
        "rootfs/www/index.html",
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{want} missing from {names}"
        );
    }
    assert!(
        !names.contains("rootfs/junk/old.txt") && !names.contains(".wh."),
        "{names}"
    );
    sha256_file(&tarball)
}

/// `--out -` streams to stdout; the docker:// transport from the registry.
fn convert_to_stdout(s: &Scenario<'_>) {
    let t = s.t;
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "image",
            "convert",
            &format!("docker://{}", s.base_ref),
            "--out",
            "-",
        ])
        .arg("--cache-dir")
        .arg(t.join("cache-a")));
    assert!(o.status.success(), "convert to stdout: {}", stderr(&o));
    let piped = t.join("piped.tar");
    std::fs::write(&piped, &o.stdout).unwrap();
    let names = stdout(&Command::new("tar").arg("-tf").arg(&piped).output().unwrap());
    assert!(
        names.lines().any(|l| l == "rootfs/sbin/init")
            && names.lines().any(|l| l == "rootfs/bin/sh"),
        "{names}"
    );
}

/// The file is accepted by `incus image import`; then removed for our own import.
fn incus_imports_the_file(s: &Scenario<'_>, fingerprint: &str) {
    let project = &s.project;
    incus_ok(&[
        "image",
        "import",
        "--project",
        project,
        s.t.join("web.tar").to_str().unwrap(),
    ]);
    assert!(
        stdout(&incus(&[
            "image",
            "list",
            "--project",
            project,
            "-c",
            "F",
            "-f",
            "csv"
        ]))
        .contains(fingerprint)
    );
    incus_ok(&["image", "delete", "--project", project, fingerprint]);
    s.phase("incus image import done");
}

/// A project that does not exist: said before any pull, with the fix.
fn missing_project_is_named(s: &Scenario<'_>) {
    let o = run(atlas()
        .args(["--progress", "none", "--incus-socket", SOCKET])
        .args([
            "--project",
            &format!("t-img-none-{}", s.pid),
            "image",
            "import",
            &s.src,
        ])
        .arg("--cache-dir")
        .arg(s.t.join("cache-a")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("incus project create"),
        "{}",
        stderr(&o)
    );
}

/// Bad input: a layer whose bytes do not match its digest; nothing imported.
fn corrupt_layer_imports_nothing(s: &Scenario<'_>) {
    let (t, project) = (s.t, &s.project);
    let bad = t.join("bad");
    let layer = corrupt_second_layer(&t.join("base"), &bad);
    let before = image_count(project);
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "--incus-socket",
            SOCKET,
            "--project",
            project,
            "image",
            "import",
        ])
        .arg(format!("oci:{}:1", bad.display()))
        .args(["--alias", "bad", "--cache-dir"])
        .arg(t.join("cache-a")));
    assert!(!o.status.success(), "a corrupt layer must fail the import");
    assert!(
        stderr(&o).contains(&layer),
        "the error names the layer {layer}: {}",
        stderr(&o)
    );
    assert_eq!(image_count(project), before, "nothing imported");
    s.phase("bad input done");
}

/// Copies the OCI layout `base` to `bad` with a byte of its second layer flipped; returns
/// that layer's digest.
fn corrupt_second_layer(base: &Path, bad: &Path) -> String {
    copy_dir(base, bad);
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("index.json")).unwrap()).unwrap();
    let mdig = idx["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad.join("blobs/sha256").join(&mdig)).unwrap())
            .unwrap();
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_owned();
    let lpath = bad
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&lpath).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&lpath, bytes).unwrap();
    layer
}

/// Our streaming import: same bytes as the file (same fingerprint), alias created; again,
/// the image is reused.
fn streaming_import(s: &Scenario<'_>, fingerprint: &str) {
    let project = &s.project;
    let import = |alias: &str| {
        run(atlas()
            .args([
                "--progress",
                "none",
                "--json",
                "--incus-socket",
                SOCKET,
                "--project",
                project,
            ])
            .args(["image", "import", &s.src, "--alias", alias, "--cache-dir"])
            .arg(s.t.join("cache-a")))
    };
    let started = Instant::now();
    let v = json_of(&import("web"));
    eprintln!("streamed import: {:?}", started.elapsed());
    assert_eq!(v["fingerprint"], fingerprint);
    assert_eq!(v["created"], true);
    assert_eq!(v["aliases"][0]["change"], "created");
    let again = json_of(&import("web"));
    assert_eq!(
        again["fingerprint"], fingerprint,
        "re-import reuses the image"
    );
    assert_eq!(again["created"], false);
    assert_eq!(again["aliases"][0]["change"], "unchanged");
    assert_eq!(image_count(project), 1);
    let props = incus_ok(&[
        "image",
        "get-property",
        "--project",
        project,
        "web",
        "atlas.service",
    ]);
    assert_eq!(props.trim(), "web");
    s.phase("imports done");
}

/// Launch on our own bridge with a static address, reached through a proxy device; returns
/// the bridge's network (first three octets) and the proxy's port.
fn launch_behind_a_proxy(s: &Scenario<'_>) -> (String, u16) {
    let project = &s.project;
    let net = on_own_bridge(project, "web", INSTANCE);
    let port = free_port();
    incus_ok(&[
        "config",
        "device",
        "add",
        "--project",
        project,
        INSTANCE,
        "web",
        "proxy",
        &format!("listen=tcp:127.0.0.1:{port}"),
        "connect=tcp:127.0.0.1:8080",
    ]);
    incus_ok(&["start", "--project", project, INSTANCE]);
    let (code, body) = wait_for_200(port, Duration::from_secs(30));
    assert_eq!(
        code,
        "200",
        "service through the proxy; console: {}",
        s.log()
    );
    assert_eq!(body, PAGE);
    (net, port)
}

/// Inside: the static address from network.json, atlas-init as PID 1.
fn address_and_pid_1(s: &Scenario<'_>, net: &str) {
    let project = &s.project;
    let addr = incus_ok(&[
        "exec",
        "--project",
        project,
        INSTANCE,
        "--",
        "/bin/ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(
        addr.contains(&format!("{net}.10/24")),
        "static address from network.json: {addr}"
    );
    let ps = incus_ok(&[
        "exec",
        "--project",
        project,
        INSTANCE,
        "--",
        "/bin/cat",
        "/proc/1/cmdline",
    ]);
    assert!(ps.starts_with("/sbin/init"), "PID 1 is atlas-init: {ps:?}");
    s.phase("serving");
}

/// `incus restart` takes under 5 s and the service answers again.
fn restart_is_quick(s: &Scenario<'_>, port: u16) {
    let started = Instant::now();
    incus_ok(&["restart", "--project", &s.project, INSTANCE]);
    let restart = started.elapsed();
    eprintln!("incus restart took {restart:?}");
    assert!(
        restart < Duration::from_secs(5),
        "restart took {restart:?}; console: {}",
        s.log()
    );
    let (code, _) = wait_for_200(port, Duration::from_secs(30));
    assert_eq!(code, "200", "answers again after restart");
    s.phase("answers after restart");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A recipe on an upstream name, served by the fixture registry as a mirror: the first pull
/// pins the digest (and says so with the upstream name), a lock file is honoured, a lock
/// with another digest fails; `image lock` against the mirror either resolves every recipe
/// or names the reference it could not resolve and writes nothing.
#[test]
fn image_build_through_mirror_pins_and_honours_the_lock() {
    if !ready() {
        return;
    }
    let upstream = "docker.io/prom/prometheus:v2.42.0";
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{REGISTRY}/prom/prometheus:v2.42.0"),
        ])
        .output()
        .unwrap();
    if !raw.status.success() {
        assert!(
            !require_all(),
            "fixture prom/prometheus:v2.42.0 missing: run tests/start-services.sh"
        );
        eprintln!("skipping: fixture prom/prometheus:v2.42.0 not in the registry");
        return;
    }
    let want = format!("sha256:{}", hex::encode(Sha256::digest(&raw.stdout)));
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let dir = t.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("prom.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"prom\"\n[base]\nimage = \"{upstream}\"\n[config]\nentrypoint = [\"/bin/prometheus\"]\n\
             user = \"65534:65534\"\n[health]\nhttp = {{ port = 9090, path = \"/-/ready\" }}\n"
        ),
    )
    .unwrap();
    let mirror = ["--registry-mirror", &REGISTRY];
    let first = build(&recipe, &t.join("cache"), &mirror);
    let d = json_of(&first)["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        stderr(&first).contains(&format!(
            "not in images.lock: pinned {upstream} to {want} on first pull"
        )),
        "{}",
        stderr(&first)
    );
    let lock = t.join("images.lock");
    std::fs::write(
        &lock,
        format!("version = 1\n[images]\n\"{upstream}\" = \"{want}\"\n"),
    )
    .unwrap();
    let locked = build(
        &recipe,
        &t.join("cache2"),
        &[&mirror[..], &["--images-lock", lock.to_str().unwrap()]].concat(),
    );
    assert_eq!(json_of(&locked)["images"][0]["digest"], d.as_str());
    assert!(!stderr(&locked).contains("pinned"), "{}", stderr(&locked));
    assert!(
        !t.join("cache2/pins.toml").exists(),
        "a locked base is not pinned"
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        &lock,
        format!("version = 1\n[images]\n\"{upstream}\" = \"{wrong}\"\n"),
    )
    .unwrap();
    let bad = build(
        &recipe,
        &t.join("cache3"),
        &[&mirror[..], &["--images-lock", lock.to_str().unwrap()]].concat(),
    );
    assert!(
        !bad.status.success(),
        "a lock digest the registry does not have must fail"
    );
    assert!(stderr(&bad).contains(&wrong[..20]), "{}", stderr(&bad));

    let out = t.join("resolved.lock");
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "image",
            "lock",
            "--registry-mirror",
            &REGISTRY,
            // Never Caddy's build service itself: the fixture directory stands in for it.
            "--download-mirror",
            DOWNLOADS,
            "--cache-dir",
        ])
        .arg(t.join("lock-cache"))
        .arg("--out")
        .arg(&out));
    if o.status.success() {
        let text = std::fs::read_to_string(&out).unwrap();
        for r in atlas_image::recipe::Recipe::embedded().unwrap() {
            assert!(
                text.contains(&r.base_ref().unwrap().to_string()),
                "{} missing: {text}",
                r.name
            );
        }
        // Caddy's download, per architecture, by the sha256 of the bytes that were served.
        let served = sha256_file(Path::new(
            "/var/tmp/atlas-test/downloads/caddyserver.com/api/download",
        ));
        let lock = atlas_image::lock::ImagesLock::load(&out).unwrap();
        let files: Vec<(String, String)> = lock
            .files()
            .map(|(u, d)| (u.to_owned(), d.to_string()))
            .collect();
        assert_eq!(files.len(), 2, "{text}");
        for (url, digest) in files {
            assert!(
                url.starts_with("https://caddyserver.com/api/download?os=linux&arch="),
                "{url}"
            );
            assert_eq!(digest, format!("sha256:{served}"), "{url}");
        }
    } else {
        assert!(
            stderr(&o).contains(&*REGISTRY) && stderr(&o).contains("registry"),
            "{}",
            stderr(&o)
        );
        assert!(!out.exists(), "a failed lock writes nothing");
    }
}

/// The download mirror tests/fixtures/build-images.sh lays out (Caddy's build service).
const DOWNLOADS: &str = "file:///var/tmp/atlas-test/downloads";

/// The registry and the tools of the tests that need no Incus (skip, or fail under CI).
fn registry_ready() -> bool {
    if !["skopeo", "umoci", "curl"].iter().all(|t| have_tool(t)) {
        return false;
    }
    let reg = Command::new("curl")
        .args(["-sf", &format!("http://{REGISTRY}/v2/")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !reg {
        assert!(
            !require_all(),
            "the registry on {REGISTRY} is required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh"
        );
        eprintln!("skipping: no registry on {REGISTRY} (run tests/start-services.sh)");
    }
    reg
}

/// The manifest (or index) bytes the local registry serves for a fixture image; `None`
/// (skip, or fail under CI) when the fixture is missing.
fn fixture_manifest(repo_tag: &str) -> Option<Vec<u8>> {
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{REGISTRY}/{repo_tag}"))
        .output()
        .unwrap();
    if !raw.status.success() {
        assert!(
            !require_all(),
            "fixture {repo_tag} missing: run tests/fixtures/build-images.sh"
        );
        eprintln!("skipping: fixture {repo_tag} not in the registry");
        return None;
    }
    Some(raw.stdout)
}

/// The digest of a fixture image, from the manifest bytes the registry serves.
fn fixture_digest(repo_tag: &str) -> Option<String> {
    fixture_manifest(repo_tag).map(|raw| format!("sha256:{}", hex::encode(Sha256::digest(raw))))
}

/// `image build SERVICE... --push docker://PREFIX --oci-layout DIR`: embedded recipes (their
/// pinned bases locked to the fixture images), each pushed to
/// PREFIX/<service>:<tag> and tagged <service> in the layout; a recipe with `[[copy]]`
/// pulls its copy source through the mirror too; wrong service names and push targets fail
/// before anything is pulled or written.
#[test]
fn image_build_several_services_push_prefix_and_oci_layout() {
    if !registry_ready() {
        return;
    }
    use crate::common::{fixture_of, recipe_base};
    let (Some(prom), Some(am)) = (
        fixture_digest(&fixture_of("prometheus")),
        fixture_digest(&fixture_of("alertmanager")),
    ) else {
        return;
    };
    let pid = std::process::id();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let lock = t.join("images.lock");
    std::fs::write(
        &lock,
        format!(
            "version = 1\n[images]\n\"{}\" = \"{prom}\"\n\"{}\" = \"{am}\"\n",
            recipe_base("prometheus"),
            recipe_base("alertmanager"),
        ),
    )
    .unwrap();
    let prefix = format!("docker://{REGISTRY}/t-imgrec-{pid}");
    let layout = t.join("oci");
    let common = |cache: &str| -> Vec<String> {
        [
            "--registry-mirror",
            &REGISTRY,
            "--images-lock",
            lock.to_str().unwrap(),
            "--cache-dir",
            t.join(cache).to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let o = run(atlas()
        .args(["--progress", "none", "--json", "image", "build"])
        .args([
            "prometheus",
            "alertmanager",
            "--push",
            &prefix,
            "--oci-layout",
        ])
        .arg(&layout)
        .args(common("cache")));
    let v = json_of(&o);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{v}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    for (img, service) in images.iter().zip(["prometheus", "alertmanager"]) {
        assert_eq!(img["service"], service);
        let digest = img["digest"].as_str().unwrap();
        let tag = recipe_base(service).rsplit_once(':').unwrap().1.to_string();
        let dest = format!("{REGISTRY}/t-imgrec-{pid}/{service}:{tag}");
        assert_eq!(img["pushed"], format!("{dest}@{digest}"));
        let o = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{dest}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let inspect: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(inspect["Digest"], digest);
        let tagged = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == service);
        assert_eq!(tagged.unwrap()["digest"], digest, "{index}");
    }

    // A recipe with [[copy]]: the Prometheus binary out of the prometheus fixture, over the
    // alertmanager one. Its source is pinned by the lock and pulled through the mirror.
    let dir = t.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let recipe = dir.join("duo.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"duo\"\n[base]\nimage = \"{}\"\n\
             [[copy]]\nimage = \"{}\"\nfrom = \"/bin/prometheus\"\nto = \"/opt/duo/\"\n\
             [config]\nentrypoint = [\"/opt/duo/prometheus\"]\n[health]\nhttp = {{ port = 9090, path = \"/-/ready\" }}\n",
            recipe_base("alertmanager"),
            recipe_base("prometheus"),
        ),
    )
    .unwrap();
    let bundle = t.join("duo-oci");
    let o = run(atlas()
        .args(["--progress", "none", "--json", "image", "build", "--recipe"])
        .arg(&recipe)
        .arg("--oci")
        .arg(&bundle)
        .args(common("cache")));
    let v = json_of(&o);
    assert!(!stderr(&o).contains("pinned"), "{}", stderr(&o));
    assert_eq!(v["images"][0]["service"], "duo");
    let unpacked = t.join("duo-bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:duo", bundle.display()))
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(o.status.success(), "umoci unpack: {}", stderr(&o));
    let copied = std::fs::read(unpacked.join("rootfs/opt/duo/prometheus")).unwrap();
    let original = std::fs::read("/usr/bin/prometheus").ok();
    assert!(copied.len() > 1_000_000, "the real binary");
    if let Some(o) = original {
        assert_eq!(
            Sha256::digest(&copied),
            Sha256::digest(&o),
            "the fixture's binary"
        );
    }
    assert!(
        unpacked.join("rootfs/bin/alertmanager").exists(),
        "the base kept"
    );

    // Errors: nothing pulled, nothing written.
    let empty = t.join("cache-none");
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "image",
            "build",
            "prometheus",
            "nosuch",
            "alsonot",
        ])
        .args(common("cache-none")));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("\"nosuch\", \"alsonot\"") && e.contains("known services: alertmanager, caddy"),
        "{e}"
    );
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "image",
            "build",
            "prometheus",
            "alertmanager",
        ])
        .args(["--push", &format!("docker://{REGISTRY}/one/image:1")])
        .args(common("cache-none")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("names one image"), "{}", stderr(&o));
    let o = run(atlas()
        .args(["--progress", "none", "image", "build", "prometheus"])
        .args(["--push", "oci:/tmp/x"])
        .args(common("cache-none")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--oci-layout DIR"), "{}", stderr(&o));
    assert_eq!(files_under(&empty), 0, "a refused build pulled nothing");
}

fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}

/// Grafana plugins: the config's `[grafana] plugins` chooses among the recipe's pinned
/// `[[plugin]]` archives (a zip made by `zip`, read from a path under the recipe's repository
/// root); the image has it unpacked under the plugin directory. A choice the recipe does not
/// pin, or an archive whose bytes differ from the pin, fails and builds nothing.
#[test]
fn image_build_bakes_the_plugins_the_config_chooses() {
    if !registry_ready() || !have_tool("zip") {
        return;
    }
    let Some(grafana) = fixture_digest(&crate::common::fixture_of("grafana")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let top = t.join("src/t-clock-panel");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("plugin.json"), r#"{"id":"t-clock"}"#).unwrap();
    std::fs::create_dir_all(t.join("plugins")).unwrap();
    let o = Command::new("zip")
        .args(["-q", "-r", "-X"])
        .arg(t.join("plugins/t-clock.zip"))
        .arg("t-clock-panel")
        .current_dir(t.join("src"))
        .output()
        .unwrap();
    assert!(o.status.success(), "zip: {}", stderr(&o));
    let zip_sha = sha256_file(&t.join("plugins/t-clock.zip"));
    let lock = t.join("images.lock");
    std::fs::write(
        &lock,
        format!(
            "version = 1\n[images]\n\"{}\" = \"{grafana}\"\n",
            crate::common::recipe_base("grafana")
        ),
    )
    .unwrap();
    let recipe_text = |sha: &str| {
        let embedded = atlas_image::recipe::EMBEDDED
            .iter()
            .find(|(n, _)| *n == "grafana")
            .unwrap()
            .1;
        embedded.to_string()
            + &format!(
                "\n[[plugin]]\nid = \"t-clock\"\nurl = \"plugins/t-clock.zip\"\nsha256 = \"sha256:{sha}\"\n"
            )
    };
    std::fs::create_dir_all(t.join("images")).unwrap();
    let recipe = t.join("images/grafana.toml");
    std::fs::write(&recipe, recipe_text(&zip_sha)).unwrap();
    let config = t.join("atlas.toml");
    let build_with = |choice: &str, cache: &str, out: &str| {
        std::fs::write(&config, format!("[grafana]\nplugins = [{choice}]\n")).unwrap();
        run(atlas()
            .args(["--progress", "none", "--json", "--config"])
            .arg(&config)
            .args(["image", "build", "--recipe"])
            .arg(&recipe)
            .args(["--registry-mirror", &REGISTRY, "--images-lock"])
            .arg(&lock)
            .arg("--cache-dir")
            .arg(t.join(cache))
            .arg("--oci-layout")
            .arg(t.join(out)))
    };
    let o = build_with("\"t-clock\"", "cache", "oci");
    let v = json_of(&o);
    assert_eq!(v["images"][0]["service"], "grafana");
    assert_eq!(v["images"][0]["plugins"], serde_json::json!(["t-clock"]));
    let bundle = t.join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:grafana", t.join("oci").display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "umoci: {}", stderr(&o));
    let dir = bundle.join("rootfs/opt/atlas/grafana-plugins");
    assert_eq!(
        std::fs::read_to_string(dir.join("t-clock/plugin.json")).unwrap(),
        r#"{"id":"t-clock"}"#
    );
    let svc = std::fs::read_to_string(bundle.join("rootfs/etc/atlas/service.json")).unwrap();
    assert!(
        svc.contains("GF_PATHS_PLUGINS=/opt/atlas/grafana-plugins"),
        "{svc}"
    );

    // Not pinned by the recipe: refused before any pull.
    let o = build_with("\"t-clock\", \"nope\"", "cache-x", "oci-x");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("\"nope\"") && e.contains("pins: t-clock"), "{e}");
    assert_eq!(files_under(&t.join("cache-x")), 0, "nothing pulled: {e}");
    assert!(!t.join("oci-x").exists());

    // The archive changed under its pin: refused, nothing written.
    std::fs::write(&recipe, recipe_text(&"0".repeat(64))).unwrap();
    let o = build_with("\"t-clock\"", "cache", "oci-y");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&zip_sha),
        "names the digest it got: {}",
        stderr(&o)
    );
    assert!(!t.join("oci-y").exists());
}

/// The fixture of every image shape registries serve (tests/fixtures: `atlas-fixtures/shapes`,
/// an index with an attestation manifest over a usr-merged busybox root whose applets are hard
/// links with `/usr/sbin/init` among them, a copy of busybox as `/usr/sbin/httpd` with
/// `cap_net_bind_service=+ep`, and a zstd layer with a whiteout and an opaque directory),
/// served by a registry that wants Bearer tokens, imported by `image import` and started in
/// Incus. It runs: httpd serves port 80 as uid 1000, which only the file capability allows;
/// `/sbin/init` (through the `/sbin -> usr/sbin` symlink, which is still a symlink) is
/// atlas-init; the other applets are still hard links of busybox; getcap sees the capability.
#[test]
fn image_shapes_from_a_token_registry_run_with_links_and_capabilities() {
    if !ready() || !have_tool("docker-registry") {
        return;
    }
    let fixture = format!("{REGISTRY}/atlas-fixtures/shapes:1");
    let Some(served) = fixture_manifest("atlas-fixtures/shapes:1") else {
        return;
    };
    let index: serde_json::Value = serde_json::from_slice(&served).unwrap();
    assert_eq!(
        index["manifests"][1]["annotations"]["vnd.docker.reference.type"], "attestation-manifest",
        "the fixture is an index with an attestation: {index}"
    );
    let pid = std::process::id();
    let project = format!("t-shapes-{pid}");
    let tmp = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(reg) = rt.block_on(crate::common::registry::auth::start_token("bob", "builder"))
    else {
        return;
    };
    let image = format!("{}/atlas-fixtures/shapes:1", reg.addr);
    let o = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--preserve-digests"])
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(["--dest-creds", "bob:builder"])
        .arg(format!("docker://{fixture}"))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    reg.token_requests.lock().unwrap().clear();

    // Removes what the test made, in dependency order, also on panic.
    let mut guard = ProjectGuard::new(&project);
    guard.network(BRIDGE);
    incus_ok(&["project", "create", &project]);
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "--incus-socket",
            SOCKET,
            "--project",
            &project,
        ])
        .args([
            "image",
            "import",
            &format!("docker://{image}"),
            "--alias",
            "shapes",
        ])
        .arg("--cache-dir")
        .arg(tmp.path().join("cache")));
    assert!(o.status.success(), "image import: {}", stderr(&o));
    let scopes = reg.token_requests.lock().unwrap().clone();
    assert!(
        scopes
            .iter()
            .any(|(s, creds)| s == "repository:atlas-fixtures/shapes:pull" && !creds),
        "pulled through the Bearer challenge (anonymous token): {scopes:?}"
    );

    let c = "t-shapes-c1";
    let net = on_own_bridge(&project, "shapes", c);
    incus_ok(&["start", "--project", &project, c]);
    let log = || stdout(&incus(&["console", "--project", &project, c, "--show-log"]));
    // The effect first: uid 1000 may bind port 80 only through the file capability.
    let url = format!("http://{net}.10:80/");
    let start = Instant::now();
    let body = loop {
        let o = Command::new("curl")
            .args(["-sf", "-m", "2", &url])
            .output()
            .unwrap();
        if o.status.success() {
            break stdout(&o);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "httpd never answered on {url} (capability lost?); console: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(body, "served by a setcap'd busybox httpd as uid 1000\n");
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "--project", &project, c, "--"];
        all.extend_from_slice(args);
        incus_ok(&all)
    };
    let caps = exec(&["/usr/sbin/getcap", "/usr/sbin/httpd"]);
    assert!(caps.contains("cap_net_bind_service=ep"), "getcap: {caps:?}");
    let ps = exec(&["/usr/bin/ps", "-o", "user,args"]);
    assert!(
        ps.lines()
            .any(|l| l.contains("httpd") && l.split_whitespace().next() == Some("www")),
        "httpd runs as www (uid 1000): {ps}"
    );
    assert_eq!(
        exec(&["/usr/bin/readlink", "/sbin"]).trim(),
        "usr/sbin",
        "/sbin is still the symlink"
    );
    assert!(exec(&["/usr/bin/cat", "/proc/1/cmdline"]).starts_with("/sbin/init"));
    let init = exec(&["/usr/bin/sha256sum", "/sbin/init"]);
    assert_eq!(
        init.split_whitespace().next(),
        Some(hex::encode(Sha256::digest(atlas_image::init::binary())).as_str()),
        "/sbin/init is atlas-init"
    );
    let inode = |p: &str| {
        exec(&["/usr/bin/stat", "-c", "%i %h", p])
            .trim()
            .to_string()
    };
    let (sh, ls, bb) = (
        inode("/usr/bin/sh"),
        inode("/usr/bin/ls"),
        inode("/usr/bin/busybox"),
    );
    assert!(
        sh == ls && ls == bb,
        "applets are still hard links: {sh} {ls} {bb}"
    );
    assert_ne!(
        inode("/usr/sbin/init").split(' ').next(),
        bb.split(' ').next()
    );
    let etc = exec(&["/usr/bin/ls", "/etc", "/etc/conf.d"]);
    assert!(
        !etc.contains("old.conf") && !etc.contains("a.conf") && etc.contains("b.conf"),
        "whiteout and opaque directory applied: {etc}"
    );
    drop(guard);
    drop(reg);
}
