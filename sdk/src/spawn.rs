//! Sandboxes that create peer sandboxes: the grant a creator gives ([`SpawnGrant`]).
//!
//! Nothing inside a sandbox can create sandboxes unless its creator granted it
//! ([`crate::SandboxBuilder::allow_spawn`], `msbvm run --allow-spawn`). Programs in the guest
//! then ask the host over vsock (the in-guest `msbvm create/exec/cp/ls/stop/rm`); the
//! sandbox's runtime starts a spawn service before it confines itself, and that service
//! creates each child as a real sibling microVM, within the grant: at most
//! [`SpawnGrant::max_children`] live children, their CPUs and memory within the totals, images
//! from the grant's list only. A child gets nothing of its parent's: its own network with the
//! default policy, its own filesystem, no volumes, no secrets. Children are named
//! `PARENT.CHILD` on the host (`msbvm ls` shows their parent); the parent sees and controls
//! only its own, by their short names. They stop and are removed with their parent.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Memory a child gets when its request names none, in MiB.
pub const DEFAULT_CHILD_MEMORY_MIB: u64 = 256;
/// Memory granted per child when the grant names no total, in MiB.
pub const DEFAULT_MEMORY_PER_CHILD_MIB: u64 = 512;

/// What a sandbox may create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnGrant {
    /// Live children at once.
    pub max_children: u32,
    /// vCPUs of all live children together.
    pub max_cpus: u32,
    /// Memory of all live children together, in MiB.
    pub max_memory_mib: u64,
    /// Images children may use besides the default image and the parent's own.
    pub images: Vec<String>,
}

impl SpawnGrant {
    /// Up to `n` live children, one vCPU and [`DEFAULT_MEMORY_PER_CHILD_MIB`] each by default.
    pub fn children(n: u32) -> SpawnGrant {
        SpawnGrant {
            max_children: n,
            max_cpus: n,
            max_memory_mib: u64::from(n) * DEFAULT_MEMORY_PER_CHILD_MIB,
            images: Vec::new(),
        }
    }

    /// The children's vCPUs together.
    pub fn cpus(mut self, total: u32) -> Self {
        self.max_cpus = total;
        self
    }

    /// The children's memory together, in MiB.
    pub fn memory_mib(mut self, total: u64) -> Self {
        self.max_memory_mib = total;
        self
    }

    /// Allows children to use `image` too.
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Parses the CLI form `N[,cpus=C][,memory=MiB][,image=REF]...`.
    pub fn parse(text: &str) -> Result<SpawnGrant> {
        let bad = |why: String| {
            Error::InvalidConfig(format!(
                "--allow-spawn {text:?}: {why} (expected N[,cpus=C][,memory=MiB][,image=REF]...)"
            ))
        };
        let mut parts = text.split(',');
        let n: u32 = parts
            .next()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| bad("the number of children is missing".into()))?;
        let mut grant = SpawnGrant::children(n);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not KEY=VALUE")))?;
            match key.trim() {
                "cpus" => {
                    grant.max_cpus = value
                        .parse()
                        .map_err(|_| bad(format!("cpus {value:?} is not a number")))?
                }
                "memory" => {
                    grant.max_memory_mib = value
                        .parse()
                        .map_err(|_| bad(format!("memory {value:?} is not a number of MiB")))?
                }
                "image" => grant.images.push(value.to_string()),
                other => return Err(bad(format!("unknown key {other:?}"))),
            }
        }
        grant.check()?;
        Ok(grant)
    }

    /// Refuses a grant that can never be used.
    pub fn check(&self) -> Result<()> {
        if self.max_children == 0 || self.max_children > 64 {
            return Err(Error::InvalidConfig(format!(
                "a sandbox may be allowed 1 to 64 children, not {}",
                self.max_children
            )));
        }
        if self.max_cpus == 0 || self.max_memory_mib < 64 {
            return Err(Error::InvalidConfig(
                "a spawn grant needs at least 1 CPU and 64 MiB for its children".into(),
            ));
        }
        Ok(())
    }
}

/// The host name of child `child` of sandbox `parent`.
pub fn child_name(parent: &str, child: &str) -> Result<String> {
    crate::paths::validate_name(child)?;
    if child.contains('.') {
        return Err(Error::InvalidName {
            name: child.to_string(),
            reason: "a child's name may not contain '.'".into(),
        });
    }
    let name = format!("{parent}.{child}");
    crate::paths::validate_name(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse() {
        assert_eq!(SpawnGrant::parse("3").unwrap(), SpawnGrant::children(3));
        let g = SpawnGrant::parse("2,cpus=4,memory=1024,image=a:1,image=b").unwrap();
        assert_eq!((g.max_children, g.max_cpus, g.max_memory_mib), (2, 4, 1024));
        assert_eq!(g.images, ["a:1", "b"]);
        for bad in [
            "",
            "x",
            "0",
            "2,cpus",
            "2,gpus=1",
            "2,memory=lots",
            "2,cpus=0",
        ] {
            assert!(SpawnGrant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn child_names_are_scoped_and_checked() {
        assert_eq!(child_name("p", "w1").unwrap(), "p.w1");
        assert!(child_name("p", "../x").is_err());
        assert!(child_name("p", "a.b").is_err());
        assert!(child_name("p", &"x".repeat(62)).is_err());
    }
}
