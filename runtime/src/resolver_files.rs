//! `/etc/resolv.conf` and `/etc/hosts` written into an image root's writable layer before
//! the guest boots.
//!
//! The agent could write them at boot, as it does on other roots, but over virtio-fs every
//! step (lookups, create, write, release, rename, reading the image's `/etc/hosts`) is a
//! guest round trip: measured at 70-85 ms of a 225 ms agent start-up in the nested suite.
//! Here they go through the same filesystem backend the guest's requests reach, in-process,
//! before the VM exists, so the guest sees the same files in the same layer, written the way
//! the agent writes them (a temporary name renamed over the final one, replacing a symlink
//! instead of following it; [`msbvm_protocol::resolver`] decides the content).
//!
//! Failing is not fatal: the caller leaves `BootConfig::resolver_files_written` false and the
//! agent writes them at boot as before.

use std::ffi::CString;
use std::io;

use msbvm_fs::{Context, FileSystem, Inode, ROOT_INODE};
use msbvm_protocol::boot::NetworkSetup;
use msbvm_protocol::resolver::{hosts, resolv_conf};

use crate::root_file;

/// The image's `/etc/hosts` is read up to this size; a larger one is left out of the merge
/// (the agent's read has no such case: a hosts file this size is not one).
const MAX_HOSTS_LEN: usize = 1 << 20;

/// Writes `etc/resolv.conf` and `etc/hosts` (the image's lines kept below msbvm's block)
/// into `fs` as root, creating `etc` if the image has none. `hostname` is the guest's.
pub fn write(fs: &dyn FileSystem, setup: &NetworkSetup, hostname: &str) -> io::Result<()> {
    let ctx = Context::default();
    let etc = etc_dir(fs, &ctx)?;
    let result = (|| {
        place(
            fs,
            &ctx,
            etc,
            "resolv.conf",
            resolv_conf(&setup.dns).as_bytes(),
        )?;
        // Missing, a symlink (which would be resolved in the guest's namespace, not here),
        // too large or not text: start from nothing, as the agent does with what it cannot read.
        let existing = root_file::read(fs, etc, "hosts", MAX_HOSTS_LEN)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        place(
            fs,
            &ctx,
            etc,
            "hosts",
            hosts(&existing, setup, hostname).as_bytes(),
        )
    })();
    fs.forget(etc, 1);
    result
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(io::Error::other)
}

/// `etc`, looked up (one reference the caller forgets) or made; anything but a directory
/// (a symlink included: it would point into the guest's namespace) is refused.
fn etc_dir(fs: &dyn FileSystem, ctx: &Context) -> io::Result<Inode> {
    let name = cname("etc")?;
    let entry = match fs.lookup(ctx, ROOT_INODE, &name) {
        Ok(e) => e,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            fs.mkdir(ctx, ROOT_INODE, &name, 0o755, 0)?
        }
        Err(e) => return Err(e),
    };
    if entry.attr.mode & libc::S_IFMT != libc::S_IFDIR {
        fs.forget(entry.inode, 1);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the image's /etc is not a directory",
        ));
    }
    Ok(entry.inode)
}

/// Gives `dir/name` the content `content` (mode 0644): written under a temporary name, then
/// renamed over `name`, so the layer never holds half a file under the real name.
fn place(
    fs: &dyn FileSystem,
    ctx: &Context,
    dir: Inode,
    name: &str,
    content: &[u8],
) -> io::Result<()> {
    let tmp = cname(&format!("{name}.msbvm-tmp"))?;
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
    let (entry, open) = fs.create(ctx, dir, &tmp, libc::S_IFREG | 0o644, flags, 0)?;
    let written = write_all(fs, ctx, entry.inode, open.handle, content);
    let released = fs.release(ctx, entry.inode, 0, open.handle);
    fs.forget(entry.inode, 1);
    let renamed = written
        .and(released)
        .and_then(|()| fs.rename(ctx, dir, &tmp, dir, &cname(name)?, 0));
    if renamed.is_err() {
        let _ = fs.unlink(ctx, dir, &tmp);
    }
    renamed
}

