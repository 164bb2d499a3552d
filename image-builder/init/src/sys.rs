//! The only module with `unsafe`: thin, safe wrappers over the handful of libc calls PID 1 needs
//! that std does not offer (signal masks and waits, `waitpid(-1)`, `kill`, `prctl`, netlink
//! sockets, credential changes between fork and exec). Each block is one call on values we own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

pub use libc::{SIGCHLD, SIGHUP, SIGINT, SIGKILL, SIGPWR, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A set of signals that are blocked and then collected synchronously with [`SignalSet::wait`].
/// Blocked signals are queued even for PID 1 (the kernel only drops signals PID 1 neither
/// blocks nor handles), so nothing is lost between blocking and waiting.
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn new(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset_t is plain data; an all-zero value is a valid (empty) set on Linux and
        // sigemptyset/sigaddset only write into the set we own.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: see above; the pointer is to our local set.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: see above; invalid signal numbers only make sigaddset return EINVAL.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        SignalSet(set)
    }

    /// Blocks the set for this (single-threaded) process.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: both pointers are valid for the call (the old mask is not wanted).
        let ret = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        check(ret).map(drop)
    }

    /// Waits for one signal of the set; `None` when the timeout passed or a non-member
    /// signal interrupted the wait.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Option<libc::c_int>> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i32::MAX as u64) as _,
            tv_nsec: d.subsec_nanos().into(),
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: the set and the optional timespec live across the call; a null siginfo
        // pointer is allowed.
        let ret = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), ts_ptr) };
        match check(ret) {
            Ok(sig) => Ok(Some(sig)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `kill(2)`; a negative pid addresses a process group.
pub fn kill(pid: i32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Reaps one exited child without blocking: `Some((pid, exit code))`, with death by signal
/// mapped to 128 + signal as shells do; `None` when no child is waiting to be reaped.
pub fn reap_one() -> Option<(i32, i32)> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out pointer for the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        // Stopped/continued children are only reported with WUNTRACED/WCONTINUED.
        return Some((pid, 128));
    };
    Some((pid, code))
}

/// Makes orphaned descendants reparent to us when we are not PID 1 (tests, nested use).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// A NETLINK_ROUTE socket as a File: each write sends one request to the kernel (the default
/// destination of an unconnected netlink socket), each read returns one reply datagram.
pub fn netlink_route_socket() -> io::Result<File> {
    // SAFETY: socket takes plain integers.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: fd was just returned by socket() and nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// One past the highest signal number on Linux (`_NSIG`: 64 signals, real-time ones included).
const NSIG: libc::c_int = 65;

/// Arranges for the child to switch to `gid`/`groups`/`uid` (in the order setgroups, setgid,
/// setuid: after setuid the others are no longer permitted) right before exec, with every
/// signal at its default disposition and an empty signal mask, as tini and dumb-init hand
/// over: ours blocks the stop signals, and whatever started us may have ignored some
/// (`nohup`, a CI runner). exec keeps an ignored disposition, and a shell cannot even trap a
/// signal that was ignored when it started, so the service would never see it.
pub fn exec_as(cmd: &mut Command, uid: u32, gid: u32, groups: Vec<u32>) {
    let groups: Vec<libc::gid_t> = groups;
    let empty = SignalSet::new(&[]);
    let closure = move || -> io::Result<()> {
        for sig in 1..NSIG {
            // SAFETY: runs in the forked child before exec; signal(2) is async-signal-safe
            // and takes plain integers. SIGKILL, SIGSTOP and the real-time signals libc
            // reserves answer EINVAL, which is fine: they cannot be ignored by us anyway.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        // SAFETY (all four): runs in the forked child before exec; each is a single
        // async-signal-safe syscall on memory owned by this closure, and nothing allocates.
        check(unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty.0, std::ptr::null_mut()) })?;
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
        check(unsafe { libc::setgid(gid) })?;
        check(unsafe { libc::setuid(uid) })?;
        Ok(())
    };
    // SAFETY: the closure only performs the async-signal-safe calls above (see there).
    unsafe { cmd.pre_exec(closure) };
}
