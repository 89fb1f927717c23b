//! The vsock device's [`EventHandler`]: the base's event loop waits on the
//! muxer's epoll set, which holds the listener and every connection's socket
//! besides the three queue eventfds and the stop eventfd.
//!
//! TX chains are parsed ([`parse_tx`]) and handed to the muxer, then returned
//! to the guest. RX buffers are filled only while the muxer has something to
//! send; a buffer nothing could use goes back to the avail ring
//! (`go_to_previous_position`), so the guest's RX buffers are never burned
//! without a packet in them. When the guest has no RX buffers, work waits in
//! the muxer (bounded) until the next RX kick.

use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;

use super::defs::{EVENT_TRANSPORT_RESET, EVQ_INDEX, PKT_HEADER_SIZE};
use super::packet::{parse_tx, rx_writer};
use super::unix::muxer::Muxer;
use crate::base::signal_used;
use crate::event_loop::EventHandler;
use crate::{GuestMemoryMmap, Interrupt};

/// The TX queue's index (RX is 0, the event queue 2).
const TXQ: usize = 1;

/// Everything the device thread owns.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    rxq: Queue,
    txq: Queue,
    /// Where the transport reset of a restored device goes.
    evq: Queue,
    /// A transport reset waits for an event buffer.
    reset_pending: bool,
    muxer: Muxer,
}

impl EventHandler for Worker {
    fn started(&mut self, queues: usize) {
        // The reset goes first: what the queues hold still belongs to the
        // connections it ends.
        self.send_transport_reset();
        for index in (0..queues).rev() {
            self.queue_notified(index);
        }
    }

    fn queue_notified(&mut self, index: usize) {
        // New RX buffers need nothing here: `after_events` fills them after
        // every wake-up. Event buffers are only used for a pending reset.
        match index {
            TXQ => self.process_tx(),
            EVQ_INDEX => self.send_transport_reset(),
            _ => {}
        }
    }

    fn fd_ready(&mut self, token: u64, events: EventSet) {
        self.muxer.handle_event(token, events);
    }

    fn after_events(&mut self) {
        self.muxer.sweep(Instant::now());
        self.process_rx();
    }

    fn timeout_ms(&self) -> i32 {
        self.muxer.poll_timeout_ms()
    }
}

impl Worker {
    /// The worker for the rx, tx and event queues, in that order; the
    /// muxer's epoll set is the one the event loop waits on.
    /// With `reset`, the guest is first told that every connection is gone
    /// (a device restored from a snapshot: its connections stayed behind).
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: [Queue; 3],
        muxer: Muxer,
        reset: bool,
    ) -> Self {
        let [rxq, txq, evq] = queues;
        Self {
            mem,
            interrupt,
            rxq,
            txq,
            evq,
            reset_pending: reset,
            muxer,
        }
    }

    /// Puts a pending transport reset into the next event buffer, if the
    /// driver offered one (otherwise it waits for the next event-queue kick).
    fn send_transport_reset(&mut self) {
        if !self.reset_pending {
            return;
        }
        while let Some(chain) = self.evq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = chain
                .into_iter()
                .find(|d| d.is_write_only() && d.len() >= 4)
                .and_then(|d| {
                    self.mem
                        .write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr())
                        .ok()
                })
                .is_some();
            if let Err(e) = self
                .evq
                .add_used(&self.mem, head, if written { 4 } else { 0 })
            {
                debug!("vsock: cannot return event chain {head}: {e}");
            }
            if written {
                self.reset_pending = false;
                signal_used(&mut self.evq, &self.mem, &self.interrupt);
                return;
            }
            debug!("vsock: event buffer {head} cannot hold an event");
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
        signal_used(q, &self.mem, &self.interrupt);
    }
}
