//! The capped log and its reader on temporary files.

use super::*;
use tempfile::TempDir;

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Before: every log grew without bound (a guest printing forever filled the disk).
#[test]
fn a_log_is_rotated_at_its_cap_and_never_splits_a_write() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("net-events.jsonl");
    let mut log = CappedLog::open(&path, 1000).unwrap().shared();
    for i in 0..500 {
        log.write_all(format!("{{\"event\":{i:05}}}\n").as_bytes())
            .unwrap();
    }
    // 500 lines of 16 bytes: many rotations, one rotated part kept.
    assert!(size(&path) <= 1000, "{}", size(&path));
    assert!(size(&rotated_path(&path)) <= 1000);
    assert!(!tmp.path().join("net-events.jsonl.2").exists());
    for p in [&path, &rotated_path(&path)] {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(text
            .lines()
            .all(|l| l.len() == 15 && l.starts_with("{\"event\"")));
    }
    // The newest line is the last one of the live file.
    let live = std::fs::read_to_string(&path).unwrap();
    assert!(live.ends_with("{\"event\":00499}\n"), "{live}");
}

#[test]
fn one_huge_write_is_cut_to_the_cap() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("console.log");
    let mut log = CappedLog::open(&path, 4096).unwrap();
    log.write_all(&vec![b'x'; 1 << 20]).unwrap();
    log.write_all(b"after").unwrap();
    assert_eq!(size(&rotated_path(&path)), 4096);
    assert_eq!(std::fs::read(&path).unwrap(), b"after");
}

#[test]
fn an_existing_log_counts_toward_the_cap() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("runtime.log");
    std::fs::write(&path, vec![b'o'; 900]).unwrap();
    let mut log = CappedLog::open(&path, 1000).unwrap();
    log.write_all(&[b'n'; 200]).unwrap();
    assert_eq!(size(&rotated_path(&path)), 900);
    assert_eq!(size(&path), 200);
}

#[test]
fn the_reopen_hook_sees_each_new_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("runtime.log");
    let seen = Arc::new(Mutex::new(0));
    let counter = seen.clone();
    let mut log = CappedLog::open(&path, 10)
        .unwrap()
        .on_reopen(Box::new(move |_| *counter.lock().unwrap() += 1));
    for _ in 0..3 {
        log.write_all(b"0123456789").unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), 2);
}

#[test]
fn a_tail_reads_the_rotated_part_first_and_follows_rotations() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("net-events.jsonl");
    let mut log = CappedLog::open(&path, 64).unwrap();
    let mut tail = LogTail::open(&path);
    let mut got = Vec::new();
    let mut partial = Vec::new();
    for i in 0..40 {
        log.write_all(format!("line {i:02}\n").as_bytes()).unwrap();
        // A reader polling after every 4 lines loses nothing across rotations.
        if i % 4 == 3 {
            tail.read_lines(&mut partial, 100, &mut |l| {
                got.push(String::from_utf8_lossy(l).into_owned())
            })
            .unwrap();
        }
    }
    let want: Vec<String> = (0..40).map(|i| format!("line {i:02}")).collect();
    assert_eq!(got, want);

    // A new reader starts with what is left: the rotated part, then the live file.
    let mut fresh = Vec::new();
    LogTail::open(&path)
        .read_lines(&mut Vec::new(), 100, &mut |l| fresh.push(l.to_vec()))
        .unwrap();
    assert!(!fresh.is_empty() && fresh.len() < 40);
    assert_eq!(fresh.last().unwrap(), b"line 39");
}

#[test]
fn overlong_lines_are_skipped_in_bounded_memory() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("e.jsonl");
    let mut text = b"short\n".to_vec();
    text.extend(vec![b'y'; 300_000]);
    text.extend(b"\nafter\n");
    std::fs::write(&path, &text).unwrap();
    let mut tail = LogTail::open(&path);
    let mut partial = Vec::new();
    let mut got = Vec::new();
    tail.read_lines(&mut partial, 1000, &mut |l| got.push(l.to_vec()))
        .unwrap();
    assert_eq!(got, [b"short".to_vec(), b"after".to_vec()]);
    assert!(partial.capacity() < 1 << 17);
}

#[test]
fn a_missing_log_reads_as_empty_until_it_appears() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("late.log");
    let mut tail = LogTail::open(&path);
    let mut got = Vec::new();
    tail.read_new(&mut |b| {
        got.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert!(got.is_empty());
    std::fs::write(&path, b"now").unwrap();
    tail.read_new(&mut |b| {
        got.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, b"now");
}

/// Before: rotation renamed and reopened by the path given at open, which the runtime can no
/// longer reach once it has left root (its data directory is 0700 root's); now it works
/// relative to the log's directory, here shown by moving that directory away.
#[test]
fn rotation_works_relative_to_the_logs_directory() {
    let tmp = TempDir::new().unwrap();
    std::fs::create_dir(tmp.path().join("a")).unwrap();
    let mut log = CappedLog::open(&tmp.path().join("a/runtime.log"), 64).unwrap();
    std::fs::rename(tmp.path().join("a"), tmp.path().join("b")).unwrap();
    for _ in 0..10 {
        log.write_all(b"0123456789abcdef\n").unwrap();
    }
    let live = tmp.path().join("b/runtime.log");
    assert!(size(&live) > 0 && size(&live) <= 64, "{}", size(&live));
    assert!(size(&rotated_path(&live)) > 0);
    assert!(!tmp.path().join("a").exists());
}
