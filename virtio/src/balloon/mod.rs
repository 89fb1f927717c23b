//! virtio-balloon (device ID 5), for one purpose: free page reporting. The guest tells the
//! host which of its pages are free (`VIRTIO_BALLOON_F_REPORTING`), and the host drops its
//! copy of them, so a sandbox that allocated memory and freed it again stops costing the host
//! that memory. Without it, every page a guest ever touched stays resident on the host until
//! the sandbox ends.
//!
//! The guest's driver (Linux `virtio_balloon` with `CONFIG_PAGE_REPORTING`) hands over free
//! blocks of `page_reporting.page_reporting_order` pages about two seconds after they were
//! freed; the device `madvise(MADV_DONTNEED)`s them, which for guest RAM (a private mapping)
//! frees the host pages at once. A page the guest uses again is a fresh zero page (or, in a
//! fork, the snapshot's page), which is all a free page may be.
//!
//! The host never asks the guest to inflate (`num_pages` stays 0): memory is returned when the
//! guest frees it, not taken back. The inflate and deflate queues still work as the
//! specification says, since the driver always sets them up: inflated pages are dropped like
//! reported ones, deflates need nothing.
//!
//! Layout, as in every device folder: [`device`] (the device on the base), [`defs`] (the
//! specification's numbers), `worker.rs` (its event handler), [`seccomp`] (its allowlist),
//! `tests.rs` (device tests through the driver harness).

pub mod defs;
pub mod device;
pub mod seccomp;
mod worker;

#[cfg(test)]
mod tests;

pub use device::{Balloon, BalloonBackend};
pub use worker::BalloonStats;
