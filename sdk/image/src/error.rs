//! The crate's error type.

use std::io;

/// What can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A reference to pull names no registry host and no default registry is configured.
    #[error(
        "image reference {reference:?} names no registry: write the registry host in front \
         (for example `registry.example:5000/{reference}`), or set MSBVM_REGISTRY to the \
         registry host to use for such references"
    )]
    NoRegistry {
        /// The reference as given.
        reference: String,
    },
    /// The registry refused the credentials (or demands some and none were given).
    #[error("registry {registry} refused access to {reference}: {detail} (check the username and password or token)")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// The reference being pulled.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// Talking to the registry failed.
    #[error("pulling {reference} from the registry failed: {detail}")]
    Registry {
        /// The reference being pulled.
        reference: String,
        /// The error from the registry client.
        detail: String,
    },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; nothing was stored")]
    DigestMismatch {
        /// Which content (blob, layer diff_id, ...).
        what: String,
        /// The digest the manifest or config promised.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A layer archive tried something unsafe or exceeded a limit.
    #[error("refusing layer archive entry {path:?}: {reason}")]
    UnsafeArchive {
        /// The entry's path as written in the archive.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A manifest, index, config or archive is malformed or unsupported.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// No image manifest matches the wanted platform.
    #[error("no manifest for platform {wanted} in the image index (available: {available})")]
    NoMatchingPlatform {
        /// The platform asked for, `os/arch[/variant]`.
        wanted: String,
        /// The platforms the index offers.
        available: String,
    },
    /// The store holds no image by that reference.
    #[error("no image {0} in the store (pull or import it first)")]
    NotFound(String),
    /// A layer of a resolved image disappeared before it could be leased.
    #[error("layer {0} of the image was removed meanwhile; resolve the image again")]
    LayerGone(String),
    /// Layers could not be pinned (a bad owner name or a directory outside the store).
    #[error("cannot pin layers: {0}")]
    Pin(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps an I/O error with what the store was doing, for `map_err`.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
