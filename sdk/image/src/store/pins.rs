//! Pins: layers that something outside the store (a sandbox snapshot) lies on, kept by
//! garbage collection until their owner lets go, whatever happens to the images' references.
//!
//! A lease ([`ImageStore::lease`]) lasts as long as a process holds it; a snapshot has no
//! process, so it pins its layers in `pins/<owner>` instead: one file per owner, one layer
//! (the hex of its diff ID) per line, written atomically. Garbage collection keeps every
//! pinned layer; a pin file it cannot read makes it keep all layers (never delete what
//! might be in use) and say so.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::ImageStore;
use crate::error::{io_err, Error, Result};

/// The pins' directory under the store's root.
const PINS_DIR: &str = "pins";
/// Longest owner name.
const MAX_OWNER_LEN: usize = 128;
/// Larger pin files are not the store's.
const MAX_PIN_BYTES: u64 = 1 << 20;

/// The layers pinned by every owner, or `None` when some pin could not be read (then no
/// layer may be deleted).
pub(super) type Pinned = Option<BTreeSet<String>>;

impl ImageStore {
    /// Pins the layer directories `layers` (from [`ImageStore::resolve`]) for `owner`
    /// (letters, digits, `.`, `_`, `-`), replacing its earlier pin: garbage collection keeps
    /// them until [`ImageStore::unpin`]. The caller must hold them (a lease) while pinning,
    /// or a collection may already have taken them; a missing layer is an error.
    pub fn pin(&self, owner: &str, layers: &[PathBuf]) -> Result<()> {
        check_owner(owner)?;
        let mut lines = String::new();
        for dir in layers {
            let hex = self.layer_hex(dir)?;
            if !dir.is_dir() {
                return Err(Error::LayerGone(dir.display().to_string()));
            }
            lines.push_str(&hex);
            lines.push('\n');
        }
        // Shared, as pulls hold it: a collection is not halfway through when the pin lands.
        let _gc = self.gc_guard()?;
        let dir = self.pins_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        self.write_atomic(&dir.join(owner), lines.as_bytes())
    }

    /// Drops `owner`'s pin (none is fine); the next garbage collection may take its layers.
    pub fn unpin(&self, owner: &str) -> Result<()> {
        check_owner(owner)?;
        let path = self.pins_dir().join(owner);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Every pinned layer ([`Pinned`]).
    pub(super) fn pinned_layers(&self) -> Pinned {
        let dir = self.pins_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(BTreeSet::new()),
            Err(e) => {
                tracing::warn!("cannot list {}: {e}; keeping every layer", dir.display());
                return None;
            }
        };
        let mut pinned = BTreeSet::new();
        for entry in entries {
            let read = entry
                .map_err(|e| e.to_string())
                .and_then(|e| read_pin(&e.path()));
            match read {
                Ok(layers) => pinned.extend(layers),
                Err(why) => {
                    tracing::warn!(
                        "a pin in {} is unreadable ({why}); keeping every layer",
                        dir.display()
                    );
                    return None;
                }
            }
        }
        Some(pinned)
    }

    fn pins_dir(&self) -> PathBuf {
        self.root.join(PINS_DIR)
    }

    /// The hex name of `dir`, which must be a layer directory of this store.
    fn layer_hex(&self, dir: &Path) -> Result<String> {
        let hex = dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_layer_hex(n))
            .filter(|_| {
                // Compared resolved: the data directory may be named through a link.
                let parent = dir.parent().and_then(|p| fs::canonicalize(p).ok());
                parent.is_some() && parent == fs::canonicalize(self.root.join("layers")).ok()
            });
        hex.map(str::to_string).ok_or_else(|| {
            Error::Pin(format!(
                "{} is not a layer of the store at {}",
                dir.display(),
                self.root.display()
            ))
        })
    }
}

/// The layers of the pin file `path`.
fn read_pin(path: &Path) -> std::result::Result<Vec<String>, String> {
    use std::io::Read;
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_PIN_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_PIN_BYTES {
        return Err(format!(
            "{}: larger than {MAX_PIN_BYTES} bytes",
            path.display()
        ));
    }
    text.lines()
        .map(|l| {
            is_layer_hex(l)
                .then(|| l.to_string())
                .ok_or_else(|| format!("{}: {l:?} is not a layer", path.display()))
        })
        .collect()
}

fn is_layer_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_owner(owner: &str) -> Result<()> {
    let fine = !owner.is_empty()
        && owner.len() <= MAX_OWNER_LEN
        && !owner.starts_with('.')
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine {
        Ok(())
    } else {
        Err(Error::Pin(format!(
            "{owner:?} cannot own a pin: use letters, digits, '.', '_' and '-'"
        )))
    }
}
