//! Everything the binary writes, in one place, built once from the global flags: the
//! command's result on stdout (text, or JSON with `--json`), notes and warnings on stderr,
//! the progress sink, errors, and the confirmation prompt. Progress and notes never go to
//! stdout, so `--json` output stays clean.

use std::fmt::Display;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use atlas_install::progress::Progress;
use serde::Serialize;

use crate::cli::GlobalArgs;

pub struct Printer {
    json: bool,
    /// `--yes`: every confirmation is answered yes.
    yes: bool,
    progress: Arc<dyn Progress>,
}

impl Printer {
    pub fn new(global: &GlobalArgs) -> Printer {
        Printer {
            json: global.json,
            yes: global.yes,
            progress: crate::ui::progress(global.progress),
        }
    }

    /// `--json`: the result goes out as JSON.
    pub fn json_mode(&self) -> bool {
        self.json
    }

    /// The progress sink the user asked for (`--progress`), made once.
    pub fn progress(&self) -> &dyn Progress {
        self.progress.as_ref()
    }

    /// One line of the command's result on stdout. A closed pipe is an error, not a panic.
    pub fn line(&self, line: impl Display) -> Result<()> {
        writeln!(std::io::stdout().lock(), "{line}").context("writing to stdout")
    }

    /// The command's result on stdout, as it is (lines end in their own newlines).
    pub fn text(&self, text: &str) -> Result<()> {
        self.bytes(text.as_bytes())
    }

    /// Raw bytes of the result (a document passed through unchanged).
    pub fn bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|()| out.flush())
            .context("writing to stdout")
    }

    /// stdout as a stream, for a result too large to hold (a tarball written to `-`).
    pub fn stream(&self) -> std::io::StdoutLock<'static> {
        std::io::stdout().lock()
    }

    /// The result as pretty-printed JSON, one document ending in a newline.
    pub fn json(&self, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
        self.line(text)
    }

    /// The result as compact JSON on one line.
    pub fn json_line(&self, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string(value).context("encoding JSON")?;
        self.line(text)
    }

    /// A note for the operator on stderr (what happened, what to do next).
    pub fn note(&self, line: impl Display) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Text for the operator on stderr, as it is (a plan shown while `--json` owns stdout).
    pub fn note_text(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }

    /// `warning: ...` on stderr.
    pub fn warn(&self, message: impl Display) {
        self.note(format_args!("warning: {message}"));
    }

    /// An error and its causes, one per line, the way an operator reads them.
    pub fn error(&self, err: &anyhow::Error) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "error: {err}");
        for cause in err.chain().skip(1) {
            let _ = writeln!(stderr, "  caused by: {cause}");
        }
    }

    /// Asks on the terminal; refuses when stdin is not one and `--yes` was not given.
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.yes {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "stdin is not a terminal, so nobody can confirm: pass --yes to {question} without asking. Nothing was changed."
            );
        }
        self.note_text(&format!(
            "Do you want to {question}? Only 'yes' is accepted: "
        ));
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("reading the answer")?;
        Ok(answer.trim() == "yes")
    }
}
