//! Trusted certificates (`/1.0/certificates`), server-wide.

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Req};
use super::error::IncusError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub name: String,
    /// `client`, `metrics`, ...
    #[serde(rename = "type", default, deserialize_with = "super::client::nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub fingerprint: String,
    /// PEM.
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub restricted: bool,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub projects: Vec<String>,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub description: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Client {
    pub async fn certificates(&self) -> Result<Vec<Certificate>, IncusError> {
        self.get_value(Req::get("/1.0/certificates", &[]).query("recursion", "1"))
            .await
    }

    pub async fn get_certificate(&self, fingerprint: &str) -> Result<Certificate, IncusError> {
        self.get_value(Req::get("/1.0/certificates", &[fingerprint]))
            .await
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
        let req = Req::new(Method::POST, "/1.0/certificates", &[]).json(&body)?;
        self.write(req).await?;
        Ok(super::transport::cert_fingerprint(der))
    }

    pub async fn delete_certificate(&self, fingerprint: &str) -> Result<(), IncusError> {
        self.write(Req::new(
            Method::DELETE,
            "/1.0/certificates",
            &[fingerprint],
        ))
        .await
        .map(|_| ())
    }
}
