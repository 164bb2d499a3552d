use crate::common::*;

#[test]
fn version_names_the_commit() {
    let o = run(atlas().arg("--version"));
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.starts_with("atlas-install 0."), "{out}");
    assert!(out.contains("(commit "), "{out}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "install",
        "plan",
        "status",
        "destroy",
        "upgrade",
        "rollback",
        "render",
        "config",
        "image",
        "bundle",
        "backup",
        "completions",
    ] {
        let o = run(atlas().args([cmd, "--help"]));
        assert!(o.status.success(), "{cmd} --help failed: {}", stderr(&o));
        assert!(
            stdout(&o).contains("Usage: atlas-install"),
            "{cmd}: {}",
            stdout(&o)
        );
    }
}

#[test]
fn completions_are_generated() {
    let o = run(atlas().args(["completions", "bash"]));
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("complete -F") && out.contains("atlas-install"),
        "no bash completion: {out}"
    );
    assert!(
        out.contains("install") && out.contains("--incus-socket"),
        "completion lacks commands/flags"
    );
}
