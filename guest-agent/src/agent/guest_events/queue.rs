//! A guest connection's outgoing lines: bounded, never blocking the host.
//!
//! Host events are *offered*: when [`QUEUE_LEN`] lines (or [`QUEUE_BYTES`])
//! already wait, the event is dropped for this connection and counted, and
//! the connection's
//! next line says how many it missed (`msbvm.dropped`). Replies to the
//! connection's own lines (`subscribed`, errors) are *pushed*: they wait for
//! room, so a program that writes but never reads only stalls itself.
//! Either way memory stays bounded: at most [`QUEUE_LEN`] lines and about
//! [`QUEUE_BYTES`] (one event more when it is the only one), plus one drop
//! notice between each two lines; 128 connections that never read hold at
//! most some 40 MiB.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use super::line::dropped_line;

/// Lines a connection may have waiting.
pub const QUEUE_LEN: usize = 256;
/// Bytes of lines a connection may have waiting (a lone line may exceed it).
pub const QUEUE_BYTES: usize = 256 * 1024;

enum Item {
    Line(String),
    /// This many host events were dropped here.
    Dropped(u64),
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// `Line` items in `items`.
    lines: usize,
    /// Their bytes.
    bytes: usize,
    /// The reader is done: the writer sends what is left, then ends.
    finished: bool,
    /// The writer failed: nothing more will be sent.
    dead: bool,
    /// Every host event dropped here so far.
    dropped_total: u64,
}

/// The outgoing queue of one guest connection.
pub struct OutQueue {
    capacity: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl State {
    /// True if `len` more bytes do not fit.
    fn full(&self, capacity: usize, len: usize) -> bool {
        self.lines >= capacity || (self.lines > 0 && self.bytes + len > QUEUE_BYTES)
    }

    fn add(&mut self, line: String) {
        self.lines += 1;
        self.bytes += line.len();
        self.items.push_back(Item::Line(line));
    }
}

impl OutQueue {
    /// A queue holding up to `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a host event's line unless the queue is full (then it is
    /// dropped and counted); never blocks. False if it was dropped.
    pub fn offer(&self, line: String) -> bool {
        let mut s = self.lock();
        if s.dead || s.finished {
            return false;
        }
        if s.full(self.capacity, line.len()) {
            s.dropped_total += 1;
            match s.items.back_mut() {
                Some(Item::Dropped(n)) => *n += 1,
                _ => s.items.push_back(Item::Dropped(1)),
            }
            return false;
        }
        s.add(line);
        self.changed.notify_all();
        true
    }

    /// Queues a reply, waiting for room (the connection's own reader waits,
    /// nobody else).
    pub fn push(&self, line: String) {
        let mut s = self.lock();
        while s.full(self.capacity, line.len()) && !s.dead {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.dead || s.finished {
            return;
        }
        s.add(line);
        self.changed.notify_all();
    }

    /// The connection's reader is done: what is queued still goes out.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.changed.notify_all();
    }

    /// Writing failed: drop everything and wake whoever waits.
    pub fn kill(&self) {
        let mut s = self.lock();
        s.dead = true;
        s.items.clear();
        s.lines = 0;
        s.bytes = 0;
        self.changed.notify_all();
    }

    /// The next line to write, waiting for one; `None` once finished and
    /// empty, or dead.
    pub fn next(&self) -> Option<String> {
        let mut s = self.lock();
        loop {
            if s.dead {
                return None;
            }
            if let Some(item) = s.items.pop_front() {
                let line = match item {
                    Item::Line(line) => {
                        s.lines -= 1;
                        s.bytes -= line.len();
                        line
                    }
                    Item::Dropped(n) => dropped_line(n),
                };
                self.changed.notify_all();
                return Some(line);
            }
            if s.finished {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Host events dropped on this connection so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_then_says_how_many() {
        let q = OutQueue::new(2);
        assert!(q.offer("a\n".into()));
        assert!(q.offer("b\n".into()));
        assert!(!q.offer("c\n".into()));
        assert!(!q.offer("d\n".into()));
        assert_eq!(q.dropped(), 2);
        assert_eq!(q.next().unwrap(), "a\n");
        assert!(q.offer("e\n".into()));
        assert_eq!(q.next().unwrap(), "b\n");
        assert_eq!(q.next().unwrap(), dropped_line(2));
        assert_eq!(q.next().unwrap(), "e\n");
        q.finish();
        assert_eq!(q.next(), None);
    }

    #[test]
    fn big_lines_are_bounded_by_bytes_but_a_lone_one_passes() {
        let q = OutQueue::new(QUEUE_LEN);
        let big = "x".repeat(QUEUE_BYTES / 2);
        assert!(q.offer(big.clone()));
        assert!(q.offer(big.clone()));
        assert!(!q.offer("y".into()));
        q.next();
        q.next();
        let huge = "z".repeat(QUEUE_BYTES * 2);
        assert!(q.offer(huge));
        assert!(!q.offer("y".into()));
    }

    #[test]
    fn replies_wait_for_room_and_kill_wakes_them() {
        let q = std::sync::Arc::new(OutQueue::new(1));
        q.push("x\n".into());
        let q2 = std::sync::Arc::clone(&q);
        let waiter = std::thread::spawn(move || q2.push("y\n".into()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        assert_eq!(q.next().unwrap(), "x\n");
        waiter.join().unwrap();
        assert_eq!(q.next().unwrap(), "y\n");
        q.push("z\n".into());
        let q2 = std::sync::Arc::clone(&q);
        let waiter = std::thread::spawn(move || q2.push("w\n".into()));
        std::thread::sleep(std::time::Duration::from_millis(20));
        q.kill();
        waiter.join().unwrap();
        assert_eq!(q.next(), None);
    }
}
