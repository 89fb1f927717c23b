//! Just enough of `/etc/passwd` and `/etc/group` to run a process as a user:
//! primary group, supplementary groups and home directory. (glibc's NSS
//! functions are avoided on purpose: they do not work in a static binary.)

/// A user's entry in `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Looks `uid` up in the guest's `/etc/passwd`.
pub fn lookup(uid: u32) -> Option<User> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    find_user(&text, uid)
}

/// The supplementary groups of `user` from the guest's `/etc/group`, with
/// `primary` first.
pub fn groups_of(user: &str, primary: u32) -> Vec<u32> {
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    member_groups(&text, user, primary)
}

/// Finds `uid` in passwd-format `text`.
pub fn find_user(text: &str, uid: u32) -> Option<User> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || f[2].parse() != Ok(uid) {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
        })
    })
}

/// `primary` followed by every group in group-format `text` that lists
/// `user` as a member, without duplicates.
pub fn member_groups(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == user) {
            continue;
        }
        if let Ok(gid) = f[2].parse() {
            if !groups.contains(&gid) {
                groups.push(gid);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          broken line\n\
                          dev:x:1000:1001:Dev:/home/dev:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:dev,ops\ndocker:x:999:ops, dev\nbad:x:zz:dev\n";

    #[test]
    fn users_are_found_by_uid() {
        let u = find_user(PASSWD, 1000).unwrap();
        assert_eq!(
            u,
            User {
                name: "dev".into(),
                uid: 1000,
                gid: 1001,
                home: "/home/dev".into()
            }
        );
        assert_eq!(find_user(PASSWD, 0).unwrap().home, "/root");
        assert_eq!(find_user(PASSWD, 5), None);
    }

    #[test]
    fn supplementary_groups_follow_the_primary_one() {
        assert_eq!(member_groups(GROUP, "dev", 1001), vec![1001, 10, 999]);
        assert_eq!(member_groups(GROUP, "root", 0), vec![0]);
        assert_eq!(member_groups(GROUP, "ops", 10), vec![10, 999]);
    }
}
