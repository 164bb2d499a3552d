//! Background operations: the object, the two shapes of `GET .../wait`, and direct access.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Envelope, Req, Scope};
use super::error::IncusError;

/// Incus status codes of an operation (`status_code`).
pub const STATUS_SUCCESS: u16 = 200;
pub const STATUS_FAILURE: u16 = 400;
pub const STATUS_CANCELLED: u16 = 401;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub id: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub class: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub status: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub status_code: u16,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub err: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub metadata: Value,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub location: String,
}

impl Operation {
    pub fn is_success(&self) -> bool {
        self.status_code == STATUS_SUCCESS
    }

    /// Finished, whether well or not.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status_code,
            STATUS_SUCCESS | STATUS_FAILURE | STATUS_CANCELLED
        )
    }
}

/// What a `GET /1.0/operations/<id>/wait` answer means.
#[derive(Debug)]
pub(crate) enum WaitAnswer {
    /// The operation finished (success, failure or cancelled: check `status_code`).
    Done(Operation),
    /// The wait timed out with the operation still going.
    Running,
    /// 6.0.4 shape: HTTP 200 carrying an error object with the operation's failure.
    Failed {
        message: String,
    },
    /// The wait itself failed (404: the operation is unknown or already gone).
    Error {
        status: u16,
        code: u16,
        message: String,
    },
    Garbled(String),
}

pub(crate) fn parse_wait(http_status: u16, env: Envelope) -> WaitAnswer {
    if http_status >= 400 {
        return WaitAnswer::Error {
            status: http_status,
            code: env.error_code,
            message: env.error,
        };
    }
    if env.kind == "error" {
        return WaitAnswer::Failed { message: env.error };
    }
    match serde_json::from_value::<Operation>(env.metadata) {
        Ok(op) if op.is_final() => WaitAnswer::Done(op),
        Ok(_) => WaitAnswer::Running,
        Err(e) => WaitAnswer::Garbled(format!("operation wait answer: {e}")),
    }
}

impl Client {
    /// `GET /1.0/operations/<id>`.
    pub async fn operation(&self, id: &str) -> Result<Operation, IncusError> {
        self.get_value(Req::get("/1.0/operations", &[id]).scope(Scope::Project))
            .await
    }

    /// Waits for an operation started elsewhere; failure is an error.
    pub async fn wait(&self, id: &str) -> Result<Operation, IncusError> {
        self.wait_operation(id, "GET", &format!("/1.0/operations/{id}"))
            .await
    }

    /// `DELETE /1.0/operations/<id>`: cancel.
    pub async fn cancel_operation(&self, id: &str) -> Result<(), IncusError> {
        let req = Req::new(reqwest::Method::DELETE, "/1.0/operations", &[id]).scope(Scope::Project);
        self.write(req).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(s: &str) -> Envelope {
        serde_json::from_str(s).expect("envelope json")
    }

    #[test]
    fn wait_parses_the_6_0_4_error_object_as_failure() {
        let e = env(
            r#"{"type":"error","status":"","status_code":0,"error_code":400,"error":"Failed creating instance: boom","metadata":null}"#,
        );
        match parse_wait(200, e) {
            WaitAnswer::Failed { message } => assert_eq!(message, "Failed creating instance: boom"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wait_parses_the_operation_shape() {
        let e = env(
            r#"{"type":"sync","status":"Success","status_code":200,"metadata":{"id":"x","class":"task","description":"Creating instance","status":"Failure","status_code":400,"err":"boom","metadata":null}}"#,
        );
        match parse_wait(200, e) {
            WaitAnswer::Done(op) => {
                assert!(!op.is_success());
                assert_eq!(op.err, "boom");
            }
            other => panic!("{other:?}"),
        }
        let e = env(
            r#"{"type":"sync","metadata":{"id":"x","status":"Success","status_code":200,"metadata":{"return":0}}}"#,
        );
        assert!(
            matches!(parse_wait(200, e), WaitAnswer::Done(op) if op.is_success() && op.metadata["return"] == 0)
        );
        let e =
            env(r#"{"type":"sync","metadata":{"id":"x","status":"Running","status_code":103}}"#);
        assert!(matches!(parse_wait(200, e), WaitAnswer::Running));
    }

    #[test]
    fn wait_on_a_vanished_operation_is_an_error() {
        let e = env(r#"{"type":"error","error_code":404,"error":"Operation not found"}"#);
        assert!(matches!(
            parse_wait(404, e),
            WaitAnswer::Error { status: 404, .. }
        ));
    }
}
