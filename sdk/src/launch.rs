//! Starting a sandbox's runtime process (`msbvm __runtime ...`) and waiting for its
//! readiness report.
//!
//! The runtime inherits two pipes: the write end of the readiness pipe (JSON lines, see
//! [`crate::report`]) and, for attached sandboxes, the read end of a lifeline pipe whose write
//! end only the creator holds, close-on-exec, so that it reaches end-of-file exactly when the
//! creator exits or drops its sandbox handle. A detached runtime gets a session of its own
//! (`setsid`); an attached one a process group of its own, so a Ctrl-C on the creator's
//! terminal reaches the creator, which decides what to do, and not the runtime.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::paths::SandboxDir;
use crate::report::{ReadyInfo, Report};
use crate::runtime_args::RuntimeArgs;
use crate::state::{self, CONSOLE_TAIL_LINES};

/// Environment variable naming the `msbvm` binary that runs sandboxes.
pub const BIN_ENV: &str = "MSBVM_BIN";

/// How long a runtime may take to end after SIGTERM before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// The `msbvm` binary: `$MSBVM_BIN`, else `msbvm` next to the current executable (or one
/// directory up, for test binaries in `target/*/deps`), else on `PATH`.
pub fn runtime_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(Error::RuntimeMissing(format!(
                "{BIN_ENV} is set to {} but no file is there",
                bin.display()
            )))
        };
    }
    let exe = std::env::current_exe().ok();
    let mut candidates = Vec::new();
    if let Some(dir) = exe.as_deref().and_then(|e| e.parent()) {
        candidates.push(dir.join("msbvm"));
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(up) = dir.parent() {
                candidates.push(up.join("msbvm"));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("msbvm")));
    }
    candidates.into_iter().find(|c| c.is_file()).ok_or_else(|| {
        Error::RuntimeMissing(format!(
            "not next to {} and not on PATH",
            exe.map_or_else(|| "this program".into(), |e| e.display().to_string())
        ))
    })
}

/// A started, ready sandbox runtime.
#[derive(Debug)]
pub(crate) struct Launched {
    /// What the runtime reported.
    pub(crate) ready: ReadyInfo,
    /// The creator's end of the lifeline (attached sandboxes).
    pub(crate) lifeline: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(Error::io("creating a pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Starts the runtime `bin` for `args` (descriptors and parent pid are filled in here) and
/// waits for ready; the boot must take at most `ready_timeout` once the VM starts.
pub(crate) async fn launch(
    bin: &std::path::Path,
    mut args: RuntimeArgs,
    dir: &SandboxDir,
    ready_timeout: Duration,
) -> Result<Launched> {
    let (ready_r, ready_w) = pipe()?;
    let lifeline = if args.detached { None } else { Some(pipe()?) };
    args.ready_fd = Some(ready_w.as_raw_fd());
    args.lifeline_fd = lifeline.as_ref().map(|(r, _)| r.as_raw_fd());
    args.parent_pid = (!args.detached).then(std::process::id);
    // The values go in a memory file, never on the command line.
    let secrets = if args.secrets.is_empty() {
        None
    } else {
        Some(crate::secrets::to_memfd(&args.secrets)?)
    };
    args.secrets_fd = secrets.as_ref().map(|fd| fd.as_raw_fd());

    let detached = args.detached;
    // Fixed-size, so the pre-exec hook allocates nothing.
    let inherit: [RawFd; 3] = [
        ready_w.as_raw_fd(),
        args.lifeline_fd.unwrap_or(-1),
        args.secrets_fd.unwrap_or(-1),
    ];
    let mut cmd = Command::new(bin);
    cmd.arg("__runtime")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if detached {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .current_dir("/");
    // SAFETY: the hook runs between fork and exec and only makes async-signal-safe calls
    // (fcntl, setsid, setpgid) on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherit {
                if fd >= 0 && libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let rc = if detached {
                libc::setsid()
            } else {
                libc::setpgid(0, 0)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t0 = std::time::Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(Error::io(format!("starting {}", bin.display())))?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "launch: spawned");
    // Only the runtime may hold these now: end-of-file must mean it is gone.
    drop(ready_w);
    drop(secrets);
    let lifeline = lifeline.map(|(read, write)| {
        drop(read);
        write
    });

    let result = wait_ready(ready_r, &mut child, dir, ready_timeout).await;
    // Reap the runtime whenever it ends, without holding up the caller.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    result.map(|ready| Launched { ready, lifeline })
}

async fn wait_ready(
    ready_r: OwnedFd,
    child: &mut Child,
    dir: &SandboxDir,
    ready_timeout: Duration,
) -> Result<ReadyInfo> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)
        .map_err(Error::io("reading the runtime's readiness pipe"))?;
    let mut lines = BufReader::new(pipe).lines();
    // Preparing the image takes milliseconds; building the kernel minutes, unbounded here.
    let mut deadline = Some(Instant::now() + ready_timeout);
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, lines.next_line()).await {
                Ok(next) => next,
                Err(_) => return Err(timed_out(child, dir, &mut lines, ready_timeout).await),
            },
            None => lines.next_line().await,
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let status = match status {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "status unknown".into(),
                };
                return Err(Error::Runtime {
                    message: format!("the runtime ended ({status}) before the sandbox was ready"),
                    log_tail: state::tail_lines(&dir.runtime_log(), 20),
                });
            }
        };
        match Report::from_line(&line) {
            Ok(Report::BuildingKernel) => {
                tracing::info!("building the guest kernel (first use; this takes minutes)");
                deadline = None;
            }
            Ok(Report::Booting) => deadline = Some(Instant::now() + ready_timeout),
            Ok(Report::Ready(info)) => return Ok(info),
            Ok(Report::Failed(failure)) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let log_tail = state::tail_lines(&dir.runtime_log(), 20);
                return Err(failure.into_error(dir.name(), log_tail));
            }
            Err(e) => tracing::warn!("unreadable report from the runtime: {e}"),
        }
    }
}

