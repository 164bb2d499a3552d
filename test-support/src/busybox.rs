//! Small Incus images (unified tarballs: `metadata.yaml` + `rootfs/`) of the host's static
//! busybox, with atlas-init as `/sbin/init` running a service of the test's choosing: one
//! builder for every test that launches a throwaway container.

use std::path::{Path, PathBuf};
use std::process::Command;

use atlas_image::init::{NetworkSpec, ServiceSpec, rootfs_files};

/// The host's static busybox (Debian's busybox-static).
pub const HOST_BUSYBOX: &str = "/bin/busybox";

/// The directories of a service's root: what atlas-init and Incus expect to find.
const SERVICE_DIRS: [&str; 9] = [
    "bin",
    "sbin",
    "etc/atlas",
    "dev",
    "proc",
    "sys",
    "tmp",
    "run",
    "root",
];

/// A busybox image being described; [`BusyboxImage::tarball`] writes it.
pub struct BusyboxImage {
    /// Where `metadata.yaml` and `rootfs/` are laid out.
    root: PathBuf,
    description: String,
    /// Only `/bin/busybox` and a metadata without `os` (an image that never starts).
    bare: bool,
    dirs: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    service: Option<ServiceSpec>,
    /// The network atlas-init configures (the default one unless [`Self::no_network`]).
    network: Option<NetworkSpec>,
}

impl BusyboxImage {
    /// A service image laid out under `root`: the usual directories, busybox with `/bin/sh`
    /// linked to it, a passwd and group with root alone (until [`Self::file`] replaces them).
    pub fn new(root: &Path, description: &str) -> BusyboxImage {
        BusyboxImage {
            root: root.to_path_buf(),
            description: description.to_string(),
            bare: false,
            dirs: SERVICE_DIRS.iter().map(|d| d.to_string()).collect(),
            files: vec![
                (
                    "etc/passwd".into(),
                    b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
                ),
                ("etc/group".into(), b"root:x:0:\n".to_vec()),
            ],
            service: None,
            network: Some(NetworkSpec::default()),
        }
    }

    /// The smallest image: `/bin/busybox` alone (quick to copy between cluster members).
    pub fn bare(root: &Path, description: &str) -> BusyboxImage {
        BusyboxImage {
            bare: true,
            dirs: vec!["bin".into()],
            files: Vec::new(),
            ..BusyboxImage::new(root, description)
        }
    }

    /// An empty directory more in the rootfs.
    pub fn dir(mut self, path: &str) -> BusyboxImage {
        self.dirs.push(path.to_string());
        self
    }

    /// A file in the rootfs (its directories made); a later file of the same path wins.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>) -> BusyboxImage {
        self.files.retain(|(p, _)| p != path);
        self.files.push((path.to_string(), contents.into()));
        self
    }

    /// atlas-init as `/sbin/init`, running `spec` with the default network.
    pub fn service(mut self, spec: ServiceSpec) -> BusyboxImage {
        self.service = Some(spec);
        self
    }

    /// No network config for atlas-init: the instance's NIC stays as Incus sets it up.
    pub fn no_network(mut self) -> BusyboxImage {
        self.network = None;
        self
    }

    /// Lays the image out under its root and writes it to `tarball` (owner root, numeric).
    pub fn tarball(self, tarball: &Path) -> PathBuf {
        let rootfs = self.root.join("rootfs");
        for d in &self.dirs {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::write(self.root.join("metadata.yaml"), self.metadata()).expect("metadata");
        std::fs::copy(HOST_BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        if !self.bare {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
        }
        for (path, contents) in &self.files {
            let p = rootfs.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, contents).expect("write rootfs file");
        }
        if let Some(spec) = &self.service {
            write_init(&rootfs, spec, self.network.as_ref());
        }
        let mut tar = Command::new("tar");
        if !self.bare {
            tar.args(["--numeric-owner", "--owner=0", "--group=0"]);
        }
        let st = tar
            .arg("-cf")
            .arg(tarball)
            .arg("-C")
            .arg(&self.root)
            .args(["metadata.yaml", "rootfs"])
            .status()
            .expect("tar");
        assert!(st.success());
        tarball.to_path_buf()
    }

    fn metadata(&self) -> String {
        let os = if self.bare { "" } else { "  os: atlas-test\n" };
        format!(
            "architecture: {}\ncreation_date: 1700000000\nproperties:\n  description: {}\n{os}",
            std::env::consts::ARCH,
            self.description
        )
    }
}

/// atlas-init's files for `spec` (the binary as /sbin/init, /etc/atlas/*) under `rootfs`.
fn write_init(rootfs: &Path, spec: &ServiceSpec, network: Option<&NetworkSpec>) {
    for f in rootfs_files(spec, network).expect("init files") {
        let p = rootfs.join(f.path);
        std::fs::write(&p, f.contents.as_ref()).expect("write init file");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(f.mode))
            .expect("chmod");
    }
}

/// A service spec running `cmd` as root with a 2 s stop grace (what the tests' images run).
pub fn service(cmd: &[&str]) -> ServiceSpec {
    ServiceSpec {
        entrypoint: vec![],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        working_dir: None,
        user: None,
        stop_grace_period: 2,
    }
}

/// True when `b` is an ELF without a PT_INTERP, i.e. it runs in a rootfs without a libc.
pub fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (entsize, num) = (u16_at(54), u16_at(56));
    (0..num).all(|i| {
        b.get(phoff + i * entsize..phoff + i * entsize + 4) != Some(&3u32.to_le_bytes()[..])
    })
}
