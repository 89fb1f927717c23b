//! Sandboxes that create peer sandboxes: the grant a creator gives ([`SpawnGrant`]).
//!
//! Nothing inside a sandbox can create sandboxes unless its creator granted it
//! ([`crate::SandboxBuilder::allow_spawn`], `msbvm run --allow-spawn`). Programs in the guest
//! then ask the host over vsock (the in-guest `msbvm create/exec/cp/ls/stop/rm`); the
//! sandbox's runtime starts a spawn service before it confines itself, and that service
//! creates each child as a real sibling microVM, within the grant: at most
//! [`SpawnGrant::max_children`] live children, their CPUs and memory within the totals, images
//! from the grant's list only. A child gets nothing of its parent's: its own network with the
//! default policy, its own filesystem, no volumes, no secrets. Its creator may give it the
//! parent's secrets the grant names ([`SpawnGrant::secrets`]; its own placeholders, the same
//! hosts), allow
//! rules only from the grant's [`SpawnGrant::net`] list (deny rules and no network at all are
//! always allowed), and, where the grant's [`SpawnGrant::depth`] is over 1, a spawn grant of
//! its own carved out of this one (the whole tree below the first sandbox stays within the
//! first grant). Children are named `PARENT.CHILD` on the host (`msbvm ls` shows their
//! parent); the parent sees and controls only its own, by their short names. They stop and
//! are removed with their parent, unless the host detached them ([`crate::Sandbox::detach`]).

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
    /// Network allow rules (`--net-allow` grammar, compared as written) children may be
    /// given; nothing else widens a child's default policy.
    #[serde(default)]
    pub net: Vec<String>,
    /// Levels of sandboxes below this one: 1 (the default) lets it create children that
    /// cannot spawn; 2 lets those children be given grants of their own (with depth 1); at
    /// most [`MAX_DEPTH`].
    #[serde(default = "one")]
    pub depth: u32,
    /// Names of this sandbox's own secrets children may be given (each child gets its own
    /// placeholder, bound to the same hosts).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// The deepest tree a grant may allow below a sandbox.
pub const MAX_DEPTH: u32 = 4;

fn one() -> u32 {
    1
}

impl SpawnGrant {
    /// Up to `n` live children, one vCPU and [`DEFAULT_MEMORY_PER_CHILD_MIB`] each by default.
    pub fn children(n: u32) -> SpawnGrant {
        SpawnGrant {
            max_children: n,
            max_cpus: n,
            max_memory_mib: u64::from(n) * DEFAULT_MEMORY_PER_CHILD_MIB,
            images: Vec::new(),
            net: Vec::new(),
            depth: 1,
            secrets: Vec::new(),
        }
    }

    /// Lets children be given this sandbox's secret `name`.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Lets children be given the network allow rule `rule`.
    pub fn net_allow(mut self, rule: impl Into<String>) -> Self {
        self.net.push(rule.into());
        self
    }

    /// Levels of sandboxes below this one (see [`SpawnGrant::depth`]).
    pub fn depth(mut self, levels: u32) -> Self {
        self.depth = levels;
        self
    }

