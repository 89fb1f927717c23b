//! The one place that waits for child processes.
//!
//! PID 1 inherits every orphan in the guest, and zombies pile up unless
//! someone waits for them. A single thread calls `waitpid(-1)` in a loop:
//! statuses of processes the agent started go to their sessions through a
//! channel, anything else (orphans) is reaped and dropped.
//!
//! Why a blocking thread and not a SIGCHLD handler: signal masks would have
//! to be set before any thread exists (impossible under the test harness),
//! and a thread needs no async-signal-safe gymnastics. When there are no
//! children at all `waitpid` fails with ECHILD; the thread then sleeps until
//! the next spawn (no children means no descendants, so no orphans can
//! appear meanwhile).
//!
//! Nothing else may wait for children (so no `std::process::Command` in the
//! agent): a stray wait would steal a status meant for a session.
//! [`Reaper::spawn`] registers a child while holding the lock the reaper
//! needs to route a status, so even a child that exits at once is routed.

use std::collections::HashMap;
use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Condvar, Mutex, MutexGuard, Once, OnceLock};

use msbvm_protocol::ExitStatus;

/// A raw status from `waitpid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitStatus(pub libc::c_int);

impl WaitStatus {
    /// The protocol's view of it.
    pub fn exit_status(self) -> ExitStatus {
        if libc::WIFEXITED(self.0) {
            ExitStatus::Code(libc::WEXITSTATUS(self.0))
        } else if libc::WIFSIGNALED(self.0) {
            ExitStatus::Signal(libc::WTERMSIG(self.0))
        } else {
            // waitpid without WUNTRACED/WCONTINUED reports only ends.
            ExitStatus::Code(-1)
        }
    }
}

#[derive(Default)]
struct State {
    /// Children whose status someone waits for.
    waiting: HashMap<libc::pid_t, Sender<WaitStatus>>,
    /// Bumped on every spawn, so the reaper can sleep through ECHILD without
    /// missing a child started meanwhile.
    spawned: u64,
}

/// The reaper; one per process ([`Reaper::global`]).
pub struct Reaper {
    state: Mutex<State>,
    child_added: Condvar,
}

impl Reaper {
    /// The process's reaper, its thread started on first use.
    pub fn global() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        static STARTED: Once = Once::new();
        let reaper = REAPER.get_or_init(|| Reaper {
            state: Mutex::new(State::default()),
            child_added: Condvar::new(),
        });
        STARTED.call_once(|| {
            if let Err(e) = std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.run())
            {
                // Without the thread no exit is ever reported; this is the
                // agent's start-up, so failing loudly is the useful thing.
                panic!("cannot start the reaper thread: {e}");
            }
        });
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `fork` (which creates a child and returns its pid) and registers
    /// the child; its status will arrive on the returned channel.
    pub fn spawn<F>(&self, fork: F) -> io::Result<(libc::pid_t, Receiver<WaitStatus>)>
    where
        F: FnOnce() -> io::Result<libc::pid_t>,
    {
        let mut state = self.lock();
        let pid = fork()?;
        let (tx, rx) = mpsc::channel();
        state.waiting.insert(pid, tx);
        state.spawned += 1;
        self.child_added.notify_all();
        Ok((pid, rx))
    }

    /// Stops routing `pid`'s status (it will be reaped silently).
    pub fn forget(&self, pid: libc::pid_t) {
        self.lock().waiting.remove(&pid);
    }

    fn run(&self) {
        loop {
            let seen = self.lock().spawned;
            let mut status = 0;
            // SAFETY: waitpid writes one int we own.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                if let Some(tx) = self.lock().waiting.remove(&pid) {
                    // The session may be gone already; nothing to do then.
                    let _ = tx.send(WaitStatus(status));
                }
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    let mut state = self.lock();
                    while state.spawned == seen {
                        state = self
                            .child_added
                            .wait(state)
                            .unwrap_or_else(|e| e.into_inner());
                    }
                }
                _ => {
                    agent_log!("waitpid: {}", io::Error::last_os_error());
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_protocol() {
        // Encodings as the kernel makes them: exit code in bits 8-15, the
        // killing signal in bits 0-6.
        assert_eq!(WaitStatus(3 << 8).exit_status(), ExitStatus::Code(3));
        assert_eq!(WaitStatus(0).exit_status(), ExitStatus::Code(0));
        assert_eq!(WaitStatus(15).exit_status(), ExitStatus::Signal(15));
        assert_eq!(WaitStatus(9 | 0x80).exit_status(), ExitStatus::Signal(9));
    }
}
