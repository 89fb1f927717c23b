//! Streams between the guest and a child: an exec, whose output goes to the guest as it
//! comes (the guest's reading pace holds the child's process back, through the SDK's bounded
//! buffers) and whose input, EOF and signals come from it (the guest going away kills the
//! process); and the child's events, read at the guest's pace (which, while it reads slowly,
//! slows the child's event writers as any host reader does).

use std::time::Duration;

use msbvm_protocol::spawn::{SpawnRequest, SpawnResponse};
use msbvm_sdk::framing::{write_async, AsyncFrameReader};
use msbvm_sdk::{ExecEvent, ExecOptions, Sandbox};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Runs `argv` in `sandbox`, talking to the guest over `reader`/`write` until it ends.
pub(super) async fn exec(
    sandbox: Sandbox,
    argv: Vec<String>,
    timeout_secs: Option<u64>,
    mut reader: AsyncFrameReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
) -> Result<(), String> {
    let send_err = |e: msbvm_sdk::framing::FrameError| e.to_string();
    if argv.is_empty() {
        let answer = SpawnResponse::Error("no command given".into());
        return write_async(&mut write, &answer).await.map_err(send_err);
    }
    let mut options = ExecOptions::new(argv);
    if let Some(secs) = timeout_secs {
        options = options.timeout(Duration::from_secs(secs));
    }
    let mut stream = match sandbox.exec_stream(options).await {
        Ok(s) => s,
        Err(e) => {
            let answer = SpawnResponse::Error(e.to_string());
            return write_async(&mut write, &answer).await.map_err(send_err);
        }
    };
    write_async(&mut write, &SpawnResponse::Started(stream.pid()))
        .await
        .map_err(send_err)?;
    let control = stream.control();
    let input = async move {
        loop {
            match reader.read_message::<SpawnRequest>().await {
                Ok(Some(SpawnRequest::Stdin(data))) => {
                    for piece in data.chunks(msbvm_protocol::MAX_CHUNK_LEN) {
                        if control.write(piece).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Some(SpawnRequest::CloseStdin)) => {
                    let _ = control.close_stdin().await;
                }
                Ok(Some(SpawnRequest::Signal(n))) => {
                    let _ = control.signal(n).await;
                }
                // Anything else has no meaning during an exec; a bad frame is skipped.
                Ok(Some(_)) => {}
                Err(e) if e.is_recoverable() => {}
                Ok(None) | Err(_) => {
                    // Nobody reads the output any more.
                    let _ = control.signal(libc::SIGKILL).await;
                    return;
                }
            }
        }
    };
    let output = async move {
        loop {
            let message = match stream.next_event().await.map_err(|e| e.to_string())? {
                Some(ExecEvent::Started { .. }) => continue,
                Some(ExecEvent::Stdout(data)) => SpawnResponse::Stdout(data),
                Some(ExecEvent::Stderr(data)) => SpawnResponse::Stderr(data),
                Some(ExecEvent::Exited(status)) => {
                    let exited = SpawnResponse::Exited {
                        code: msbvm_sdk::shell_exit_code(status),
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        truncated: false,
                    };
                    return write_async(&mut write, &exited).await.map_err(send_err);
                }
                None => return Err("the child's agent went away".into()),
            };
            write_async(&mut write, &message).await.map_err(send_err)?;
        }
    };
    tokio::pin!(input, output);
    tokio::select! {
        result = &mut output => result,
        () = &mut input => output.await,
    }
}

/// Streams `sandbox`'s events matching `types` to the guest until the stream ends (the kept
/// ones only, without `follow`) or the guest goes away.
pub(super) async fn events(
    sandbox: Sandbox,
    types: Vec<String>,
    follow: bool,
    mut write: OwnedWriteHalf,
) -> Result<(), String> {
    let send_err = |e: msbvm_sdk::framing::FrameError| e.to_string();
    let types: Vec<&str> = types.iter().map(String::as_str).collect();
    let opened = if follow {
        sandbox.events(&types).await
    } else {
        sandbox.pending_events(&types).await
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(e) => {
            let answer = SpawnResponse::Error(e.to_string());
            return write_async(&mut write, &answer).await.map_err(send_err);
        }
    };
    while let Some(event) = stream.next().await {
        let answer = match event {
            Ok(e) => SpawnResponse::Event(e.to_json().to_string()),
            Err(e) => SpawnResponse::Error(e.to_string()),
        };
        write_async(&mut write, &answer).await.map_err(send_err)?;
    }
    write_async(&mut write, &SpawnResponse::Done)
        .await
        .map_err(send_err)
}
