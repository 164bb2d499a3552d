//! Trusted certificates (`/1.0/certificates`), server-wide.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Scope, nullable};
use super::error::IncusError;
use super::resource::Collection;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    /// `client`, `metrics`, ...
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub fingerprint: String,
    /// PEM.
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    pub restricted: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub projects: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

const CERTIFICATES: Collection = Collection::new("/1.0/certificates", Scope::Global, &[]);

impl Client {
    pub async fn certificates(&self) -> Result<Vec<Certificate>, IncusError> {
        CERTIFICATES.list(self).await
    }

    pub async fn get_certificate(&self, fingerprint: &str) -> Result<Certificate, IncusError> {
        Ok(CERTIFICATES.get(self, fingerprint).await?.value)
    }

    /// Trusts `der` as `kind` (`metrics` for a scraper). Incus 6.0.4 wants base64 DER, not
    /// PEM. Returns the fingerprint (SHA-256 of the DER) to find or delete it later.
    pub async fn add_certificate(
        &self,
        name: &str,
        kind: &str,
        der: &[u8],
    ) -> Result<String, IncusError> {
        let body = serde_json::json!({
            "name": name,
            "type": kind,
            "certificate": base64::engine::general_purpose::STANDARD.encode(der),
        });
        CERTIFICATES.create(self, &body).await?;
        Ok(super::transport::cert_fingerprint(der))
    }

    pub async fn delete_certificate(&self, fingerprint: &str) -> Result<(), IncusError> {
        CERTIFICATES.delete(self, fingerprint).await
    }
}
