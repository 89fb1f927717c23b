//! The parts of the OCI image and docker formats the store reads: manifests, indexes,
//! configs and the `manifest.json` of `docker save` archives. Every field the store does not
//! need is ignored, so unknown extensions never break a pull.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// OCI image manifest media type.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config media type.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer media type.
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer media type.
pub(crate) const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer media type.
pub(crate) const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Manifest media types the store accepts from a registry, in order of preference.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] =
    &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest manifest, index or config the store reads into memory.
pub(crate) const MAX_JSON_BYTES: u64 = 8 << 20;

/// A content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

impl Descriptor {
    /// The size as an unsigned number; negative sizes are malformed.
    pub(crate) fn size(&self) -> Result<u64> {
        u64::try_from(self.size).map_err(|_| {
            Error::InvalidImage(format!("negative size in descriptor of {}", self.digest))
        })
    }
}

/// Platform of an index entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest or an index: which one is told by `manifests` vs `layers` (and the media type).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

impl Manifest {
    /// Parses a manifest or index.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidImage(format!("malformed manifest: {e}")))?;
        if m.schema_version != 2 {
            return Err(Error::InvalidImage(format!(
                "unsupported manifest schema version {}",
                m.schema_version
            )));
        }
        Ok(m)
    }

    /// Whether this is an index / manifest list.
    pub(crate) fn is_index(&self) -> bool {
        matches!(self.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
            || (self.manifests.is_some() && self.layers.is_none())
    }

    /// The config and layers of an image manifest.
    pub(crate) fn image_parts(&self) -> Result<(&Descriptor, &[Descriptor])> {
        match (&self.config, &self.layers) {
            (Some(config), Some(layers)) if !self.is_index() => Ok((config, layers)),
            _ => Err(Error::InvalidImage(
                "expected an image manifest with a config and layers".into(),
            )),
        }
    }

    /// Builds an OCI image manifest for `config` and `layers` (imports of formats without one).
    pub(crate) fn oci_image(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_string()),
            config: Some(config),
            layers: Some(layers),
            manifests: None,
        }
    }
}

/// The platform to pick from an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture in OCI spelling (`amd64`, `arm64`).
    pub architecture: String,
    /// Variant (`v8`), matched only when set.
    pub variant: Option<String>,
}

impl Platform {
    /// Linux on the host's architecture.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn matches(&self, p: &PlatformSpec) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && self
                .variant
                .as_ref()
                .is_none_or(|v| p.variant.as_ref() == Some(v))
    }

    /// Picks the index entry for this platform.
    pub(crate) fn select<'a>(&self, entries: &'a [Descriptor]) -> Result<&'a Descriptor> {
        entries
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| self.matches(p)))
            .ok_or_else(|| Error::NoMatchingPlatform {
                wanted: self.to_string(),
                available: entries
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The image config blob (only what the store uses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConfigFile {
    pub created: Option<String>,
    pub config: Option<ContainerConfig>,
    pub rootfs: Option<RootFs>,
}

impl ConfigFile {
    /// Parses a config blob.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidImage(format!("malformed image config: {e}")))
    }

    /// The layer diff_ids, lowest first.
    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }
}

/// The runtime part of the config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// `rootfs` of the config.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One image in a `docker save` archive's `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DockerArchiveImage {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// Whether a layer media type is a tar the store can unpack (compression is sniffed).
pub(crate) fn is_layer_media_type(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, hex: char) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", hex.to_string().repeat(64)),
            size: 1,
            platform: Some(PlatformSpec {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: None,
        }
    }

    #[test]
    fn platform_selection_picks_the_matching_entry_or_lists_the_choices() {
        let entries = [entry("arm64", 'b'), entry("amd64", 'a')];
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert!(amd64.select(&entries).unwrap().digest.ends_with('a'));
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd64
        };
        let err = s390.select(&entries).unwrap_err().to_string();
        assert!(err.contains("linux/arm64, linux/amd64"), "{err}");
    }
}
