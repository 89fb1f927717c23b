//! [`Offload`]: a chain's decisions asked from an event loop without blocking it.
//!
//! A decision may wait on an out-of-process plugin up to its timeout. The network stack runs
//! every flow of a sandbox on one thread, so it cannot wait there: it hands the decision to a
//! few worker threads and awaits the answer (any one-shot channel works; the job carries its
//! own reply). The queue is bounded: a guest that opens flows faster than plugins decide gets
//! [`Busy`] back, and the caller refuses rather than letting the backlog grow.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use crate::Chain;

/// Worker threads per offload: decisions of a sandbox in flight at once.
pub const WORKERS: usize = 4;
/// Decisions waiting for a worker before [`Offload::submit`] answers [`Busy`].
pub const QUEUE: usize = 256;

type Job = Box<dyn FnOnce(&Chain) + Send>;

/// Runs decisions of one [`Chain`] on worker threads. Dropping it lets the workers end once
/// the queued jobs are done.
pub struct Offload {
    jobs: SyncSender<Job>,
}

/// The queue was full (or the workers are gone); the job was not run.
#[derive(Debug, thiserror::Error)]
#[error("more than {QUEUE} plugin decisions are waiting")]
pub struct Busy;

impl Offload {
    /// Starts [`WORKERS`] threads named `name` deciding on `chain`. Each calls the crate's
    /// thread hook first (see [`crate::set_thread_hook`]).
    pub fn start(chain: Arc<Chain>, name: &str) -> std::io::Result<Offload> {
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..WORKERS {
            let (chain, queue) = (chain.clone(), queue.clone());
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    crate::thread_started();
                    work(&chain, &queue)
                })?;
        }
        Ok(Offload { jobs })
    }

    /// Queues `job`, which a worker runs with the chain. Never blocks.
    pub fn submit(&self, job: impl FnOnce(&Chain) + Send + 'static) -> Result<(), Busy> {
        match self.jobs.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn work(chain: &Chain, queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(chain),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;
    use crate::data::Flow;
    use crate::{Decision, Interests, Plugin};

    /// Takes 100 ms per decision and records how many it was in at once.
    #[derive(Default)]
    struct Slow {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Plugin for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn interests(&self) -> Interests {
            Interests::NONE.with(crate::Hook::Flow)
        }
        fn flow(&self, flow: &Flow) -> Decision {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            self.now.fetch_sub(1, Ordering::SeqCst);
            if flow.dst.port() == 25 {
                Decision::deny("no mail")
            } else {
                Decision::Continue
            }
        }
    }

    fn flow(port: u16) -> Flow {
        Flow {
            transport: crate::data::Transport::Tcp,
            dst: ([192, 0, 2, 1], port).into(),
            host: None,
        }
    }

    #[test]
    fn decisions_run_side_by_side_and_answer_through_their_own_reply() {
        let slow = Arc::new(Slow::default());
        let chain = Arc::new(Chain::new(vec![slow.clone()], Arc::new(|_| {})));
        let offload = Offload::start(chain, "test-offload").unwrap();
        let (tx, rx) = channel();
        for port in [25, 80, 443, 8080] {
            let tx = tx.clone();
            offload
                .submit(move |chain| {
                    let _ = tx.send((port, chain.flow(&flow(port))));
                })
                .unwrap();
        }
        let mut answers: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        answers.sort_by_key(|(port, _)| *port);
        assert_eq!(answers[0], (25, Decision::deny("no mail")));
        assert!(answers[1..].iter().all(|(_, d)| *d == Decision::Continue));
        // Several workers: slow decisions overlap rather than queue one after another.
        assert!(slow.most.load(Ordering::SeqCst) > 1);
    }

    #[test]
    fn a_full_queue_answers_busy_instead_of_blocking() {
        let chain = Arc::new(Chain::new(
            vec![Arc::new(Slow::default())],
            Arc::new(|_| {}),
        ));
        let offload = Offload::start(chain, "test-offload").unwrap();
        let mut busy = 0;
        for _ in 0..(QUEUE + WORKERS + 50) {
            if offload
                .submit(|chain| {
                    chain.flow(&flow(80));
                })
                .is_err()
            {
                busy += 1;
            }
        }
        assert!(busy >= 50, "{busy}");
    }
}
