//! `msbvm-agent`: the guest's PID 1 that serves the host over vsock.
//!
//! Everything lives in the library ([`msbvm_guest_agent::agent`]) so the
//! connection handling can be tested on the host without a VM.

fn main() {
    msbvm_guest_agent::agent::run()
}
