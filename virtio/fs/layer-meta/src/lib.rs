//! Metadata of an unpacked image layer.
//!
//! Layers are unpacked by an unprivileged host user, so the tree on disk
//! cannot carry the owners, set-id bits, device nodes or `security.*`
//! xattrs the image asks for. The unpacker records them here, one entry per
//! path in the layer; the layered backend presents them to the guest.
//!
//! On disk a layer directory holds `rootfs/` (the tree: regular files,
//! directories, symlinks, hard links, FIFOs; device nodes as empty regular
//! files; whiteouts kept as the OCI `.wh.<name>` files and opaque markers as
//! `.wh..wh..opq`) and [`META_FILE`] (this struct as JSON).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the metadata next to a layer's `rootfs/`.
pub const META_FILE: &str = "meta.json";
/// Name of the unpacked tree inside a layer directory.
pub const ROOTFS_DIR: &str = "rootfs";
/// Prefix of an OCI whiteout file.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What the image says about one path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Owner in the guest.
    pub uid: u32,
    /// Group in the guest.
    pub gid: u32,
    /// Full `st_mode`: type bits and permissions, set-id and sticky bits included.
    pub mode: u32,
    /// Device number (`makedev(major, minor)` as Linux encodes it) for device nodes.
    #[serde(default)]
    pub rdev: u64,
    /// Extended attributes from the layer (PAX `SCHILY.xattr.*`), name and value.
    #[serde(default)]
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Metadata of every path in one layer, keyed by the path relative to the
/// layer root without a leading `/` (`""` is the root, `"etc/passwd"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Entries by relative path.
    pub entries: BTreeMap<String, EntryMeta>,
}

impl LayerMeta {
    /// Reads `<layer_dir>/meta.json`.
    pub fn load(layer_dir: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(layer_dir.join(META_FILE))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes `<layer_dir>/meta.json`.
    pub fn store(&self, layer_dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        std::fs::write(layer_dir.join(META_FILE), bytes)
    }
}
