//! One changing run at a time per Atlas project, the lock held in Incus itself: so two hosts
//! (or two shells) driving one remote server or cluster see the same lock.
//!
//! The lock is a [`LockRecord`] kept by the project state (`state::lock`: the key
//! `user.atlas.lock.<project>` of Incus' `default` project, which always exists; the Atlas
//! project may not, yet). Taking, renewing and releasing it are compare-and-swap writes
//! under that project's ETag: of two runs that read a free lock, one write wins, the other
//! gets HTTP 412 and reads again.
//!
//! Stale-lock rule (a killed run cannot wedge the project):
//! 1. A holder on this host (same host name and boot id) holds the lock while its process
//!    (pid and start time, so a reused pid does not count) is alive; once it is gone the
//!    lock is free at once.
//! 2. A holder elsewhere renews the lock every [`RENEW_EVERY`]; a lock not renewed for
//!    [`LEASE`] (by this host's clock: hosts sharing one Incus must agree on the time within
//!    the lease) is free.
//! 3. A record that cannot be read is free (and said so).
//!
//! Taking a free lock that a stale holder left says whose it was. A run that finds the lock
//! held waits up to its `wait` for it (saying so every [`WAIT_STEP`]), then refuses with
//! [`LockError::Held`], which names the holder.
//!
//! The lock's own writes are not changes to the deployment: give [`acquire`] a client of its
//! own, so a converged run still reports zero writes.

use std::time::Duration;

use crate::incus::{Client, IncusError};
use crate::progress::Progress;
pub use crate::state::lock::LockRecord;

use crate::clock::{now_secs, rfc3339};

/// How long a holder elsewhere keeps the lock without renewing it.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(15);
/// How often a waiting run looks again.
pub const WAIT_STEP: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "project {project} is being changed by another atlas-install run: {holder}. Wait for it to finish, or run again with --lock-timeout SECONDS to wait for it. Nothing was changed"
    )]
    Held { project: String, holder: LockRecord },
    #[error("the lock of project {project}: {source}")]
    Incus {
        project: String,
        #[source]
        source: Box<IncusError>,
    },
}

impl std::fmt::Display for LockRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "atlas-install {} (pid {} on host {}) since {}, lease renewed {}",
            self.command,
            self.pid,
            self.host,
            rfc3339(self.started),
            rfc3339(self.renewed)
        )
    }
}

/// This process, as a lock record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
    pub pid_start: u64,
}

impl Me {
    pub fn this_process() -> Me {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let pid = std::process::id();
        Me {
            host: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid,
            pid_start: process_start(pid).unwrap_or(0),
        }
    }
}

/// Start time of process `pid` in clock ticks after boot (field 22 of `/proc/<pid>/stat`),
/// `None` when there is no such process.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl LockRecord {
    fn new(me: &Me, command: &str, now: u64) -> LockRecord {
        LockRecord {
            token: format!("{:016x}", rand::random::<u64>()),
            command: command.to_string(),
            host: me.host.clone(),
            boot_id: me.boot_id.clone(),
            pid: me.pid,
            pid_start: me.pid_start,
            started: now,
            renewed: now,
            lease_seconds: LEASE.as_secs(),
        }
    }

    /// Why this lock no longer holds (the stale-lock rule of the module docs), or `None`
    /// while it does. `start_of` gives a local process' start time, `None` when it is gone.
    pub fn stale(
        &self,
        me: &Me,
        now: u64,
        start_of: impl Fn(u32) -> Option<u64>,
    ) -> Option<String> {
        if self.host == me.host && self.boot_id == me.boot_id {
            return match start_of(self.pid) {
                Some(s) if s == self.pid_start => None,
                _ => Some(format!(
                    "its process {} on this host is gone (killed?)",
                    self.pid
                )),
            };
        }
        let expires = self.renewed.saturating_add(self.lease_seconds);
        (now > expires).then(|| {
            format!(
                "its lease ran out {} s ago (last renewed {})",
                now - expires,
                rfc3339(self.renewed)
            )
        })
    }
}

/// What the key holds now.
enum Found {
    Free,
    Held(LockRecord),
    /// Held by a record that no longer counts, and why.
    Stale(String),
}

fn judge(value: Option<Result<LockRecord, String>>, me: &Me, now: u64) -> Found {
    let Some(v) = value else {
        return Found::Free;
    };
    match v {
        Err(e) => Found::Stale(format!("its record is unreadable ({e})")),
        Ok(r) => match r.stale(me, now, process_start) {
            Some(why) => Found::Stale(format!("{r}: {why}")),
            None => Found::Held(r),
        },
    }
}

/// A held lock: renewed in the background until [`ProjectLock::release`] (or drop, which
/// stops the renewal; the record then goes stale by the rule above).
pub struct ProjectLock {
    client: Client,
    project: String,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ProjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectLock")
            .field("project", &self.project)
            .field("token", &self.token)
            .finish()
    }
}

fn incus_err(project: &str) -> impl Fn(IncusError) -> LockError + '_ {
    move |e| LockError::Incus {
        project: project.to_string(),
        source: Box::new(e),
    }
}

