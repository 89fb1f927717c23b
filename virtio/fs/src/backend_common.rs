//! Pieces the host-backed backends (passthrough and layered) share: the
//! node types MKNOD accepts, and listing a directory snapshot taken at
//! OPENDIR with offsets that stay valid for the handle's life.

use std::io;

use crate::filesystem::{DirEntry, Inode};
use crate::host_util::err;

/// The full mode of a MKNOD request: its type (regular file, FIFO, socket,
/// character or block device; anything else is EINVAL) with the permission
/// bits the umask leaves.
pub(crate) fn mknod_mode(mode: u32, umask: u32) -> io::Result<u32> {
    let kind = mode & libc::S_IFMT;
    let allowed = [
        libc::S_IFREG,
        libc::S_IFIFO,
        libc::S_IFSOCK,
        libc::S_IFCHR,
        libc::S_IFBLK,
    ];
    if !allowed.contains(&kind) {
        return Err(err(libc::EINVAL));
    }
    Ok(kind | (mode & 0o7777 & !umask))
}

/// Hands `add` the entries of directory `inode` after `offset`: `.` and
/// `..` first, then `entries` (inode, `DT_*` kind, name) in order. Offsets
/// index that sequence (1 after `.`, 2 after `..`, 2 + i after the i-th
/// entry), so a snapshot kept with the handle resumes exactly.
pub(crate) fn list_snapshot<'a, K: Copy + Into<u32> + 'a>(
    inode: Inode,
    entries: impl Iterator<Item = &'a (u64, K, Vec<u8>)>,
    offset: u64,
    add: &mut dyn FnMut(DirEntry<'_>) -> bool,
) {
    let dot_dir = libc::DT_DIR as u32;
    let dots = [(inode, dot_dir, &b"."[..]), (inode, dot_dir, &b".."[..])];
    let all = dots
        .into_iter()
        .chain(entries.map(|(i, k, n)| (*i, (*k).into(), n.as_slice())));
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    for (idx, (ino, kind, name)) in all.enumerate().skip(skip) {
        let entry = DirEntry {
            ino,
            offset: idx as u64 + 1,
            kind,
            name,
        };
        if !add(entry) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mknod_accepts_only_node_types_and_applies_the_umask() {
        assert_eq!(
            mknod_mode(libc::S_IFIFO | 0o666, 0o022).unwrap(),
            libc::S_IFIFO | 0o644
        );
        for bad in [libc::S_IFDIR | 0o755, libc::S_IFLNK | 0o777, 0o644] {
            assert_eq!(
                mknod_mode(bad, 0).unwrap_err().raw_os_error(),
                Some(libc::EINVAL)
            );
        }
    }

    #[test]
    fn snapshot_listing_resumes_at_any_offset() {
        let entries: Vec<(u64, u8, Vec<u8>)> = vec![
            (5, libc::DT_REG, b"a".to_vec()),
            (6, libc::DT_DIR, b"b".to_vec()),
        ];
        let names = |offset| {
            let mut out = Vec::new();
            list_snapshot(1, entries.iter(), offset, &mut |e| {
                out.push((String::from_utf8_lossy(e.name).into_owned(), e.offset));
                true
            });
            out
        };
        let all = names(0);
        assert_eq!(
            all,
            [
                (".".into(), 1),
                ("..".into(), 2),
                ("a".into(), 3),
                ("b".into(), 4)
            ]
        );
        assert_eq!(names(3), [("b".to_string(), 4)]);
        assert!(names(9).is_empty());
        let mut taken = 0;
        list_snapshot(1, entries.iter(), 0, &mut |_| {
            taken += 1;
            taken < 2
        });
        assert_eq!(taken, 2, "a full buffer stops the listing");
    }
}
