//! The wire under the typed client: one HTTP exchange with the daemon. Every typed call
//! (instances, profiles, operations...) builds its request in [`super::client`] and hands it
//! to a [`Daemon`], so a fake daemon (`incus::fake`, tests and the `fake-incus` feature)
//! exercises the same code path as the real socket or HTTPS connection.

use std::future::Future;
use std::pin::Pin;

/// Boxed future of [`Daemon::execute`].
pub type Exchange<'a> =
    Pin<Box<dyn Future<Output = reqwest::Result<reqwest::Response>> + Send + 'a>>;

/// Something that answers Incus API requests.
pub trait Daemon: Send + Sync {
    /// Sends one request and gives the answer's head (the body is read by the caller). The
    /// request may carry a timeout (`Request::timeout`); the real daemon honours it.
    fn execute(&self, request: reqwest::Request) -> Exchange<'_>;
}

/// The real daemon, over a reqwest connection (unix socket or HTTPS).
pub(crate) struct Http(pub(crate) reqwest::Client);

impl Daemon for Http {
    fn execute(&self, request: reqwest::Request) -> Exchange<'_> {
        Box::pin(self.0.execute(request))
    }
}
