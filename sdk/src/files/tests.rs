//! The SDK's file operations against the guest agent's real file handlers, served on the
//! host behind the vsock device's `CONNECT` handshake, on temporary directories. A scripted
//! fake agent plays a hostile guest.

use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::Duration;

use msbvm_guest_agent::agent::files::serve;
use msbvm_protocol::framing::{FrameReader, FrameWriter};
use msbvm_protocol::PROTOCOL_VERSION;
use tempfile::TempDir;

use super::*;
use crate::test_support::FakeAgent;

/// Serves file requests at `<dir>/vsock.sock` with the agent's handlers, each connection
/// on its own thread, until the test process ends.
fn agent(dir: &Path) -> PathBuf {
    let socket = dir.join("vsock.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            std::thread::spawn(move || {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while stream.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 1024");
                stream.write_all(b"OK 1073741824\n").unwrap();
                let out = FrameWriter::new(stream.try_clone().unwrap());
                let mut input = FrameReader::new(stream);
                let mut next = || match input.read_message::<HostMessage>().unwrap() {
                    Some(m) => m,
                    None => panic!("unexpected end of stream"),
                };
                assert!(matches!(next(), HostMessage::Hello { .. }));
                out.send(&GuestMessage::Hello {
                    version: PROTOCOL_VERSION,
                    agent_version: "test".into(),
                })
                .unwrap();
                let HostMessage::File(request) = next() else {
                    panic!("expected a file request")
                };
                let _ = serve(request, &mut input, &out);
            });
        }
    });
    socket
}

fn s(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

/// `e` is a file error of kind `kind`.
#[track_caller]
fn assert_kind(e: &Error, kind: FileErrorKind) {
    assert_eq!(e.file_error_kind(), Some(kind), "{e}");
}

#[tokio::test]
async fn files_roundtrip_through_write_read_and_stream() {
    let tmp = TempDir::new().unwrap();
    let uds = agent(tmp.path());
    let f = tmp.path().join("f");
    let data: Vec<u8> = (0..5 * MAX_CHUNK_LEN + 3)
        .map(|i| (i % 251) as u8)
        .collect();
    write_from(
        &uds,
        &s(&f),
        &data[..],
        WriteOptions::default(),
        &AgentLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        read_all(&uds, &s(&f), &AgentLimits::default())
            .await
            .unwrap(),
        data
    );

    let mut reader = read_stream(&uds, &s(&f), &AgentLimits::default())
        .await
        .unwrap();
    assert_eq!(reader.stat().size, data.len() as u64);
    let mut got = Vec::new();
    reader.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);

    let options = WriteOptions {
        mode: Some(0o600),
        create_parents: true,
        append: false,
    };
    let deep = tmp.path().join("a/b/c");
    write_from(&uds, &s(&deep), &b"x"[..], options, &AgentLimits::default())
        .await
        .unwrap();
    let st = stat_path(&uds, &s(&deep), true, &AgentLimits::default())
        .await
        .unwrap();
    assert_eq!((st.kind, st.mode, st.size), (FileKind::File, 0o600, 1));
    let append = WriteOptions {
        append: true,
        ..WriteOptions::default()
    };
    write_from(&uds, &s(&deep), &b"yz"[..], append, &AgentLimits::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&deep).unwrap(), b"xyz");
}

