//! The exec client against a fake agent over a Unix socket.

use super::*;
use crate::test_support::{FakeAgent, Session};
use msbvm_protocol::{ExecRequest, GuestMessage as G, HostMessage as H};
use tempfile::TempDir;

fn base_env() -> Vec<(String, String)> {
    vec![("SANDBOX".into(), "1".into()), ("PATH".into(), "/p".into())]
}

async fn start(tmp: &TempDir, opts: ExecOptions) -> Result<ExecStream> {
    let request = opts.to_request(&base_env())?;
    ExecStream::start(
        &tmp.path().join("vsock.sock"),
        request,
        &AgentLimits::default(),
    )
    .await
}

/// A fake agent in a new directory that takes the hello and one exec request, then plays
/// `script` with the request.
fn exec_agent(
    script: impl Fn(&mut Session, ExecRequest) + Send + Sync + 'static,
) -> (TempDir, FakeAgent) {
    let tmp = TempDir::new().unwrap();
    let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), 1, move |s| {
        s.hello();
        let request = s.expect_exec();
        script(s, request);
    });
    (tmp, fake)
}

#[tokio::test]
async fn collects_output_and_exit_code_with_merged_env() {
    let (tmp, fake) = exec_agent(|s, r| {
        assert_eq!(r.argv, ["sh", "-c", "x"]);
        assert_eq!(r.cwd.as_deref(), Some("/tmp"));
        assert_eq!(r.uid, Some(7));
        let get = |k: &str| r.env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("PATH").as_deref(),
            Some("/p"),
            "sandbox env overrides defaults"
        );
        assert_eq!(
            get("SANDBOX").as_deref(),
            Some("2"),
            "call env overrides sandbox env"
        );
        assert_eq!(get("HOME").as_deref(), Some("/root"));
        assert_eq!(get("TERM"), None, "no TERM without a tty");
        assert_eq!(r.env.iter().filter(|(k, _)| k == "SANDBOX").count(), 1);
        s.send(&G::Started { pid: 42 });
        s.send(&G::Stdout(b"hello ".to_vec()));
        s.send(&G::Stderr(b"warn".to_vec()));
        s.send(&G::Stdout(b"world".to_vec()));
        s.send(&G::Exited(ExitStatus::Code(3)));
    });
    let opts = ExecOptions::new(["sh", "-c", "x"])
        .cwd("/tmp")
        .uid(7)
        .env("SANDBOX", "2");
    let stream = start(&tmp, opts).await.unwrap();
    assert_eq!(stream.pid(), 42);
    let out = stream.collect().await.unwrap();
    assert_eq!(out.stdout_str(), "hello world");
    assert_eq!(out.stderr_str(), "warn");
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.exit_code(), 3);
    assert!(!out.success());
    fake.join();
}

#[tokio::test]
async fn events_come_in_order_starting_with_started() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Pong); // ignored
        s.send(&G::Started { pid: 5 });
        s.send_raw(&[2, 0, 0, 0, 0xff, 0xff]); // malformed: skipped
        s.send(&G::Stdout(b"a".to_vec()));
        s.send(&G::Exited(ExitStatus::Signal(9)));
    });
    let mut stream = start(&tmp, ExecOptions::new(["x"])).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = stream.next_event().await.unwrap() {
        events.push(e);
    }
    assert_eq!(
        events,
        [
            ExecEvent::Started { pid: 5 },
            ExecEvent::Stdout(b"a".to_vec()),
            ExecEvent::Exited(ExitStatus::Signal(9)),
        ]
    );
    assert_eq!(shell_exit_code(ExitStatus::Signal(9)), 137);
    fake.join();
}

#[tokio::test]
async fn start_failure_is_an_agent_error() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Error {
            message: "nope: command not found".into(),
        });
    });
    let e = start(&tmp, ExecOptions::new(["nope"])).await.unwrap_err();
    assert!(
        matches!(&e, Error::Agent(m) if m.contains("not found")),
        "{e}"
    );
    fake.join();
}

#[tokio::test]
async fn a_plugin_denial_is_its_own_error() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Denied {
            reason: "rm -rf / is not allowed".into(),
        });
    });
    let e = start(&tmp, ExecOptions::new(["rm", "-rf", "/"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Denied(r) if r == "rm -rf / is not allowed"),
        "{e}"
    );
    assert_eq!(e.to_string(), "denied by a plugin: rm -rf / is not allowed");
    fake.join();
}

