//! Terminal side of progress reporting: indicatif bars on a TTY, timestamped lines when
//! piped, nothing under `--progress none`. Everything goes to stderr so that `--json`
//! output on stdout stays clean.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_install::progress::{Progress, ProgressTask};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;

/// Builds the progress sink the user asked for.
pub fn progress(mode: ProgressMode) -> Arc<dyn Progress> {
    match mode {
        ProgressMode::None => Arc::new(atlas_install::progress::NoProgress),
        ProgressMode::Plain => Arc::new(PlainProgress),
        ProgressMode::Auto if std::io::stderr().is_terminal() => Arc::new(BarProgress::new()),
        ProgressMode::Auto => Arc::new(PlainProgress),
    }
}

/// `2026-11-26T10:43:38Z`, now.
fn utc_now() -> String {
    atlas_install::clock::rfc3339(atlas_install::clock::now_secs())
}

fn plain_line(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{} {msg}", utc_now());
}

/// Timestamped lines: one when a task starts and one when it ends.
struct PlainProgress;

impl Progress for PlainProgress {
    fn task(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask> {
        plain_line(&format!("{label} ..."));
        Box::new(PlainTask {
            label: label.to_string(),
            started: Instant::now(),
            total,
        })
    }
    fn info(&self, message: &str) {
        plain_line(message);
    }
    fn warn(&self, message: &str) {
        plain_line(&format!("warning: {message}"));
    }
}

struct PlainTask {
    label: String,
    started: Instant,
    total: Option<u64>,
}

impl ProgressTask for PlainTask {
    fn set_total(&self, _total: u64) {}
    fn advance(&self, _delta: u64) {}
    fn set_message(&self, _message: &str) {}
    fn finish(&self, outcome: &str) {
        let _ = self.total;
        plain_line(&format!(
            "{}: {outcome} ({:.1}s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        ));
    }
    fn fail(&self, reason: &str) {
        plain_line(&format!("{}: FAILED: {reason}", self.label));
    }
}

/// indicatif bars (with a known total) and spinners (without), stacked.
struct BarProgress {
    multi: MultiProgress,
}

impl BarProgress {
    fn new() -> Self {
        BarProgress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        }
    }
}

impl Progress for BarProgress {
    fn task(&self, label: &str, total: Option<u64>) -> Box<dyn ProgressTask> {
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template("{spinner:.green} {prefix:<28} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner:.green} {prefix:<28} {msg}").expect("static template"),
            ),
        };
        let bar = self.multi.add(bar.with_prefix(label.to_string()));
        bar.enable_steady_tick(Duration::from_millis(120));
        Box::new(BarTask { bar })
    }
    fn info(&self, message: &str) {
        let _ = self.multi.println(message);
    }
    fn warn(&self, message: &str) {
        let _ = self.multi.println(format!(
            "{} {message}",
            console::style("warning:").yellow().bold()
        ));
    }
}

struct BarTask {
    bar: ProgressBar,
}

impl ProgressTask for BarTask {
    fn set_total(&self, total: u64) {
        self.bar.set_length(total);
    }
    fn advance(&self, delta: u64) {
        self.bar.inc(delta);
    }
    fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
    fn finish(&self, outcome: &str) {
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:.green.bold:<30} {msg}")
                .expect("static template"),
        );
        self.bar.finish_with_message(outcome.to_string());
    }
    fn fail(&self, reason: &str) {
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:.red.bold:<30} {msg}").expect("static template"),
        );
        self.bar.abandon_with_message(format!("failed: {reason}"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
