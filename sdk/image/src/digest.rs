//! sha256 digests: validation of `sha256:<hex>` strings and hashing readers.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Returns the hex part of a `sha256:<64 lowercase hex>` digest. Digests become file names,
/// so anything else (other algorithms, path separators) is refused here.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
        Error::InvalidImage(format!(
            "unsupported digest {digest:?} (only sha256 is supported)"
        ))
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::InvalidImage(format!("malformed digest {digest:?}")));
    }
    Ok(hex)
}

/// `sha256:<hex>` of a byte slice.
pub(crate) fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Formats a finished hasher as `sha256:<hex>`.
pub(crate) fn finish(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// A reader that hashes and counts what passes through it and fails once more than `limit`
/// bytes were read, so a decompression bomb ends in an error instead of filling the disk.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`, allowing at most `limit` bytes.
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
        }
    }

    /// Bytes read so far.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything read.
    pub(crate) fn digest(self) -> String {
        finish(self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!(
                "stream is larger than the limit of {} bytes",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_rejects_path_tricks_and_other_algorithms() {
        assert!(sha256_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(sha256_hex("sha256:../../etc/passwd").is_err());
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn hashing_reader_enforces_its_limit() {
        let mut r = HashingReader::new(&[0u8; 100][..], 99);
        assert!(io::copy(&mut r, &mut io::sink()).is_err());
        let mut r = HashingReader::new(&b"abc"[..], 3);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.digest(), sha256_of(b"abc"));
    }
}
