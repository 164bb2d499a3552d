//! `upgrade` and `rollback` through the binary against the real incusd, with test images
//! v1, v2 and a broken one (busybox httpd behind atlas-init, as in tests/it/engine.rs whose
//! project, network and alias set-up this reuses): data written through a service survives
//! the upgrade, a failing service is returned to its snapshot by itself, a kill -9 midway
//! converges on the next run, and rollback returns the previous images.

use std::io::{BufRead as _, BufReader};
use std::process::{Output, Stdio};

use atlas_install::incus::{Client, ImageImport};

use crate::common::{client_or_skip, stderr, step_async};
use crate::engine::{Env, SERVICES, STACKS, have_busybox, image_tarball_variant, sh};

const DATA: &str = "/mosquitto/data";

/// Imports `variant` of each service (or only of `only`) and points its alias at it.
async fn point_aliases(pc: &Client, env: &Env, variant: &str, only: Option<&str>) {
    for (service, ports) in SERVICES {
        if only.is_some_and(|o| o != service) {
            continue;
        }
        let tarball = image_tarball_variant(service, ports, variant);
        let body = reqwest::Body::from(tokio::fs::File::open(tarball).await.expect("open image"));
        let fp = pc
            .import_image(body, &ImageImport::default())
            .await
            .expect("import test image");
        let alias = env.alias(service);
        let _ = pc.delete_image_alias(&alias).await;
        pc.create_image_alias(&alias, &fp, "")
            .await
            .expect("point alias");
    }
}

async fn version(pc: &Client, instance: &str) -> String {
    sh(pc, instance, "cat /www/version")
        .await
        .trim()
        .to_string()
}

async fn volume_snapshots(pc: &Client, volume: &str) -> Vec<String> {
    pc.volume_snapshots("default", volume)
        .await
        .expect("snapshots")
        .into_iter()
        .map(|s| s.name)
        .collect()
}

fn run(env: &Env, args: &[&str]) -> Output {
    env.atlas(args).output().expect("run atlas-install")
}

/// A test's project, networks and v1 images (not installed yet), and its project client.
async fn prepared(c: &Client, n: u8) -> (Env, Client) {
    let env = Env::new(c, n).await;
    let cfg = env.config("");
    env.project_with_images(c, &cfg).await;
    let pc = c.in_project(&env.project);
    (env, pc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_keeps_data_rolls_back_a_failing_service_survives_kill_and_rolls_back() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    if !have_busybox() {
        return;
    }
    let (env, pc) = prepared(&c, 5).await;
    let s = Scenario {
        c: &c,
        env: &env,
        pc: &pc,
        pid: std::process::id(),
    };
    // One install, steps in order over it: a failure names its step.
    step_async("1 upgrade without an install", nothing_to_upgrade(&s)).await;
    step_async("2 install v1", install_v1_with_data(&s)).await;
    step_async("3 upgrade to v2", upgrade_to_v2(&s)).await;
    step_async("4 broken mosquitto", broken_service_is_returned(&s)).await;
    step_async("5 kill -9 midway", killed_upgrade_converges(&s)).await;
    step_async("6 rollback", rollback_returns_v2(&s)).await;
    step_async("7 second rollback", second_rollback_is_refused(&s)).await;
}

/// What the steps of the upgrade scenario share: the daemon, the test's install and project
/// client, and the pid that tells this run's data from another's.
struct Scenario<'a> {
    c: &'a Client,
    env: &'a Env,
    pc: &'a Client,
    pid: u32,
}

