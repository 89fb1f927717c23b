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
//!
//! Each fork also gets a MAC address of its own, and its own secret
//! placeholders and interception CA (see [`super::trust::take_interception`]).
//!
//! A fork may run on fewer vCPUs than its snapshot's machine has: the machine
//! keeps them all (they are part of the saved state) and the agent takes the
//! extra ones offline, so they idle in the guest's offline loop and the
//! scheduler never uses them.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use msbvm_protocol::{ForkIdentity, MAX_FORK_ENTROPY};

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// Longest hostname the kernel takes (`__NEW_UTS_LEN`).
const MAX_HOSTNAME: usize = 64;
/// Where the kernel shows its CPUs.
const CPU_DIR: &str = "/sys/devices/system/cpu";
/// The largest CA certificate taken (a P-256 CA is under 1 KiB of PEM).
const MAX_CA_PEM: usize = 64 * 1024;
/// The most secrets a fork takes.
const MAX_SECRETS: usize = 256;
/// The longest secret name or placeholder taken.
const MAX_SECRET_TEXT: usize = 256;

/// Checks `identity` (it comes from the host, but the agent checks what it
/// applies) and applies it to the whole guest: online vCPUs, hostname, RNG,
/// wall clock.
pub fn take(identity: &ForkIdentity) -> io::Result<()> {
    check(identity)?;
    set_online_cpus(Path::new(CPU_DIR), identity.online_cpus)?;
    super::system::set_hostname(&identity.hostname)?;
    reseed(&identity.entropy)?;
    set_wall_clock(identity.unix_time_ns)?;
    if let Some(mac) = identity.mac {
        super::net::set_mac(mac).map_err(io::Error::other)?;
    }
    // The fork's own secrets and CA, as at boot: a problem with the CA is logged, and TLS
    // clients then refuse intercepted hosts, visibly.
    let problems = super::trust::take_interception(
        Path::new("/"),
        identity.tls.as_ref().map(|t| t.ca_cert_pem.as_str()),
        &identity.secret_env,
        None,
    );
    for p in problems {
        agent_log!("the fork's TLS interception CA: {p}");
    }
    Ok(())
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
    if let Some(mac) = identity.mac {
        // Unicast (the group bit clear) and not all zeroes: what the kernel takes.
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return bad(format!("MAC address {mac:02x?} is not a unicast address"));
        }
    }
    if let Some(tls) = &identity.tls {
        if tls.ca_cert_pem.len() > MAX_CA_PEM || !tls.ca_cert_pem.contains("BEGIN CERTIFICATE") {
            return bad(format!(
                "a CA of {} bytes: expected a PEM certificate of at most {MAX_CA_PEM}",
                tls.ca_cert_pem.len()
            ));
        }
    }
    if identity.secret_env.len() > MAX_SECRETS {
        return bad(format!(
            "{} secrets: at most {MAX_SECRETS}",
            identity.secret_env.len()
        ));
    }
    for (name, placeholder) in &identity.secret_env {
        let name_ok =
            !name.is_empty() && name.len() <= MAX_SECRET_TEXT && !name.contains(['=', '\0']);
        if !name_ok || placeholder.len() > MAX_SECRET_TEXT || placeholder.contains('\0') {
            return bad(format!(
                "secret {name:?}: a name (no '=' or NUL) and a placeholder (no NUL) of at most \
                 {MAX_SECRET_TEXT} bytes each"
            ));
        }
    }
    Ok(())
}

/// Leaves the first `online` CPUs of the kernel's CPU directory `dir` online
/// and takes the others offline; 0 brings every CPU online (a snapshot of a
/// fork that ran on fewer may be forked onto all of them).
fn set_online_cpus(dir: &Path, online: u8) -> io::Result<()> {
    let present = std::fs::read_to_string(dir.join("present"))?;
    let count = cpu_count(&present).ok_or_else(|| {
        io::Error::other(format!("cannot read the present CPUs from {present:?}"))
    })?;
    let online = if online == 0 {
        count
    } else {
        usize::from(online)
    };
    if online > count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{online} vCPUs online asked for; the machine has {count}"),
        ));
    }
    // CPU 0 has no switch: it is always online, and `online` is at least 1.
    for cpu in 1..count {
        let switch = dir.join(format!("cpu{cpu}/online"));
        let want = if cpu < online { "1" } else { "0" };
        let now = match std::fs::read_to_string(&switch) {
            Ok(now) => now,
            // A kernel without CPU hot-plug: every CPU is online and stays so.
            Err(e) if e.kind() == io::ErrorKind::NotFound && want == "1" => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::other(format!(
                    "this guest kernel cannot take CPU {cpu} offline (no {})",
                    switch.display()
                )))
            }
            Err(e) => return Err(e),
        };
        if now.trim() != want {
            std::fs::write(&switch, want)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", switch.display())))?;
        }
    }
    Ok(())
}

