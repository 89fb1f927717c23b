//! A writer for initramfs images: uncompressed cpio archives in the "newc" format the kernel
//! unpacks at boot (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! The archive is described in memory and written in one go, deterministically: the same
//! entries give the same bytes whatever order they were added in (entries sorted by path,
//! mtime 0, owner root, inode numbers in output order). That keeps images cacheable by hash
//! and reproducible.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, IoContext};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// Permission bits, including setuid, setgid and sticky.
const PERM_MASK: u32 = 0o7777;
/// Mode of directories created implicitly as parents of other entries.
const IMPLICIT_DIR_MODE: u32 = 0o755;

const MAGIC: &[u8] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// An initramfs under construction: a set of entries keyed by their path in the archive.
///
/// Paths are absolute in the archive ("/init", "/bin/sh"); a leading `/` is optional, repeated
/// slashes and `.` components are ignored. Parent directories are created implicitly (mode
/// 0755) and always precede their children in the output. Adding a path that exists replaces
/// it (last one wins); making a path a non-directory removes whatever was below it, and adding
/// below a non-directory turns that into a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds directory `path` with permission bits `mode`.
    ///
    /// # Panics
    /// If `path` has a `..` component or a NUL byte (archive paths are written by the caller,
    /// so such a path is a bug, not input).
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.insert(
            path,
            Entry::Dir {
                mode: mode & PERM_MASK,
            },
        )
    }

    /// Adds regular file `path` with permission bits `mode` and contents `data`.
    ///
    /// # Panics
    /// As [`Initramfs::dir`], and if `path` is the root.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> &mut Self {
        self.insert(
            path,
            Entry::File {
                mode: mode & PERM_MASK,
                data: data.into(),
            },
        )
    }

    /// Adds the host file `host` (symlinks followed) as `path`, keeping its permission bits.
    pub fn host_file(&mut self, path: &str, host: &Path) -> Result<&mut Self, Error> {
        let meta = fs::metadata(host).context(|| format!("reading {}", host.display()))?;
        if !meta.is_file() {
            return Err(Error::UnsupportedFileType {
                path: host.to_path_buf(),
                kind: file_kind(&meta.file_type()),
            });
        }
        let data = fs::read(host).context(|| format!("reading {}", host.display()))?;
        Ok(self.file(path, meta.mode(), data))
    }

    /// Adds the host directory `host_dir` and everything below it as `path`, keeping
    /// permission bits; symlinks are stored as symlinks. Fails on file types an archive cannot
    /// hold (sockets, fifos, devices) and on non-UTF-8 names; then nothing is added.
    pub fn host_tree(&mut self, path: &str, host_dir: &Path) -> Result<&mut Self, Error> {
        let meta = fs::metadata(host_dir).context(|| format!("reading {}", host_dir.display()))?;
        if !meta.is_dir() {
            return Err(Error::UnsupportedFileType {
                path: host_dir.to_path_buf(),
                kind: "not a directory",
            });
        }
        // Collected first and applied at the end, so a failure halfway leaves `self` as it was.
        let root = normalize(path);
        let mut staged = vec![(
            root.clone(),
            Entry::Dir {
                mode: meta.mode() & PERM_MASK,
            },
        )];
        collect_tree(&root, host_dir, &mut staged)?;
        for (path, entry) in staged {
            self.insert(&path, entry);
        }
        Ok(self)
    }

    /// Adds symbolic link `path` pointing at `target` (stored verbatim, relative or absolute).
    ///
    /// # Panics
    /// As [`Initramfs::file`].
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds character device `path` (`major`:`minor`) with permission bits `mode`, e.g.
    /// `/dev/console` 5:1, so that the kernel has a console before devtmpfs is mounted.
    ///
    /// # Panics
    /// As [`Initramfs::file`].
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.insert(
            path,
            Entry::CharDev {
                mode: mode & PERM_MASK,
                major,
                minor,
            },
        )
    }

    /// Writes the archive. Fails only if `w` fails or a file is 4 GiB or larger (the newc
    /// format's size field has 32 bits).
    pub fn write_to(&self, w: impl Write) -> io::Result<()> {
        let mut w = io::BufWriter::new(w);
        let mut written = 0usize;
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data, rdev) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[][..], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data.as_slice(), (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => {
                    (S_IFCHR | mode, 1, &[][..], (*major, *minor))
                }
            };
            let header = Header {
                ino,
                mode,
                nlink,
                size: u32::try_from(data.len()).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("initramfs entry /{path} is 4 GiB or larger"),
                    )
                })?,
                rdev,
            };
            written += header.write(&mut w, path)?;
            w.write_all(data)?;
            written += data.len();
            written += pad(&mut w, written)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        };
        trailer.write(&mut w, TRAILER)?;
        w.flush()
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes).expect(
            "writing to a Vec cannot fail and no entry of an in-memory archive reaches 4 GiB",
        );
        bytes
    }

    fn insert(&mut self, path: &str, entry: Entry) -> &mut Self {
        let path = normalize(path);
        if path.is_empty() {
            // The root always exists; its mode is the kernel's business (rootfs).
            assert!(
                matches!(entry, Entry::Dir { .. }),
                "the initramfs root can only be a directory"
            );
            return self;
        }
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            if !matches!(self.entries.get(parent), Some(Entry::Dir { .. })) {
                self.entries.insert(
                    parent.to_string(),
                    Entry::Dir {
                        mode: IMPLICIT_DIR_MODE,
                    },
                );
            }
        }
        if !matches!(entry, Entry::Dir { .. }) {
            // '0' is the character after '/', so this range is exactly the paths below `path`.
            let below: Vec<String> = self
                .entries
                .range(format!("{path}/")..format!("{path}0"))
                .map(|(k, _)| k.clone())
                .collect();
            for key in below {
                self.entries.remove(&key);
            }
        }
        self.entries.insert(path, entry);
        self
    }
}

