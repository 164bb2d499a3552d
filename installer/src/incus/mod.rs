//! Typed client for the Incus REST API (unix socket or HTTPS with a pinned server).
