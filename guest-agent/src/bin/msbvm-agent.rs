//! `msbvm-agent`: the guest's PID 1 that serves the host over vsock.
//!
//! Everything lives in the library ([`msbvm_guest_agent::agent`]) so the
//! connection handling can be tested on the host without a VM. Run as
//! `msbvm` (the agent puts itself at `/run/msbvm/bin/msbvm`), the same
//! binary is the in-guest command instead ([`msbvm_guest_agent::guest_cli`]),
//! which never takes on PID 1's duties.

use std::path::Path;

fn main() {
    let argv0 = std::env::args_os().next();
    let name = argv0.as_deref().map(Path::new).and_then(Path::file_name);
    if name.is_some_and(|n| n == msbvm_guest_agent::agent::run_dir::COMMAND) {
        std::process::exit(msbvm_guest_agent::guest_cli::main());
    }
    msbvm_guest_agent::agent::run()
}
