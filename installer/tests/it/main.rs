//! One integration test binary, a module per command or subsystem (uv's layout).
//!
//! Tests that need a real incusd, registry or service binary find them on the host; under
//! `ATLAS_TEST_REQUIRE_ALL=1` (set by .ci/run) a missing one is a failure, not a skip.

mod backup;
mod bundle;
mod cli;
mod cluster;
mod common;
mod config;
mod conformance;
mod daytwo;
mod engine;
mod image;
mod incus;
mod install_sh;
mod plan;
mod release;
mod reliability;
mod render;
mod sbom;
mod signing;
mod stack;
mod tls;
mod upgrade;
mod wiring;
