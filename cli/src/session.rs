//! Runs one process in a sandbox attached to the local terminal or pipes: output to
//! stdout/stderr, stdin forwarded, signals and window-size changes passed on.
//!
//! Stdin is forwarded with `-t`, or when it is not a terminal (`echo x | msbvm exec box --
//! cat`); a terminal without `-t` gets end-of-file at once, as with `docker exec` without `-i`.
//! Without `-t`, SIGINT/SIGTERM/SIGHUP/SIGQUIT to msbvm are forwarded to the guest process;
//! with `-t` the terminal is raw, so Ctrl-C is a byte the guest's terminal turns into SIGINT.

use std::io::{IsTerminal, Read, Write};

use msbvm_sdk::{shell_exit_code, ExecControl, ExecEvent, ExecOptions, Result, Sandbox};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::tty::{self, RawMode};

/// Exit status for a guest status: the code (low 8 bits); 128 + signal; 124 for a timeout.
pub fn exit_status(status: msbvm_sdk::ExitStatus) -> u8 {
    (shell_exit_code(status) & 0xff) as u8
}

/// Runs `opts` in `sandbox` attached to this process's stdio, with a terminal if `tty`.
/// Returns the process's exit status.
pub async fn attach(sandbox: &Sandbox, mut opts: ExecOptions, tty: bool) -> Result<u8> {
    if tty {
        let (rows, cols) = tty::current_size();
        opts.tty = Some(msbvm_sdk::TtySize { rows, cols });
        if let Ok(term) = std::env::var("TERM") {
            opts.env.retain(|(k, _)| k != "TERM");
            opts.env.insert(0, ("TERM".into(), term));
        }
    }
    let mut stream = sandbox.exec_stream(opts).await?;
    let control = stream.control();
    let stdin_is_tty = std::io::stdin().is_terminal();
    // Raw only after the process started, so an error above leaves the terminal alone.
    let raw = if tty && stdin_is_tty {
        RawMode::enable(libc::STDIN_FILENO)
            .map_err(|e| tracing::warn!("cannot put the terminal in raw mode: {e}"))
            .ok()
    } else {
        None
    };
    if tty || !stdin_is_tty {
        forward_stdin(control.clone());
    } else {
        let _ = control.close_stdin().await;
    }
    let mut signals = Signals::new(tty);
    let mut pipe_closed = false;
    let status = loop {
        let output = tokio::select! {
            event = stream.next_event() => match event? {
                Some(ExecEvent::Stdout(data)) => write_all(&mut std::io::stdout(), &data),
                Some(ExecEvent::Stderr(data)) => write_all(&mut std::io::stderr(), &data),
                Some(ExecEvent::Exited(status)) => break exit_status(status),
                Some(ExecEvent::Started { .. }) => Ok(()),
                None => break 0,
            },
            Some(action) = signals.next() => {
                match action {
                    SignalAction::Forward(n) => { let _ = control.signal(n).await; }
                    SignalAction::Resize => {
                        let (rows, cols) = tty::current_size();
                        let _ = control.resize(rows, cols).await;
                    }
                }
                Ok(())
            }
        };
        if let Err(e) = output {
            // Our reader went away (`| head`): the process gets SIGPIPE, as it would if it
            // wrote to the pipe itself, instead of running on unread.
            if e.kind() == std::io::ErrorKind::BrokenPipe && !pipe_closed {
                pipe_closed = true;
                let _ = control.signal(libc::SIGPIPE).await;
            }
        }
    };
    drop(raw);
    Ok(status)
}

fn write_all(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    out.write_all(data).and_then(|()| out.flush())
}

/// Reads local stdin on a plain thread (a blocking read cannot be cancelled, and a thread
/// does not hold up the process's exit) and forwards it; end-of-file closes the guest's stdin.
fn forward_stdin(control: ExecControl) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let spawned = std::thread::Builder::new()
        .name("msbvm-stdin".into())
        .spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot forward stdin: {e}");
    }
    tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            if control.write(&chunk).await.is_err() {
                return;
            }
        }
        let _ = control.close_stdin().await;
    });
}

/// What to do about a signal msbvm received.
enum SignalAction {
    Forward(i32),
    Resize,
}

/// The signals a session handles; any that cannot be registered are simply not handled.
struct Signals {
    forwarded: Vec<(i32, tokio::signal::unix::Signal)>,
    winch: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new(tty: bool) -> Self {
        let forwarded = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT]
            .into_iter()
            .filter_map(|n| signal(SignalKind::from_raw(n)).ok().map(|s| (n, s)))
            .collect();
        let winch = if tty {
            signal(SignalKind::window_change()).ok()
        } else {
            None
        };
        Signals { forwarded, winch }
    }

    async fn next(&mut self) -> Option<SignalAction> {
        use std::future::poll_fn;
        use std::task::Poll;
        poll_fn(|cx| {
            for (n, s) in &mut self.forwarded {
                if let Poll::Ready(Some(())) = s.poll_recv(cx) {
                    return Poll::Ready(Some(SignalAction::Forward(*n)));
                }
            }
            if let Some(w) = &mut self.winch {
                if let Poll::Ready(Some(())) = w.poll_recv(cx) {
                    return Poll::Ready(Some(SignalAction::Resize));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_sdk::ExitStatus;

    #[test]
    fn exit_statuses_map_like_a_shell() {
        assert_eq!(exit_status(ExitStatus::Code(0)), 0);
        assert_eq!(exit_status(ExitStatus::Code(3)), 3);
        assert_eq!(exit_status(ExitStatus::Code(256 + 7)), 7);
        assert_eq!(exit_status(ExitStatus::Signal(9)), 137);
        assert_eq!(exit_status(ExitStatus::TimedOut), 124);
    }
}