/// The fixed-size part of a newc entry (the fields this writer does not keep are zero: uid,
/// gid, mtime, device of the archive, checksum).
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl Header {
    /// Writes the header and the NUL-terminated name padded to 4 bytes; returns the length.
    fn write(&self, w: &mut impl Write, name: &str) -> io::Result<usize> {
        let name_size = name.len() + 1;
        let fields = [
            self.ino,
            self.mode,
            0, // uid
            0, // gid
            self.nlink,
            0, // mtime
            self.size,
            0, // devmajor
            0, // devminor
            self.rdev.0,
            self.rdev.1,
            u32::try_from(name_size).expect("archive paths are short"),
            0, // check
        ];
        w.write_all(MAGIC)?;
        for field in fields {
            write!(w, "{field:08X}")?;
        }
        w.write_all(name.as_bytes())?;
        w.write_all(&[0])?;
        let len = HEADER_LEN + name_size;
        Ok(len + pad(w, len)?)
    }
}

/// Writes the zero bytes that align offset `len` to 4; returns how many.
fn pad(w: &mut impl Write, len: usize) -> io::Result<usize> {
    let n = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..n])?;
    Ok(n)
}

/// The archive form of `path`: no leading slash (so that `cpio -i` extracts relative to its
/// working directory), no empty or `.` components.
fn normalize(path: &str) -> String {
    assert!(
        !path.contains('\0'),
        "initramfs path {path:?} contains a NUL byte"
    );
    let parts: Vec<&str> = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    assert!(
        !parts.contains(&".."),
        "initramfs path {path:?} contains `..`"
    );
    parts.join("/")
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn collect_tree(
    archive_dir: &str,
    host_dir: &Path,
    out: &mut Vec<(String, Entry)>,
) -> Result<(), Error> {
    let listing = fs::read_dir(host_dir).context(|| format!("listing {}", host_dir.display()))?;
    for item in listing {
        let item = item.context(|| format!("listing {}", host_dir.display()))?;
        let host = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| Error::NonUtf8Name { path: host.clone() })?;
        let archive = join(archive_dir, &name);
        let meta = fs::symlink_metadata(&host).context(|| format!("reading {}", host.display()))?;
        let kind = meta.file_type();
        let perm = meta.mode() & PERM_MASK;
        if kind.is_symlink() {
            let target =
                fs::read_link(&host).context(|| format!("reading link {}", host.display()))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| Error::NonUtf8Name { path: host.clone() })?;
            out.push((archive, Entry::Symlink { target }));
        } else if kind.is_dir() {
            out.push((archive.clone(), Entry::Dir { mode: perm }));
            collect_tree(&archive, &host, out)?;
        } else if kind.is_file() {
            let data = fs::read(&host).context(|| format!("reading {}", host.display()))?;
            out.push((archive, Entry::File { mode: perm, data }));
        } else {
            return Err(Error::UnsupportedFileType {
                path: host,
                kind: file_kind(&kind),
            });
        }
    }
    Ok(())
}

