//! The recorded answers of the real daemon (Incus 6.0.4, `record.rs`), as the fake's
//! templates: an object's shape, the keys the daemon adds to what was posted, the envelopes
//! and the error messages.

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// One recorded exchange: `{request, status, etag, body}`.
pub(crate) struct Exchange(Value);

impl Exchange {
    fn parse(text: &str) -> Exchange {
        Exchange(serde_json::from_str(text).expect("a recorded answer is JSON"))
    }
    /// The answer's `metadata` (the object of a GET).
    pub(crate) fn metadata(&self) -> &Value {
        &self.0["body"]["metadata"]
    }
    /// The whole JSON envelope.
    pub(crate) fn envelope(&self) -> &Value {
        &self.0["body"]
    }
    pub(crate) fn status(&self) -> u16 {
        self.0["status"].as_u64().unwrap_or(0) as u16
    }
    /// What the recorder posted before this object was read back.
    pub(crate) fn posted(&self) -> &Value {
        &self.0["request"]["posted"]
    }
    /// The body the recorder sent with this request.
    pub(crate) fn posted_body(&self) -> Value {
        self.0["request"]["body"].clone()
    }
    /// Config keys the daemon added to the posted ones.
    pub(crate) fn added_config(&self) -> Map<String, Value> {
        let mut out = self.metadata()["config"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Some(posted) = self.posted()["config"].as_object() {
            out.retain(|k, _| !posted.contains_key(k));
        }
        out
    }
    /// This recorded error answer (status, envelope, `error_code`) with `message`.
    pub(crate) fn error_answer(&self, message: String) -> super::Answer {
        let mut body = self.envelope().clone();
        body["error"] = Value::String(message);
        super::Answer {
            status: self.status(),
            etag: None,
            body,
        }
    }

    /// This recorded error answer, about `name` instead of the recorded object.
    pub(crate) fn error_about(&self, recorded: &str, name: &str) -> super::Answer {
        self.error_answer(self.error_for(recorded, name))
    }

    /// An error answer's message with the recorded object's name put in place of `name`.
    pub(crate) fn error_for(&self, recorded: &str, name: &str) -> String {
        let e = self.0["body"]["error"].as_str().unwrap_or_default();
        match recorded.is_empty() {
            true => e.to_string(),
            false => e.replace(recorded, name),
        }
    }
}

macro_rules! recorded {
    ($($field:ident),* $(,)?) => {
        /// Every recorded file, parsed once. Some are read only by the fake's own tests,
        /// which check its answers against them.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) struct Recorded { $(pub(crate) $field: Exchange,)* }
        impl Recorded {
            fn load() -> Recorded {
                Recorded { $($field: Exchange::parse(include_str!(concat!("recorded/", stringify!($field), ".json"))),)* }
            }
        }
    };
}

recorded!(
    server,
    project,
    project_post,
    projects_list,
    network,
    networks_list,
    network_leases,
    network_post,
    profile,
    profile_post,
    profiles_urls,
    profiles_list,
    volume,
    volume_post,
    volumes_list,
    image,
    image_post_async,
    operation_wait,
    operations_list,
    alias,
    alias_post,
    instance,
    instance_post_async,
    instance_state,
    error_stop_stopped,
    instances_list,
    cluster,
    resources,
    pools_list,
    pool_resources,
    certificates_list,
    certificate,
    certificate_post,
    error_certificate_pem,
    error_404_bucket,
    bucket_post,
    error_404_project,
    error_404_in_missing_project,
    error_get_in_missing_project,
    error_create_in_missing_project,
    error_404_network,
    error_404_profile,
    error_404_volume,
    error_404_instance,
    error_404_alias,
    error_404_operation,
    error_409_project,
    error_409_network,
    error_409_profile,
    error_409_volume,
    error_409_alias,
    error_409_instance,
    error_instance_no_root,
    error_412_profile,
);

pub(crate) fn recorded() -> &'static Recorded {
    static R: OnceLock<Recorded> = OnceLock::new();
    R.get_or_init(Recorded::load)
}

/// The names the recorder gave its objects, as scrubbed (see `record.rs`).
pub(crate) mod names {
    pub(crate) const PROJECT: &str = "rec";
    pub(crate) const NETWORK: &str = "recbr";
    pub(crate) const PROFILE: &str = "rec-profile";
    pub(crate) const VOLUME: &str = "rec-volume";
    pub(crate) const ALIAS: &str = "rec/image";
    pub(crate) const INSTANCE: &str = "rec-instance";
}
