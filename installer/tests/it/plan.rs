//! `plan` runs preflight for real: a problem is shown as one, nothing is planned or written,
//! and `--detailed-exitcode` says so with its own code (3), apart from changes (2). A plan
//! saved with `--out` is applied as it is by `install --plan`, and refused once stale.

use crate::common::{atlas, client_or_skip, stderr, stdout};

#[tokio::test]
async fn plan_reports_preflight_problems_with_their_own_exit_code() {
    let c = client_or_skip!();
    let dir = tempfile::tempdir().expect("tempdir");
    let project = format!("t-plan-{}", std::process::id());
    let pool = format!("t-plan-missing-{}", std::process::id());
    let config = dir.path().join("atlas.toml");
    std::fs::write(
        &config,
        format!("[incus]\nproject = \"{project}\"\nstorage_pool = \"{pool}\"\n"),
    )
    .expect("config");
    for args in [
        &["plan", "--detailed-exitcode"][..],
        &["plan", "--detailed-exitcode", "--ignore-preflight"][..],
    ] {
        let o = atlas()
            .arg("-c")
            .arg(&config)
            .args(["--progress", "none"])
            .args(args)
            .output()
            .expect("run");
        assert_eq!(
            o.status.code(),
            Some(3),
            "{args:?}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        let out = stdout(&o);
        assert!(
            out.contains(&format!("problem: storage pool {pool} does not exist")),
            "{out}"
        );
    }
    // Without --detailed-exitcode a refused preflight is a failure; --json names the problems.
    let o = atlas()
        .arg("-c")
        .arg(&config)
        .args(["--progress", "none", "--json", "plan"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert!(
        v["preflight_problems"][0]
            .as_str()
            .is_some_and(|p| p.contains(&pool)),
        "{v}"
    );
    assert!(
        c.get_project(&project).await.is_err(),
        "plan created nothing"
    );
}

/// What the test's project holds, one line per object (instances with their status): equal
/// before and after a refused run when that run wrote nothing there.
async fn project_view(pc: &atlas_install::incus::Client) -> Vec<String> {
    let mut out = Vec::new();
    for p in pc.profiles().await.expect("profiles") {
        out.push(format!("profile {}", serde_json::to_string(&p).unwrap()));
    }
    for i in pc.instances().await.expect("instances") {
        let line = serde_json::to_string(&i).unwrap();
        out.push(format!("instance {line} {:?}", i.status));
    }
    for v in pc.volumes("default").await.expect("volumes") {
        out.push(format!("volume {}", serde_json::to_string(&v).unwrap()));
    }
    out
}

/// `plan --out` saves the plan, `install --plan` applies exactly it, without asking; once
/// Incus or the config moved since, `install --plan` refuses and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_plan_is_applied_as_it_is_and_refused_once_stale() {
    use crate::common::hermetic::HostState;
    use crate::engine::{Env, STACKS, have_busybox};
    use std::process::Stdio;

    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    if !have_busybox() {
        return;
    }
    let env = Env::new(&c, 21).await;
    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;
    let pc = c.in_project(&env.project);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |n: &str| dir.path().join(n).display().to_string();
    let run = |args: &[&str]| {
        env.atlas(args)
            .stdin(Stdio::null())
            .output()
            .expect("run atlas-install")
    };

    // The first install, planned and saved, then applied as saved (no --yes: nothing asks).
    let first = file("first.json");
    let o = run(&["plan", "--out", &first]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = std::fs::read_to_string(&first).expect("plan saved");
    for secret in ["t-eng-grafana-pw", "t-eng-mqtt-pw", "PRIVATE KEY"] {
        assert!(!text.contains(secret), "a secret in the saved plan");
    }
    let saved: serde_json::Value = serde_json::from_str(&text).expect("saved plan is JSON");
    let mut planned: Vec<String> = saved["plan"]["plan"]["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["address"]["kind"] == "instance" && a["change"] == "create")
        .map(|a| {
            a["address"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    planned.sort();
    assert_eq!(
        planned,
        ["alertmanager01", "caddy01", "mosquitto01"],
        "{text}"
    );
    let o = run(&["install", "--plan", &first]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("Applying the saved plan"),
        "{}",
        stderr(&o)
    );
    for name in &planned {
        let i = pc.get_instance(name).await.expect("instance").value;
        assert!(i.is_running(), "{name} runs");
    }
    let o = run(&["plan", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(0), "converged: {}", stdout(&o));

    // A change planned and saved; then someone edits an object atlas manages: refused.
    let memory = "\n[instances.alertmanager01]\nmemory = \"192MB\"\n";
    env.config(memory);
    let second = file("second.json");
    let o = run(&["plan", "--out", &second]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let p = pc.get_profile("caddy").await.expect("profile");
    let mut edited = p.value.clone();
    edited
        .config
        .insert("user.edited-by-hand".into(), "yes".into());
    pc.update_profile(&edited, p.etag.as_deref())
        .await
        .expect("edit the profile");
    let (host, project) = (HostState::read(), project_view(&pc).await);
    // Refused with `why`, and nothing in the host's Incus or the project changed.
    let refused = async |plan: &str, why: String| {
        let o = run(&["install", "--plan", plan]);
        assert!(!o.status.success(), "{plan} is refused");
        assert!(
            stderr(&o).contains(&why) && stderr(&o).contains("Nothing was changed"),
            "{}",
            stderr(&o)
        );
        host.assert_same(&HostState::read(), "a refused saved plan");
        assert_eq!(
            project_view(&pc).await,
            project,
            "a refused plan wrote nothing"
        );
    };
    refused(
        &second,
        format!("Incus changed since plan {second} was saved"),
    )
    .await;

    // Planned again, then the config changes: refused as well.
    let third = file("third.json");
    let o = run(&["plan", "--out", &third]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    env.config("\n[instances.alertmanager01]\nmemory = \"256MB\"\n");
    refused(
        &third,
        format!("the config changed since plan {third} was saved"),
    )
    .await;

    // With the config it was made from, the same plan applies: what it planned happens.
    env.config(memory);
    let o = run(&["install", "--plan", &third]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let p = pc.get_profile("alertmanager").await.expect("profile").value;
    assert_eq!(p.config["limits.memory"], "192MB");
}
