//! A hostile guest process for the stress suite: opens up to N vsock connections to the host
//! (CID 2) on one port, keeps every one it gets open for a while, and reports the counts.
//!
//! Built by the test itself with plain `rustc` (std only, static), so it needs no crate and no
//! tool in the guest image: `vsock_flood <count> <port> <hold-seconds>`. It prints
//! `holding connected=<n> failed=<n>` once it has tried them all, then sleeps, then exits 0.

use std::io::Write;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const HOST_CID: u32 = 2;
const RLIMIT_NOFILE: i32 = 7;

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

#[repr(C)]
struct Rlimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
}

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (count, port, hold) = (arg(1, 2000), arg(2, 1025) as u32, arg(3, 20));
    let limit = Rlimit {
        cur: count + 64,
        max: count + 64,
    };
    // SAFETY: plain system calls with valid pointers to local values.
    unsafe { setrlimit(RLIMIT_NOFILE, &limit) };
    let (mut connected, mut failed) = (Vec::new(), 0u64);
    for _ in 0..count {
        // SAFETY: as above; the fd is kept (and closed at exit).
        let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) };
        if fd < 0 {
            failed += 1;
            continue;
        }
        let addr = SockaddrVm {
            family: AF_VSOCK as u16,
            reserved1: 0,
            port,
            cid: HOST_CID,
            flags: 0,
            zero: [0; 3],
        };
        let len = std::mem::size_of::<SockaddrVm>() as u32;
        // SAFETY: as above.
        if unsafe { connect(fd, &addr, len) } == 0 {
            connected.push(fd);
        } else {
            failed += 1;
        }
    }
    println!("holding connected={} failed={failed}", connected.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(std::time::Duration::from_secs(hold));
}
