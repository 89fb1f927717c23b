//! The spawn service: the process that creates a sandbox's children ([`msbvm_sdk::spawn`]).
//!
//! The runtime starts it before confining itself (`msbvm __spawner`), only for a sandbox
//! whose creator granted spawning, and hands it the listening socket of host vsock port
//! [`SPAWN_PORT`] and the read end of a lifeline pipe. It is an SDK client like any other
//! program: each child is a sibling sandbox attached to this process, named `PARENT.CHILD`.
//! Everything it reads comes from the guest: names are checked, the grant is enforced under
//! one lock (children, CPUs, memory, images), data and output sizes are bounded, and at most
//! [`MAX_CONNECTIONS`] guest connections are served at once. When the runtime ends (the
//! lifeline reaches end-of-file) it removes every child and exits; were it killed instead,
//! the children would still end with it, as attached sandboxes do.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::spawn::{SpawnRequest, SpawnResponse};
use msbvm_protocol::PROTOCOL_VERSION;
use msbvm_sdk::framing::{write_async, AsyncFrameReader};
use msbvm_sdk::spawn::SpawnGrant;
use msbvm_sdk::spec::DEFAULT_IMAGE;
use tokio::net::{UnixListener, UnixStream};

/// Guest connections served at once; more are closed.
pub const MAX_CONNECTIONS: usize = 16;

/// What the runtime tells the service.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnerArgs {
    /// The parent sandbox's name.
    pub parent: String,
    /// The msbvm data directory.
    pub home: PathBuf,
    /// What the parent may create.
    pub grant: SpawnGrant,
    /// The parent's own image (children may use it).
    pub parent_image: Option<String>,
    /// The inherited listening socket.
    pub listen_fd: RawFd,
    /// The inherited lifeline pipe (read end).
    pub lifeline_fd: RawFd,
    /// The inherited memory file holding the parent's secrets the grant names
    /// ([`msbvm_sdk::secrets::to_memfd`]); never their values on argv.
    pub secrets_fd: Option<RawFd>,
}

impl SpawnerArgs {
    /// The arguments after `__spawner`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![
            "--parent".into(),
            self.parent.clone().into(),
            "--home".into(),
            self.home.clone().into(),
            "--grant".into(),
            serde_json::to_string(&self.grant)
                .unwrap_or_default()
                .into(),
            "--listen-fd".into(),
            self.listen_fd.to_string().into(),
            "--lifeline-fd".into(),
            self.lifeline_fd.to_string().into(),
        ];
        if let Some(image) = &self.parent_image {
            out.push("--parent-image".into());
            out.push(image.clone().into());
        }
        if let Some(fd) = self.secrets_fd {
            out.push("--secrets-fd".into());
            out.push(fd.to_string().into());
        }
        out
    }

    /// Parses [`SpawnerArgs::to_args`]'s output.
    pub fn parse(args: Vec<OsString>) -> Result<SpawnerArgs, String> {
        let mut it = args.into_iter().map(|a| a.to_string_lossy().into_owned());
        let (mut parent, mut home, mut grant, mut listen, mut lifeline, mut image) =
            (None, None, None, None, None, None);
        let mut secrets_fd = None;
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--parent" => parent = Some(value),
                "--home" => home = Some(PathBuf::from(value)),
                "--grant" => {
                    grant = Some(serde_json::from_str(&value).map_err(|e| format!("--grant: {e}"))?)
                }
                "--listen-fd" => listen = value.parse().ok(),
                "--lifeline-fd" => lifeline = value.parse().ok(),
                "--parent-image" => image = Some(value),
                "--secrets-fd" => {
                    secrets_fd = Some(value.parse().map_err(|_| "--secrets-fd: not a number")?)
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(SpawnerArgs {
            parent: parent.ok_or("--parent is missing")?,
            home: home.ok_or("--home is missing")?,
            grant: grant.ok_or("--grant is missing")?,
            parent_image: image,
            listen_fd: listen.ok_or("--listen-fd is missing")?,
            lifeline_fd: lifeline.ok_or("--lifeline-fd is missing")?,
            secrets_fd,
        })
    }
}

mod family;
mod launch;
mod stream;

pub use launch::launch;

use family::Family;

/// Runs the service (`msbvm __spawner ARGS`) until the runtime ends.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args = match SpawnerArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("msbvm spawner: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: the runtime handed over these descriptors for this process alone.
    let (listen, lifeline) = unsafe {
        (
            OwnedFd::from_raw_fd(args.listen_fd),
            OwnedFd::from_raw_fd(args.lifeline_fd),
        )
    };
    // One thread: the service waits on children and guests, it does not compute; and its
    // futures hold SDK handles across awaits, which local tasks need not make `Send`.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msbvm spawner: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let mut images = vec![DEFAULT_IMAGE.to_string()];
    images.extend(args.parent_image.clone());
    images.extend(args.grant.images.iter().cloned());
    let secrets = match args.secrets_fd.map(msbvm_sdk::secrets::read_from_fd) {
        None => Vec::new(),
        Some(Ok(secrets)) => secrets,
        Some(Err(e)) => {
            eprintln!("msbvm spawner: reading the granted secrets: {e}");
            return ExitCode::from(1);
        }
    };
    let family = Arc::new(
        Family::new(args.parent.clone(), args.grant.clone(), images).with_secrets(secrets),
    );
    tokio::task::LocalSet::new().block_on(&runtime, serve(listen, lifeline, family));
    runtime.shutdown_timeout(Duration::from_secs(5));
    ExitCode::SUCCESS
}

