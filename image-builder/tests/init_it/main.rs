//! Integration tests of atlas-init, the PID 1 embedded by `atlas_image::init::binary()`:
//! process behaviour in Linux namespaces (no Incus) and a real container in the shared incusd.
//! Module names start with `init_` so `cargo test -p atlas-image-builder init` selects them.

mod common;
mod init_incus;
mod init_process;
