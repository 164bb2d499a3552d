//! An in-memory Incus that answers the typed client's requests the way Incus 6.0.4 does,
//! built from the daemon's own recorded answers (`recorded/`, made by `record.rs`), so the
//! engine's plan/apply logic can be unit-tested in seconds. The real-daemon tests
//! (`installer/tests/it`) keep it honest.
//!
//! Modelled: the server (`/1.0`, its config by PUT/PATCH with ETags), projects (with the
//! `features.*` that send profiles, images and volumes to `default`, and the `default`
//! profile a new project gets), networks (the host's own as recorded, and their leases:
//! none, no instance of the fake runs), profiles, storage pools (read only) and custom
//! volumes, images and aliases, instances (create from an image alias or fingerprint,
//! update, state changes, which take effect at once), certificates (base64 DER),
//! `/1.0/cluster` (not clustered), `/1.0/resources`, background operations with
//! `GET /1.0/operations/<id>/wait` and `GET /1.0/operations`, storage buckets as this
//! 6.0.4 host on a dir pool without MinIO serves them (none; creation refused).
//!
//! Refused as the daemon refuses, with its recorded status and words: an unknown object
//! (404), a duplicate (409, or 500 for profiles and projects; for instances the operation
//! fails), a stale `If-Match` (412), reading or creating in a project that does not exist
//! (a list there is empty, as on the daemon), an instance without a root disk, from an
//! image or with a profile that does not exist, a PEM certificate; also deleting a running
//! instance or a project that still holds objects, and an alias to a missing image (these
//! words are not recorded: written from what Incus says, to be checked by a re-recording).
//!
//! Not modelled (answered 501 and listed in [`FakeIncus::unmodelled`], so a test that
//! reaches them fails loudly): file push/pull, exec, console, image upload, exports,
//! backups, snapshots, renames, cluster members, metrics. `used_by` lists stay empty;
//! server config keys are not validated.

#[cfg(test)]
mod record;
mod recorded;
mod routes;
#[cfg(test)]
mod scrub;
mod store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::client::Client;
use super::daemon::{Daemon, Exchange};

pub use store::Kind;
use store::State;

/// The fake daemon. Share it with [`FakeIncus::client`]; inspect and change its state
/// between calls to script what a test needs (an object changed behind the engine's back).
pub struct FakeIncus {
    state: Mutex<State>,
}

impl FakeIncus {
    /// A fresh Incus as the recorded host had it: the `default` project and profile, its
    /// storage pools, its own networks (the uplink, `incusbr0`), not clustered.
    pub fn new() -> Arc<FakeIncus> {
        Arc::new(FakeIncus {
            state: Mutex::new(State::new()),
        })
    }

    /// A client on this daemon (the typed client, the same code path as on the socket).
    pub fn client(self: &Arc<Self>) -> Client {
        Client::with_daemon(self.clone(), "fake Incus")
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// An image in `project` (or `default` when the project does not keep its own images)
    /// under `alias`, as `incus image import` leaves it. Returns its fingerprint.
    pub fn seed_image(&self, project: &str, alias: &str, properties: &[(&str, &str)]) -> String {
        let props: BTreeMap<String, String> = properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.with(|s| s.seed_image(project, alias, props))
    }

    /// The object `name` of `kind` in `project` ("" for server-wide kinds), as GET answers it.
    pub fn get(&self, kind: Kind, project: &str, name: &str) -> Option<Value> {
        self.with(|s| s.object(kind, project, name).cloned())
    }

    /// Changes an object behind the client's back (another admin, another run): `edit`
    /// gets the stored object. Its ETag changes with it.
    pub fn edit(&self, kind: Kind, project: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        self.with(|s| {
            let o = s
                .object_mut(kind, project, name)
                .unwrap_or_else(|| panic!("no {kind:?} {name} in {project:?}"));
            edit(o);
        })
    }

    /// Another client changes the object with `edit` just before the next PUT or PATCH of
    /// it arrives: that write then carries a stale ETag.
    pub fn change_before_next_write(
        &self,
        kind: Kind,
        project: &str,
        name: &str,
        edit: impl FnOnce(&mut Value) + Send + 'static,
    ) {
        self.with(|s| {
            s.races
                .push((kind, project.to_string(), name.to_string(), Box::new(edit)))
        })
    }

    /// Puts an object in place as if created outside Atlas (`body` as POSTed).
    pub fn create(&self, kind: Kind, project: &str, body: Value) {
        self.with(|s| {
            let (status, answer) = s.create(kind, project, body);
            assert!(status < 400, "the fake refused the object: {answer}");
        })
    }

    /// Names of `kind` in `project`.
    pub fn names(&self, kind: Kind, project: &str) -> Vec<String> {
        self.with(|s| s.names(kind, project))
    }

    /// Requests the fake does not model (method and path), in order.
    pub fn unmodelled(&self) -> Vec<String> {
        self.with(|s| s.unmodelled.clone())
    }

    /// Every request answered, method and path with query.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }

    /// The server's config (`/1.0` `config`).
    pub fn server_config(&self) -> Value {
        self.with(|s| s.server["config"].clone())
    }
}

impl Daemon for FakeIncus {
    fn execute(&self, request: reqwest::Request) -> Exchange<'_> {
        let method = request.method().clone();
        let url = request.url().clone();
        let if_match = request
            .headers()
            .get(reqwest::header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = request.body().map(|b| b.as_bytes().map(<[u8]>::to_vec));
        let answer = self.with(|s| {
            let asked = routes::Asked {
                method: &method,
                url: &url,
                if_match: if_match.as_deref(),
                body,
            };
            routes::answer(s, &asked)
        });
        Box::pin(async move { Ok(answer.into_response()) })
    }
}

/// What the fake answers: a status, a JSON envelope, maybe an ETag.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) etag: Option<String>,
    pub(crate) body: Value,
}

impl Answer {
    fn into_response(self) -> reqwest::Response {
        let mut b = http::Response::builder()
            .status(self.status)
            .header("Content-Type", "application/json");
        if let Some(etag) = &self.etag {
            b = b.header("ETag", etag.as_str());
        }
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        reqwest::Response::from(b.body(bytes).expect("a valid response"))
    }

    /// A sync answer with `metadata`, in the recorded envelope.
    pub(crate) fn sync(status: u16, metadata: Value) -> Answer {
        let mut body = recorded::recorded().profile.envelope().clone();
        body["metadata"] = metadata;
        Answer {
            status,
            etag: None,
            body,
        }
    }

    /// An error answer in the recorded envelope.
    pub(crate) fn error(status: u16, message: impl Into<String>) -> Answer {
        let mut body = recorded::recorded().error_404_profile.envelope().clone();
        body["error_code"] = json!(status);
        body["error"] = json!(message.into());
        Answer {
            status,
            etag: None,
            body,
        }
    }
}

#[cfg(test)]
mod tests;
