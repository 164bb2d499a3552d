//! What can be wrong with a configuration, said so an operator can fix it: where (file
//! position, environment variable or flag), which field, why, and what to write instead.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Where a problem's value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Location {
    /// 1-based line and column in the config file.
    File {
        file: String,
        line: usize,
        column: usize,
    },
    Env {
        variable: String,
    },
    Flag {
        flag: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { file, line, column } => write!(f, "{file}:{line}:{column}"),
            Location::Env { variable } => write!(f, "{variable} (environment)"),
            Location::Flag { flag } => write!(f, "{flag} (command line)"),
        }
    }
}

/// One problem. `path` is the dotted key path (`networks.management.ipv4`), empty for
/// problems of the file as a whole (syntax).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub path: String,
    pub location: Option<Location>,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            path: path.into(),
            location: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n    help: {help}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {}: {source} (create one with `atlas-install config init --out {}`)",
        path.display(),
        path.display()
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, not just the first.
    #[error("{}", render_invalid(origin, diagnostics))]
    Invalid {
        origin: String,
        diagnostics: Vec<Diagnostic>,
    },
}

fn render_invalid(origin: &str, diagnostics: &[Diagnostic]) -> String {
    let n = diagnostics.len();
    let mut s = format!(
        "{origin}: {n} problem{} in the configuration",
        if n == 1 { "" } else { "s" }
    );
    for d in diagnostics {
        s.push_str("\n  ");
        s.push_str(&d.to_string().replace('\n', "\n  "));
    }
    s
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
            ConfigError::Read { .. } => &[],
        }
    }
}