fn write_all(
    fs: &dyn FileSystem,
    ctx: &Context,
    inode: Inode,
    handle: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let n = fs.write(ctx, inode, handle, done as u64, &data[done..], 0)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the backend wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use msbvm_fs::{LayeredConfig, LayeredFs, MemoryFs};
    use msbvm_protocol::resolver::{HOSTS_BEGIN, HOSTS_END};

    use super::*;
    fn read_file(fs: &dyn FileSystem, path: &str) -> io::Result<Vec<u8>> {
        root_file::read(fs, ROOT_INODE, path, 1 << 20)
    }

    fn layered(lower: &Path, upper: &Path) -> LayeredFs {
        LayeredFs::new(vec![lower.to_path_buf()], upper, LayeredConfig::default()).unwrap()
    }

    /// Into a real layered root: the image's resolv.conf symlink is replaced (not followed),
    /// its hosts lines are kept under msbvm's block, the files land in the writable layer and
    /// the image's layer is untouched; a second boot's write replaces only msbvm's block.
    #[test]
    fn written_into_the_upper_layer_keeping_the_image_lines() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (layer, upper) = (tmp.path().join("layer"), tmp.path().join("upper"));
        let lower = layer.join(msbvm_fs::layer_meta::ROOTFS_DIR);
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        msbvm_fs::layer_meta::LayerMeta::default()
            .store(&layer)
            .unwrap();
        symlink("../run/resolv.conf", lower.join("etc/resolv.conf")).unwrap();
        std::fs::write(lower.join("etc/hosts"), "192.168.1.1 router\n").unwrap();
        let fs = layered(&layer, &upper);

        write(&fs, &NetworkSetup::example(), "box-1").unwrap();
        let resolv = read_file(&fs, "etc/resolv.conf").unwrap();
        assert_eq!(
            resolv,
            b"# written by msbvm at boot\nnameserver 10.0.2.3\nnameserver 1.1.1.1\n"
        );
        let hosts = String::from_utf8(read_file(&fs, "etc/hosts").unwrap()).unwrap();
        assert_eq!(
            hosts,
            format!(
                "{HOSTS_BEGIN}\n127.0.0.1\tlocalhost\n10.0.2.15\tbox-1\n10.0.2.2\t\
                 host.msbvm.internal gateway\n10.0.2.9\tx good-name\n{HOSTS_END}\n\
                 192.168.1.1 router\n"
            )
        );
        let tree = upper.join(msbvm_fs::layered::UPPER_TREE);
        assert!(tree.join("etc/resolv.conf").is_file());
        assert!(tree.join("etc/hosts").is_file());
        assert!(!tree.join("etc/resolv.conf.msbvm-tmp").exists());
        assert!(std::fs::symlink_metadata(lower.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(lower.join("etc/hosts")).unwrap(),
            "192.168.1.1 router\n"
        );

        // The same root again (a restarted sandbox): one block, renamed.
        let fs = layered(&layer, &upper);
        write(&fs, &NetworkSetup::example(), "renamed").unwrap();
        let again = String::from_utf8(read_file(&fs, "etc/hosts").unwrap()).unwrap();
        assert_eq!(again.matches(HOSTS_BEGIN).count(), 1);
        assert!(again.contains("10.0.2.15\trenamed\n"), "{again}");
        assert!(!again.contains("box-1"));
        assert!(again.ends_with("192.168.1.1 router\n"));
    }

    #[test]
    fn an_image_without_etc_gets_one() {
        let fs = MemoryFs::new();
        write(&fs, &NetworkSetup::example(), "box").unwrap();
        let hosts = String::from_utf8(read_file(&fs, "etc/hosts").unwrap()).unwrap();
        assert!(hosts.contains("10.0.2.15\tbox\n"), "{hosts}");
        assert!(read_file(&fs, "etc/resolv.conf").is_ok());
    }

    /// Only a regular hosts file is merged; `/etc` must be a directory (a symlink would be
    /// the guest's to resolve), and then nothing is written: the agent does it at boot.
    #[test]
    fn odd_images_are_handled_without_following_links() {
        let fs = MemoryFs::new();
        fs.add_dir("etc", 0o755).unwrap();
        fs.add_symlink("etc/hosts", "/run/hosts").unwrap();
        write(&fs, &NetworkSetup::example(), "box").unwrap();
        let hosts = String::from_utf8(read_file(&fs, "etc/hosts").unwrap()).unwrap();
        assert!(hosts.starts_with(HOSTS_BEGIN) && hosts.ends_with(&format!("{HOSTS_END}\n")));

        let fs = MemoryFs::new();
        fs.add_symlink("etc", "usr/etc").unwrap();
        let e = write(&fs, &NetworkSetup::example(), "box").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }
}
