//! Platforms (`os/arch[/variant]`) and the choice of one manifest out of an image index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    #[error("platform {input:?} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")]
    Syntax { input: String },
    #[error(
        "the host architecture {arch:?} has no OCI image platform we support; \
         pass a platform explicitly (linux/amd64 or linux/arm64)"
    )]
    UnknownHost { arch: String },
}

/// An OCI platform as written in image indexes and configs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// `os.version`, `os.features`, `features`: not used for matching, kept for rewriting.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
            extra: Default::default(),
        }
    }

    pub fn linux_amd64() -> Self {
        Self::new("linux", "amd64", None)
    }

    pub fn linux_arm64() -> Self {
        Self::new("linux", "arm64", Some("v8"))
    }

    /// The platform of the machine we run on, the default for every pull.
    pub fn host() -> Result<Self, PlatformError> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Self::linux_amd64()),
            "aarch64" => Ok(Self::linux_arm64()),
            other => Err(PlatformError::UnknownHost {
                arch: other.to_owned(),
            }),
        }
    }

    /// The variant with each architecture's implied default filled in: an arm64 image
    /// without a variant is v8, an arm one v7. Registries and tools write both forms.
    fn effective_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            (_, Some(v)) => Some(v),
            ("arm64", None) => Some("v8"),
            ("arm", None) => Some("v7"),
            _ => None,
        }
    }

    /// Whether an image built for `candidate` runs as `self`. Variants are compared
    /// after defaulting; amd64 micro-architecture levels (v2, v3...) are only matched
    /// exactly when we asked for one.
    pub fn accepts(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os || self.architecture != candidate.architecture {
            return false;
        }
        match (self.effective_variant(), candidate.effective_variant()) {
            (Some(want), Some(have)) => want == have,
            (None, None) => true,
            (None, Some(have)) => self.architecture == "amd64" && have == "v1",
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = input.split('/').collect();
        let valid =
            |s: &&str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Self::new(os, arch, None)),
            [os, arch, v] if valid(os) && valid(arch) && valid(v) => {
                Ok(Self::new(os, arch, Some(v)))
            }
            _ => Err(PlatformError::Syntax {
                input: input.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn variant_aware_matching() {
        assert!(p("linux/arm64").accepts(&p("linux/arm64/v8")));
        assert!(p("linux/arm64/v8").accepts(&p("linux/arm64")));
        assert!(!p("linux/arm64/v8").accepts(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").accepts(&p("linux/arm/v7")));
        assert!(p("linux/amd64").accepts(&p("linux/amd64")));
        assert!(!p("linux/amd64").accepts(&p("linux/amd64/v3")));
        assert!(!p("linux/amd64").accepts(&p("linux/arm64")));
        assert!(!p("linux/amd64").accepts(&p("windows/amd64")));
    }

    #[test]
    fn parse_errors() {
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/".parse::<Platform>().is_err());
        assert!("linux/arm64/v8/x".parse::<Platform>().is_err());
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64/v8");
        assert!(Platform::host().is_ok());
    }
}
