//! Taking a fork's identity after the guest was restored from a snapshot.
//!
//! Every fork of a snapshot wakes up with the same memory: the same
//! hostname, the same kernel RNG state (so the same "random" bytes next) and
//! a wall clock that stopped when the snapshot was taken. The host sends each
//! fork a [`ForkIdentity`] before it reports the fork ready; applying it here
//! makes the forks differ before any of their programs runs again.
//!
//! Guest kernels have no VMGenID device in msbvm (it is an ACPI device and
//! msbvm's machine has no ACPI), so the reseed is driven from here: fresh
//! host bytes credited with `RNDADDENTROPY`, then `RNDRESEEDCRNG`, which
//! makes the kernel's CRNG (and every per-CPU and vDSO state derived from it)
//! start over from the new pool.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use msbvm_protocol::{ForkIdentity, MAX_FORK_ENTROPY};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Longest hostname the kernel takes (`__NEW_UTS_LEN`).
const MAX_HOSTNAME: usize = 64;

/// Checks `identity` (it comes from the host, but the agent checks what it
/// applies) and applies it to the whole guest: hostname, RNG, wall clock.
pub fn take(identity: &ForkIdentity) -> io::Result<()> {
    check(identity)?;
    super::system::set_hostname(&identity.hostname)?;
    reseed(&identity.entropy)?;
    set_wall_clock(identity.unix_time_ns)
}

/// Refuses an identity the kernel would reject or that could not be meant.
pub fn check(identity: &ForkIdentity) -> io::Result<()> {
    let bad = |why: String| Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    let name = identity.hostname.as_bytes();
    if name.is_empty() || name.len() > MAX_HOSTNAME || name.contains(&0) {
        return bad(format!(
            "hostname of {} bytes: expected 1 to {MAX_HOSTNAME} without NUL",
            name.len()
        ));
    }
    if identity.entropy.len() < 32 || identity.entropy.len() > MAX_FORK_ENTROPY {
        return bad(format!(
            "{} entropy bytes: expected 32 to {MAX_FORK_ENTROPY}",
            identity.entropy.len()
        ));
    }
    if identity.unix_time_ns == 0 {
        return bad("a wall clock of zero".into());
    }
    Ok(())
}

/// Credits `entropy` to the kernel's pool and forces a reseed of its CRNG.
fn reseed(entropy: &[u8]) -> io::Result<()> {
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + entropy.len());
    let bits = i32::try_from(entropy.len() * 8).unwrap_or(i32::MAX);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&(entropy.len() as i32).to_ne_bytes());
    info.extend_from_slice(entropy);
    // Padding to a whole `__u32` word; the kernel reads `buf_size` bytes only.
    info.resize(info.len().next_multiple_of(4), 0);
    // SAFETY: `info` is a rand_pool_info of `buf_size` bytes of data, alive for the call.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `CLOCK_REALTIME` to the host's time.
fn set_wall_clock(unix_time_ns: u64) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec for the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ForkIdentity {
        ForkIdentity {
            hostname: "fork-1".into(),
            entropy: vec![7; 64],
            unix_time_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn checks_refuse_what_the_kernel_would_not_take() {
        check(&identity()).unwrap();
        for bad in [
            ForkIdentity {
                hostname: String::new(),
                ..identity()
            },
            ForkIdentity {
                hostname: "x".repeat(65),
                ..identity()
            },
            ForkIdentity {
                hostname: "a\0b".into(),
                ..identity()
            },
            ForkIdentity {
                entropy: vec![1; 8],
                ..identity()
            },
            ForkIdentity {
                entropy: vec![1; MAX_FORK_ENTROPY + 1],
                ..identity()
            },
            ForkIdentity {
                unix_time_ns: 0,
                ..identity()
            },
        ] {
            assert_eq!(
                check(&bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }
}
