//! Saved transport states from a snapshot file into a fresh virtio-mmio transport (with the
//! rng device behind it), over guest memory the input also fills: each is refused with an
//! error or restores a device whose worker then serves whatever the rings hold, and which the
//! driver can read and reset; never a panic, never a hang.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_virtio::rng::Rng;
use msbvm_virtio::test_utils::GuestDriver;
use vm_memory::GuestAddress;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the saved state ends and the guest's operations begin.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * rest.len() / 255).min(rest.len());
    let (state, memory) = rest.split_at(at);
    let mut d = GuestDriver::new(Box::new(Rng::new()));
    // What the rings at the usual places hold (descriptors, avail and used entries).
    d.write_mem(GuestAddress(0x1_0000), memory);
    if d.restore_into(Box::new(Rng::new()), state).is_ok() {
        // The worker served the rings as it started; the guest kicks and reads on, then resets.
        d.kick(0);
        for reg in (0..0x100).step_by(4) {
            let _ = d.read_reg(reg);
        }
        d.write_reg(0x70, 0);
    }
});