async fn serve(listen: OwnedFd, lifeline: OwnedFd, family: Arc<Family>) {
    let listener = std::os::unix::net::UnixListener::from(listen);
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("msbvm spawner: cannot listen: {e}");
            return;
        }
    };
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::from(lifeline);
        let _ = std::io::Read::read(&mut pipe, &mut [0u8; 1]);
        let _ = ended_tx.send(());
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut ended => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    // Dropping the stream closes it: the guest sees the refusal.
                    continue;
                };
                let family = Arc::clone(&family);
                tokio::task::spawn_local(async move {
                    if let Err(e) = converse(stream, &family).await {
                        eprintln!("msbvm spawner: a guest connection ended: {e}");
                    }
                    drop(permit);
                });
            }
        }
    }
    family.remove_all().await;
}

async fn converse(stream: UnixStream, family: &Family) -> Result<(), String> {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncFrameReader::new(read);
    let mut greeted = false;
    loop {
        let request = match reader.read_message::<SpawnRequest>().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                let answer = SpawnResponse::Error(format!("malformed request: {e}"));
                write_async(&mut write, &answer)
                    .await
                    .map_err(|e| e.to_string())?;
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let answer = match request {
            SpawnRequest::Hello { version } => {
                greeted = version == PROTOCOL_VERSION;
                if greeted {
                    SpawnResponse::Hello {
                        version: PROTOCOL_VERSION,
                    }
                } else {
                    SpawnResponse::Error(format!(
                        "protocol version mismatch: the host speaks {PROTOCOL_VERSION}, this msbvm {version}"
                    ))
                }
            }
            _ if !greeted => SpawnResponse::Error("the first request must be a hello".into()),
            SpawnRequest::ExecStream {
                name,
                argv,
                timeout_secs,
            } => match family.running(&name).await {
                // The connection is the exec's from here to its end.
                Ok(sandbox) => {
                    return stream::exec(sandbox, argv, timeout_secs, reader, write).await
                }
                Err(e) => SpawnResponse::Error(e),
            },
            SpawnRequest::Events {
                name,
                types,
                follow,
            } => match family.running(&name).await {
                Ok(sandbox) => return stream::events(sandbox, types, follow, write).await,
                Err(e) => SpawnResponse::Error(e),
            },
            request => family
                .handle(request)
                .await
                .unwrap_or_else(SpawnResponse::Error),
        };
        write_async(&mut write, &answer)
            .await
            .map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_roundtrip() {
        let args = SpawnerArgs {
            parent: "p".into(),
            home: "/tmp/h".into(),
            grant: SpawnGrant::children(2).image("x:1"),
            parent_image: Some("img".into()),
            listen_fd: 5,
            lifeline_fd: 6,
            secrets_fd: Some(7),
        };
        assert_eq!(SpawnerArgs::parse(args.to_args()).unwrap(), args);
        assert!(SpawnerArgs::parse(vec!["--parent".into()]).is_err());
    }

    #[tokio::test]
    async fn requests_before_hello_and_garbage_get_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = Family::new(
            "p".into(),
            SpawnGrant::children(1),
            vec![DEFAULT_IMAGE.into()],
        );
        let server = converse(b, &f);
        let client = async move {
            let (read, mut write) = a.into_split();
            let mut reader = AsyncFrameReader::new(read);
            write_async(&mut write, &SpawnRequest::List).await.unwrap();
            assert!(matches!(
                reader.read_message::<SpawnResponse>().await.unwrap(),
                Some(SpawnResponse::Error(_))
            ));
            use tokio::io::AsyncWriteExt;
            write.write_all(&[2, 0, 0, 0, 0xff, 0xff]).await.unwrap();
            assert!(matches!(
                reader.read_message::<SpawnResponse>().await.unwrap(),
                Some(SpawnResponse::Error(_))
            ));
            write_async(
                &mut write,
                &SpawnRequest::Hello {
                    version: PROTOCOL_VERSION,
                },
            )
            .await
            .unwrap();
            assert!(matches!(
                reader.read_message::<SpawnResponse>().await.unwrap(),
                Some(SpawnResponse::Hello { .. })
            ));
            write_async(&mut write, &SpawnRequest::List).await.unwrap();
            assert_eq!(
                reader.read_message::<SpawnResponse>().await.unwrap(),
                Some(SpawnResponse::Children(Vec::new()))
            );
            let exec = SpawnRequest::Exec {
                name: "nobody".into(),
                argv: vec!["true".into()],
                stdin: Vec::new(),
                timeout_secs: None,
            };
            write_async(&mut write, &exec).await.unwrap();
            match reader.read_message::<SpawnResponse>().await.unwrap() {
                Some(SpawnResponse::Error(e)) => assert!(e.contains("no child named"), "{e}"),
                other => panic!("{other:?}"),
            }
            drop(write);
        };
        let (served, ()) = tokio::join!(server, client);
        served.unwrap();
    }
}
