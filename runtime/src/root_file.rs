//! Reading one small file out of a sandbox's root filesystem backend, before the guest boots.
//!
//! The runtime reads a few of the image's files itself (`/etc/passwd` and `/etc/group` to
//! resolve a user, `/etc/hosts` to merge msbvm's names into) through the same backend the
//! guest's requests reach. Those files may come from a layer the guest wrote in an earlier
//! boot, so the read is bounded and stays inside the root: each path component is looked up
//! (a symlink is never followed, it fails the regular-file check or the next lookup), only a
//! regular file is read, and one larger than the caller's limit is refused rather than cut
//! (a truncated `/etc/hosts` or `/etc/passwd` would be parsed as if whole).

use std::ffi::CString;
use std::io;

use msbvm_fs::{Context, FileSystem, Inode};

/// Bytes asked for per backend read.
const CHUNK: u32 = 128 * 1024;

/// The content of the regular file at `path` (components separated by `/`, relative to
/// `dir`), read as root through `fs`. Fails with [`io::ErrorKind::InvalidInput`] if it is not
/// a regular file and [`io::ErrorKind::FileTooLarge`] if it holds more than `max` bytes;
/// every lookup it took is given back to the backend whatever the outcome.
pub fn read(fs: &dyn FileSystem, dir: Inode, path: &str, max: usize) -> io::Result<Vec<u8>> {
    let ctx = Context::default();
    let mut looked_up = Vec::new();
    let result = (|| {
        let mut inode = dir;
        let mut mode = libc::S_IFDIR;
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let name = CString::new(component).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte")
            })?;
            let entry = fs.lookup(&ctx, inode, &name)?;
            looked_up.push(entry.inode);
            inode = entry.inode;
            mode = entry.attr.mode;
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is not a regular file"),
            ));
        }
        let open = fs.open(&ctx, inode, libc::O_RDONLY as u32)?;
        let read = read_to_limit(fs, &ctx, inode, open.handle, max);
        let _ = fs.release(&ctx, inode, 0, open.handle);
        read.map_err(|e| match e.kind() {
            io::ErrorKind::FileTooLarge => io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("{path} is larger than {max} bytes"),
            ),
            _ => e,
        })
    })();
    for inode in looked_up {
        fs.forget(inode, 1);
    }
    result
}

fn read_to_limit(
    fs: &dyn FileSystem,
    ctx: &Context,
    inode: Inode,
    handle: u64,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        // One byte past the limit is enough to tell "exactly max" from "more".
        let want = (max + 1 - out.len()).min(CHUNK as usize) as u32;
        let chunk = fs.read(ctx, inode, handle, out.len() as u64, want)?;
        if chunk.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
        if out.len() > max {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use msbvm_fs::{MemoryFs, ROOT_INODE};

    use super::*;

    fn root() -> MemoryFs {
        let fs = MemoryFs::new();
        fs.add_dir("etc", 0o755).unwrap();
        fs.add_file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
            .unwrap();
        fs.add_file("etc/big", &[b'x'; 300 * 1024], 0o644).unwrap();
        fs.add_symlink("etc/link", "passwd").unwrap();
        fs
    }

    #[test]
    fn reads_a_regular_file_up_to_and_at_the_limit() {
        let fs = root();
        let passwd = read(&fs, ROOT_INODE, "etc/passwd", 1024).unwrap();
        assert_eq!(passwd, b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(read(&fs, ROOT_INODE, "/etc//passwd", 26).unwrap(), passwd);
        // Over several backend reads, exactly at the limit.
        assert_eq!(
            read(&fs, ROOT_INODE, "etc/big", 300 * 1024).unwrap().len(),
            300 * 1024
        );
    }

    #[test]
    fn refuses_what_it_must_not_read() {
        let fs = root();
        let kind = |path: &str, max: usize| read(&fs, ROOT_INODE, path, max).unwrap_err().kind();
        assert_eq!(kind("etc/passwd", 25), io::ErrorKind::FileTooLarge);
        assert_eq!(kind("etc/big", 300 * 1024 - 1), io::ErrorKind::FileTooLarge);
        assert_eq!(kind("etc/link", 1024), io::ErrorKind::InvalidInput);
        assert_eq!(kind("etc", 1024), io::ErrorKind::InvalidInput);
        assert!(read(&fs, ROOT_INODE, "etc/link/x", 1024).is_err());
        assert_eq!(kind("etc/missing", 1024), io::ErrorKind::NotFound);
        assert_eq!(kind("etc/a\0b", 1024), io::ErrorKind::InvalidInput);
    }
}
