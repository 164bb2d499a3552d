//! A registry with authentication (htpasswd, or bearer tokens from a token service of ours),
//! started and stopped by the test that needs it: atlas-test-support's, which the
//! image-builder tests run too.

pub use atlas_test_support::registry::auth;
