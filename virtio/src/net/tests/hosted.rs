//! The worker run by a host thread ([`WorkerHost`]) instead of a thread of its own, the way
//! the network stack runs it: the same frames both ways, and the host lets go of it on a
//! driver reset and parks with it for a pause.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;

use super::*;
use crate::event_loop::{HostedWorker, WorkerHost};

/// A thread that runs the workers it is given as the network stack does: whenever the
/// worker's descriptor is readable. Counts the workers it dropped.
struct TestHost {
    host: WorkerHost,
    dropped: Arc<AtomicUsize>,
}

impl TestHost {
    fn start() -> TestHost {
        let (tx, rx) = channel::<HostedWorker>();
        let dropped = Arc::new(AtomicUsize::new(0));
        let counter = dropped.clone();
        std::thread::spawn(move || serve(rx, &counter));
        let tx = std::sync::Mutex::new(tx);
        TestHost {
            host: WorkerHost::new(move |w| {
                tx.lock()
                    .unwrap()
                    .send(w)
                    .map_err(|_| std::io::Error::other("host gone"))
            }),
            dropped,
        }
    }
}

fn serve(rx: Receiver<HostedWorker>, dropped: &AtomicUsize) {
    let mut worker: Option<HostedWorker> = None;
    loop {
        match rx.try_recv() {
            Ok(w) => worker = Some(w),
            Err(std::sync::mpsc::TryRecvError::Disconnected) if worker.is_none() => return,
            Err(_) => {}
        }
        let Some(w) = worker.as_mut() else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let mut fd = libc::pollfd {
            fd: w.ready_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut fd, 1, 5) };
        if !w.run() {
            // Counted before the drop that lets the device's stop return.
            dropped.fetch_add(1, Ordering::SeqCst);
            worker = None;
        }
    }
}

fn hosted_setup(host: &TestHost, features: u64) -> Setup {
    let (net, sock) = device_with(
        features & CSUM_FEATURES != 0,
        false,
        Some(host.host.clone()),
    );
    let metrics = net.metrics();
    Setup {
        d: NetDriver::new(net, features),
        host: sock,
        metrics,
    }
}

#[test]
fn a_hosted_worker_moves_frames_both_ways() {
    let host = TestHost::start();
    let mut s = hosted_setup(&host, BASE_FEATURES);
    s.d.post_rx(4, MRG_BUF);
    for (i, len) in [60usize, 1514, MAX_FRAME_LEN].into_iter().enumerate() {
        let frame = ethernet_frame(len, i as u8);
        s.d.send(&NetHeader::default(), &frame);
        assert_eq!(host_recv(&s.host), frame, "TX frame of {len} bytes");
    }
    let frame = host_send(&s.host, 1514, 3);
    assert_eq!(s.d.recv().frame, frame);
    assert_eq!(counter(&s.metrics.tx_frames), 3);
    assert_eq!(counter(&s.metrics.rx_frames), 1);
}

#[test]
fn a_driver_reset_makes_the_host_drop_the_worker_and_the_next_one_serves() {
    let host = TestHost::start();
    let mut s = hosted_setup(&host, BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    s.d.driver().write_reg(VIRTIO_MMIO_STATUS, 0);
    // Stopping waited for the host to let go.
    assert_eq!(host.dropped.load(Ordering::SeqCst), 1);
    let early = host_send(&s.host, 80, 9);
    s.d.reinit(BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    assert_eq!(s.d.recv().frame, early);
    let frame = ethernet_frame(64, 2);
    s.d.send(&NetHeader::default(), &frame);
    assert_eq!(host_recv(&s.host), frame);
}

#[test]
fn a_paused_hosted_worker_moves_nothing_until_resumed() {
    let host = TestHost::start();
    let mut s = hosted_setup(&host, BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    s.d.driver().transport().pause().unwrap();
    let frame = host_send(&s.host, 60, 4);
    assert!(
        s.d.recv_timeout(Duration::from_millis(200)).is_none(),
        "a paused worker delivered a frame"
    );
    s.d.driver().transport().resume();
    assert_eq!(s.d.recv().frame, frame);
}
