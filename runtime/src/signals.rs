//! How the runtime learns it should stop: termination signals (taken synchronously by a
//! `sigwait` thread, so no handler runs in the middle of the VMM's work), the creator's death
//! (end-of-file on the inherited lifeline pipe, with `PR_SET_PDEATHSIG` as a backstop) and
//! file-descriptor hygiene for what was inherited.

use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc::Sender;

use super::Event;

/// The signal the kernel sends when the creator dies (PR_SET_PDEATHSIG). A dedicated one,
/// because PDEATHSIG also fires when merely the creator's *thread* that spawned us exits:
/// the runtime then checks whether its parent really changed before stopping.
pub const PARENT_DEATH_SIGNAL: i32 = libc::SIGUSR1;

/// The signals the runtime handles.
const HANDLED: [i32; 4] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    PARENT_DEATH_SIGNAL,
];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread; threads created afterwards inherit the
/// mask, so only the `sigwait` thread ever takes them. Call before creating any thread.
pub fn block() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts the thread that turns handled signals into [`Event::Signal`].
pub fn spawn_waiter(events: Sender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("msbvm-signals".into())
        .spawn(move || {
            super::confine::thread_started("signals");
            let set = handled_set();
            loop {
                let mut signal = 0;
                // SAFETY: valid set and out-pointer.
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc != 0 {
                    continue;
                }
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .map(|_| ())
}

/// Asks the kernel for [`PARENT_DEATH_SIGNAL`] when the creator dies, and checks it is still
/// alive (it may have died before the request took effect).
pub fn watch_parent(parent_pid: u32) -> io::Result<bool> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL as libc::c_ulong) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(parent_alive(parent_pid))
}

/// Whether our parent is still `parent_pid` (after its death we are reparented).
pub fn parent_alive(parent_pid: u32) -> bool {
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() };
    u32::try_from(ppid).is_ok_and(|p| p == parent_pid)
}

/// Starts the thread that reports [`Event::LifelineClosed`] once every copy of the lifeline
/// pipe's write end is closed (the creator exited or dropped its sandbox handle).
pub fn spawn_lifeline_watch(fd: RawFd, events: Sender<Event>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("msbvm-lifeline".into())
        .spawn(move || {
            super::confine::thread_started("lifeline");
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reading into a local buffer from an fd this process owns.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n > 0 {
                    continue; // The creator never writes; ignore anything that arrives.
                }
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let _ = events.send(Event::LifelineClosed);
                return;
            }
        })
        .map(|_| ())
}

/// Marks an inherited descriptor close-on-exec, so programs the runtime starts (busybox, the
/// kernel build) do not hold the creator's pipes open.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an integer descriptor.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
