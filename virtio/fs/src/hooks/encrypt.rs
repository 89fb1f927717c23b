//! [`EncryptAtRest`]: file contents stored encrypted in the backing store,
//! plaintext to the guest.
//!
//! Each encrypted file has its own random 192-bit nonce, kept in the
//! backing store as the xattr [`NONCE_XATTR`]; contents are XChaCha20
//! keystream XORed at the byte offset (length-preserving, so offsets, sizes
//! and mmap work unchanged). A file gets a nonce on its first write while
//! empty if its guest path is under the configured prefix; from then on the
//! nonce decides, not the path, so a renamed or hard-linked file stays
//! encrypted wherever it goes. Files that already held data without a nonce
//! (seeded from the host, or written before the hook was added) stay
//! plaintext. The nonce xattr is hidden from the guest: it cannot read,
//! set, remove or list it.
//!
//! What it protects, honestly:
//! - **Confidentiality at rest only.** Whoever reads the backing store
//!   without the key sees ciphertext (and file sizes, names, metadata,
//!   which are not encrypted).
//! - **No integrity.** Flipping a ciphertext bit flips the same plaintext
//!   bit; nothing detects tampering.
//! - **Keystream reuse on overwrite.** Rewriting bytes in place reuses the
//!   keystream at that offset, so someone holding *two snapshots* of the
//!   backing store learns the XOR of the old and new plaintext there.
//!   Truncating a file to zero drops its nonce, and the next write picks a
//!   fresh one, which covers the common rewrite-whole-file pattern.
//! - Holes: growing a file (truncate up, or a write past the end) writes
//!   encrypted zeros into the gap so the guest reads zeros; gaps over
//!   64 MiB at once are refused with EFBIG, and fallocate is refused with
//!   EOPNOTSUPP on encrypted files. A file is limited to 256 GiB (the
//!   cipher's 32-bit block counter); beyond that, EFBIG.

use std::ffi::CStr;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::XChaCha20;

use super::op::{Hook, Op, OpKind};
use crate::filesystem::{Context, FileSystem, Handle, Inode};

/// The backing-store xattr holding a file's nonce.
pub const NONCE_XATTR: &CStr = c"user.msbvm.enc-nonce";
const NONCE_LEN: usize = 24;
/// Largest gap filled with encrypted zeros in one operation.
const MAX_GAP_FILL: u64 = 64 << 20;
const CHUNK: u64 = 1 << 20;

fn err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// The encryption hook. See the module docs.
pub struct EncryptAtRest {
    key: [u8; 32],
    prefix: PathBuf,
    /// Serializes nonce creation so two first writes agree on one nonce.
    nonce_lock: Mutex<()>,
}

impl EncryptAtRest {
    /// Encrypts files created or first written under the guest path `prefix`
    /// (`"/"` for all) with the 256-bit `key`.
    pub fn new(key: [u8; 32], prefix: impl Into<PathBuf>) -> Self {
        Self {
            key,
            prefix: prefix.into(),
            nonce_lock: Mutex::new(()),
        }
    }

