//! msbvm's OCI image store.
//!
//! Images come from registries ([`ImageStore::pull`]), OCI image layouts
//! ([`ImageStore::import_oci_layout`]), `docker save` archives
//! ([`ImageStore::import_docker_archive`]) or the embedded busybox image
//! ([`ensure_default_image`]). Blobs are stored once by digest, layers unpacked once by
//! diff_id into the on-disk form the layered file system backend reads (see
//! [`msbvm_layer_meta`]); [`ImageStore::resolve`] hands the runtime the layer
//! directories and the image config, and [`ImageStore::lease`] keeps them from being
//! garbage-collected while a sandbox runs. The layout on disk is described in the `store`
//! module.
//!
//! Nothing here assumes a registry: a reference to pull must name its registry host, or
//! [`REGISTRY_ENV`] must name one.

mod default_image;
mod digest;
mod error;
mod import;
mod lock;
mod progress;
mod pull;
mod reference;
mod spec;
mod store;
#[cfg(test)]
mod testutil;
mod unpack;

pub use default_image::{ensure_default_image, DEFAULT_IMAGE};
pub use error::{Error, Result};
pub use progress::{IndicatifProgress, NoProgress, ProgressFn, PullProgress, PullStep};
pub use pull::{Auth, PullOptions};
pub use reference::REGISTRY_ENV;
pub use spec::Platform;
pub use store::{ImageConfig, ImageInfo, ImageStore, LayerLease, ResolvedImage};

/// Entry points for the fuzz targets in `sdk/image/fuzz`; not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    use crate::spec::{
        is_layer_media_type, ConfigFile, DockerArchiveImage, Manifest, Platform, MAX_JSON_BYTES,
    };

    /// Parses `bytes` as the pull and import code do: a manifest or index (and what is read
    /// from it), an image config, and a `docker save` manifest.
    pub fn parse_image_json(bytes: &[u8]) {
        if let Ok(manifest) = Manifest::parse(bytes) {
            if manifest.is_index() {
                let entries = manifest.manifests.as_deref().unwrap_or_default();
                let _ = Platform::host().select(entries);
            } else if let Ok((config, layers)) = manifest.image_parts() {
                let _ = config.size().map(|s| s > MAX_JSON_BYTES);
                for layer in layers {
                    let _ = (layer.size(), is_layer_media_type(&layer.media_type));
                }
            }
        }
        if let Ok(config) = ConfigFile::parse(bytes) {
            let _ = config.diff_ids().len();
            let c = config.config.unwrap_or_default();
            let _ = (c.entrypoint, c.cmd, c.env, c.working_dir, c.user);
        }
        let _ = serde_json::from_slice::<Vec<DockerArchiveImage>>(bytes);
    }

    /// Unpacks a layer blob (gzip, zstd or plain tar) into the empty directory `dest`, with
    /// small limits; returns the diff_id.
    pub fn unpack_layer(blob: &Path, dest: &Path) -> crate::Result<String> {
        let limits = crate::unpack::Limits {
            max_bytes: 64 << 20,
            max_entries: 4096,
        };
        crate::unpack::unpack_layer(blob, dest, limits)
    }
}
