//! Translation between host and guest user and group ids.

/// The id the guest sees for a host id that no range maps (the kernel's
/// `overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// `count` consecutive ids starting at `host` on the host and at `guest` in
/// the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First host id.
    pub host: u32,
    /// First guest id.
    pub guest: u32,
    /// Number of ids.
    pub count: u32,
}

impl IdRange {
    fn to_guest(self, host: u32) -> Option<u32> {
        let d = host.checked_sub(self.host)?;
        (d < self.count).then(|| self.guest.wrapping_add(d))
    }

    fn to_host(self, guest: u32) -> Option<u32> {
        let d = guest.checked_sub(self.guest)?;
        (d < self.count).then(|| self.host.wrapping_add(d))
    }
}

/// How host owners appear in the guest and guest owners land on the host.
/// The first matching range wins; host ids no range covers appear as
/// [`OVERFLOW_ID`], and guest ids no range covers cannot be set (`EINVAL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMap {
    /// User id ranges.
    pub uids: Vec<IdRange>,
    /// Group id ranges.
    pub gids: Vec<IdRange>,
}

impl Default for IdMap {
    fn default() -> Self {
        Self::identity()
    }
}

impl IdMap {
    /// Every id is itself.
    pub fn identity() -> Self {
        let all = IdRange {
            host: 0,
            guest: 0,
            count: u32::MAX,
        };
        IdMap {
            uids: vec![all],
            gids: vec![all],
        }
    }

    /// Host `uid`/`gid` appear as guest root (0/0), the usual choice for an
    /// unprivileged host user sharing its own files; every other id is
    /// unmapped.
    pub fn host_user_as_root(uid: u32, gid: u32) -> Self {
        IdMap {
            uids: vec![IdRange {
                host: uid,
                guest: 0,
                count: 1,
            }],
            gids: vec![IdRange {
                host: gid,
                guest: 0,
                count: 1,
            }],
        }
    }

    /// The guest uid for a host uid.
    pub fn guest_uid(&self, host: u32) -> u32 {
        self.uids
            .iter()
            .find_map(|r| r.to_guest(host))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The guest gid for a host gid.
    pub fn guest_gid(&self, host: u32) -> u32 {
        self.gids
            .iter()
            .find_map(|r| r.to_guest(host))
            .unwrap_or(OVERFLOW_ID)
    }

    /// The host uid for a guest uid, if mapped.
    pub fn host_uid(&self, guest: u32) -> Option<u32> {
        self.uids.iter().find_map(|r| r.to_host(guest))
    }

    /// The host gid for a guest gid, if mapped.
    pub fn host_gid(&self, guest: u32) -> Option<u32> {
        self.gids.iter().find_map(|r| r.to_host(guest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_map_both_ways_and_unmapped_ids_overflow() {
        let m = IdMap {
            uids: vec![
                IdRange {
                    host: 1000,
                    guest: 0,
                    count: 1,
                },
                IdRange {
                    host: 100_000,
                    guest: 1,
                    count: 10,
                },
            ],
            gids: vec![IdRange {
                host: 1000,
                guest: 0,
                count: 1,
            }],
        };
        assert_eq!(m.guest_uid(1000), 0);
        assert_eq!(m.guest_uid(100_004), 5);
        assert_eq!(m.guest_uid(100_010), OVERFLOW_ID);
        assert_eq!(m.guest_uid(0), OVERFLOW_ID);
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(5), Some(100_004));
        assert_eq!(m.host_uid(11), None);
        assert_eq!(m.host_gid(1), None);
        assert_eq!(IdMap::identity().guest_uid(u32::MAX - 1), u32::MAX - 1);
    }
}
