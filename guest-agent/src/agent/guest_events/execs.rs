//! Which exec a guest process belongs to.
//!
//! The server registers the pid of every exec's main process while it runs
//! ([`ExecRegistry::global`]). A process that connects to the events socket
//! is traced to its exec by walking `/proc/<pid>/stat` parent links (at most
//! [`MAX_DEPTH`] steps) until a registered pid turns up; a process whose
//! parents are gone (re-parented to PID 1) is matched by its session id
//! instead, since every exec starts as a session leader. Processes outside
//! any running exec have none.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// The most parent links followed.
pub const MAX_DEPTH: usize = 64;

/// The pids of the running execs' main processes.
#[derive(Default)]
pub struct ExecRegistry {
    pids: Mutex<HashSet<u32>>,
}

impl ExecRegistry {
    /// The agent's registry (the server adds to it, the events hub reads it).
    pub fn global() -> &'static ExecRegistry {
        static GLOBAL: OnceLock<ExecRegistry> = OnceLock::new();
        GLOBAL.get_or_init(ExecRegistry::default)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An exec's main process started.
    pub fn add(&self, pid: u32) {
        self.lock().insert(pid);
    }

    /// An exec ended.
    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// True while `pid` is a running exec's main process.
    pub fn contains(&self, pid: u32) -> bool {
        self.lock().contains(&pid)
    }

    /// The running exec `pid` descends from (itself included), if any.
    pub fn exec_of(&self, pid: u32) -> Option<u32> {
        let mut current = pid;
        let mut session = None;
        for _ in 0..MAX_DEPTH {
            if self.contains(current) {
                return Some(current);
            }
            let Some((ppid, sid)) = parent_and_session(current) else {
                break;
            };
            session.get_or_insert(sid);
            if ppid <= 1 {
                break;
            }
            current = ppid;
        }
        session.filter(|&sid| self.contains(sid))
    }
}

/// (parent pid, session id) of `pid` from `/proc/<pid>/stat`.
fn parent_and_session(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// The command name in parentheses may hold anything, `)` included: the
/// fields that follow start after the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session ...
    let mut fields = rest.split_whitespace().skip(1);
    let ppid = fields.next()?.parse().ok()?;
    let _pgrp = fields.next()?;
    let sid = fields.next()?.parse().ok()?;
    Some((ppid, sid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_names() {
        assert_eq!(
            parse_stat("42 (a) b (c)) S 7 42 40 0 -1 4194560"),
            Some((7, 40))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_is_traced_to_a_registered_ancestor() {
        let registry = ExecRegistry::default();
        let me = std::process::id();
        assert_eq!(registry.exec_of(me), None);
        let (parent, _) = parent_and_session(me).unwrap();
        registry.add(parent);
        assert_eq!(registry.exec_of(me), Some(parent));
        registry.add(me);
        assert_eq!(registry.exec_of(me), Some(me));
        registry.remove(me);
        registry.remove(parent);
        assert_eq!(registry.exec_of(me), None);
    }

    #[test]
    fn orphans_are_matched_by_session() {
        let registry = ExecRegistry::default();
        let me = std::process::id();
        let (_, sid) = parent_and_session(me).unwrap();
        // The session leader may or may not be an ancestor here; registering
        // it must find it either way.
        if sid > 1 {
            registry.add(sid);
            assert_eq!(registry.exec_of(me), Some(sid));
        }
    }
}
