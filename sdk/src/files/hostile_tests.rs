//! File operations against a hostile guest agent: a scripted fake on the vsock device
//! socket that speaks the real protocol and sends what a compromised guest could. The SDK
//! must fail with a clear error, read a bounded amount, wait a bounded time and write
//! nothing outside the destination.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msbvm_protocol::files::FileStat;
use tempfile::TempDir;

use super::*;
use crate::test_support::{FakeAgent, Session};

/// What a test lets the SDK read at most after a refusal: socket buffers and the few chunks
/// in flight, far below what the agent offers.
const BOUNDED: u64 = 16 << 20;
/// What the hostile agent offers: more than any bounded reader takes.
const OFFERED: u64 = 256 << 20;

/// A tar header block of `kind` named `name` claiming `size` bytes.
fn header(name: &str, kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// Expects the hello and an `ArchiveOut`, sends `head`, then zero chunks until the host
/// goes or [`OFFERED`] bytes; counts what the host took in `sent`.
fn stream_archive(session: &mut Session, head: &[u8], sent: &AtomicU64) {
    session.hello();
    assert!(matches!(
        session.recv(),
        Some(HostMessage::File(FileRequest::ArchiveOut { .. }))
    ));
    if session
        .try_send(&GuestMessage::FileChunk(head.to_vec()))
        .is_err()
    {
        return;
    }
    sent.fetch_add(head.len() as u64, Ordering::Relaxed);
    let zeros = vec![0u8; MAX_CHUNK_LEN];
    while sent.load(Ordering::Relaxed) < OFFERED {
        if session
            .try_send(&GuestMessage::FileChunk(zeros.clone()))
            .is_err()
        {
            return;
        }
        sent.fetch_add(zeros.len() as u64, Ordering::Relaxed);
    }
    let _ = session.try_send(&GuestMessage::FileEnd);
}

fn limits_with_timeout(reply: Duration) -> AgentLimits {
    AgentLimits {
        reply_timeout: reply,
        ..AgentLimits::default()
    }
}

/// Copies `/root` out of an agent that streams the archive `head` and then zeros; returns
/// the SDK's error, how many bytes the SDK took, whether the destination exists, and how
/// many entries the test directory has (the socket alone when nothing was written).
async fn copy_out_of_hostile_archive(head: Vec<u8>) -> (Error, u64, bool, usize) {
    let tmp = TempDir::new().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), 1, move |s| {
        stream_archive(s, &head, &counter)
    });
    let dest = tmp.path().join("out");
    let e = copy_out(
        &tmp.path().join("vsock.sock"),
        "/root",
        &dest,
        &AgentLimits::default(),
    )
    .await
    .unwrap_err();
    fake.join();
    let entries = std::fs::read_dir(tmp.path()).unwrap().count();
    (e, sent.load(Ordering::Relaxed), dest.exists(), entries)
}

#[tokio::test]
async fn an_endless_pax_header_is_refused_after_a_bounded_read() {
    let (e, took, dest_exists, _) =
        copy_out_of_hostile_archive(header("root", tar::EntryType::XHeader, (8 << 30) - 1)).await;
    assert!(e.to_string().contains("65536-byte limit"), "{e}");
    assert!(
        took < BOUNDED,
        "the SDK read {took} bytes of an endless header"
    );
    assert!(!dest_exists);
}

#[tokio::test]
async fn a_10_gib_file_claim_is_refused_before_its_data() {
    let (e, took, dest_exists, entries) =
        copy_out_of_hostile_archive(header("root", tar::EntryType::Regular, 10 << 30)).await;
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                setting: "max_copy_bytes",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        took < BOUNDED,
        "the SDK read {took} bytes of the claimed file"
    );
    assert!(!dest_exists);
    assert_eq!(entries, 1, "only the socket");
}

/// The destination is in a directory the guest shares (a volume): while the archive is
/// unpacked, the guest keeps swapping a directory inside the destination for a symlink to
/// a host directory. Nothing may land there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swap_race_against_copy_out_writes_nothing_outside() {
    let tmp = TempDir::new().unwrap();
    let volume = tmp.path().join("volume");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&volume).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    for name in ["root/", "root/d/"] {
        b.append_data(&mut dir.clone(), name, &[][..]).unwrap();
    }
    for i in 0..4000 {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, format!("root/d/f{i}"), &b"x"[..])
            .unwrap();
    }
    let tar = Arc::new(b.into_inner().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let d = volume.join("out/d");
        let aside = volume.join("aside");
        let (target, stop) = (outside.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::rename(&d, &aside).is_ok() {
                    let _ = std::os::unix::fs::symlink(&target, &d);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&d);
                    let _ = std::fs::rename(&aside, &d);
                }
                std::thread::yield_now();
            }
        })
    };
    let rounds = 4;
    let fake = FakeAgent::spawn(&tmp.path().join("vsock.sock"), rounds, move |s| {
        s.hello();
        let _ = s.recv();
        for chunk in tar.chunks(4096) {
            if s.try_send(&GuestMessage::FileChunk(chunk.to_vec()))
                .is_err()
            {
                return;
            }
        }
        let _ = s.try_send(&GuestMessage::FileEnd);
    });
    let uds = tmp.path().join("vsock.sock");
    for _ in 0..rounds {
        // Refusals are expected; escapes are not.
        let _ = copy_out(&uds, "/root", &volume.join("out"), &AgentLimits::default()).await;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    fake.join();
    let escaped = std::fs::read_dir(&outside).unwrap().count();
    assert_eq!(escaped, 0, "{escaped} files landed outside the destination");
}

