//! The content-addressed store on disk: blobs, unpacked layers, references, locks.
//!
//! ```text
//! <root>/                       ($MSBVM_HOME/images)
//!   blobs/sha256/<hex>          compressed layers, configs, manifests and indexes, by digest
//!   layers/<diff_id hex>/       one unpacked layer, shared by every image that has it
//!     rootfs/                   the tree (see msbvm_layer_meta)
//!     meta.json                 owners, modes, devices, xattrs
//!   refs.json                   reference -> manifest, config and layer digests
//!   tmp/                        in-flight work: blob-<hex>.partial downloads (resumed by the
//!                               next pull), layer-<hex>-* unpack dirs, import scratch dirs
//!   locks/                      lock files: gc, refs, blob-<hex>, layer-<hex>
//! ```
//!
//! Everything becomes visible by a `rename` from `tmp/` (same file system), so a reader sees
//! a whole blob, layer or `refs.json` or none. Processes coordinate with `flock`:
//! `locks/blob-<hex>` and `locks/layer-<hex>` (exclusive) make a second puller of the same
//! content wait and then reuse it; pulls and imports hold `locks/gc` shared so garbage
//! collection (exclusive, never waited for) cannot delete what they are about to reference;
//! a [`LayerLease`] holds `locks/layer-<hex>` shared for each layer a sandbox runs on, and
//! garbage collection skips layers it cannot lock exclusively.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{sha256_hex, HashingReader};
use crate::error::{io_err, Error, Result};
use crate::lock::{self, Lock};
use crate::progress::PullProgress;
use crate::reference::{default_registry, ImageName};
use crate::spec::{ConfigFile, Manifest, MAX_JSON_BYTES};
use crate::unpack::{unpack_layer, Limits};

const REFS_FILE: &str = "refs.json";

/// The image store rooted at one directory (normally `$MSBVM_HOME/images`).
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

/// What the store knows about one image reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub manifest_digest: String,
    #[serde(default)]
    pub index_digest: Option<String>,
    pub config_digest: String,
    pub layers: Vec<LayerRecord>,
    #[serde(default)]
    pub created: Option<String>,
}

/// One layer of an image record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

/// An image in the store, as `msbvm images` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Normalized reference (`localhost:5000/alpine:3.20`, `msbvm-default:latest`).
    pub reference: String,
    /// Digest of the image manifest (the platform-specific one for multi-arch images).
    pub manifest_digest: String,
    /// Digest of the image config.
    pub config_digest: String,
    /// Sum of the compressed layer sizes, in bytes.
    pub size: u64,
    /// The config's `created` timestamp (RFC 3339), if it has one.
    pub created: Option<String>,
    /// Layer diff_ids, lowest first.
    pub layers: Vec<String>,
}

/// How to run the image, from its config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint` (empty when unset).
    pub entrypoint: Vec<String>,
    /// `Cmd` (empty when unset).
    pub cmd: Vec<String>,
    /// `Env` as `KEY=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`...), if set.
    pub user: Option<String>,
}

/// An image ready to run: its layers on disk and its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Normalized reference.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Layer directories, lowest first; each holds `rootfs/` and `meta.json`.
    pub lower_dirs: Vec<PathBuf>,
    /// Entrypoint, command, environment, working directory, user.
    pub config: ImageConfig,
}

/// Shared locks on an image's layers: while it lives, garbage collection leaves them alone.
#[derive(Debug)]
pub struct LayerLease {
    _locks: Vec<Lock>,
}

impl ImageRecord {
    fn info(&self, reference: &str) -> ImageInfo {
        ImageInfo {
            reference: reference.to_string(),
            manifest_digest: self.manifest_digest.clone(),
            config_digest: self.config_digest.clone(),
            size: self.layers.iter().map(|l| l.size).sum(),
            created: self.created.clone(),
            layers: self.layers.iter().map(|l| l.diff_id.clone()).collect(),
        }
    }
}

