//! The local OCI image store (`$MSBVM_HOME/images/`), as the SDK and the CLI use it.
//!
//! [`msbvm_image`] does the work (pull, import, unpack, garbage collection); this module
//! opens the store where sandboxes look for images and pulls an image a sandbox needs when
//! it is missing. Registries reached over plain HTTP (local test registries) must be named
//! explicitly: in [`PullOptions`] or, for pulls msbvm starts itself, in
//! `MSBVM_PLAIN_HTTP_REGISTRIES` (comma-separated `host:port`).

pub use msbvm_image::{
    Auth, ImageConfig, ImageInfo, ImageStore, IndicatifProgress, NoProgress, ProgressFn,
    PullOptions, PullProgress, PullStep, DEFAULT_IMAGE, REGISTRY_ENV,
};

use crate::error::{Error, Result};
use crate::paths::msbvm_home;

/// Environment variable listing registries to reach over plain HTTP.
pub const PLAIN_HTTP_ENV: &str = "MSBVM_PLAIN_HTTP_REGISTRIES";

/// The image store of this msbvm data directory.
pub fn store() -> Result<ImageStore> {
    store_in(&msbvm_home()?)
}

/// The image store of the msbvm data directory `home`.
pub fn store_in(home: &std::path::Path) -> Result<ImageStore> {
    ImageStore::open(&home.join("images")).map_err(image_error)
}

/// Pull options from the environment: plain-HTTP registries from [`PLAIN_HTTP_ENV`].
pub fn options_from_env() -> PullOptions {
    PullOptions {
        insecure_plain_http_registries: std::env::var(PLAIN_HTTP_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        ..PullOptions::default()
    }
}

/// Makes sure `reference` is in the store: the embedded default image is imported, any
/// other image is pulled (with `options`) when missing.
pub async fn ensure(
    reference: &str,
    options: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<()> {
    let store = store()?;
    if reference == DEFAULT_IMAGE {
        msbvm_image::ensure_default_image(&store).map_err(image_error)?;
        return Ok(());
    }
    if store.resolve(reference).is_ok() {
        return Ok(());
    }
    store
        .pull(reference, options, progress)
        .await
        .map(drop)
        .map_err(image_error)
}

/// Pulls `reference` into the store (the embedded default image is imported instead, with no
/// network) and returns what the store now holds for it.
pub async fn pull(
    reference: &str,
    options: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<ImageInfo> {
    let store = store()?;
    if reference != DEFAULT_IMAGE {
        return store
            .pull(reference, options, progress)
            .await
            .map_err(image_error);
    }
    msbvm_image::ensure_default_image(&store).map_err(image_error)?;
    let resolved = store.resolve(reference).map_err(image_error)?;
    store
        .list()
        .map_err(image_error)?
        .into_iter()
        .find(|i| i.reference == resolved.reference)
        .ok_or_else(|| image_error(msbvm_image::Error::NotFound(reference.to_string())))
}

/// The SDK error for an image failure.
pub fn image_error(e: msbvm_image::Error) -> Error {
    Error::Image(e)
}
