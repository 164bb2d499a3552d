//! atlas-init, our PID 1, and the two files that drive it.
//!
//! Every Atlas image carries the static binary [`binary()`] at [`INIT_PATH`] (`/sbin/init`,
//! mode 0755, owned by root) and a [`ServiceSpec`] at [`SERVICE_CONFIG_PATH`] (also in its
//! label `io.atlas.service.spec` and Incus property `atlas.service.spec`). The installer
//! replaces that file in each instance with the image's spec running the command line it
//! rendered ([`ServiceSpec::with_command`]), and pushes a [`NetworkSpec`] to
//! [`NETWORK_CONFIG_PATH`], both before the first start (`incus file push` and the files API
//! work on stopped instances). atlas-init refuses to start, with a message in the console log
//! (`incus console NAME --show-log`), if either file is missing or invalid. Images converted
//! from arbitrary OCI images should carry `NetworkSpec::default()` (only `lo`) so they boot
//! without the installer. [`rootfs_files()`]
//! returns the entries to add to an image's rootfs.
//!
//! The types, the validation and the JSON reader/writer are the same source files atlas-init
//! is built from (`image-builder/init/src/{spec,json}.rs`), so what we write is exactly what it
//! reads; `to_json()` validates first and never produces a file atlas-init would refuse.
//!
//! # `/etc/atlas/service.json`
//!
//! ```json
//! {
//!   "version": 1,
//!   "entrypoint": ["/bin/prometheus"],
//!   "cmd": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
//!   "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
//!   "working_dir": "/prometheus",
//!   "user": "nobody",
//!   "stop_grace_period": 10
//! }
//! ```
//! - `entrypoint` + `cmd` is the command line (OCI semantics; either may be empty, not both).
//!   A program name without `/` is looked up in the `PATH` of `env` (default
//!   `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`).
//! - `env`: `KEY=VALUE` strings, each key once. At start the instance's `environment.*` keys
//!   (PID 1's own environment, from Incus) are laid over them; PATH, HOME, TERM and LANG
//!   from the runtime never replace the image's, and `container=lxc` is dropped
//!   (add `HOME` yourself if the image relies on the runtime setting it). The order is not
//!   kept (std sorts the environment by key); keys are unique, so nothing depends on it.
//! - `working_dir`: absolute, must exist in the image; default `/`.
//! - `user`: `uid`, `uid:gid`, `name` or `name:group`, resolved at start from the image's
//!   `/etc/passwd` and `/etc/group` (names must exist there; a bare numeric uid need not and
//!   then runs with gid 0). Supplementary groups: every `/etc/group` entry listing the user's
//!   name. Applied with setgroups, setgid, setuid. Default: root.
//! - `stop_grace_period`: seconds from SIGTERM to SIGKILL, 0..=3600, default 10.
//! - `version`: optional, must be 1.
//!
//! Unknown keys are errors (a typo must not silently drop a setting); `null` means absent.
//!
//! # `/etc/atlas/network.json`
//!
//! ```json
//! {
//!   "version": 1,
//!   "interfaces": [
//!     {"name": "eth0", "ipv4": "10.50.0.12/24", "gateway4": "10.50.0.1",
//!      "ipv6": "fd00:50::c/64", "gateway6": "fd00:50::1", "mtu": 1500}
//!   ],
//!   "dns": ["10.50.0.1"],
//!   "search": ["atlas.internal"],
//!   "hosts": [["10.50.0.10", ["grafana", "grafana.atlas.internal"]]]
//! }
//! ```
//! - `lo` is always brought up (it must not be listed). Each interface: `mtu`, then up, then
//!   the addresses (IPv6 without duplicate address detection, so it is usable at once), then a
//!   default route via `gateway4`/`gateway6` (at most one interface per family; the gateway
//!   must be inside the address's prefix, or link-local for IPv6). Everything but `name` is
//!   optional. A missing interface or a refused request stops the container with a message
//!   naming the interface.
//! - `/etc/resolv.conf` is replaced (also when it is a symlink) when `dns` or `search` is
//!   non-empty; `/etc/hosts` always: localhost lines, the container's hostname on the first
//!   IPv4 and IPv6 addresses, then `hosts`. On a read-only rootfs both are left alone.
//!
//! # Stop and exit behaviour
//!
//! SIGPWR (Incus' halt signal), SIGTERM and SIGINT send SIGTERM to the service's process
//! group, SIGKILL follows after `stop_grace_period`. SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT are
//! passed to the service unchanged. atlas-init reaps every orphan and exits with the service's
//! status (128 + signal when it was killed); 1 for a config or network problem, 127/126 when
//! the program is missing or cannot be executed.

use std::borrow::Cow;

#[path = "../init/src/json.rs"]
pub mod json;
#[path = "../init/src/spec.rs"]
pub mod spec;

pub use spec::{
    DEFAULT_STOP_GRACE_PERIOD, HostEntry, InterfaceSpec, Ipv4Cidr, Ipv6Cidr, NetworkSpec,
    ServiceSpec, SpecError,
};

