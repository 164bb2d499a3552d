//! Progress reporting without a terminal.
//!
//! Library code never draws anything: it describes units of work through [`Progress`] and the
//! binary decides how to show them (indicatif bars on a TTY, timestamped lines when piped,
//! nothing at all under `--progress none`).

/// A sink for progress events. Implementations must be cheap and thread-safe: tasks are
/// advanced from blocking and async code alike.
pub trait Progress: Send + Sync {
    /// Starts a unit of work. `total` is in the task's own unit (bytes, items) when known.
    fn task(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask>;
    /// A line of information that is not tied to a task (a skipped step and its reason).
    fn info(&self, message: &str);
    /// A warning the operator should read (preflight below recommended, digest pinned on first pull).
    fn warn(&self, message: &str);
}

/// One running unit of work, from [`Progress::task`].
pub trait ProgressTask: Send + Sync {
    fn set_total(&self, total: u64);
    fn advance(&self, delta: u64);
    fn set_message(&self, message: &str);
    /// Ends the task successfully with a short outcome ("created", "unchanged", "3.1 MB").
    fn finish(&self, outcome: &str);
    /// Ends the task as failed; the error itself travels back through `Result`.
    fn fail(&self, reason: &str);
}

/// Progress that goes nowhere, for tests and `--progress none`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn task(&self, _label: &str, _total: Option<u64>) -> Box<dyn ProgressTask> {
        Box::new(NoProgress)
    }
    fn info(&self, _message: &str) {}
    fn warn(&self, _message: &str) {}
}

impl ProgressTask for NoProgress {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _delta: u64) {}
    fn set_message(&self, _message: &str) {}
    fn finish(&self, _outcome: &str) {}
    fn fail(&self, _reason: &str) {}
}
