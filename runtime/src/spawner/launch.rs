//! Starting the spawn service from the runtime.

use std::os::fd::{FromRawFd, OwnedFd};

use msbvm_protocol::spawn::SPAWN_PORT;
use msbvm_sdk::spec::RootSpec;

use super::SpawnerArgs;

/// Starts the spawn service for the sandbox `args` describes, if its creator granted
/// spawning: binds `vsock.sock_1026` in `dir` and hands the listener and the read end of a
/// lifeline pipe (whose write end this process keeps until it exits) to `msbvm __spawner`.
/// Called before the runtime confines itself (it starts a program).
pub fn launch(args: &msbvm_sdk::RuntimeArgs, dir: &msbvm_sdk::SandboxDir) -> msbvm_sdk::Result<()> {
    use msbvm_sdk::Error;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::process::CommandExt;
    let Some(grant) = args.spec.spawn.clone() else {
        return Ok(());
    };
    let path = dir.vsock_port_socket(SPAWN_PORT);
    let listener = crate::bind(&path)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io("creating the spawn service's lifeline")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptors nobody else owns.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The secrets children may be given, in a sealed memory file of their own (the
    // service never sees the others).
    let mut granted = Vec::new();
    for name in &grant.secrets {
        match args.secrets.iter().find(|s| s.name() == name) {
            Some(secret) => granted.push(secret.clone()),
            None => {
                return Err(Error::InvalidConfig(format!(
                    "--allow-spawn secret={name}: {} has no secret named {name}",
                    args.name
                )))
            }
        }
    }
    let secrets = if granted.is_empty() {
        None
    } else {
        Some(msbvm_sdk::secrets::to_memfd(&granted)?)
    };
    let parent_image = match &args.spec.root {
        RootSpec::Image { reference } => Some(reference.clone()),
        _ => None,
    };
    let spawner_args = SpawnerArgs {
        parent: args.name.clone(),
        home: args.home.clone(),
        grant,
        parent_image,
        listen_fd: listener.as_raw_fd(),
        lifeline_fd: read_end.as_raw_fd(),
        secrets_fd: secrets.as_ref().map(|fd| fd.as_raw_fd()),
    };
    let exe = std::env::current_exe().map_err(Error::io("finding the msbvm binary"))?;
    let mut inherited = vec![listener.as_raw_fd(), read_end.as_raw_fd()];
    inherited.extend(secrets.as_ref().map(|fd| fd.as_raw_fd()));
    let mut command = std::process::Command::new(&exe);
    command
        .arg("__spawner")
        .args(spawner_args.to_args())
        .env(msbvm_sdk::paths::HOME_ENV, &args.home)
        .env(msbvm_sdk::BIN_ENV, &exe)
        .stdin(std::process::Stdio::null());
    // SAFETY: only fcntl and sigprocmask, both async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The runtime blocks the signals it waits for; the service starts with none
            // blocked, as any program.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(Error::io("starting the spawn service"))?;
    // The service holds its own copies now; the write end stays open while this process
    // lives (it closes when the runtime exits, however it exits).
    let _ = write_end.into_raw_fd();
    tracing::info!(
        "spawn service started for {} children",
        args.spec.spawn.as_ref().map_or(0, |g| g.max_children)
    );
    Ok(())
}