/// Ends a runtime that did not become ready and builds the error, with what the runtime
/// found when it stopped the guest: its last report on `lines` (attached runtimes leave no
/// log behind) or else its log.
async fn timed_out<R>(
    child: &mut Child,
    dir: &SandboxDir,
    lines: &mut tokio::io::Lines<R>,
    after: Duration,
) -> Error
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    let console_tail = state::tail_lines(&dir.console_log(), CONSOLE_TAIL_LINES);
    if let Some(pid) = child.id() {
        // SIGTERM: the runtime stops the VM and cleans up after itself.
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let grace = Instant::now() + TERMINATE_GRACE;
    let reported = tokio::time::timeout_at(grace, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(Report::Failed(failure)) = Report::from_line(&line) {
                return Some(failure.message);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    if tokio::time::timeout_at(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
        let _ = state::remove_if_dead(dir);
    }
    let said = reported.unwrap_or_else(|| state::tail_lines(&dir.runtime_log(), WHERE_LINES));
    Error::ReadyTimeout {
        after,
        console_tail,
        where_it_was: where_it_was(&said),
    }
}

/// Runtime-log lines read for what the runtime said of a guest stopped before
/// it was ready (a line per vCPU, then a kernel log of up to 40 lines).
const WHERE_LINES: usize = 80;

/// The part of `log_tail` from the runtime's first line about where a guest
/// stopped before it was ready had got to; empty when there is none.
fn where_it_was(log_tail: &str) -> String {
    log_tail
        .find(crate::report::STOPPED_BEFORE_READY)
        .map(|at| log_tail[log_tail[..at].rfind('\n').map_or(0, |n| n + 1)..].to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::EnvGuard;
    use tempfile::TempDir;

    #[test]
    fn msbvm_bin_override_must_exist() {
        let tmp = TempDir::new().unwrap();
        let bin = tmp.path().join("msbvm");
        std::fs::write(&bin, b"").unwrap();
        {
            let _env = EnvGuard::set(&[(BIN_ENV, Some(&bin))]);
            assert_eq!(runtime_binary().unwrap(), bin);
        }
        let _env = EnvGuard::set(&[(BIN_ENV, Some(tmp.path().join("nope")))]);
        let e = runtime_binary().unwrap_err();
        assert!(e.to_string().contains(BIN_ENV), "{e}");
    }

    /// A stand-in runtime (a shell script) drives the readiness protocol.
    async fn launch_script(body: &str, timeout: Duration) -> (Result<Launched>, TempDir) {
        launch_script_with(body, timeout, Vec::new()).await
    }

    async fn launch_script_with(
        body: &str,
        timeout: Duration,
        secrets: Vec<crate::secrets::Secret>,
    ) -> (Result<Launched>, TempDir) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = TempDir::new().unwrap();
        let bin = tmp.path().join("msbvm");
        // The ready pipe's fd follows --ready-fd; find it among the arguments.
        let script = format!(
            "#!/bin/bash\necho \"$@\" > \"$(dirname \"$0\")/argv\"\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --ready-fd ] && fd=$2; \
             [ \"$1\" = --secrets-fd ] && sfd=$2; shift; done\n{body}\n"
        );
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = SandboxDir::in_home(tmp.path(), "box").unwrap();
        let args = RuntimeArgs {
            name: "box".into(),
            home: tmp.path().into(),
            cpus: 1,
            memory_mib: 256,
            env: vec![],
            detached: false,
            ready_fd: None,
            lifeline_fd: None,
            parent_pid: None,
            spec: Default::default(),
            secrets,
            secrets_fd: None,
        };
        (launch(&bin, args, &dir, timeout).await, tmp)
    }

    #[tokio::test]
    async fn ready_report_is_returned_with_a_lifeline() {
        let ready = r#"{"type":"ready","pid":7,"boot":{"agent_start_ns":1,"ready_ns":2},"ready_after_ms":3.0,"vm_start_ms":1.0}"#;
        let body = format!(
            "eval \"exec 9>&$fd\"; echo '{{\"type\":\"booting\"}}' >&9; echo '{ready}' >&9"
        );
        let (result, _tmp) = launch_script(&body, Duration::from_secs(10)).await;
        let launched = result.unwrap();
        assert_eq!(launched.ready.pid, 7);
        assert_eq!(launched.ready.boot.ready_ns, 2);
        assert!(launched.lifeline.is_some());
    }

    #[tokio::test]
    async fn secrets_arrive_in_the_inherited_memfd_not_in_argv() {
        const VALUE: &str = "sk-VIA-MEMFD-2b7e";
        let secrets =
            vec![crate::secrets::Secret::new("API_KEY", VALUE).allow_host("a.example.com")];
        // A memfd reopened through /proc reads from its start.
        let body = "cat /proc/self/fd/$sfd > \"$(dirname \"$0\")/payload\"; exit 3";
        let (result, tmp) =
            launch_script_with(body, Duration::from_secs(10), secrets.clone()).await;
        assert!(result.is_err());
        let argv = std::fs::read_to_string(tmp.path().join("argv")).unwrap();
        assert!(
            argv.contains("--secrets-fd") && !argv.contains(VALUE),
            "{argv}"
        );
        let payload = std::fs::read(tmp.path().join("payload")).unwrap();
        assert_eq!(crate::secrets::decode(&payload).unwrap(), secrets);
    }

    #[tokio::test]
    async fn failure_report_becomes_the_typed_error() {
        let failed = r#"{"type":"failed","kind":"guest_died","message":"the guest kernel panicked","console_tail":"Kernel panic"}"#;
        let body = format!("eval \"exec 9>&$fd\"; echo '{failed}' >&9");
        let (result, _tmp) = launch_script(&body, Duration::from_secs(10)).await;
        let e = result.unwrap_err();
        assert!(
            matches!(&e, Error::GuestDied { console_tail, .. } if console_tail == "Kernel panic"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn silent_exit_is_a_runtime_error() {
        let (result, _tmp) = launch_script("exit 3", Duration::from_secs(10)).await;
        let e = result.unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[test]
    fn where_it_was_quotes_from_the_first_description_line() {
        let log = "INFO runtime starting\nINFO signal received\n\
                   WARN stopped before ready: vCPU 0 (runnable)\n\
                   WARN stopped before ready; guest kernel log:\nRun /init\nERROR failed";
        assert_eq!(
            where_it_was(log),
            "WARN stopped before ready: vCPU 0 (runnable)\n\
             WARN stopped before ready; guest kernel log:\nRun /init\nERROR failed"
        );
        assert_eq!(where_it_was("INFO nothing said\nERROR failed"), "");
    }

    #[tokio::test]
    async fn no_ready_in_time_times_out_and_terminates() {
        let began = std::time::Instant::now();
        let body = "eval \"exec 9>&$fd\"; echo '{\"type\":\"booting\"}' >&9; exec sleep 30";
        let (result, _tmp) = launch_script(body, Duration::from_millis(300)).await;
        let e = result.unwrap_err();
        assert!(matches!(e, Error::ReadyTimeout { .. }), "{e}");
        // SIGTERM ended the stand-in at once rather than after its 30 s.
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{:?}",
            began.elapsed()
        );
    }

    #[tokio::test]
    async fn a_timed_out_runtime_says_where_its_guest_was() {
        let failed = Report::Failed(crate::report::Failure {
            kind: crate::report::FailureKind::Other,
            message: "the sandbox was stopped before it became ready\n\
                      stopped before ready: vCPU 0 (runnable) at RIP 0xffffffff81000000\n\
                      stopped before ready; guest kernel log (read from guest memory):\n\
                      Linux version 6.12"
                .into(),
            console_tail: String::new(),
        })
        .to_line();
        // The stand-in answers SIGTERM as the runtime does: a failure report, then exit.
        let body = format!(
            "eval \"exec 9>&$fd\"; echo '{{\"type\":\"booting\"}}' >&9; \
             said() {{ printf '%s\\n' '{}' >&9; exit 1; }}; trap said TERM; sleep 30 & wait",
            failed.trim_end()
        );
        let (result, _tmp) = launch_script(&body, Duration::from_millis(300)).await;
        let e = result.unwrap_err();
        let Error::ReadyTimeout { where_it_was, .. } = &e else {
            panic!("{e}");
        };
        assert_eq!(
            where_it_was,
            "stopped before ready: vCPU 0 (runnable) at RIP 0xffffffff81000000\n\
             stopped before ready; guest kernel log (read from guest memory):\n\
             Linux version 6.12"
        );
    }
}
