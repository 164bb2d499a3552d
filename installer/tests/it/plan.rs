//! `plan` runs preflight for real: a problem is shown as one, nothing is planned or written,
//! and `--detailed-exitcode` says so with its own code (3), apart from changes (2).

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
