//! Image references: which ones name a registry, and their normalized spelling.
//!
//! A reference is `[registry/]repository[:tag][@digest]`. The first path component is a
//! registry host when it contains a `.` or a `:` or is `localhost` (the convention every
//! container tool follows). No registry host is ever assumed: a reference to pull without
//! one takes the host from [`REGISTRY_ENV`] or is refused. Images imported from files may
//! carry local names without a host (`msbvm-default:latest`).

use crate::error::{Error, Result};

/// Environment variable naming the registry host (`host[:port]`) used for references that
/// name none.
pub const REGISTRY_ENV: &str = "MSBVM_REGISTRY";

/// A parsed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageName {
    /// Registry host and port, if the reference names one.
    pub registry: Option<String>,
    /// Repository path (`library/alpine`).
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `sha256:...` when pinned by digest.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses `reference` without adding a registry.
    pub(crate) fn parse(reference: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        if reference.is_empty() || reference.len() > 512 {
            return Err(bad("it must be 1 to 512 characters long"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                crate::digest::sha256_hex(digest)
                    .map_err(|_| bad("the digest must be sha256:<64 hex digits>"))?;
                (rest, Some(digest.to_string()))
            }
            None => (reference, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_string()), path)
            }
            _ => (None, rest),
        };
        // A ':' after the last '/' separates the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                !c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                    || !c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
            })
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(bad(
                "the repository must be lowercase letters, digits and ._-/ separators",
            ));
        }
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad(
                    "the tag must be 1 to 128 letters, digits, '.', '_' or '-'",
                ));
            }
        }
        if let Some(registry) = &registry {
            if !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return Err(bad("the registry host contains invalid characters"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// Parses a reference to pull: the registry comes from the reference or [`REGISTRY_ENV`].
    pub(crate) fn parse_for_pull(reference: &str) -> Result<Self> {
        let mut name = Self::parse(reference)?;
        if name.registry.is_none() {
            match default_registry() {
                Some(host) => name.registry = Some(host),
                None => {
                    return Err(Error::NoRegistry {
                        reference: reference.to_string(),
                    })
                }
            }
        }
        Ok(name)
    }
}

/// The registry host from [`REGISTRY_ENV`], if set.
pub(crate) fn default_registry() -> Option<String> {
    std::env::var(REGISTRY_ENV)
        .ok()
        .map(|v| v.trim().trim_end_matches('/').to_string())
        .filter(|v| !v.is_empty())
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(registry) = &self.registry {
            write!(f, "{registry}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_tags_and_recognizes_registry_hosts() {
        let n = ImageName::parse("localhost:5000/alpine").unwrap();
        assert_eq!(n.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(n.to_string(), "localhost:5000/alpine:latest");
        let n = ImageName::parse("registry.example/a/b:3.20").unwrap();
        assert_eq!(n.to_string(), "registry.example/a/b:3.20");
        let n = ImageName::parse("msbvm-default").unwrap();
        assert_eq!(n.registry, None);
        assert_eq!(n.to_string(), "msbvm-default:latest");
        let d = format!("sha256:{}", "0".repeat(64));
        let n = ImageName::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(n.tag, None);
        assert_eq!(n.to_string(), format!("localhost/x@{d}"));
    }

    #[test]
    fn rejects_malformed_references() {
        for r in [
            "",
            "UPPER/case",
            "a//b",
            "a:",
            "a:b/c:",
            "x@sha256:12",
            "a/../b:tag/x",
            "a/../b",
            "-a",
        ] {
            assert!(ImageName::parse(r).is_err(), "{r} accepted");
        }
    }

    #[test]
    fn pull_without_registry_names_the_fix() {
        // Only meaningful when the variable is unset in the test environment.
        if default_registry().is_some() {
            eprintln!("skipped: {REGISTRY_ENV} is set in the environment");
            return;
        }
        let err = ImageName::parse_for_pull("alpine:3.20")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.example:5000/alpine:3.20"), "{err}");
        assert!(err.contains(REGISTRY_ENV), "{err}");
    }
}
