//! Archives for tests of the unpacking side (this crate's, the agent's, the SDK's), built
//! byte by byte where the `tar` builder would refuse what a hostile peer sends. Only with
//! the `test-support` feature.

/// An archive with one entry of `kind` at the raw path `name` (written
/// byte by byte, since the builder itself refuses `..` and `/`), linking to
/// `link`, holding `data`.
pub fn one_entry(name: &[u8], kind: tar::EntryType, link: Option<&[u8]>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .expect("a new GNU header has the GNU layout");
    gnu.name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, data)
        .expect("appending to a Vec cannot fail");
    b.into_inner().expect("finishing a Vec cannot fail")
}