/// Where atlas-init goes in the rootfs (tar entry path; in the container `/sbin/init`).
pub const INIT_PATH: &str = "sbin/init";
/// Mode of [`INIT_PATH`].
pub const INIT_MODE: u32 = 0o755;
/// Where the image builder writes the [`ServiceSpec`] (in the container `/etc/atlas/service.json`).
pub const SERVICE_CONFIG_PATH: &str = "etc/atlas/service.json";
/// Where the installer pushes the [`NetworkSpec`] (in the container `/etc/atlas/network.json`).
pub const NETWORK_CONFIG_PATH: &str = "etc/atlas/network.json";

static BINARY: &[u8] = include_bytes!(env!("ATLAS_INIT_BIN_PATH"));

/// The atlas-init executable (static musl, same architecture as this build) built by this
/// crate's build script, or the file named by `ATLAS_INIT_BIN` at build time.
pub fn binary() -> &'static [u8] {
    BINARY
}

/// One file atlas-init needs in a rootfs, as a tar entry (root-owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsFile {
    /// Relative, like every entry of the flattened rootfs (`sbin/init`).
    pub path: &'static str,
    pub mode: u32,
    pub contents: Cow<'static, [u8]>,
}

/// The files that make an image boot with atlas-init: the binary, the service description
/// and, when given, a network file (`NetworkSpec::default()` for images converted without the
/// installer, which pushes the real one before the first start). Parent directories (`sbin`,
/// `etc/atlas`) are the caller's to create. Fails on a spec atlas-init would refuse.
pub fn rootfs_files(
    service: &ServiceSpec,
    network: Option<&NetworkSpec>,
) -> Result<Vec<RootfsFile>, SpecError> {
    let mut files = vec![
        RootfsFile {
            path: INIT_PATH,
            mode: INIT_MODE,
            contents: Cow::Borrowed(binary()),
        },
        RootfsFile {
            path: SERVICE_CONFIG_PATH,
            mode: 0o644,
            contents: Cow::Owned(service.to_json()?.into_bytes()),
        },
    ];
    if let Some(network) = network {
        files.push(RootfsFile {
            path: NETWORK_CONFIG_PATH,
            mode: 0o644,
            contents: Cow::Owned(network.to_json()?.into_bytes()),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_rootfs_files_are_what_atlas_init_reads() {
        let svc = ServiceSpec {
            entrypoint: vec!["/bin/loki".into()],
            cmd: vec!["-config.file=/etc/loki/local-config.yaml".into()],
            env: vec![],
            working_dir: None,
            user: Some("10001:10001".into()),
            stop_grace_period: 30,
        };
        let files = rootfs_files(&svc, Some(&NetworkSpec::default())).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path).collect();
        assert_eq!(
            paths,
            [
                "sbin/init",
                "etc/atlas/service.json",
                "etc/atlas/network.json"
            ]
        );
        assert_eq!(files[0].mode, 0o755);
        assert_eq!(files[0].contents.as_ref(), binary());
        let read_back =
            ServiceSpec::from_json(std::str::from_utf8(&files[1].contents).unwrap()).unwrap();
        assert_eq!(read_back, svc);
        assert_eq!(rootfs_files(&svc, None).unwrap().len(), 2);
        let mut bad = svc.clone();
        bad.working_dir = Some("relative".into());
        assert!(
            rootfs_files(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("working_dir")
        );
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> usize {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap()) as usize
    }

    /// The binary must run in images without a libc or a dynamic loader (distroless, busybox):
    /// an ELF executable for our architecture without a PT_INTERP program header.
    #[test]
    fn init_binary_is_a_static_executable_for_this_architecture() {
        let b = binary();
        assert!(
            b.len() > 64,
            "embedded atlas-init is only {} bytes",
            b.len()
        );
        assert_eq!(&b[..4], b"\x7fELF", "not an ELF file");
        assert_eq!(b[4], 2, "not 64-bit");
        assert_eq!(b[5], 1, "not little-endian");
        assert!(matches!(u16_at(b, 16), 2 | 3), "not an executable (e_type)");
        let machine = if cfg!(target_arch = "aarch64") {
            0xb7
        } else {
            0x3e
        };
        assert_eq!(
            u16_at(b, 18),
            machine,
            "not built for this architecture (e_machine)"
        );
        let (phoff, phentsize, phnum) = (
            u64_at(b, 32),
            usize::from(u16_at(b, 54)),
            usize::from(u16_at(b, 56)),
        );
        assert!(phnum > 0 && phoff + phnum * phentsize <= b.len());
        const PT_INTERP: u32 = 3;
        let interp = (0..phnum).any(|i| u32_at(b, phoff + i * phentsize) == PT_INTERP);
        assert!(
            !interp,
            "atlas-init is dynamically linked (has PT_INTERP); it must be static"
        );
    }

    #[test]
    fn init_spec_types_are_usable_from_the_builder() {
        let svc = ServiceSpec {
            entrypoint: vec![],
            cmd: vec!["busybox".into(), "httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: None,
            user: Some("1000:1000".into()),
            stop_grace_period: DEFAULT_STOP_GRACE_PERIOD,
        };
        let text = svc.to_json().unwrap();
        assert!(text.starts_with("{\n  \"version\": 1,\n"), "{text}");
        assert_eq!(ServiceSpec::from_json(&text).unwrap(), svc);
        assert_eq!(
            NetworkSpec::from_json(&NetworkSpec::default().to_json().unwrap()).unwrap(),
            NetworkSpec::default()
        );
    }
}
