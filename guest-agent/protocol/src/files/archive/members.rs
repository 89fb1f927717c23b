//! Reading tar members with bounded memory.
//!
//! The `tar` crate's ordinary iterator reads GNU long names, long links and
//! PAX headers whole into memory, however large the header says they are,
//! and follows chains of GNU sparse extension blocks without end. Here it
//! runs in raw mode (it only ever reads 512-byte headers and hands out
//! readers bounded by each member's size) and the extension headers are
//! handled by [`Members`], each refused above [`MAX_EXTENSION_LEN`] before
//! any of it is read.

use std::io::Read;

use super::{invalid, MAX_EXTENSION_LEN};
use crate::files::{FileError, FileErrorKind};

/// One member of an archive, its extensions applied.
pub(crate) struct Member<'a, R: Read> {
    /// Its path, as bytes.
    pub(crate) path: Vec<u8>,
    /// The target of a symlink or hard link.
    pub(crate) link: Option<Vec<u8>>,
    /// What it is.
    pub(crate) kind: tar::EntryType,
    /// Its mode bits as the archive says.
    pub(crate) mode: u32,
    /// Bytes of data that follow its header.
    pub(crate) size: u64,
    /// Modification time, seconds since the epoch.
    pub(crate) mtime: Option<u64>,
    /// Its data, exactly `size` bytes unless the archive is truncated.
    pub(crate) data: tar::Entry<'a, R>,
}

/// The members of an archive, one at a time.
pub(crate) struct Members<'a, R: Read> {
    entries: tar::Entries<'a, R>,
    headers: u64,
    max_headers: u64,
}

/// Extension headers seen for the member that follows them.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

fn read_error(e: std::io::Error) -> FileError {
    FileError::from_io("reading the archive", &e)
}

fn malformed(why: &str) -> FileError {
    FileError::new(
        FileErrorKind::InvalidInput,
        format!("refusing the archive: {why}"),
    )
}

/// Strips a trailing NUL (GNU long names carry one).
fn strip_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

impl<'a, R: Read> Members<'a, R> {
    /// Reads the members of `archive`, at most `max_headers` headers in all.
    pub(crate) fn new(
        archive: &'a mut tar::Archive<R>,
        max_headers: u64,
    ) -> Result<Self, FileError> {
        let entries = archive.entries().map_err(read_error)?.raw(true);
        Ok(Members {
            entries,
            headers: 0,
            max_headers,
        })
    }

    /// The next member; `None` at the archive's end.
    pub(crate) fn next_member(&mut self) -> Result<Option<Member<'a, R>>, FileError> {
        let mut pending = Pending::default();
        loop {
            let Some(entry) = self.entries.next() else {
                if !pending.is_empty() {
                    return Err(malformed("extension headers without a member after them"));
                }
                return Ok(None);
            };
            let mut entry = entry.map_err(read_error)?;
            self.headers += 1;
            if self.headers > self.max_headers {
                return Err(FileError::new(
                    FileErrorKind::LimitExceeded,
                    format!(
                        "the archive has more than {} entries (the limit)",
                        self.max_headers
                    ),
                ));
            }
            let kind = entry.header().entry_type();
            let slot = match kind {
                tar::EntryType::GNULongName => &mut pending.long_name,
                tar::EntryType::GNULongLink => &mut pending.long_link,
                tar::EntryType::XHeader => &mut pending.pax,
                tar::EntryType::XGlobalHeader => {
                    // Global defaults (e.g. `git archive`'s comment): read
                    // within the cap and ignored.
                    read_extension(&mut entry, "PAX global")?;
                    continue;
                }
                tar::EntryType::GNUSparse => {
                    return Err(malformed("GNU sparse members are not supported"))
                }
                _ => return member(entry, pending).map(Some),
            };
            if slot.is_some() {
                return Err(malformed(
                    "two extension headers of one kind for one member",
                ));
            }
            *slot = Some(read_extension(&mut entry, "extension")?);
        }
    }
}

/// Reads an extension header's data, refusing it before reading when it
/// announces more than [`MAX_EXTENSION_LEN`] bytes.
fn read_extension<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &str,
) -> Result<Vec<u8>, FileError> {
    let size = entry.header().entry_size().map_err(read_error)?;
    if size > MAX_EXTENSION_LEN {
        return Err(FileError::new(
            FileErrorKind::LimitExceeded,
            format!(
                "refusing the archive: a {what} header of {size} bytes exceeds the \
                 {MAX_EXTENSION_LEN}-byte limit"
            ),
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data.len() as u64 != size {
        return Err(malformed("it ends inside an extension header"));
    }
    Ok(data)
}

/// A member from its raw entry and the extension headers before it.
fn member<'a, R: Read>(
    entry: tar::Entry<'a, R>,
    pending: Pending,
) -> Result<Member<'a, R>, FileError> {
    let header = entry.header();
    let mut path = pending.long_name.map(strip_nul);
    let mut link = pending.long_link.map(strip_nul);
    let size = header.entry_size().map_err(read_error)?;
    if let Some(pax) = &pending.pax {
        for ext in tar::PaxExtensions::new(pax) {
            let ext = ext.map_err(|_| malformed("a PAX header does not parse"))?;
            match ext.key_bytes() {
                b"path" => path = Some(ext.value_bytes().to_vec()),
                b"linkpath" => link = Some(ext.value_bytes().to_vec()),
                // The raw reader skips by the header's size: a PAX size
                // that differs would make the two disagree on where the
                // next header is.
                b"size" if ext.value_bytes() != size.to_string().as_bytes() => {
                    return Err(malformed("a PAX size differs from the header's"))
                }
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(malformed("GNU sparse members are not supported"))
                }
                _ => {}
            }
        }
    }
    let path = path.unwrap_or_else(|| header.path_bytes().into_owned());
    let shown = String::from_utf8_lossy(&path).into_owned();
    let link = link.or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
    let mode = header
        .mode()
        .map_err(|_| invalid(&shown, "its mode does not parse"))?;
    Ok(Member {
        kind: header.entry_type(),
        mtime: header.mtime().ok(),
        path,
        link,
        mode,
        size,
        data: entry,
    })
}
