//! Registries for tests: the local registry tests/start-services.sh runs on 127.0.0.1:5000,
//! and registries with authentication a test starts for itself ([`auth`]).

pub mod auth;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The local registry (tests/start-services.sh).
pub const LOCAL: &str = "127.0.0.1:5000";

/// A TCP port on 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether `GET /v2/` on `addr` answers 200 (or 401, a registry with auth).
pub fn registry_answers(addr: &str) -> bool {
    let Ok(addr_parsed) = addr.parse() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr_parsed, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    // "HTTP/1.x 200" (or 401 for a registry with auth).
    s.read_exact(&mut buf).is_ok()
        && buf.starts_with(b"HTTP/1.")
        && (&buf[9..] == b"200" || &buf[9..] == b"401")
}

/// Whether the registry on `addr` answers /v2/; panics under CI when not.
pub fn have_registry(addr: &str) -> bool {
    let ok = registry_answers(addr);
    if !ok {
        assert!(
            !crate::skip::require_all(),
            "the registry on {addr} is required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh"
        );
        eprintln!("skipping: no registry on {addr} (run tests/start-services.sh)");
    }
    ok
}