#[tokio::test]
async fn guest_failures_are_typed_errors() {
    let tmp = TempDir::new().unwrap();
    let uds = agent(tmp.path());
    let e = read_all(
        &uds,
        &s(&tmp.path().join("missing")),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert_kind(&e, FileErrorKind::NotFound);
    assert!(e.to_string().contains("missing"), "{e}");
    let e = read_stream(&uds, &s(tmp.path()), &AgentLimits::default())
        .await
        .unwrap_err();
    assert_kind(&e, FileErrorKind::IsADirectory);
    // Refused before any data is sent.
    let e = write_from(
        &uds,
        &s(tmp.path()),
        &b"x"[..],
        WriteOptions::default(),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert_kind(&e, FileErrorKind::IsADirectory);
    let e = list(&uds, "/definitely/not/here", &AgentLimits::default())
        .await
        .unwrap_err();
    assert_kind(&e, FileErrorKind::NotFound);
}

/// A source that yields some data, then fails.
struct Failing(usize);

impl AsyncRead for Failing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.0 == 0 {
            return Poll::Ready(Err(std::io::Error::other("source broke")));
        }
        self.0 -= 1;
        buf.put_slice(&[1u8; 1000]);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_failed_upload_leaves_the_old_file() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let uds = agent(tmp.path());
    let f = dir.join("f");
    std::fs::write(&f, b"old").unwrap();
    let e = write_from(
        &uds,
        &s(&f),
        Failing(3),
        WriteOptions::default(),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("source broke"), "{e}");
    // The agent sees the connection end and removes its temporary file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&dir).unwrap().count() > 1 {
        assert!(std::time::Instant::now() < deadline, "temporary file left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read(&f).unwrap(), b"old");
}

#[tokio::test]
async fn directories_list_stat_create_rename_remove() {
    let tmp = TempDir::new().unwrap();
    let uds = agent(tmp.path());
    let d = tmp.path().join("x/y");
    let make = |parents| FileRequest::Mkdir {
        path: s(&d),
        parents,
        mode: None,
    };
    refused_without_the_flag(&uds, make, FileErrorKind::NotFound).await;
    std::fs::write(d.join("b"), b"bb").unwrap();
    symlink("b", d.join("a")).unwrap();
    let entries = list(&uds, &s(&d), &AgentLimits::default()).await.unwrap();
    let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(entries[0].stat.symlink_target.as_deref(), Some("b"));
    assert_eq!(
        stat_path(&uds, &s(&d.join("a")), false, &AgentLimits::default())
            .await
            .unwrap()
            .kind,
        FileKind::Symlink
    );
    assert_eq!(
        stat_path(&uds, &s(&d.join("a")), true, &AgentLimits::default())
            .await
            .unwrap()
            .size,
        2
    );
    let rename = FileRequest::Rename {
        from: s(&d.join("b")),
        to: s(&d.join("c")),
    };
    simple(&uds, rename, &AgentLimits::default()).await.unwrap();
    assert_eq!(std::fs::read(d.join("c")).unwrap(), b"bb");
    let remove = |recursive| FileRequest::Remove {
        path: s(&tmp.path().join("x")),
        recursive,
    };
    refused_without_the_flag(&uds, remove, FileErrorKind::DirectoryNotEmpty).await;
    assert!(!tmp.path().join("x").exists());
}

/// `request(false)` fails with `kind`; `request(true)` (the flag that allows it) succeeds.
async fn refused_without_the_flag(
    uds: &Path,
    request: impl Fn(bool) -> FileRequest,
    kind: FileErrorKind,
) {
    let e = simple(uds, request(false), &AgentLimits::default())
        .await
        .unwrap_err();
    assert_eq!(e.file_error_kind(), Some(kind));
    simple(uds, request(true), &AgentLimits::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn trees_and_files_copy_in_and_out() {
    let guest = TempDir::new().unwrap();
    let host = TempDir::new().unwrap();
    let uds = agent(guest.path());
    let tree = host.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/big"), vec![3u8; 3 * MAX_CHUNK_LEN]).unwrap();
    symlink("sub/big", tree.join("ln")).unwrap();

    let in_guest = guest.path().join("copied");
    copy_in(&uds, &tree, &s(&in_guest), &AgentLimits::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(in_guest.join("sub/big")).unwrap().len(),
        3 * MAX_CHUNK_LEN
    );
    assert_eq!(
        std::fs::read_link(in_guest.join("ln")).unwrap(),
        Path::new("sub/big")
    );

    let back = host.path().join("back");
    copy_out(&uds, &s(&in_guest), &back, &AgentLimits::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(back.join("sub/big")).unwrap(),
        vec![3u8; 3 * MAX_CHUNK_LEN]
    );
    assert_eq!(
        std::fs::read_link(back.join("ln")).unwrap(),
        Path::new("sub/big")
    );

    // A single file, renamed on the way.
    copy_out(
        &uds,
        &s(&in_guest.join("sub/big")),
        &host.path().join("one"),
        &AgentLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(host.path().join("one")).unwrap().len(),
        3 * MAX_CHUNK_LEN as u64
    );

    let e = copy_out(
        &uds,
        &s(&guest.path().join("none")),
        &host.path().join("x"),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert_kind(&e, FileErrorKind::NotFound);
    let e = copy_in(
        &uds,
        &host.path().join("none"),
        &s(&in_guest),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(split_guest_path("/").is_err());
    assert_eq!(
        split_guest_path("/a/b/").unwrap(),
        ("/a".into(), "b".into())
    );
    assert_eq!(split_guest_path("/a").unwrap(), ("/".into(), "a".into()));
}

#[tokio::test]
async fn a_hostile_archive_from_the_guest_is_refused() {
    let tmp = TempDir::new().unwrap();
    let host = tmp.path().join("host");
    std::fs::create_dir(&host).unwrap();
    let mut header = tar::Header::new_gnu();
    let name = b"root/../../escaped";
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_size(1);
    header.set_mode(0o644);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), 1, move |session| {
        session.hello();
        assert!(matches!(
            session.recv(),
            Some(HostMessage::File(FileRequest::ArchiveOut { .. }))
        ));
        session.send(&GuestMessage::FileChunk(tar.clone()));
        session.send(&GuestMessage::FileEnd);
    });
    let e = copy_out(
        &tmp.path().join("vsock.sock"),
        "/root",
        &host.join("out"),
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains(".."), "{e}");
    assert!(!tmp.path().join("escaped").exists());
    assert!(!host.join("escaped").exists());
    fake.join();
}