#[tokio::test]
async fn empty_argv_is_refused_before_connecting() {
    let tmp = TempDir::new().unwrap();
    let e = start(&tmp, ExecOptions::default()).await.unwrap_err();
    assert!(e.to_string().contains("no command"), "{e}");
}

#[tokio::test]
async fn stdin_is_chunked_and_closed() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Started { pid: 1 });
        // Echo stdin back, like `cat`, counting chunks.
        let mut chunks = 0;
        loop {
            match s.recv() {
                Some(H::Stdin(d)) => {
                    assert!(d.len() <= MAX_CHUNK_LEN);
                    chunks += 1;
                    s.send(&G::Stdout(d));
                }
                Some(H::CloseStdin) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(chunks, 3);
        s.send(&G::Exited(ExitStatus::Code(0)));
    });
    let stream = start(&tmp, ExecOptions::new(["cat"])).await.unwrap();
    let control = stream.control();
    let data: Vec<u8> = (0..2 * MAX_CHUNK_LEN + 10).map(|i| i as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        control.write(&data).await.unwrap();
        control.close_stdin().await.unwrap();
        control.close_stdin().await.unwrap(); // idempotent
        assert!(control.write(b"late").await.is_err());
    });
    let out = stream.collect().await.unwrap();
    writer.await.unwrap();
    assert_eq!(out.stdout, expected);
    assert!(out.success());
    fake.join();
}

#[tokio::test]
async fn signal_and_resize_reach_the_agent() {
    let (tmp, fake) = exec_agent(|s, r| {
        assert_eq!(r.tty, Some(TtySize { rows: 24, cols: 80 }));
        assert!(r.env.contains(&("TERM".into(), "xterm".into())));
        s.send(&G::Started { pid: 1 });
        assert_eq!(
            s.recv(),
            Some(H::Resize(TtySize {
                rows: 50,
                cols: 132
            }))
        );
        s.send(&G::Stdout(b"resized".to_vec()));
        assert_eq!(s.recv(), Some(H::Signal(libc::SIGINT)));
        s.send(&G::Exited(ExitStatus::Signal(libc::SIGINT)));
    });
    let mut stream = start(&tmp, ExecOptions::new(["sh"]).tty(24, 80))
        .await
        .unwrap();
    assert_eq!(
        stream.next_event().await.unwrap(),
        Some(ExecEvent::Started { pid: 1 })
    );
    stream.resize(50, 132).await.unwrap();
    assert_eq!(
        stream.next_event().await.unwrap(),
        Some(ExecEvent::Stdout(b"resized".to_vec()))
    );
    stream.signal(libc::SIGINT).await.unwrap();
    assert_eq!(
        stream.next_event().await.unwrap(),
        Some(ExecEvent::Exited(ExitStatus::Signal(libc::SIGINT)))
    );
    assert_eq!(stream.next_event().await.unwrap(), None);
    fake.join();
}

#[tokio::test]
async fn agent_timeout_is_reported_as_timed_out() {
    let (tmp, fake) = exec_agent(|s, r| {
        assert_eq!(r.timeout_ms, Some(1500));
        s.send(&G::Started { pid: 1 });
        s.send(&G::Exited(ExitStatus::TimedOut));
    });
    let opts = ExecOptions::new(["sleep", "9"]).timeout(Duration::from_millis(1500));
    let out = start(&tmp, opts).await.unwrap().collect().await.unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    assert_eq!(out.exit_code(), 124);
    fake.join();
}

#[tokio::test]
async fn silent_agent_after_timeout_hits_the_backstop() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Started { pid: 1 });
        // Never reports the exit; the SDK gives up and sends SIGKILL.
        assert_eq!(s.recv(), Some(H::Signal(libc::SIGKILL)));
    });
    let began = std::time::Instant::now();
    let opts = ExecOptions::new(["hang"]).timeout(Duration::from_millis(100));
    let out = start(&tmp, opts).await.unwrap().collect().await.unwrap();
    assert_eq!(out.status, ExitStatus::TimedOut);
    let took = began.elapsed();
    assert!(
        took >= TIMEOUT_GRACE && took < TIMEOUT_GRACE * 3,
        "{took:?}"
    );
    fake.join();
}

#[tokio::test]
async fn connection_lost_before_exit_is_an_error() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Started { pid: 1 });
        s.send(&G::Stdout(b"partial".to_vec()));
    });
    let e = start(&tmp, ExecOptions::new(["x"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConnectionLost), "{e}");
    fake.join();
}