    fn nonce(
        &self,
        fs: &dyn FileSystem,
        ctx: &Context,
        inode: Inode,
    ) -> io::Result<Option<[u8; NONCE_LEN]>> {
        match fs.getxattr(ctx, inode, NONCE_XATTR) {
            Ok(v) => <[u8; NONCE_LEN]>::try_from(v.as_slice())
                .map(Some)
                // A nonce of the wrong size was not written by us: refuse
                // rather than guess.
                .map_err(|_| err(libc::EIO)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn apply(&self, nonce: &[u8; NONCE_LEN], offset: u64, data: &mut [u8]) -> io::Result<()> {
        let mut c = XChaCha20::new(&self.key.into(), &(*nonce).into());
        c.try_seek(offset).map_err(|_| err(libc::EFBIG))?;
        c.try_apply_keystream(data).map_err(|_| err(libc::EFBIG))
    }

    /// Writes encrypted zeros over `from..to`, so the guest reads zeros there.
    fn fill_gap(
        &self,
        fs: &dyn FileSystem,
        op: &Op<'_>,
        handle: Option<Handle>,
        nonce: &[u8; NONCE_LEN],
        from: u64,
        to: u64,
    ) -> io::Result<()> {
        if to - from > MAX_GAP_FILL {
            return Err(err(libc::EFBIG));
        }
        let (handle, opened) = match handle {
            Some(h) => (h, false),
            None => (
                fs.open(&op.ctx, op.inode, libc::O_WRONLY as u32)?.handle,
                true,
            ),
        };
        let mut result = Ok(());
        let mut off = from;
        while off < to && result.is_ok() {
            let len = (to - off).min(CHUNK);
            let mut buf = vec![0u8; len as usize];
            result = self
                .apply(nonce, off, &mut buf)
                .and_then(|()| fs.write(&op.ctx, op.inode, handle, off, &buf, 0))
                .map(|_| ());
            off += len;
        }
        if opened {
            fs.release(&op.ctx, op.inode, libc::O_WRONLY as u32, handle)?;
        }
        result
    }

    fn drop_nonce(&self, fs: &dyn FileSystem, op: &Op<'_>) -> io::Result<()> {
        match fs.removexattr(&op.ctx, op.inode, NONCE_XATTR) {
            Err(e)
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                Err(e)
            }
            _ => Ok(()),
        }
    }
}

fn random_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

impl Hook for EncryptAtRest {
    fn before(&self, op: &Op<'_>) -> io::Result<()> {
        let fs = op.backend;
        match op.kind {
            OpKind::Getxattr | OpKind::Setxattr | OpKind::Removexattr
                if op.xattr == Some(NONCE_XATTR) =>
            {
                Err(err(if op.kind == OpKind::Getxattr {
                    libc::ENODATA
                } else {
                    libc::EPERM
                }))
            }
            OpKind::Fallocate if self.nonce(fs, &op.ctx, op.inode)?.is_some() => {
                Err(err(libc::EOPNOTSUPP))
            }
            OpKind::Open if op.flags as i32 & libc::O_TRUNC != 0 => self.drop_nonce(fs, op),
            OpKind::Setattr => {
                let Some(new) = op.setattr.and_then(|s| s.size) else {
                    return Ok(());
                };
                if new == 0 {
                    return self.drop_nonce(fs, op);
                }
                let Some(nonce) = self.nonce(fs, &op.ctx, op.inode)? else {
                    return Ok(());
                };
                let size = fs.getattr(&op.ctx, op.inode, op.handle)?.0.size;
                if new > size {
                    self.fill_gap(fs, op, op.handle, &nonce, size, new)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn rewrite_write(&self, op: &Op<'_>, data: &mut Vec<u8>) -> io::Result<()> {
        let fs = op.backend;
        let nonce = {
            let _guard = self.nonce_lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.nonce(fs, &op.ctx, op.inode)? {
                Some(n) => n,
                None => {
                    let under = op
                        .path
                        .as_ref()
                        .is_some_and(|p| p.starts_with(&self.prefix));
                    let empty = fs.getattr(&op.ctx, op.inode, op.handle)?.0.size == 0;
                    if !under || !empty {
                        return Ok(());
                    }
                    let n = random_nonce()?;
                    fs.setxattr(
                        &op.ctx,
                        op.inode,
                        NONCE_XATTR,
                        &n,
                        libc::XATTR_CREATE as u32,
                    )?;
                    n
                }
            }
        };
        let size = fs.getattr(&op.ctx, op.inode, op.handle)?.0.size;
        if op.offset > size {
            self.fill_gap(fs, op, op.handle, &nonce, size, op.offset)?;
        }
        self.apply(&nonce, op.offset, data)
    }

    fn rewrite_reply(&self, op: &Op<'_>, data: &mut Vec<u8>) -> io::Result<()> {
        let fs = op.backend;
        match op.kind {
            OpKind::Read => {
                if let Some(nonce) = self.nonce(fs, &op.ctx, op.inode)? {
                    self.apply(&nonce, op.offset, data)?;
                }
                Ok(())
            }
            OpKind::Listxattr => {
                let hidden = NONCE_XATTR.to_bytes_with_nul();
                let kept: Vec<u8> = data
                    .split_inclusive(|&b| b == 0)
                    .filter(|name| *name != hidden)
                    .flatten()
                    .copied()
                    .collect();
                *data = kept;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
