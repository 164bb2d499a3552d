//! Builds atlas-init (our PID 1, crate `image-builder/init`) as a static musl binary for the
//! target architecture (x86_64 or aarch64) so the library can embed it
//! (`atlas_image::init::binary()`), whether the library itself is built for gnu or musl.
//!
//! A nested `cargo build` is used because a build script cannot depend on a binary of another
//! crate. It gets its own target directory inside OUT_DIR: the outer cargo holds the lock on
//! the outer target directory for the whole build, so sharing it would deadlock.
//! `ATLAS_INIT_BIN=/path/to/atlas-init` skips the nested build and embeds that file instead
//! (packagers, or builds without the musl target).

// Build scripts talk to cargo through stdout.
#![allow(clippy::print_stdout)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ATLAS_INIT_BIN");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));

    let bin = match env::var_os("ATLAS_INIT_BIN").filter(|v| !v.is_empty()) {
        Some(path) => prebuilt(PathBuf::from(path)),
        None => nested_build(&manifest_dir, &out_dir),
    };
    println!("cargo:rustc-env=ATLAS_INIT_BIN_PATH={}", bin.display());
}

fn prebuilt(path: PathBuf) -> PathBuf {
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        fail(&format!(
            "ATLAS_INIT_BIN={} is not a file; point it at a built atlas-init or unset it to build one",
            path.display()
        ));
    }
    path.canonicalize().unwrap_or(path)
}

fn nested_build(manifest_dir: &Path, out_dir: &Path) -> PathBuf {
    let init_dir = manifest_dir.join("init");
    let workspace = manifest_dir
        .parent()
        .expect("image-builder lives inside the workspace");
    // Only these inputs can change the binary; without rerun-if-changed cargo would rerun this
    // (a release build) whenever any file of the image builder changes.
    for input in [
        init_dir.join("src"),
        init_dir.join("Cargo.toml"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    // atlas-init runs in containers on the machine the installer runs on, so it follows the
    // architecture the library is built for.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let init_target = match arch.as_str() {
        "x86_64" | "aarch64" => format!("{arch}-unknown-linux-musl"),
        other => fail(&format!(
            "atlas-init has no musl target for architecture {other:?}; set ATLAS_INIT_BIN to a static atlas-init"
        )),
    };
    let target_dir = out_dir.join("atlas-init-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .args(["--target", &init_target])
        .arg("--manifest-path")
        .arg(init_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace);
    // These describe the outer build and would leak into the nested one: the outer target's
    // rustflags, clippy's rustc wrapper (under `cargo clippy`), the outer target dir. The
    // developer's RUSTFLAGS go too: a `-C target-cpu=native` in the PID 1 of images that are
    // pushed to registries would make them crash on other machines.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo to build atlas-init: {e}")));
    if !status.success() {
        fail(&format!(
            "building atlas-init for {init_target} failed ({status}); see the cargo output above. \
             If the target is missing: `rustup target add {init_target}` (and install musl-tools), \
             or set ATLAS_INIT_BIN to a prebuilt atlas-init"
        ));
    }
    target_dir
        .join(&init_target)
        .join("release")
        .join("atlas-init")
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
