//! The vsock device thread: one epoll loop over the three queue eventfds, the
//! stop eventfd, the listener and every connection's socket.
//!
//! TX chains are parsed ([`parse_tx`]) and handed to the muxer, then returned
//! to the guest. RX buffers are filled only while the muxer has something to
//! send; a buffer nothing could use goes back to the avail ring
//! (`go_to_previous_position`), so the guest's RX buffers are never burned
//! without a packet in them. When the guest has no RX buffers, work waits in
//! the muxer (bounded) until the next RX kick.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::defs::PKT_HEADER_SIZE;
use super::packet::{parse_tx, rx_writer};
use super::unix::muxer::{Muxer, LISTENER_TOKEN};
use crate::{GuestMemoryMmap, Interrupt};

const STOP_TOKEN: u64 = LISTENER_TOKEN + 1;
const RXQ_TOKEN: u64 = LISTENER_TOKEN + 2;
const TXQ_TOKEN: u64 = LISTENER_TOKEN + 3;
const EVQ_TOKEN: u64 = LISTENER_TOKEN + 4;

/// Everything the device thread owns.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    ev_evt: EventFd,
    /// Held so the event queue stays configured; we never send events.
    _evq: Queue,
    /// Kept open because it is registered in the epoll set.
    _stop: EventFd,
    muxer: Muxer,
}

impl Worker {
    /// Registers the eventfds with the muxer's epoll set. `queues` are
    /// (queue, eventfd) for rx, tx and event, in that order.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: [(Queue, EventFd); 3],
        stop: EventFd,
        muxer: Muxer,
    ) -> io::Result<Self> {
        let [(rxq, rx_evt), (txq, tx_evt), (evq, ev_evt)] = queues;
        for (fd, token) in [
            (&stop, STOP_TOKEN),
            (&rx_evt, RXQ_TOKEN),
            (&tx_evt, TXQ_TOKEN),
            (&ev_evt, EVQ_TOKEN),
        ] {
            use std::os::unix::io::AsRawFd;
            muxer.epoll().ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(Self {
            mem,
            interrupt,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            ev_evt,
            _evq: evq,
            _stop: stop,
            muxer,
        })
    }

    /// Runs until the stop eventfd fires (or epoll itself fails).
    pub fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        // Kicks that arrived before we started are in the eventfd counters
        // and will be reported; process anything already queued as well.
        self.process_tx();
        self.process_rx();
        loop {
            let timeout = self.muxer.poll_timeout_ms();
            let n = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("vsock: epoll_wait failed, device stops: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP_TOKEN => return,
                    RXQ_TOKEN => {
                        let _ = self.rx_evt.read();
                        self.process_rx();
                    }
                    TXQ_TOKEN => {
                        let _ = self.tx_evt.read();
                        self.process_tx();
                    }
                    EVQ_TOKEN => {
                        // The guest gave us event buffers; nothing to send.
                        let _ = self.ev_evt.read();
                    }
                    token => self.muxer.handle_event(token, ev.event_set()),
                }
            }
            self.muxer.sweep(Instant::now());
            self.process_rx();
        }
    }

    /// Consumes every available TX chain.
    fn process_tx(&mut self) {
        let mut used = false;
        while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            match parse_tx(&self.mem, chain) {
                Ok((hdr, mut data)) => self.muxer.send_pkt(&hdr, &mut data),
                Err(e) => debug!("vsock: dropping TX chain {head}: {e}"),
            }
            if let Err(e) = self.txq.add_used(&self.mem, head, 0) {
                // Only a bogus head index or used ring gets here: the guest's doing.
                debug!("vsock: cannot return TX chain {head}: {e}");
            }
            used = true;
        }
        if used {
            self.notify_guest(true);
        }
        // Answers (RESPONSE, RST, credit) may be waiting for RX buffers.
        self.process_rx();
    }

    /// Fills RX buffers while the muxer has something to send.
    fn process_rx(&mut self) {
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = self.rxq.pop_descriptor_chain(&self.mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match rx_writer(&self.mem, chain) {
                Ok(mut writer) => match self.muxer.recv_pkt(&mut writer) {
                    Some(len) => len,
                    None if writer.available_bytes() <= PKT_HEADER_SIZE => {
                        // Only data is pending and this buffer has no room
                        // for any; hand it back empty rather than let it
                        // block the ring head forever.
                        debug!("vsock: RX buffer {head} too small for data");
                        0
                    }
                    None => {
                        // Nothing to put in it after all: leave the buffer
                        // to the guest for next time.
                        self.rxq.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    debug!("vsock: returning unusable RX chain {head}: {e}");
                    0
                }
            };
            if let Err(e) = self.rxq.add_used(&self.mem, head, len) {
                debug!("vsock: cannot return RX chain {head}: {e}");
            }
            used = true;
        }
        if used {
            self.notify_guest(false);
        }
    }

    fn notify_guest(&mut self, tx: bool) {
        let q = if tx { &mut self.txq } else { &mut self.rxq };
        match q.needs_notification(&self.mem) {
            Ok(false) => {}
            // When in doubt, interrupt: a spurious one is harmless.
            Ok(true) | Err(_) => self.interrupt.signal_used_queue(),
        }
    }
}
