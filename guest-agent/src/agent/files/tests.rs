//! The file handlers on the host, against temporary directories: the
//! host's messages are encoded up front and the agent's answers decoded
//! from what it wrote.

use std::os::unix::fs::symlink;
use std::sync::{Arc, Mutex};

use msbvm_protocol::{encode, FrameDecoder};
use tempfile::TempDir;

use super::*;

/// A writer whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves `request` with the host then sending `upload`; returns the
/// agent's messages and how serving ended.
fn run(
    request: FileRequest,
    upload: &[HostMessage],
) -> (Vec<GuestMessage>, Result<(), ConnectionError>) {
    let mut bytes = Vec::new();
    for m in upload {
        bytes.extend(encode(m).unwrap());
    }
    let mut input = FrameReader::new(&bytes[..]);
    let sink = Sink::default();
    let out = FrameWriter::new(sink.clone());
    let result = serve(request, &mut input, &out);
    let mut d = FrameDecoder::new();
    d.push(&sink.0.lock().unwrap());
    let mut messages = Vec::new();
    while let Some(m) = d.next_message().unwrap() {
        messages.push(m);
    }
    (messages, result)
}

fn p(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

fn file_error(messages: &[GuestMessage]) -> &FileError {
    match messages.last() {
        Some(GuestMessage::FileError(e)) => e,
        other => panic!("expected FileError, got {other:?}"),
    }
}

fn write_request(path: &Path) -> FileRequest {
    FileRequest::WriteFile {
        path: p(path),
        mode: None,
        create_parents: false,
        append: false,
    }
}

fn chunks(data: &[u8]) -> Vec<HostMessage> {
    let mut v: Vec<_> = data
        .chunks(MAX_CHUNK_LEN)
        .map(|c| HostMessage::FileChunk(c.to_vec()))
        .collect();
    v.push(HostMessage::FileEnd);
    v
}

#[test]
fn read_file_streams_meta_then_chunks_then_end() {
    let tmp = TempDir::new().unwrap();
    let data: Vec<u8> = (0..3 * MAX_CHUNK_LEN + 17).map(|i| i as u8).collect();
    fs::write(tmp.path().join("f"), &data).unwrap();
    let (m, result) = run(
        FileRequest::ReadFile {
            path: p(&tmp.path().join("f")),
        },
        &[],
    );
    result.unwrap();
    let GuestMessage::FileMeta(meta) = &m[0] else {
        panic!("{:?}", m[0])
    };
    assert_eq!((meta.kind, meta.size), (FileKind::File, data.len() as u64));
    assert_eq!(m.last(), Some(&GuestMessage::FileEnd));
    let mut got = Vec::new();
    for c in &m[1..m.len() - 1] {
        let GuestMessage::FileChunk(c) = c else {
            panic!("{c:?}")
        };
        assert!(c.len() <= MAX_CHUNK_LEN);
        got.extend_from_slice(c);
    }
    assert_eq!(got, data);
}

#[test]
fn read_file_errors_are_typed() {
    let tmp = TempDir::new().unwrap();
    let (m, _) = run(
        FileRequest::ReadFile {
            path: p(&tmp.path().join("missing")),
        },
        &[],
    );
    let e = file_error(&m);
    assert_eq!(
        (e.kind, e.errno),
        (FileErrorKind::NotFound, Some(libc::ENOENT))
    );
    assert!(e.message.contains("missing"), "{e}");
    let (m, _) = run(
        FileRequest::ReadFile {
            path: p(tmp.path()),
        },
        &[],
    );
    assert_eq!(file_error(&m).kind, FileErrorKind::IsADirectory);
    // A FIFO is refused instead of blocking the connection for a writer.
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(p(&fifo)).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (m, _) = run(FileRequest::ReadFile { path: p(&fifo) }, &[]);
    assert_eq!(file_error(&m).kind, FileErrorKind::InvalidInput);
}

#[test]
fn write_file_replaces_atomically_and_keeps_the_mode() {
    let tmp = TempDir::new().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"old").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o751)).unwrap();
    let data = vec![9u8; 2 * MAX_CHUNK_LEN + 1];
    let (m, result) = run(write_request(&f), &chunks(&data));
    result.unwrap();
    assert_eq!(m, [GuestMessage::FileReady, GuestMessage::FileDone]);
    assert_eq!(fs::read(&f).unwrap(), data);
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o751);
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no temporaries left"
    );
}

