//! Resolving an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) to ids.
//!
//! Names are looked up in the sandbox's own `/etc/passwd` and `/etc/group`,
//! read through the root filesystem backend before the guest boots (so the
//! answer is the image's, with no guest round trip).

use msbvm_fs::{FileSystem, ROOT_INODE};

use msbvm_sdk::{Error, Result};

use crate::root_file;

/// Largest passwd/group file read.
const MAX_DB_LEN: usize = 4 << 20;

/// `(uid, gid)` for `user`; the gid is the user's primary group when only a
/// user is given and the passwd file names one.
pub fn resolve(user: &str, root: Option<&dyn FileSystem>) -> Result<(u32, Option<u32>)> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = || {
        root.and_then(|fs| read_db(fs, "etc/passwd"))
            .unwrap_or_default()
    };
    let (uid, primary_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, lookup_passwd_uid(&passwd(), uid)),
        Err(_) => lookup_passwd_name(&passwd(), user_part).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "user {user_part:?} is not in the image's /etc/passwd; use a numeric UID[:GID]"
            ))
        })?,
    };
    let gid = match group_part {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => {
                let group = root
                    .and_then(|fs| read_db(fs, "etc/group"))
                    .unwrap_or_default();
                Some(lookup_group(&group, g).ok_or_else(|| {
                    Error::InvalidConfig(format!("group {g:?} is not in the image's /etc/group"))
                })?)
            }
        },
    };
    Ok((uid, gid))
}

fn lookup_passwd_name(passwd: &str, name: &str) -> Option<(u32, Option<u32>)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0] != name {
            return None;
        }
        let uid: u32 = f[2].parse().ok()?;
        Some((uid, f[3].parse::<u32>().ok()))
    })
}

fn lookup_passwd_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
            .then(|| f[3].parse().ok())
            .flatten()
    })
}

fn lookup_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// The image's `etc/passwd` or `etc/group`; an unreadable one (missing, not a regular
/// file, over [`MAX_DB_LEN`]) reads as empty, so only numeric ids resolve.
fn read_db(fs: &dyn FileSystem, path: &str) -> Option<String> {
    let bytes = root_file::read(fs, ROOT_INODE, path, MAX_DB_LEN)
        .map_err(|e| tracing::debug!(path, error = %e, "user database not read"))
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_fs::MemoryFs;

    fn image() -> MemoryFs {
        let fs = MemoryFs::new();
        fs.add_dir("etc", 0o755).unwrap();
        fs.add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
            0o644,
        )
        .unwrap();
        fs.add_file("etc/group", b"root:x:0:\nstaff:x:50:\n", 0o644)
            .unwrap();
        fs
    }

    #[test]
    fn names_and_numbers_resolve() {
        let fs = image();
        assert_eq!(resolve("app", Some(&fs)).unwrap(), (1000, Some(1001)));
        assert_eq!(resolve("app:staff", Some(&fs)).unwrap(), (1000, Some(50)));
        assert_eq!(resolve("0", Some(&fs)).unwrap(), (0, Some(0)));
        assert_eq!(resolve("42:7", None).unwrap(), (42, Some(7)));
        assert_eq!(resolve("42", None).unwrap(), (42, None));
        assert!(resolve("ghost", Some(&fs)).is_err());
        assert!(resolve("app:nogroup", Some(&fs)).is_err());
    }
}
