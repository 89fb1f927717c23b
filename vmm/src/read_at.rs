//! Reading a whole file through positioned reads (`pread`), which leave the
//! file's offset alone: the files read this way (the kernel image) are opened
//! once at start and shared with other readers, and a confined thread may not
//! open them again by name.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Hands every chunk of `file`, from its start to its end, to `each`, in order;
/// interrupted reads are retried and an error from `each` ends the walk.
pub(crate) fn each_chunk(
    file: &File,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                each(&buf[..n])?;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn reads_everything_and_leaves_the_offset_alone() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        f.write_all(&data).unwrap();
        f.seek(SeekFrom::Start(7)).unwrap();
        let mut got = Vec::new();
        each_chunk(&f, |c| {
            got.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(f.stream_position().unwrap(), 7);
        // An error from the callback ends the walk with it.
        let err = each_chunk(&f, |_| Err(io::Error::other("enough"))).unwrap_err();
        assert_eq!(err.to_string(), "enough");
    }
}