#[test]
fn a_broken_upload_leaves_the_old_file_and_no_temporary() {
    let tmp = TempDir::new().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"old").unwrap();
    // The connection ends after one chunk, without FileEnd.
    let (m, result) = run(
        write_request(&f),
        &[HostMessage::FileChunk(b"new".to_vec())],
    );
    assert!(result.is_err());
    assert_eq!(m, [GuestMessage::FileReady]);
    assert_eq!(fs::read(&f).unwrap(), b"old");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    // Something else than data in the upload is refused, same result.
    let (m, _) = run(write_request(&f), &[HostMessage::Ping]);
    assert!(file_error(&m).message.contains("Ping"), "{m:?}");
    assert_eq!(fs::read(&f).unwrap(), b"old");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn write_file_modes_parents_append_and_refusals() {
    let tmp = TempDir::new().unwrap();
    let deep = tmp.path().join("a/b/c");
    let (m, _) = run(write_request(&deep), &chunks(b"x"));
    assert_eq!(file_error(&m).kind, FileErrorKind::NotFound);
    let request = FileRequest::WriteFile {
        path: p(&deep),
        mode: Some(0o700),
        create_parents: true,
        append: false,
    };
    let (m, _) = run(request, &chunks(b"one"));
    assert_eq!(m.last(), Some(&GuestMessage::FileDone));
    assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o7777, 0o700);
    let append = FileRequest::WriteFile {
        path: p(&deep),
        mode: None,
        create_parents: false,
        append: true,
    };
    let (m, _) = run(append, &chunks(b"two"));
    assert_eq!(m.last(), Some(&GuestMessage::FileDone));
    assert_eq!(fs::read(&deep).unwrap(), b"onetwo");
    assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o7777, 0o700);
    // A new file gets 0644 whatever the umask.
    let new = tmp.path().join("new");
    run(write_request(&new), &chunks(b"")).1.unwrap();
    assert_eq!(fs::metadata(&new).unwrap().mode() & 0o7777, 0o644);
    assert_eq!(fs::read(&new).unwrap(), b"");
    // A directory is not replaced by a file.
    let (m, _) = run(write_request(tmp.path()), &chunks(b"x"));
    assert_eq!(file_error(&m).kind, FileErrorKind::IsADirectory);
}