    /// Checks that `child`, a grant a child asks for, fits within this one: this grant lets
    /// children spawn (depth over 1), and the child's depth, images (from `images`, what
    /// this grant's children may use) and network rules are within it. The resources the
    /// child's grant names are reserved by the caller.
    pub fn admits(&self, child: &SpawnGrant, images: &[String]) -> std::result::Result<(), String> {
        if self.depth <= 1 {
            return Err(
                "this sandbox's children may not spawn: its creator's grant has depth 1 (the host raises it with --allow-spawn N,depth=D)".into(),
            );
        }
        if child.depth >= self.depth {
            return Err(format!(
                "a child's grant may have depth {} at most (this sandbox's is {})",
                self.depth - 1,
                self.depth
            ));
        }
        if let Some(image) = child.images.iter().find(|i| !images.contains(i)) {
            return Err(format!(
                "image {image:?} is not granted to this sandbox's children"
            ));
        }
        if let Some(rule) = child.net.iter().find(|r| !self.net.contains(r)) {
            return Err(format!(
                "network rule {rule:?} is not granted to this sandbox's children"
            ));
        }
        if let Some(name) = child.secrets.iter().find(|s| !self.secrets.contains(s)) {
            return Err(format!(
                "secret {name:?} is not granted to this sandbox's children"
            ));
        }
        Ok(())
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

    /// Parses the CLI form
    /// `N[,cpus=C][,memory=MiB][,image=REF]...[,net=RULE]...[,secret=NAME]...[,depth=D]`.
    pub fn parse(text: &str) -> Result<SpawnGrant> {
        let bad = |why: String| {
            Error::InvalidConfig(format!(
                "--allow-spawn {text:?}: {why} (expected N[,cpus=C][,memory=MiB][,image=REF]...[,net=RULE]...[,secret=NAME]...[,depth=D])"
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
                "net" => grant.net.push(value.trim().to_string()),
                "secret" => grant.secrets.push(value.trim().to_string()),
                "depth" => {
                    grant.depth = value
                        .parse()
                        .map_err(|_| bad(format!("depth {value:?} is not a number")))?
                }
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
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return Err(Error::InvalidConfig(format!(
                "a spawn grant's depth is 1 to {MAX_DEPTH}, not {}",
                self.depth
            )));
        }
        if let Some(rule) = self.net.iter().find(|r| r.is_empty() || r.len() > 512) {
            return Err(Error::InvalidConfig(format!(
                "a spawn grant's network rule must be 1 to 512 bytes, not {rule:?}"
            )));
        }
        if self.images.len() + self.net.len() + self.secrets.len() > 256 {
            return Err(Error::InvalidConfig(
                "a spawn grant names at most 256 images, network rules and secrets".into(),
            ));
        }
        if let Some(name) = self.secrets.iter().find(|s| s.is_empty() || s.len() > 256) {
            return Err(Error::InvalidConfig(format!(
                "a spawn grant's secret name must be 1 to 256 bytes, not {name:?}"
            )));
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
        assert_eq!((g.net.clone(), g.depth), (Vec::<String>::new(), 1));
        let g = SpawnGrant::parse("1,net=host,net=example.com,depth=2,secret=TOKEN").unwrap();
        assert_eq!(
            (g.net, g.depth),
            (vec!["host".into(), "example.com".into()], 2)
        );
        assert_eq!(g.secrets, ["TOKEN"]);
        for bad in [
            "",
            "x",
            "0",
            "2,cpus",
            "2,gpus=1",
            "2,memory=lots",
            "2,cpus=0",
            "2,depth=0",
            "2,depth=9",
            "2,net=",
        ] {
            assert!(SpawnGrant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_childs_grant_must_fit_within_its_parents() {
        let images = vec!["default".to_string(), "extra".to_string()];
        let parent = SpawnGrant::children(4).net_allow("host").depth(2);
        let child = || SpawnGrant::children(1);
        // (parent, child, None when admitted, else words the refusal contains)
        let cases: [(&SpawnGrant, SpawnGrant, Option<&[&str]>); 9] = [
            (&parent, child(), None),
            (&SpawnGrant::children(4), child(), Some(&["depth 1"])),
            (&parent, child().depth(2), Some(&["depth 1 at most"])),
            (&parent, child().net_allow("host"), None),
            (
                &parent,
                child().net_allow("10.0.0.0/8"),
                Some(&["not granted"]),
            ),
            (&parent, child().image("extra"), None),
            (&parent, child().image("evil"), Some(&["not granted"])),
            (
                &parent,
                child().secret("TOKEN"),
                Some(&["secret", "not granted"]),
            ),
            (
                &parent.clone().secret("TOKEN"),
                child().secret("TOKEN"),
                None,
            ),
        ];
        for (parent, child, refusal) in cases {
            let got = parent.admits(&child, &images);
            match refusal {
                None => assert!(got.is_ok(), "{child:?}: {got:?}"),
                Some(words) => {
                    let e = got.unwrap_err();
                    assert!(words.iter().all(|w| e.contains(w)), "{child:?}: {e}");
                }
            }
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