/// The number of CPUs in a kernel CPU list such as `0-3` or `0,2-5`: the
/// highest one plus one.
fn cpu_count(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1).filter(|&n| n <= 1024)
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
    use msbvm_protocol::boot::GuestTls;

    fn identity() -> ForkIdentity {
        ForkIdentity {
            hostname: "fork-1".into(),
            entropy: vec![7; 64],
            unix_time_ns: 1_700_000_000_000_000_000,
            online_cpus: 0,
            tls: Some(GuestTls {
                ca_cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                    .into(),
            }),
            secret_env: vec![("API_KEY".into(), "msbvm_placeholder_01".into())],
            mac: Some([0x02, 0, 0, 0, 0, 1]),
        }
    }

    /// A CPU directory of `count` CPUs (all online) as the kernel shows it.
    fn cpus(count: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("present"), format!("0-{}\n", count - 1)).unwrap();
        for cpu in 1..count {
            std::fs::create_dir(dir.path().join(format!("cpu{cpu}"))).unwrap();
            std::fs::write(dir.path().join(format!("cpu{cpu}/online")), "1\n").unwrap();
        }
        dir
    }

    fn online(dir: &Path, cpu: usize) -> String {
        std::fs::read_to_string(dir.join(format!("cpu{cpu}/online")))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn extra_cpus_go_offline_and_come_back_for_all() {
        let dir = cpus(4);
        set_online_cpus(dir.path(), 2).unwrap();
        let states: Vec<String> = (1..4).map(|c| online(dir.path(), c)).collect();
        assert_eq!(states, ["1", "0", "0"]);
        set_online_cpus(dir.path(), 0).unwrap();
        let states: Vec<String> = (1..4).map(|c| online(dir.path(), c)).collect();
        assert_eq!(states, ["1", "1", "1"]);
        let e = set_online_cpus(dir.path(), 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // One vCPU: nothing to switch.
        set_online_cpus(cpus(1).path(), 1).unwrap();
        // No hot-plug switches: all online is fine, fewer is an error.
        let fixed = cpus(2);
        std::fs::remove_dir_all(fixed.path().join("cpu1")).unwrap();
        set_online_cpus(fixed.path(), 0).unwrap();
        let e = set_online_cpus(fixed.path(), 1).unwrap_err();
        assert!(e.to_string().contains("cannot take CPU 1 offline"), "{e}");
    }

    #[test]
    fn cpu_lists_count_up_to_the_highest() {
        assert_eq!(cpu_count("0\n"), Some(1));
        assert_eq!(cpu_count("0-3"), Some(4));
        assert_eq!(cpu_count("0,2-5"), Some(6));
        assert_eq!(cpu_count(""), None);
        assert_eq!(cpu_count("0-x"), None);
        assert_eq!(cpu_count("0-99999"), None);
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
            ForkIdentity {
                tls: Some(GuestTls {
                    ca_cert_pem: "not a certificate".into(),
                }),
                ..identity()
            },
            ForkIdentity {
                tls: Some(GuestTls {
                    ca_cert_pem: format!("BEGIN CERTIFICATE{}", "A".repeat(MAX_CA_PEM)),
                }),
                ..identity()
            },
            ForkIdentity {
                mac: Some([0x01, 0, 0, 0, 0, 1]),
                ..identity()
            },
            ForkIdentity {
                mac: Some([0; 6]),
                ..identity()
            },
            ForkIdentity {
                secret_env: vec![("A=B".into(), "p".into())],
                ..identity()
            },
            ForkIdentity {
                secret_env: vec![(String::new(), "p".into())],
                ..identity()
            },
            ForkIdentity {
                secret_env: vec![("A".into(), "p\0".into())],
                ..identity()
            },
            ForkIdentity {
                secret_env: vec![("A".into(), "p".into()); MAX_SECRETS + 1],
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