#[test]
fn write_through_a_symlink_writes_its_target() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("real"), b"old").unwrap();
    symlink("real", tmp.path().join("link")).unwrap();
    run(write_request(&tmp.path().join("link")), &chunks(b"new"))
        .1
        .unwrap();
    assert_eq!(fs::read(tmp.path().join("real")).unwrap(), b"new");
    assert!(fs::symlink_metadata(tmp.path().join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn list_dir_sends_every_entry_in_bounded_batches() {
    let tmp = TempDir::new().unwrap();
    let count = 2 * MAX_DIR_ENTRIES_PER_MESSAGE + 5;
    for i in 0..count {
        fs::write(tmp.path().join(format!("f{i}")), b"abc").unwrap();
    }
    fs::create_dir(tmp.path().join("dir")).unwrap();
    symlink("f0", tmp.path().join("ln")).unwrap();
    let (m, result) = run(
        FileRequest::ListDir {
            path: p(tmp.path()),
        },
        &[],
    );
    result.unwrap();
    assert_eq!(m.last(), Some(&GuestMessage::FileEnd));
    let mut entries = Vec::new();
    for b in &m[..m.len() - 1] {
        let GuestMessage::DirEntries(b) = b else {
            panic!("{b:?}")
        };
        assert!(b.len() <= MAX_DIR_ENTRIES_PER_MESSAGE);
        entries.extend(b.iter().cloned());
    }
    assert_eq!(entries.len(), count + 2);
    let find = |n: &str| entries.iter().find(|e| e.name == n).unwrap().stat.clone();
    assert_eq!((find("f7").kind, find("f7").size), (FileKind::File, 3));
    assert_eq!(find("dir").kind, FileKind::Dir);
    assert_eq!(find("ln").symlink_target.as_deref(), Some("f0"));
    let (m, _) = run(
        FileRequest::ListDir {
            path: p(&tmp.path().join("f0")),
        },
        &[],
    );
    assert_eq!(file_error(&m).kind, FileErrorKind::NotADirectory);
}

#[test]
fn stat_mkdir_rename_remove() {
    let tmp = TempDir::new().unwrap();
    let d = tmp.path().join("x/y");
    assert_eq!(
        mkdir(&d, false, None).unwrap_err().kind,
        FileErrorKind::NotFound
    );
    mkdir(&d, true, Some(0o700)).unwrap();
    mkdir(&d, true, None).unwrap();
    assert_eq!(
        mkdir(&d, false, None).unwrap_err().kind,
        FileErrorKind::AlreadyExists
    );
    let s = stat(&d, false).unwrap();
    assert_eq!((s.kind, s.mode), (FileKind::Dir, 0o700));
    fs::write(d.join("f"), b"1").unwrap();
    symlink("f", d.join("l")).unwrap();
    assert_eq!(stat(&d.join("l"), false).unwrap().kind, FileKind::Symlink);
    assert_eq!(stat(&d.join("l"), true).unwrap().kind, FileKind::File);
    rename(&d.join("f"), &d.join("g")).unwrap();
    assert_eq!(
        remove(&tmp.path().join("x"), false).unwrap_err().kind,
        FileErrorKind::DirectoryNotEmpty
    );
    remove(&d.join("g"), false).unwrap();
    remove(&tmp.path().join("x"), true).unwrap();
    assert!(!tmp.path().join("x").exists());
    assert_eq!(
        remove(Path::new("/"), true).unwrap_err().kind,
        FileErrorKind::InvalidInput
    );
    // Through serve: the answers.
    let (m, _) = run(
        FileRequest::Mkdir {
            path: p(&d),
            parents: true,
            mode: None,
        },
        &[],
    );
    assert_eq!(m, [GuestMessage::FileDone]);
    let (m, _) = run(
        FileRequest::Stat {
            path: p(&d),
            follow_symlinks: false,
        },
        &[],
    );
    assert!(matches!(&m[..], [GuestMessage::FileMeta(s)] if s.kind == FileKind::Dir));
    let (m, _) = run(
        FileRequest::Stat {
            path: String::new(),
            follow_symlinks: false,
        },
        &[],
    );
    assert_eq!(file_error(&m).kind, FileErrorKind::InvalidInput);
}

/// The tar stream an `ArchiveOut` sent.
fn archive_bytes(m: &[GuestMessage]) -> Vec<u8> {
    assert_eq!(m.last(), Some(&GuestMessage::FileEnd), "{:?}", m.last());
    let mut tar = Vec::new();
    for c in &m[..m.len() - 1] {
        let GuestMessage::FileChunk(c) = c else {
            panic!("{c:?}")
        };
        assert!(!c.is_empty() && c.len() <= MAX_CHUNK_LEN);
        tar.extend_from_slice(c);
    }
    tar
}

#[test]
fn archive_out_then_in_copies_a_tree() {
    let src = TempDir::new().unwrap();
    let tree = src.path().join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/big"), vec![5u8; 200_000]).unwrap();
    symlink("sub/big", tree.join("ln")).unwrap();
    let (m, result) = run(FileRequest::ArchiveOut { path: p(&tree) }, &[]);
    result.unwrap();
    let tar = archive_bytes(&m);

    let dst = TempDir::new().unwrap();
    // Upload in odd-sized chunks, with padding after the end marker.
    let mut upload: Vec<_> = tar
        .chunks(10_000)
        .map(|c| HostMessage::FileChunk(c.to_vec()))
        .collect();
    upload.push(HostMessage::FileChunk(vec![0; 4096]));
    upload.push(HostMessage::FileEnd);
    let (m, result) = run(
        FileRequest::ArchiveIn {
            dest: p(dst.path()),
        },
        &upload,
    );
    result.unwrap();
    assert_eq!(m, [GuestMessage::FileReady, GuestMessage::FileDone]);
    assert_eq!(
        fs::read(dst.path().join("tree/sub/big")).unwrap().len(),
        200_000
    );
    assert_eq!(fs::read(dst.path().join("tree/ln")).unwrap().len(), 200_000);
    assert!(fs::symlink_metadata(dst.path().join("tree/ln"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn archive_in_refuses_a_hostile_archive() {
    let outside = TempDir::new().unwrap();
    let dst = TempDir::new().unwrap();
    let tar = archive::testing::one_entry(b"../escaped", tar::EntryType::Regular, None, b"x");
    let inner = dst.path().join("in");
    fs::create_dir(&inner).unwrap();
    let (m, _) = run(FileRequest::ArchiveIn { dest: p(&inner) }, &chunks(&tar));
    let e = file_error(&m);
    assert_eq!(e.kind, FileErrorKind::InvalidInput, "{e}");
    assert!(!dst.path().join("escaped").exists());
    assert!(!outside.path().join("escaped").exists());
    // Into something that is not a directory: refused before the upload.
    let (m, _) = run(
        FileRequest::ArchiveIn {
            dest: p(&dst.path().join("nowhere")),
        },
        &chunks(&tar),
    );
    assert_eq!(m.len(), 1);
    assert_eq!(file_error(&m).kind, FileErrorKind::NotFound);
}

#[test]
fn archive_out_of_the_root_or_a_missing_path_is_refused() {
    let (m, _) = run(FileRequest::ArchiveOut { path: "/".into() }, &[]);
    assert_eq!(file_error(&m).kind, FileErrorKind::InvalidInput);
    let (m, _) = run(
        FileRequest::ArchiveOut {
            path: "/definitely/not/here".into(),
        },
        &[],
    );
    assert_eq!(file_error(&m).kind, FileErrorKind::NotFound);
}

#[test]
fn the_server_routes_a_file_request_and_closes_after_it() {
    use std::os::unix::net::UnixStream;
    let (mut host, agent) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let server =
        super::super::server::Server::new(super::super::reaper::Reaper::global(), Arc::new(|_| {}));
    let serving = std::thread::spawn(move || server.serve(agent));
    let tmp = TempDir::new().unwrap();
    // One write: the agent closes after the file operation, and a Ping
    // written after that would fail with EPIPE.
    let mut frames = Vec::new();
    for m in [
        HostMessage::Hello {
            version: msbvm_protocol::PROTOCOL_VERSION,
        },
        HostMessage::FileEnd,
        HostMessage::File(FileRequest::Stat {
            path: p(tmp.path()),
            follow_symlinks: true,
        }),
        HostMessage::Ping,
    ] {
        frames.extend(encode(&m).unwrap());
    }
    host.write_all(&frames).unwrap();
    let mut input = FrameReader::new(host);
    let mut next = || input.read_message::<GuestMessage>().unwrap();
    assert!(matches!(next(), Some(GuestMessage::Hello { .. })));
    assert!(matches!(next(), Some(GuestMessage::Error { message }) if message.contains("upload")));
    assert!(matches!(next(), Some(GuestMessage::FileMeta(s)) if s.kind == FileKind::Dir));
    // One operation per connection: the Ping after it is not answered.
    assert!(next().is_none());
    serving.join().unwrap().unwrap();
}
