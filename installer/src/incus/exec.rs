//! Running a command in an instance with recorded output (no websockets).

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::Value;

use super::client::{Client, Req, Scope};
use super::error::IncusError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

impl Client {
    /// Runs `command` in a running instance, waits, and returns exit code and output. The
    /// recorded log files are deleted afterwards.
    pub async fn exec(
        &self,
        instance: &str,
        command: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Result<ExecOutput, IncusError> {
        self.exec_as(instance, command, env, None).await
    }

    /// [`Client::exec`] as `(uid, gid)` instead of root, so that files the command writes
    /// keep the owner the service expects.
    pub async fn exec_as(
        &self,
        instance: &str,
        command: &[&str],
        env: &BTreeMap<String, String>,
        user: Option<(u32, u32)>,
    ) -> Result<ExecOutput, IncusError> {
        self.exec_inner(instance, command, env, user, false).await
    }

    /// [`Client::exec`] of a command that only looks (a health probe): counted in
    /// [`Client::probes`] instead of [`Client::writes`].
    pub async fn probe_exec(
        &self,
        instance: &str,
        command: &[&str],
    ) -> Result<ExecOutput, IncusError> {
        self.exec_inner(instance, command, &BTreeMap::new(), None, true)
            .await
    }

    async fn exec_inner(
        &self,
        instance: &str,
        command: &[&str],
        env: &BTreeMap<String, String>,
        user: Option<(u32, u32)>,
        observing: bool,
    ) -> Result<ExecOutput, IncusError> {
        let mut body = serde_json::json!({
            "command": command,
            "environment": env,
            "record-output": true,
            "wait-for-websocket": false,
            "interactive": false,
        });
        if let Some((uid, gid)) = user {
            body["user"] = uid.into();
            body["group"] = gid.into();
        }
        let req = Req::new(Method::POST, "/1.0/instances", &[instance, "exec"])
            .scope(Scope::Project)
            .observing(observing)
            .json(&body)?;
        let op = self.write_op(req).await?;
        let exit_code = op
            .metadata
            .get("return")
            .and_then(Value::as_i64)
            .ok_or_else(|| IncusError::Decode {
                method: "POST".into(),
                path: format!("/1.0/instances/{instance}/exec"),
                message: format!("operation metadata without `return`: {}", op.metadata),
            })?;
        let stdout = self.exec_log(&op.metadata, "1", observing).await?;
        let stderr = self.exec_log(&op.metadata, "2", observing).await?;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    async fn exec_log(
        &self,
        meta: &Value,
        fd: &str,
        observing: bool,
    ) -> Result<Vec<u8>, IncusError> {
        let Some(path) = meta
            .get("output")
            .and_then(|o| o.get(fd))
            .and_then(Value::as_str)
        else {
            return Ok(Vec::new());
        };
        // The server gives an absolute API path; split it back into segments.
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let bytes = self
            .get_raw(Req::new(Method::GET, "", &segs).scope(Scope::Project))
            .await?;
        // Logs pile up otherwise; failing to delete one is not worth failing the exec.
        let _ = self
            .write(
                Req::new(Method::DELETE, "", &segs)
                    .scope(Scope::Project)
                    .observing(observing),
            )
            .await;
        Ok(bytes)
    }
}
