//! The shape every typed Incus object shares: a collection path whose members are read with
//! their ETag, listed with `recursion=1`, created by POST to the collection, replaced by PUT
//! under `If-Match`, and deleted. The resource modules describe their collection once with a
//! [`Collection`] and keep their own public methods on top of it.

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope};
use super::error::IncusError;

/// One of the calls a [`Collection`] makes; says which of them take `?target=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    List,
    Get,
    Create,
    Update,
    Delete,
}

/// The calls of an object that is defined per cluster member (networks, pools): reading,
/// creating (pending on one member) and updating go to the view's target; a delete and a
/// listing are cluster-wide.
pub(crate) const MEMBER_DEFINED: &[Call] = &[Call::Get, Call::Create, Call::Update];

/// A collection of objects under one API path (`/1.0/profiles`, or a pool's
/// `volumes/custom`), with the query parameters its calls take.
#[derive(Debug, Clone)]
pub(crate) struct Collection<'a> {
    path: &'static str,
    /// Segments between `path` and an object's name (`[pool, "volumes", "custom"]`).
    parent: Vec<&'a str>,
    scope: Scope,
    /// The calls that accept `?target=` (a cluster member or `@group`).
    targeted: &'static [Call],
}

impl Collection<'static> {
    /// `targeted`: the calls that take the view's `?target=`.
    pub(crate) const fn new(
        path: &'static str,
        scope: Scope,
        targeted: &'static [Call],
    ) -> Collection<'static> {
        Collection {
            path,
            parent: Vec::new(),
            scope,
            targeted,
        }
    }

    /// The same kind of collection below `parent` (a pool's volumes, a volume's snapshots).
    pub(crate) fn under<'a>(&self, parent: &[&'a str]) -> Collection<'a> {
        Collection {
            path: self.path,
            parent: parent.to_vec(),
            scope: self.scope,
            targeted: self.targeted,
        }
    }
}

impl Collection<'_> {
    /// The request for `call` on the collection (`name` = None) or one member of it.
    fn req(&self, call: Call, method: Method, name: Option<&str>) -> Req {
        let mut segments = self.parent.clone();
        segments.extend(name);
        let req = Req::new(method, self.path, &segments).scope(self.scope);
        if self.targeted.contains(&call) {
            req.targeted()
        } else {
            req
        }
    }

    /// Every object, whole (`recursion=1`).
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        client: &Client,
    ) -> Result<Vec<T>, IncusError> {
        let req = self
            .req(Call::List, Method::GET, None)
            .query("recursion", "1");
        client.get_value(req).await
    }

    /// One object with its ETag.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<Etagged<T>, IncusError> {
        client
            .get_tagged(self.req(Call::Get, Method::GET, Some(name)))
            .await
    }

    /// POSTs `body` to the collection; returns the answer's (or finished operation's) metadata.
    pub(crate) async fn create<B: Serialize + ?Sized>(
        &self,
        client: &Client,
        body: &B,
    ) -> Result<Value, IncusError> {
        let req = self.req(Call::Create, Method::POST, None).json(body)?;
        client.write(req).await
    }

    /// PUTs `body` as object `name`, under `If-Match: etag` when there is one.
    pub(crate) async fn update<B: Serialize + ?Sized>(
        &self,
        client: &Client,
        name: &str,
        body: &B,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let req = self
            .req(Call::Update, Method::PUT, Some(name))
            .json(body)?
            .if_match(etag)?;
        client.write(req).await.map(|_| ())
    }

    pub(crate) async fn delete(&self, client: &Client, name: &str) -> Result<(), IncusError> {
        let req = self.req(Call::Delete, Method::DELETE, Some(name));
        client.write(req).await.map(|_| ())
    }
}