fn create_dirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
    }
    Ok(())
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and removes work left in `tmp/` by
    /// interrupted pulls when no pull is running (partial downloads stay to be resumed).
    pub fn open(root: &Path) -> Result<ImageStore> {
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        create_dirs(&[
            &root.join("blobs/sha256"),
            &root.join("layers"),
            &root.join("tmp"),
            &root.join("locks"),
        ])?;
        if let Some(_gc) = lock::try_exclusive(&store.lock_path("gc"))? {
            store.clean_tmp(false)?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(name)
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    pub(crate) fn partial_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .tmp_dir()
            .join(format!("blob-{}.partial", sha256_hex(digest)?)))
    }

    pub(crate) fn blob_lock(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.lock_path(&format!("blob-{}", sha256_hex(digest)?)))
    }

    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.root.join("layers").join(sha256_hex(diff_id)?))
    }

    fn layer_lock(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.lock_path(&format!("layer-{}", sha256_hex(diff_id)?)))
    }

    /// Held (shared) by pulls and imports so garbage collection waits for them.
    pub(crate) fn gc_guard(&self) -> Result<Lock> {
        lock::shared(&self.lock_path("gc"))
    }

    /// Removes stale entries of `tmp/`; partial downloads only when `partials` is set.
    /// Callers hold the gc lock exclusively, so nothing in `tmp/` is in use.
    fn clean_tmp(&self, partials: bool) -> Result<()> {
        let tmp = self.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(io_err(format!("listing {}", tmp.display())))?;
        for e in entries.flatten() {
            let name = e.file_name();
            if !partials && name.to_string_lossy().ends_with(".partial") {
                continue;
            }
            let path = e.path();
            let result = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(err) = result {
                tracing::warn!(path = %path.display(), %err, "could not remove stale temporary file");
            }
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically (temporary file in `tmp/`, then rename).
    pub(crate) fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_err("creating a temporary file"))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io_err(format!("writing {}", path.display())))?;
        tmp.persist(path)
            .map_err(|e| io_err(format!("renaming into {}", path.display()))(e.error))?;
        Ok(())
    }

    /// Whether the blob is in the store.
    pub(crate) fn has_blob(&self, digest: &str) -> Result<bool> {
        Ok(self.blob_path(digest)?.is_file())
    }

    /// Stores a blob read from `reader` (at most `limit` bytes). When `expected` is given the
    /// content must hash to it; nothing is stored otherwise. Returns the digest and size.
    pub(crate) fn put_blob(
        &self,
        expected: Option<&str>,
        reader: impl Read,
        limit: u64,
    ) -> Result<(String, u64)> {
        if let Some(d) = expected {
            sha256_hex(d)?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_err("creating a temporary file"))?;
        let mut hashing = HashingReader::new(reader, limit);
        std::io::copy(&mut hashing, &mut tmp).map_err(io_err("storing a blob"))?;
        let size = hashing.count();
        let digest = hashing.digest();
        if let Some(expected) = expected {
            if digest != expected {
                return Err(Error::DigestMismatch {
                    what: format!("blob {expected}"),
                    expected: expected.to_string(),
                    actual: digest,
                });
            }
        }
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            tmp.as_file().sync_all().map_err(io_err("storing a blob"))?;
            tmp.persist(&path)
                .map_err(|e| io_err(format!("renaming into {}", path.display()))(e.error))?;
        }
        Ok((digest, size))
    }

    /// Reads a small JSON blob (manifest, index, config) whole.
    pub(crate) fn read_json_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let mut bytes = Vec::new();
        fs::File::open(&path)
            .and_then(|f| f.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes))
            .map_err(io_err(format!("reading blob {digest}")))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(Error::InvalidImage(format!(
                "{digest} is too large for a manifest or config"
            )));
        }
        Ok(bytes)
    }

    /// Unpacks the layer blob `blob_digest` as `diff_id` unless already done. A second
    /// process unpacking the same layer waits for the first and reuses its result. Returns
    /// whether this call unpacked it.
    pub(crate) fn ensure_layer(&self, diff_id: &str, blob_digest: &str) -> Result<bool> {
        let dir = self.layer_dir(diff_id)?;
        if dir.is_dir() {
            return Ok(false);
        }
        // The gc guard keeps open() and gc() from cleaning the work directory away.
        let _gc = self.gc_guard()?;
        let _lock = lock::exclusive(&self.layer_lock(diff_id)?)?;
        if dir.is_dir() {
            return Ok(false);
        }
        let work = tempfile::Builder::new()
            .prefix(&format!("layer-{}-", sha256_hex(diff_id)?))
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating a layer work directory"))?;
        // On any error `work` is dropped and removes the partial tree.
        let actual = unpack_layer(
            &self.blob_path(blob_digest)?,
            work.path(),
            Limits::default(),
        )?;
        if actual != diff_id {
            return Err(Error::DigestMismatch {
                what: format!("uncompressed layer {blob_digest}"),
                expected: diff_id.to_string(),
                actual,
            });
        }
        let work = work.keep();
        fs::rename(&work, &dir).map_err(io_err(format!("renaming into {}", dir.display())))?;
        Ok(true)
    }

    /// Unpacks the layers of the manifest `manifest_digest` (all blobs already stored) and
    /// records `name` for it.
    pub(crate) fn install(
        &self,
        name: &ImageName,
        manifest_digest: &str,
        index_digest: Option<String>,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo> {
        let manifest = Manifest::parse(&self.read_json_blob(manifest_digest)?)?;
        let (config_desc, layers) = manifest.image_parts()?;
        let config = ConfigFile::parse(&self.read_json_blob(&config_desc.digest)?)?;
        let diff_ids = config.diff_ids();
        if diff_ids.len() != layers.len() {
            return Err(Error::InvalidImage(format!(
                "the manifest lists {} layers but the config {} diff_ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let mut records = Vec::with_capacity(layers.len());
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            progress.unpack_started(diff_id);
            let fresh = self.ensure_layer(diff_id, &layer.digest)?;
            progress.unpack_finished(diff_id, !fresh);
            records.push(LayerRecord {
                digest: layer.digest.clone(),
                diff_id: diff_id.clone(),
                size: layer.size()?,
            });
        }
        let record = ImageRecord {
            manifest_digest: manifest_digest.to_string(),
            index_digest,
            config_digest: config_desc.digest.clone(),
            layers: records,
            created: config.created.clone(),
        };
        let reference = name.to_string();
        let info = record.info(&reference);
        self.update_refs(|refs| {
            refs.insert(reference, record);
        })?;
        Ok(info)
    }

    fn read_refs(&self) -> Result<BTreeMap<String, ImageRecord>> {
        let path = self.root.join(REFS_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::InvalidImage(format!("{} is corrupt: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    fn update_refs<T>(&self, f: impl FnOnce(&mut BTreeMap<String, ImageRecord>) -> T) -> Result<T> {
        let _lock = lock::exclusive(&self.lock_path("refs"))?;
        let mut refs = self.read_refs()?;
        let out = f(&mut refs);
        let bytes = serde_json::to_vec_pretty(&refs).map_err(|e| Error::Io {
            context: "serializing refs".into(),
            source: std::io::Error::other(e),
        })?;
        self.write_atomic(&self.root.join(REFS_FILE), &bytes)?;
        Ok(out)
    }

    /// The key of `reference` in the refs: its normalized form, or with the registry from
    /// `MSBVM_REGISTRY` put in front when it names none.
    fn lookup(&self, refs: &BTreeMap<String, ImageRecord>, reference: &str) -> Result<String> {
        let name = ImageName::parse(reference)?;
        let plain = name.to_string();
        if refs.contains_key(&plain) {
            return Ok(plain);
        }
        if name.registry.is_none() {
            if let Some(host) = default_registry() {
                let prefixed = ImageName {
                    registry: Some(host),
                    ..name
                }
                .to_string();
                if refs.contains_key(&prefixed) {
                    return Ok(prefixed);
                }
            }
        }
        Err(Error::NotFound(plain))
    }

    /// All images, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self
            .read_refs()?
            .iter()
            .map(|(reference, record)| record.info(reference))
            .collect())
    }

    /// The layer directories and config of `reference`.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let refs = self.read_refs()?;
        let key = self.lookup(&refs, reference)?;
        let record = &refs[&key];
        let config = ConfigFile::parse(&self.read_json_blob(&record.config_digest)?)?;
        let c = config.config.unwrap_or_default();
        let lower_dirs = record
            .layers
            .iter()
            .map(|l| self.layer_dir(&l.diff_id))
            .collect::<Result<Vec<_>>>()?;
        if let Some(missing) = lower_dirs.iter().find(|d| !d.is_dir()) {
            return Err(Error::LayerGone(missing.display().to_string()));
        }
        Ok(ResolvedImage {
            reference: key.clone(),
            manifest_digest: record.manifest_digest.clone(),
            lower_dirs,
            config: ImageConfig {
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                env: c.env.unwrap_or_default(),
                working_dir: c.working_dir.filter(|w| !w.is_empty()),
                user: c.user.filter(|u| !u.is_empty()),
            },
        })
    }

    /// Takes shared locks on the image's layers for as long as the lease lives (a running
    /// sandbox keeps it), so [`ImageStore::remove`] does not delete them underneath it.
    pub fn lease(&self, image: &ResolvedImage) -> Result<LayerLease> {
        self.lease_layers(&image.lower_dirs)
    }

    /// [`ImageStore::lease`] of layer directories named some other way (a snapshot's).
    pub fn lease_layers(&self, lower_dirs: &[PathBuf]) -> Result<LayerLease> {
        let mut locks = Vec::with_capacity(lower_dirs.len());
        for dir in lower_dirs {
            let hex = dir
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::LayerGone(dir.display().to_string()))?;
            locks.push(lock::shared(&self.lock_path(&format!("layer-{hex}")))?);
            // Removed between resolve() and now: the lock is on a deleted lock file.
            if !dir.is_dir() {
                return Err(Error::LayerGone(dir.display().to_string()));
            }
        }
        Ok(LayerLease { _locks: locks })
    }

    /// Removes `reference` from the store, then deletes the blobs and layers no image
    /// references any more (layers leased by running sandboxes are kept for a later run).
    pub fn remove(&self, reference: &str) -> Result<()> {
        self.update_refs(|refs| self.lookup(refs, reference).map(|key| refs.remove(&key)))??;
        self.gc()
    }

    /// Deletes unreferenced blobs, layers and stale temporary files. Does nothing while a
    /// pull or import runs (they may be about to reference what looks unused); skips layers
    /// that are leased or pinned ([`ImageStore::pin`]).
    pub fn gc(&self) -> Result<()> {
        let Some(_gc) = lock::try_exclusive(&self.lock_path("gc"))? else {
            tracing::debug!("image store busy; garbage collection skipped");
            return Ok(());
        };
        let refs = self.read_refs()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for r in refs.values() {
            blobs.insert(sha256_hex(&r.manifest_digest)?.to_string());
            blobs.insert(sha256_hex(&r.config_digest)?.to_string());
            if let Some(i) = &r.index_digest {
                blobs.insert(sha256_hex(i)?.to_string());
            }
            for l in &r.layers {
                blobs.insert(sha256_hex(&l.digest)?.to_string());
                layers.insert(sha256_hex(&l.diff_id)?.to_string());
            }
        }
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir)
            .map_err(io_err(format!("listing {}", blob_dir.display())))?
            .flatten()
        {
            if !blobs.contains(&*e.file_name().to_string_lossy()) {
                let _ = fs::remove_file(e.path());
                let _ = fs::remove_file(
                    self.lock_path(&format!("blob-{}", e.file_name().to_string_lossy())),
                );
            }
        }
        let Some(pinned) = self.pinned_layers() else {
            return self.clean_tmp(true);
        };
        layers.extend(pinned);
        let layer_dir = self.root.join("layers");
        for e in fs::read_dir(&layer_dir)
            .map_err(io_err(format!("listing {}", layer_dir.display())))?
            .flatten()
        {
            let hex = e.file_name().to_string_lossy().into_owned();
            if layers.contains(&hex) {
                continue;
            }
            let lock_path = self.lock_path(&format!("layer-{hex}"));
            let Some(_lock) = lock::try_exclusive(&lock_path)? else {
                tracing::debug!(layer = %hex, "layer in use; kept");
                continue;
            };
            // Out of sight first (atomic), then deleted at leisure.
            let doomed = self.tmp_dir().join(format!("gc-{hex}"));
            if fs::rename(e.path(), &doomed).is_ok() {
                let _ = fs::remove_dir_all(&doomed);
            }
            let _ = fs::remove_file(&lock_path);
        }
        self.clean_tmp(true)
    }
}

mod pins;
#[cfg(test)]
mod tests;