#[tokio::test]
async fn version_mismatch_is_typed() {
    let tmp = TempDir::new().unwrap();
    let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), 1, |s| s.hello_with(99));
    let e = start(&tmp, ExecOptions::new(["x"])).await.unwrap_err();
    assert!(
        matches!(e, Error::ProtocolMismatch { theirs: 99, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("99"), "{e}");
    fake.join();
}

#[tokio::test]
async fn no_sandbox_socket_says_so() {
    let tmp = TempDir::new().unwrap();
    let e = start(&tmp, ExecOptions::new(["x"])).await.unwrap_err();
    assert!(e.to_string().contains("is the sandbox running"), "{e}");
}

#[test]
fn timeout_becomes_milliseconds() {
    let r: ExecRequest = ExecOptions::new(["x"])
        .timeout(Duration::from_secs(2))
        .gid(3)
        .to_request(&[])
        .unwrap();
    assert_eq!(r.timeout_ms, Some(2000));
    assert_eq!(r.gid, Some(3));
    assert_eq!(r.env[0], ("PATH".into(), DEFAULT_PATH.into()));
}

async fn start_with(tmp: &TempDir, limits: AgentLimits) -> Result<ExecStream> {
    let request = ExecOptions::new(["x"]).to_request(&base_env())?;
    ExecStream::start(&tmp.path().join("vsock.sock"), request, &limits).await
}

/// Before the fix, each skipped message restarted the wait for `Started`: an agent that
/// never stops sending the wrong thing hung the caller for ever.
#[tokio::test]
async fn messages_that_never_start_the_process_end_the_start() {
    for garbage in [true, false] {
        let tmp = TempDir::new().unwrap();
        let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), 1, move |s| {
            s.hello();
            s.expect_exec();
            loop {
                let sent = if garbage {
                    // A frame that does not decode.
                    s.try_send_raw(&[3, 0, 0, 0, 0xff, 0xff, 0xff])
                } else {
                    s.try_send(&G::Pong)
                };
                if sent.is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let began = std::time::Instant::now();
        let e = tokio::time::timeout(
            Duration::from_secs(20),
            start_with(&tmp, AgentLimits::default()),
        )
        .await
        .expect("the start hung")
        .unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
        assert!(e.to_string().contains("do not belong"), "{e}");
        assert!(began.elapsed() < Duration::from_secs(5));
        fake.join();
    }
}

#[tokio::test]
async fn a_slow_trickle_before_started_hits_one_reply_timeout() {
    let (tmp, fake) = exec_agent(|s, _| {
        // Fewer messages than the skip limit, each inside the reply timeout.
        for _ in 0..10 {
            if s.try_send(&G::Pong).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let limits = AgentLimits {
        reply_timeout: Duration::from_millis(300),
        ..AgentLimits::default()
    };
    let began = std::time::Instant::now();
    let e = start_with(&tmp, limits).await.unwrap_err();
    assert!(matches!(e, Error::AgentTimeout { .. }), "{e}");
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );
    fake.join();
}

#[tokio::test]
async fn collected_output_is_capped_and_the_process_killed() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Started { pid: 7 });
        let chunk = vec![b'y'; MAX_CHUNK_LEN];
        let mut sent = 0u64;
        while sent < 256 << 20 && s.try_send(&G::Stdout(chunk.clone())).is_ok() {
            sent += chunk.len() as u64;
        }
        assert!(sent < 16 << 20, "the SDK took {sent} bytes");
    });
    let limits = AgentLimits {
        max_exec_output: 1 << 20,
        ..AgentLimits::default()
    };
    let e = start_with(&tmp, limits)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                setting: "max_exec_output",
                limit: 1048576,
                ..
            }
        ),
        "{e}"
    );
    fake.join();
}

/// The reply timeout is for the protocol, not for the process: a command that prints
/// nothing for longer than it still runs to its end.
#[tokio::test]
async fn a_quiet_process_outlives_the_reply_timeout() {
    let (tmp, fake) = exec_agent(|s, _| {
        s.send(&G::Started { pid: 7 });
        std::thread::sleep(Duration::from_millis(600));
        s.send(&G::Exited(ExitStatus::Code(0)));
    });
    let limits = AgentLimits {
        reply_timeout: Duration::from_millis(100),
        operation_timeout: Some(Duration::from_millis(200)),
        ..AgentLimits::default()
    };
    let out = start_with(&tmp, limits)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(out.success());
    fake.join();
}
