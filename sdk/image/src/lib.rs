//! msbvm's OCI image store.
//!
//! Images come from registries ([`ImageStore::pull`]), OCI image layouts
//! ([`ImageStore::import_oci_layout`]), `docker save` archives
//! ([`ImageStore::import_docker_archive`]) or the embedded busybox image
//! ([`ensure_default_image`]). Blobs are stored once by digest, layers unpacked once by
//! diff_id into the on-disk form the layered file system backend reads (see
//! [`msbvm_fs::layer_meta`]); [`ImageStore::resolve`] hands the runtime the layer
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
pub use progress::{IndicatifProgress, NoProgress, PullProgress};
pub use pull::{Auth, PullOptions};
pub use reference::REGISTRY_ENV;
pub use spec::Platform;
pub use store::{ImageConfig, ImageInfo, ImageStore, LayerLease, ResolvedImage};