#[tokio::test]
async fn a_silent_agent_is_a_timeout_not_a_hang() {
    let tmp = TempDir::new().unwrap();
    let uds = tmp.path().join("vsock.sock");
    // Silent after the request; then silent before the hello.
    let fake = FakeAgent::spawn(&uds, 3, |s| {
        s.hello();
        let _ = s.recv();
        std::thread::sleep(Duration::from_secs(2));
    });
    let limits = limits_with_timeout(Duration::from_millis(200));
    let began = Instant::now();
    let e = read_all(&uds, "/f", &limits).await.unwrap_err();
    assert!(matches!(e, Error::AgentTimeout { .. }), "{e}");
    let e = list(&uds, "/", &limits).await.unwrap_err();
    assert!(matches!(e, Error::AgentTimeout { .. }), "{e}");
    let e = copy_out(&uds, "/root", &tmp.path().join("o"), &limits)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AgentTimeout { .. }), "{e}");
    assert!(e.to_string().contains("reply timeout"), "{e}");
    assert!(began.elapsed() < Duration::from_millis(1500));
    fake.join();
}

#[tokio::test]
async fn a_silent_hello_or_connect_answer_is_a_timeout() {
    let tmp = TempDir::new().unwrap();
    let uds = tmp.path().join("vsock.sock");
    let fake = FakeAgent::spawn(&uds, 1, |_| std::thread::sleep(Duration::from_secs(1)));
    let limits = limits_with_timeout(Duration::from_millis(200));
    let e = stat_path(&uds, "/", true, &limits).await.unwrap_err();
    assert!(e.to_string().contains("hello"), "{e}");
    fake.join();

    // A device that accepts but never answers CONNECT.
    let uds2 = tmp.path().join("mute.sock");
    let listener = std::os::unix::net::UnixListener::bind(&uds2).unwrap();
    let holder = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(1));
        drop(conn);
    });
    let e = stat_path(&uds2, "/", true, &limits).await.unwrap_err();
    assert!(e.to_string().contains("no answer to CONNECT"), "{e}");
    holder.join().unwrap();
}

#[tokio::test]
async fn a_trickling_agent_hits_the_operation_deadline() {
    let tmp = TempDir::new().unwrap();
    let uds = tmp.path().join("vsock.sock");
    let fake = FakeAgent::spawn(&uds, 1, |s| {
        s.hello();
        let _ = s.recv();
        let stat = FileStat {
            kind: FileKind::File,
            mode: 0o644,
            size: 0,
            mtime: 0,
            uid: 0,
            gid: 0,
            symlink_target: None,
        };
        if s.try_send(&GuestMessage::FileMeta(stat)).is_err() {
            return;
        }
        // One byte just inside the reply timeout, forever.
        while s.try_send(&GuestMessage::FileChunk(vec![1])).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let limits = AgentLimits {
        reply_timeout: Duration::from_secs(1),
        operation_timeout: Some(Duration::from_millis(400)),
        ..AgentLimits::default()
    };
    let began = Instant::now();
    let e = read_all(&uds, "/f", &limits).await.unwrap_err();
    assert!(e.to_string().contains("deadline"), "{e}");
    assert!(began.elapsed() < Duration::from_secs(2));
    fake.join();
}

#[tokio::test]
async fn read_file_and_list_dir_stop_at_their_caps() {
    let tmp = TempDir::new().unwrap();
    let uds = tmp.path().join("vsock.sock");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let fake = FakeAgent::spawn(&uds, 2, move |s| {
        s.hello();
        let stat = FileStat {
            kind: FileKind::File,
            mode: 0o644,
            size: 10, // a lie: it never ends
            mtime: 0,
            uid: 0,
            gid: 0,
            symlink_target: None,
        };
        match s.recv() {
            Some(HostMessage::File(FileRequest::ReadFile { .. })) => {
                if s.try_send(&GuestMessage::FileMeta(stat)).is_err() {
                    return;
                }
                let chunk = vec![7u8; MAX_CHUNK_LEN];
                while counter.load(Ordering::Relaxed) < OFFERED {
                    if s.try_send(&GuestMessage::FileChunk(chunk.clone())).is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            _ => loop {
                let batch = (0..1000)
                    .map(|i| DirEntry {
                        name: format!("n{i}"),
                        stat: stat.clone(),
                    })
                    .collect();
                if s.try_send(&GuestMessage::DirEntries(batch)).is_err() {
                    return;
                }
            },
        }
    });
    let limits = AgentLimits {
        max_read_file: 1 << 20,
        max_list_entries: 5000,
        ..AgentLimits::default()
    };
    let e = read_all(&uds, "/f", &limits).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                setting: "max_read_file",
                ..
            }
        ),
        "{e}"
    );
    let e = list(&uds, "/", &limits).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                setting: "max_list_entries",
                ..
            }
        ),
        "{e}"
    );
    fake.join();
    assert!(sent.load(Ordering::Relaxed) < BOUNDED);
}