fn file_kind(kind: &fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_file() {
        "regular file"
    } else {
        "file of unknown type"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    use tempfile::TempDir;

    /// One entry of a parsed archive.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Parsed {
        ino: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        name: String,
        data: Vec<u8>,
    }

    /// An independent newc reader, strict about alignment, used to check the writer.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut entries = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(off % 4, 0, "entry at unaligned offset {off}");
            let header = &bytes[off..off + HEADER_LEN];
            assert_eq!(&header[..6], MAGIC, "bad magic at {off}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let name_size = field(11) as usize;
            let name_start = off + HEADER_LEN;
            let name_bytes = &bytes[name_start..name_start + name_size];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..name_size - 1])
                .unwrap()
                .to_string();
            let data_start = (name_start + name_size).next_multiple_of(4);
            assert!(bytes[name_start + name_size..data_start]
                .iter()
                .all(|b| *b == 0));
            let size = field(6) as usize;
            let data = bytes[data_start..data_start + size].to_vec();
            off = (data_start + size).next_multiple_of(4);
            assert_eq!(field(12), 0, "check field");
            if name == TRAILER {
                assert_eq!(size, 0);
                assert_eq!(off, bytes.len(), "bytes after the trailer");
                return entries;
            }
            entries.push(Parsed {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                name,
                data,
            });
        }
    }

    fn sample() -> Initramfs {
        let mut fs = Initramfs::new();
        fs.file("/init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .dir("/proc", 0o555)
            .file("/etc/hostname", 0o644, "sandbox\n")
            .symlink("/bin/sh", "busybox")
            .file("/bin/busybox", 0o755, vec![7u8; 4097])
            .char_dev("/dev/console", 0o600, 5, 1)
            .file("/empty", 0o600, Vec::new());
        fs
    }

    #[test]
    fn round_trip() {
        let entries = parse(&sample().to_bytes());
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "empty",
                "etc",
                "etc/hostname",
                "init",
                "proc"
            ]
        );
        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(by_name("init").mode, S_IFREG | 0o755);
        assert_eq!(by_name("init").data, b"#!/bin/sh\necho hi\n");
        assert_eq!(by_name("bin").mode, S_IFDIR | IMPLICIT_DIR_MODE);
        assert_eq!(by_name("bin").nlink, 2);
        assert_eq!(by_name("proc").mode, S_IFDIR | 0o555);
        assert_eq!(by_name("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(by_name("bin/sh").data, b"busybox");
        assert_eq!(by_name("bin/busybox").data, vec![7u8; 4097]);
        assert_eq!(by_name("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by_name("dev/console").rdev, (5, 1));
        assert!(by_name("empty").data.is_empty());
        for (i, e) in entries.iter().enumerate() {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
            assert_eq!(e.ino, i as u32 + 1, "inodes in output order");
        }
    }

    #[test]
    fn same_entries_same_bytes_whatever_the_order() {
        let mut other = Initramfs::new();
        other
            .file("/empty", 0o600, Vec::new())
            .char_dev("/dev/console", 0o600, 5, 1)
            .file("/bin/busybox", 0o755, vec![7u8; 4097])
            .symlink("bin/sh", "busybox")
            .file("//etc/./hostname", 0o644, "sandbox\n")
            .dir("/proc/", 0o555)
            .file("/init", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        assert_eq!(other.to_bytes(), sample().to_bytes());
        assert_eq!(sample().to_bytes(), sample().to_bytes());
    }

    #[test]
    fn last_one_wins() {
        let mut fs = Initramfs::new();
        fs.file("/a", 0o644, "one").file("/a", 0o600, "two");
        fs.dir("/d", 0o700)
            .file("/d/x", 0o644, "x")
            .dir("/d", 0o750);
        // Replacing a directory by a file drops its contents.
        fs.dir("/gone", 0o755)
            .file("/gone/y", 0o644, "y")
            .symlink("/gone", "d");
        // Adding below a file turns the file into a directory.
        fs.file("/f", 0o644, "f").file("/f/z", 0o644, "z");
        let entries = parse(&fs.to_bytes());
        let get = |n: &str| entries.iter().find(|e| e.name == n);
        assert_eq!(get("a").unwrap().data, b"two");
        assert_eq!(get("a").unwrap().mode, S_IFREG | 0o600);
        assert_eq!(get("d").unwrap().mode, S_IFDIR | 0o750);
        assert!(
            get("d/x").is_some(),
            "a directory keeps its children when re-added"
        );
        assert_eq!(get("gone").unwrap().mode, S_IFLNK | 0o777);
        assert!(get("gone/y").is_none());
        assert_eq!(get("f").unwrap().mode, S_IFDIR | IMPLICIT_DIR_MODE);
        assert_eq!(entries.iter().filter(|e| e.name == "a").count(), 1);
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = Initramfs::new().to_bytes();
        assert!(parse(&bytes).is_empty());
        assert_eq!(
            bytes.len(),
            (HEADER_LEN + TRAILER.len() + 1).next_multiple_of(4)
        );
        let mut root_only = Initramfs::new();
        root_only.dir("/", 0o755);
        assert_eq!(root_only.to_bytes(), bytes);
    }

    #[test]
    #[should_panic(expected = "contains `..`")]
    fn dotdot_is_rejected() {
        Initramfs::new().file("/a/../etc/passwd", 0o644, "");
    }

    fn host_fixture() -> TempDir {
        let tmp = TempDir::new().unwrap();
        let root = tmp.path().join("tree");
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::write(root.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("sub/data"), vec![1u8; 10]).unwrap();
        fs::set_permissions(root.join("sub/data"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(root.join("sub/deeper"), fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::symlink("../run.sh", root.join("sub/link")).unwrap();
        tmp
    }

    #[test]
    fn host_file_and_tree() {
        let tmp = host_fixture();
        let root = tmp.path().join("tree");
        let mut fs = Initramfs::new();
        fs.host_file("/usr/bin/run", &root.join("run.sh")).unwrap();
        fs.host_tree("/opt/t", &root).unwrap();
        let entries = parse(&fs.to_bytes());
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(get("usr/bin/run").mode, S_IFREG | 0o750);
        assert_eq!(get("opt/t/run.sh").mode, S_IFREG | 0o750);
        assert_eq!(get("opt/t/sub/data").mode, S_IFREG | 0o600);
        assert_eq!(get("opt/t/sub/data").data, vec![1u8; 10]);
        assert_eq!(get("opt/t/sub/deeper").mode, S_IFDIR | 0o711);
        assert_eq!(get("opt/t/sub/link").mode, S_IFLNK | 0o777);
        assert_eq!(get("opt/t/sub/link").data, b"../run.sh");
    }

    #[test]
    fn unsupported_host_files_are_refused_without_partial_additions() {
        let tmp = host_fixture();
        let root = tmp.path().join("tree");
        let fifo = root.join("sub/fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut fs = Initramfs::new();
        fs.file("/keep", 0o644, "k");
        let before = fs.clone();
        let err = fs.host_tree("/t", &root).unwrap_err();
        assert!(err.to_string().contains("fifo"), "{err}");
        assert_eq!(fs, before);
        let err = fs.host_file("/x", &root.join("sub")).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let err = fs.host_file("/x", &root.join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn extracts_with_cpio() {
        if Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("skipped: `cpio` is not installed, extraction by a real cpio not checked");
            return;
        }
        let tmp = TempDir::new().unwrap();
        let mut fs = sample();
        // Creating device nodes needs privileges a test runner may lack; leave them out.
        fs.entries.remove("dev/console");
        let archive = tmp.path().join("initramfs.cpio");
        fs.write_to(File::create(&archive).unwrap()).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&out)
            .stdin(File::open(&archive).unwrap())
            .status()
            .unwrap();
        assert!(status.success());
        let meta = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
        assert_eq!(
            std::fs::read(out.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(meta("init").mode() & PERM_MASK, 0o755);
        assert_eq!(
            std::fs::read(out.join("etc/hostname")).unwrap(),
            b"sandbox\n"
        );
        assert_eq!(
            std::fs::read(out.join("bin/busybox")).unwrap(),
            vec![7u8; 4097]
        );
        assert_eq!(
            std::fs::read_link(out.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(meta("proc").is_dir());
        assert_eq!(meta("proc").mode() & PERM_MASK, 0o555);
        assert_eq!(meta("empty").len(), 0);
    }

    use std::fs::File;

    /// xorshift64*: a tiny deterministic generator, enough for varied inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_archives_round_trip() {
        const ALPHABET: &[u8] = b"abcxyz019_-.";
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut fs = Initramfs::new();
            // The data last written to each file path: every file in the archive must hold it.
            let mut last_data = std::collections::HashMap::new();
            for _ in 0..rng.below(30) + 1 {
                let depth = rng.below(4) + 1;
                let parts: Vec<String> = (0..depth)
                    .map(|_| {
                        let len = rng.below(12) + 1;
                        let name: String = (0..len)
                            .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize] as char)
                            .collect();
                        if name == "." || name == ".." {
                            "dot".to_string()
                        } else {
                            name
                        }
                    })
                    .collect();
                let path = format!("/{}", parts.join("/"));
                let size = rng.below(70) as usize;
                let data: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
                match rng.below(4) {
                    0 => fs.dir(&path, rng.below(0o1000) as u32),
                    1 => fs.symlink(&path, &parts[0]),
                    _ => {
                        last_data.insert(parts.join("/"), data.clone());
                        fs.file(&path, rng.below(0o10000) as u32, data)
                    }
                };
            }
            let bytes = fs.to_bytes();
            let parsed = parse(&bytes);
            assert_eq!(parsed.len(), fs.entries.len(), "seed {seed}");
            let mut seen = std::collections::HashSet::new();
            for (entry, (path, expected)) in parsed.iter().zip(&fs.entries) {
                assert_eq!(&entry.name, path, "seed {seed}");
                // Parents come first and are directories.
                if let Some((parent, _)) = path.rsplit_once('/') {
                    assert!(
                        seen.contains(parent),
                        "seed {seed}: {path} before its parent"
                    );
                    let p = parsed.iter().find(|e| e.name == parent).unwrap();
                    assert_eq!(p.mode & 0o170_000, S_IFDIR, "seed {seed}: parent of {path}");
                }
                seen.insert(path.clone());
                match expected {
                    Entry::File { mode, data } => {
                        assert_eq!(entry.mode, S_IFREG | mode);
                        assert_eq!(&entry.data, data, "seed {seed}: {path}");
                        assert_eq!(&entry.data, &last_data[path], "seed {seed}: {path}");
                    }
                    Entry::Dir { mode } => assert_eq!(entry.mode, S_IFDIR | mode),
                    Entry::Symlink { target } => assert_eq!(entry.data, target.as_bytes()),
                    Entry::CharDev { .. } => unreachable!(),
                }
            }
            assert_eq!(
                bytes,
                fs.clone().to_bytes(),
                "seed {seed}: not deterministic"
            );
        }
    }
}
