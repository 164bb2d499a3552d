//! Helpers shared by the integration tests of every crate of the workspace (`atlas-install`'s
//! `tests/it`, `atlas-image-builder`'s tests, the stand-in's): one copy of each, so a fix to a
//! cleanup guard or a skip rule reaches every test.
//!
//! - [`skip`]: a test that needs a tool, path, daemon or root skips with a visible reason on a
//!   laptop and fails under `ATLAS_TEST_REQUIRE_ALL=1` (CI).
//! - [`step`]: named steps of a long scenario, so a failure says which step broke.
//! - [`incus`]: Incus cleanup guards that work from `Drop`, on a panicking test too.
//! - [`net`]: free IPv4 ranges for a test's own bridges.
//! - [`busybox`]: small Incus images (unified tarballs) of the host's static busybox.
//! - [`oci`]: OCI layout images and umoci unpacking.
//! - [`process`]: child processes killed and reaped when the test ends.
//! - [`registry`]: the local registry, and registries with authentication started per test.

pub mod busybox;
pub mod http;
pub mod incus;
pub mod net;
pub mod oci;
pub mod process;
pub mod registry;
pub mod skip;
pub mod step;

pub use registry::free_port;
pub use skip::{have_busybox, have_path, have_root, have_tool, require_all};
pub use step::{step, step_async};