/// Nothing installed: upgrade refuses and changes nothing.
async fn nothing_to_upgrade(s: &Scenario<'_>) {
    let Scenario { env, pc, .. } = *s;
    let o = run(env, &["upgrade", "--yes"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no install to upgrade from"),
        "{}",
        stderr(&o)
    );
    assert!(pc.instances().await.expect("instances").is_empty());
}

/// v1, with data written through the service into its volume.
async fn install_v1_with_data(s: &Scenario<'_>) {
    let Scenario { env, pc, pid, .. } = *s;
    let o = run(env, &["install", "--yes"]);
    assert!(o.status.success(), "install v1: {}", stderr(&o));
    assert_eq!(version(pc, "mosquitto01").await, "v1");
    sh(pc, "mosquitto01", &format!("echo note-{pid} > {DATA}/note")).await;
}

/// v2 everywhere: every service runs v2, the data is there, the snapshots exist.
async fn upgrade_to_v2(s: &Scenario<'_>) {
    let Scenario { c, env, pc, pid } = *s;
    point_aliases(pc, env, "v2", None).await;
    let o = run(env, &["upgrade", "--yes", "--health-timeout", "60"]);
    assert!(o.status.success(), "upgrade to v2: {}", stderr(&o));
    for (service, _) in SERVICES {
        assert_eq!(
            version(pc, &format!("{service}01")).await,
            "v2",
            "{service}"
        );
    }
    assert_eq!(
        sh(pc, "mosquitto01", &format!("cat {DATA}/note")).await,
        format!("note-{pid}\n")
    );
    let snaps = volume_snapshots(pc, "mosquitto01-data").await;
    let pre: Vec<&String> = snaps
        .iter()
        .filter(|s| s.starts_with("pre-upgrade-"))
        .collect();
    assert_eq!(pre.len(), 1, "{snaps:?}");
    let v1_to_v2 = pre[0].clone();
    let saved = c
        .get_project(&env.project)
        .await
        .expect("project")
        .value
        .config;
    assert!(
        saved
            .get("user.atlas.upgrade.caddy01")
            .is_some_and(|v| v.contains(&v1_to_v2)),
        "what caddy01 was is saved in the project: {saved:?}"
    );
    // Converged: a second upgrade has nothing to do.
    let o = run(env, &["upgrade", "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("No changes"), "{}", stderr(&o));
}

/// A broken mosquitto: the upgrade fails its health gate and returns it, data included.
async fn broken_service_is_returned(s: &Scenario<'_>) {
    let Scenario { env, pc, pid, .. } = *s;
    sh(
        pc,
        "mosquitto01",
        &format!("echo v2-data-{pid} > {DATA}/note"),
    )
    .await;
    point_aliases(pc, env, "broken", Some("mosquitto")).await;
    let o = run(env, &["upgrade", "--yes", "--health-timeout", "15"]);
    assert!(!o.status.success(), "a broken image must not pass");
    let err = stderr(&o);
    assert!(
        err.contains("upgrade stopped at mosquitto01")
            && err.contains("returned to its previous image"),
        "{err}"
    );
    // It exits at once: Incus may refuse the start itself or the health gate sees it stopped;
    // either way the service's own last words are shown.
    assert!(
        err.contains("last log lines:") && err.contains("broken test image: exits at once"),
        "{err}"
    );
    assert_eq!(
        pc.get_instance("mosquitto01")
            .await
            .expect("get")
            .value
            .status,
        "Running"
    );
    assert_eq!(version(pc, "mosquitto01").await, "v2");
    assert_eq!(
        sh(pc, "mosquitto01", &format!("cat {DATA}/note")).await,
        format!("v2-data-{pid}\n")
    );
}

/// kill -9 in the middle of replacing mosquitto (snapshots taken, image not yet in
/// place), then upgrade again: it converges on v3 and keeps the first attempt's snapshots.
async fn killed_upgrade_converges(s: &Scenario<'_>) {
    let Scenario { env, pc, pid, .. } = *s;
    point_aliases(pc, env, "v3", Some("mosquitto")).await;
    let mut child = env
        .atlas(&["upgrade", "--yes", "--health-timeout", "60"])
        .env("ATLAS_TEST_PAUSE_AT", "upgrade-guarded")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("stderr")).lines() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line.contains("paused at upgrade-guarded") {
            child.kill().expect("kill -9");
            break;
        }
    }
    assert!(!child.wait().expect("wait").success(), "killed: {seen:?}");
    let o = run(env, &["upgrade", "--yes", "--health-timeout", "60"]);
    assert!(o.status.success(), "upgrade after kill -9: {}", stderr(&o));
    assert_eq!(version(pc, "mosquitto01").await, "v3");
    assert_eq!(
        sh(pc, "mosquitto01", &format!("cat {DATA}/note")).await,
        format!("v2-data-{pid}\n"),
        "nothing lost"
    );
}

/// rollback: mosquitto back on v2 with the data of before the v3 upgrade; what it held
/// just before the rollback is kept in a pre-rollback snapshot.
async fn rollback_returns_v2(s: &Scenario<'_>) {
    let Scenario { env, pc, pid, .. } = *s;
    sh(
        pc,
        "mosquitto01",
        &format!("echo v3-data-{pid} > {DATA}/note"),
    )
    .await;
    let o = run(
        env,
        &["--yes", "--json", "rollback", "--health-timeout", "60"],
    );
    assert!(o.status.success(), "rollback: {}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("rollback --json on stdout");
    assert_eq!(report["instances"], serde_json::json!(["mosquitto01"]));
    assert_eq!(version(pc, "mosquitto01").await, "v2");
    // Its alias points at the v2 image again, so the next install keeps it there.
    let runs = pc
        .get_instance("mosquitto01")
        .await
        .expect("instance")
        .value
        .config["volatile.base_image"]
        .clone();
    let alias = pc
        .get_image_alias(&env.alias("mosquitto"))
        .await
        .expect("alias");
    assert_eq!(
        alias.value.target, runs,
        "the alias is back on the v2 image"
    );
    let o = run(env, &["plan", "--detailed-exitcode"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "nothing to do after a rollback: {}",
        crate::common::stdout(&o)
    );
    assert_eq!(
        version(pc, "caddy01").await,
        "v2",
        "unchanged services stay"
    );
    assert_eq!(
        sh(pc, "mosquitto01", &format!("cat {DATA}/note")).await,
        format!("v2-data-{pid}\n")
    );
    let safety = report["safety_snapshots"]["mosquitto01-data"]
        .as_str()
        .expect("safety snapshot")
        .to_string();
    assert!(safety.starts_with("pre-rollback-"), "{safety}");
    assert!(
        volume_snapshots(pc, "mosquitto01-data")
            .await
            .contains(&safety)
    );
}

/// The record is back on the v2 install: a second rollback has no snapshots to use.
async fn second_rollback_is_refused(s: &Scenario<'_>) {
    let Scenario { env, pc, pid, .. } = *s;
    let o = run(env, &["--yes", "rollback"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Nothing was changed"), "{}", stderr(&o));
    assert_eq!(
        version(pc, "mosquitto01").await,
        "v2",
        "the refused rollback changed nothing"
    );
    assert_eq!(
        sh(pc, "mosquitto01", &format!("cat {DATA}/note")).await,
        format!("v2-data-{pid}\n")
    );
}

/// The seed's disaster drill: export, destroy everything with the volumes, install afresh,
/// restore: the data written before is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_destroy_install_restore_brings_the_data_back() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    if !have_busybox() {
        return;
    }
    let (env, pc) = prepared(&c, 6).await;
    let o = run(&env, &["install", "--yes"]);
    assert!(o.status.success(), "install: {}", stderr(&o));
    let pid = std::process::id();
    sh(
        &pc,
        "mosquitto01",
        &format!("echo drill-{pid} > {DATA}/note && /bin/busybox mkdir -p {DATA}/sub && echo x > {DATA}/sub/y"),
    )
    .await;

    let out = tempfile::tempdir().expect("tempdir");
    let dir = out.path().join("export");
    let o = env
        .atlas(&["backup", "export", "--out"])
        .arg(&dir)
        .output()
        .expect("export");
    assert!(o.status.success(), "export: {}", stderr(&o));
    let o = run(&env, &["--yes", "destroy", "--delete-volumes"]);
    assert!(o.status.success(), "destroy: {}", stderr(&o));
    assert!(
        pc.volumes("default").await.unwrap_or_default().is_empty(),
        "the volumes are gone"
    );

    // A fresh install (the images come back under the same aliases) has empty volumes.
    env.project_with_images(&c, &env.config("")).await;
    let o = run(&env, &["install", "--yes"]);
    assert!(o.status.success(), "reinstall: {}", stderr(&o));
    let empty = sh(&pc, "mosquitto01", &format!("ls {DATA}")).await;
    assert!(!empty.contains("note"), "{empty}");
    let o = env
        .atlas(&["--yes", "backup", "restore"])
        .arg(&dir)
        .output()
        .expect("restore");
    assert!(o.status.success(), "restore: {}", stderr(&o));
    assert_eq!(
        pc.get_instance("mosquitto01")
            .await
            .expect("get")
            .value
            .status,
        "Running"
    );
    assert_eq!(
        sh(&pc, "mosquitto01", &format!("cat {DATA}/note {DATA}/sub/y")).await,
        format!("drill-{pid}\nx\n")
    );
}
