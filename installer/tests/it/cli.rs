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

/// A stdout nobody reads (the reader went away before the first write): the result is an
/// error that names stdout, never a panic. Shell completions count as delivered, since a
/// reader that stops early (`| head`) got what it wanted.
#[test]
fn a_closed_stdout_is_a_clear_error_not_a_panic() {
    let closed = || {
        let (read, write) = rustix::pipe::pipe().expect("pipe");
        // With no reader left, every write fails with EPIPE.
        drop(read);
        std::process::Stdio::from(write)
    };
    let empty = tempfile::tempdir().expect("tempdir");
    // A document (TOML) and a JSON result: the printer's two ways out.
    for args in [&["config", "show"][..], &["config", "show", "--json"]] {
        let o = atlas()
            .current_dir(empty.path())
            .args(args)
            .stdout(closed())
            .output()
            .expect("spawn");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: writing to stdout") && err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let o = atlas()
        .args(["completions", "bash"])
        .stdout(closed())
        .output()
        .expect("spawn");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "nothing to say about a reader that stopped");
}