/// Takes the lock of `project` for `command`, waiting up to `wait` while another run holds
/// it. Must run inside a multi-threaded tokio runtime (the renewal is a task of it).
pub async fn acquire(
    client: &Client,
    project: &str,
    command: &str,
    wait: Duration,
    progress: &dyn Progress,
) -> Result<ProjectLock, LockError> {
    let root = client.in_project("default");
    let me = Me::this_process();
    let err = incus_err(project);
    let started = std::time::Instant::now();
    let mut said_waiting = false;
    loop {
        let view = crate::state::lock::read(&root, project)
            .await
            .map_err(&err)?;
        let now = now_secs();
        match judge(view.record(), &me, now) {
            Found::Held(holder) => {
                if started.elapsed() >= wait {
                    return Err(LockError::Held {
                        project: project.to_string(),
                        holder,
                    });
                }
                if !said_waiting {
                    progress.info(&format!(
                        "waiting up to {} s for the lock of project {project}, held by {holder}",
                        wait.as_secs()
                    ));
                    said_waiting = true;
                }
                tokio::time::sleep(WAIT_STEP.min(wait.saturating_sub(started.elapsed()))).await;
                continue;
            }
            Found::Stale(why) => {
                progress.warn(&format!("taking over the lock of project {project}: {why}"))
            }
            Found::Free => {}
        }
        let record = LockRecord::new(&me, command, now);
        match view.swap(&root, Some(&record)).await {
            Ok(()) => {
                let renewal = tokio::spawn(renew(
                    root.clone(),
                    project.to_string(),
                    record.token.clone(),
                ));
                return Ok(ProjectLock {
                    client: root,
                    project: project.to_string(),
                    token: record.token,
                    renewal,
                });
            }
            // Someone changed the default project between our read and write: read again.
            Err(IncusError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(err(e)),
        }
    }
}

/// Rewrites our record with a fresh `renewed` every [`RENEW_EVERY`], as long as it is ours.
async fn renew(root: Client, project: String, token: String) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        // A failed renewal is tried again at the next tick; the lease outlasts several.
        let _ = update_ours(&root, &project, &token, |mut r| {
            r.renewed = now_secs();
            Some(r)
        })
        .await;
    }
}

/// Applies `f` to our record (`None` from `f` removes it) under the ETag, retrying when the
/// default project changed meanwhile. Does nothing when the record is not ours any more.
async fn update_ours(
    root: &Client,
    project: &str,
    token: &str,
    f: impl Fn(LockRecord) -> Option<LockRecord>,
) -> Result<(), IncusError> {
    loop {
        let view = crate::state::lock::read(root, project).await?;
        let Some(mine) = view
            .record()
            .and_then(Result::ok)
            .filter(|r| r.token == token)
        else {
            return Ok(());
        };
        match view.swap(root, f(mine).as_ref()).await {
            Err(IncusError::PreconditionFailed { .. }) => continue,
            other => return other,
        }
    }
}

impl ProjectLock {
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Stops renewing and removes the record (if it is still ours).
    pub async fn release(self) -> Result<(), LockError> {
        self.renewal.abort();
        update_ours(&self.client, &self.project, &self.token, |_| None)
            .await
            .map_err(incus_err(&self.project))
    }
}

impl Drop for ProjectLock {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me {
        Me {
            host: "h1".into(),
            boot_id: "b1".into(),
            pid: 100,
            pid_start: 5000,
        }
    }

    #[test]
    fn a_local_holder_holds_while_its_process_lives() {
        let r = LockRecord::new(&me(), "install", 1_000);
        let other = Me { pid: 7, ..me() };
        // Alive with the same start time: held, however old the lease.
        assert_eq!(r.stale(&other, 1_000_000, |_| Some(5000)), None);
        // Gone, or the pid reused by another process: free at once.
        let gone = r.stale(&other, 1_001, |_| None).unwrap();
        assert!(gone.contains("process 100 on this host is gone"), "{gone}");
        assert!(r.stale(&other, 1_001, |_| Some(9999)).is_some());
        // After a reboot the same host name is another machine's past: the lease rules.
        let rebooted = Me {
            boot_id: "b2".into(),
            ..me()
        };
        assert_eq!(r.stale(&rebooted, 1_000 + 60, |_| None), None);
        assert!(r.stale(&rebooted, 1_000 + 61, |_| None).is_some());
    }

    #[test]
    fn a_holder_elsewhere_holds_for_its_lease() {
        let mut r = LockRecord::new(&me(), "destroy", 1_000);
        let elsewhere = Me {
            host: "h2".into(),
            boot_id: "b9".into(),
            ..me()
        };
        let start_of = |_| panic!("a remote pid means nothing here");
        assert_eq!(r.stale(&elsewhere, 1_060, start_of), None);
        let why = r.stale(&elsewhere, 1_075, start_of).unwrap();
        assert!(why.contains("lease ran out 15 s ago"), "{why}");
        r.renewed = 1_070;
        assert_eq!(r.stale(&elsewhere, 1_075, start_of), None);
    }

    #[test]
    fn unreadable_and_absent_records() {
        assert!(matches!(judge(None, &me(), 0), Found::Free));
        let bad = Err("expected value".to_string());
        assert!(matches!(judge(Some(bad), &me(), 0), Found::Stale(w) if w.contains("unreadable")));
    }

    #[test]
    fn the_holder_is_named_in_words() {
        let r = LockRecord::new(&me(), "install", 1_764_000_000);
        let shown = r.to_string();
        assert!(
            shown.contains("atlas-install install (pid 100 on host h1) since 2025-"),
            "{shown}"
        );
        assert_eq!(
            crate::state::keys::lock("atlas-demo"),
            "user.atlas.lock.atlas-demo"
        );
    }

    #[test]
    fn own_process_start_is_read() {
        let pid = std::process::id();
        assert!(process_start(pid).is_some_and(|t| t > 0));
        assert_eq!(process_start(u32::MAX), None);
    }
}
