//! Snapshots of running sandboxes, and where they are kept.
//!
//! ```text
//! $MSBVM_HOME/snapshots/<name>/
//!   info.json     what the snapshot is: its source, resources and sandbox spec (SnapshotInfo)
//!   vm/           the VM: vm.state and the sparse memory file (msbvm_vmm::snapshot)
//!   layer/        an image root's writable layer, frozen: an ordinary read-only layer, above
//!                 the image's, on which every fork gets a writable layer of its own
//! ```
//!
//! A runtime writes a snapshot into [`PENDING_DIR`] of its state directory (the only place
//! its confinement lets it write); the client then renames it here. A snapshot does not
//! depend on its source: removing the source leaves it usable. Secrets are never in it (the
//! guest only ever held placeholders; a fork's creator gives it its own).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::paths::validate_name;
use crate::spec::SandboxSpec;

/// The directory of snapshots under `$MSBVM_HOME`.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// A snapshot's description.
pub const INFO_FILE: &str = "info.json";
/// A snapshot's VM state and memory.
pub const VM_DIR: &str = "vm";
/// A snapshot's frozen writable layer (image roots only).
pub const LAYER_DIR: &str = "layer";
/// Where in its state directory a runtime writes a snapshot being taken.
pub const PENDING_DIR: &str = "snapshot.pending";
/// Largest `info.json` read (it holds a sandbox spec).
const MAX_INFO_BYTES: u64 = 1 << 20;

/// What a snapshot is ([`INFO_FILE`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The sandbox it was taken of.
    pub source: String,
    /// When it was taken, seconds since the Unix epoch.
    pub created: u64,
    /// The msbvm version that took it (and the only one that restores it).
    pub msbvm_version: String,
    /// vCPUs of the source.
    pub cpus: u8,
    /// Guest memory of the source, in MiB.
    pub memory_mib: u64,
    /// The environment the source was created with (the image's is added by each fork).
    pub env: Vec<(String, String)>,
    /// The source's sandbox spec.
    pub spec: SandboxSpec,
    /// The layers the frozen layer lies on (an image root), lowest first: the image's, in the
    /// image store, where they are pinned while the snapshot exists; for a snapshot of a
    /// fork, then the frozen layer of the snapshot the fork came from, which cannot be
    /// removed while this one lies on it. Forks run on these, whatever the image's
    /// reference names by then.
    pub lower_dirs: Vec<PathBuf>,
    /// How the image runs (environment, working directory, user, command), as it was when
    /// the snapshot was taken; forks take it from here. `None` in snapshots of sandboxes
    /// without an image root.
    #[serde(default)]
    pub image_config: Option<crate::images::ImageConfig>,
    /// How long the guest was paused, in milliseconds.
    pub paused_ms: f64,
}

/// The snapshots directory of `home`.
pub fn snapshots_dir(home: &Path) -> PathBuf {
    home.join(SNAPSHOTS_DIR)
}

/// The directory of snapshot `name` in `home` (checked like a sandbox name).
pub fn snapshot_dir(home: &Path, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    Ok(snapshots_dir(home).join(name))
}

impl SnapshotInfo {
    /// Reads the description in snapshot directory `dir`.
    pub fn read(dir: &Path) -> Result<SnapshotInfo> {
        use std::io::Read;
        let path = dir.join(INFO_FILE);
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_INFO_BYTES).read_to_string(&mut text))
            .map_err(Error::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::InvalidConfig(format!(
                "{} is not a snapshot description: {e}",
                path.display()
            ))
        })
    }

    /// Writes the description into snapshot directory `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(INFO_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::InvalidConfig(format!("encoding the snapshot description: {e}")))?;
        std::fs::write(&path, text).map_err(Error::io(format!("writing {}", path.display())))
    }
}

/// Snapshot `name` of `home`: its directory and description, or [`Error::NotFound`].
pub fn open(home: &Path, name: &str) -> Result<(PathBuf, SnapshotInfo)> {
    let dir = snapshot_dir(home, name)?;
    if !dir.join(INFO_FILE).is_file() {
        return Err(Error::SnapshotNotFound { name: name.into() });
    }
    let info = SnapshotInfo::read(&dir)?;
    Ok((dir, info))
}

/// Every snapshot of `home`, by name; unreadable entries are skipped with a warning.
pub fn list(home: &Path) -> Result<Vec<SnapshotInfo>> {
    let dir = snapshots_dir(home);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join(INFO_FILE).is_file() {
            continue; // A snapshot being moved in, or something else.
        }
        match SnapshotInfo::read(&path) {
            Ok(info) => out.push(info),
            Err(e) => tracing::warn!("skipping {}: {e}", path.display()),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes snapshot `name` and everything in it (forks running from it keep their mapped
/// memory and open layer files; new forks of it fail), then lets go of its image layers:
/// those no image or other snapshot needs are deleted. A snapshot that another one lies on
/// (a snapshot of one of its forks) is refused until that one is removed.
pub fn remove(home: &Path, name: &str) -> Result<()> {
    let (dir, _) = open(home, name)?;
    let layer = dir.join(LAYER_DIR);
    if let Some(other) = list(home)?
        .into_iter()
        .find(|s| s.name != name && s.lower_dirs.contains(&layer))
    {
        return Err(Error::InvalidConfig(format!(
            "snapshot {} (of a fork of {name}) lies on {name}; remove {} first",
            other.name, other.name
        )));
    }
    // Renamed first, so a half-removed snapshot is never listed or forked.
    let doomed = snapshots_dir(home).join(format!(".removing-{name}-{}", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(Error::io(format!("removing {}", dir.display())))?;
    std::fs::remove_dir_all(&doomed)
        .map_err(Error::io(format!("removing {}", doomed.display())))?;
    let store = crate::images::store_in(home)?;
    store
        .unpin(&pin_owner(name))
        .map_err(crate::images::image_error)?;
    if let Err(e) = store.gc() {
        tracing::warn!("snapshot {name} removed; collecting its image layers failed: {e}");
    }
    Ok(())
}

/// Moves a snapshot a runtime wrote into `pending` to `home` as `name`, its image layers
/// pinned ([`msbvm_image::ImageStore::pin`]) first, so that removing the image never takes
/// them from under it; refuses a name in use. The caller's sandbox must still run (its
/// layers leased) so that no collection takes them before the pin. On failure `pending` is
/// removed and nothing stays pinned.
pub fn commit(pending: &Path, home: &Path, name: &str) -> Result<PathBuf> {
    let mut pinned = None;
    let result = (|| {
        let dest = snapshot_dir(home, name)?;
        let parent = snapshots_dir(home);
        std::fs::create_dir_all(&parent)
            .map_err(Error::io(format!("creating {}", parent.display())))?;
        if dest.exists() {
            return Err(Error::InvalidConfig(format!(
                "a snapshot named {name} exists; remove it or choose another name"
            )));
        }
        let info = SnapshotInfo::read(pending)?;
        let (snapshot_layers, image_layers): (Vec<PathBuf>, Vec<PathBuf>) = info
            .lower_dirs
            .iter()
            .cloned()
            .partition(|d| d.starts_with(&parent));
        if let Some(gone) = snapshot_layers.iter().find(|d| !d.is_dir()) {
            return Err(Error::InvalidConfig(format!(
                "the snapshot lies on {}, which was removed meanwhile",
                gone.display()
            )));
        }
        let store = crate::images::store_in(home)?;
        store
            .pin(&pin_owner(name), &image_layers)
            .map_err(crate::images::image_error)?;
        pinned = Some(store);
        // Durable before it is visible: the runtime synced only the state file, and a
        // restore trusts the memory file and the frozen layer without reading them whole.
        sync_filesystem(pending)?;
        std::fs::rename(pending, &dest).map_err(Error::io(format!(
            "moving the snapshot to {}",
            dest.display()
        )))?;
        sync_filesystem(&parent)?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(pending);
        if let Some(store) = pinned {
            let _ = store.unpin(&pin_owner(name));
        }
    }
    result
}

/// Writes everything cached for the filesystem holding `dir` to its disk (`syncfs`): the
/// snapshot's memory file and frozen layer are many files, written by another process.
fn sync_filesystem(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let handle =
        std::fs::File::open(dir).map_err(Error::io(format!("opening {}", dir.display())))?;
    // SAFETY: syncfs on a descriptor this function owns; no memory is passed.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(Error::io(format!(
            "syncing the snapshot in {}",
            dir.display()
        ))(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The owner of snapshot `name`'s pin in the image store.
fn pin_owner(name: &str) -> String {
    format!("snapshot-{name}")
}

/// Bytes a directory tree takes on disk (allocated blocks: the sparse memory file's holes
/// cost nothing).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| disk_usage(&e.path()))
                .sum::<u64>()
        })
        .unwrap_or(0);
    own + children
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            source: "src".into(),
            created: 1,
            msbvm_version: "0".into(),
            cpus: 1,
            memory_mib: 256,
            env: vec![("A".into(), "b".into())],
            spec: SandboxSpec::default(),
            lower_dirs: Vec::new(),
            image_config: None,
            paused_ms: 1.5,
        }
    }

    /// The layers of the default image, imported into `home`'s store.
    fn default_image_layers(home: &Path) -> (crate::images::ImageStore, Vec<PathBuf>) {
        let store = crate::images::store_in(home).unwrap();
        msbvm_image::ensure_default_image(&store).unwrap();
        let layers = store
            .resolve(msbvm_image::DEFAULT_IMAGE)
            .unwrap()
            .lower_dirs;
        (store, layers)
    }

    fn take(home: &Path, info: &SnapshotInfo) -> Result<PathBuf> {
        let pending = home.join("p");
        std::fs::create_dir_all(pending.join(LAYER_DIR)).unwrap();
        info.write(&pending).unwrap();
        commit(&pending, home, &info.name)
    }

    #[test]
    fn a_snapshot_keeps_its_image_layers_until_removed() {
        let home = tempfile::tempdir().unwrap();
        let (store, layers) = default_image_layers(home.path());
        let snap = SnapshotInfo {
            lower_dirs: layers.clone(),
            ..info("snap")
        };
        let dir = take(home.path(), &snap).unwrap();
        store.remove(msbvm_image::DEFAULT_IMAGE).unwrap();
        assert!(
            layers.iter().all(|l| l.is_dir()),
            "a snapshot's layer was collected"
        );

        // A snapshot of a fork of it lies on its layer too: it goes first.
        let mut on_top = SnapshotInfo {
            lower_dirs: layers.clone(),
            ..info("on-top")
        };
        on_top.lower_dirs.push(dir.join(LAYER_DIR));
        take(home.path(), &on_top).unwrap();
        let e = remove(home.path(), "snap").unwrap_err();
        assert!(e.to_string().contains("remove on-top first"), "{e}");
        remove(home.path(), "on-top").unwrap();
        assert!(layers.iter().all(|l| l.is_dir()), "still pinned by snap");
        remove(home.path(), "snap").unwrap();
        assert!(
            layers.iter().all(|l| !l.exists()),
            "layers of no image kept"
        );
    }

    #[test]
    fn a_snapshot_on_a_removed_one_or_foreign_layers_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let (_store, _) = default_image_layers(home.path());
        let gone = snapshot_dir(home.path(), "gone").unwrap().join(LAYER_DIR);
        let e = take(
            home.path(),
            &SnapshotInfo {
                lower_dirs: vec![gone],
                ..info("s")
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("removed meanwhile"), "{e}");
        let e = take(
            home.path(),
            &SnapshotInfo {
                lower_dirs: vec![home.path().join("elsewhere")],
                ..info("s")
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("pin"), "{e}");
        assert!(list(home.path()).unwrap().is_empty());
        assert!(!home.path().join("p").exists());
    }

    #[test]
    fn commit_list_open_remove() {
        let home = tempfile::tempdir().unwrap();
        let pending = home.path().join("p");
        std::fs::create_dir(&pending).unwrap();
        info("snap").write(&pending).unwrap();
        commit(&pending, home.path(), "snap").unwrap();
        assert!(!pending.exists());
        assert_eq!(list(home.path()).unwrap(), vec![info("snap")]);
        let (dir, read) = open(home.path(), "snap").unwrap();
        assert_eq!(read, info("snap"));
        assert!(disk_usage(&dir) > 0);

        // A second one of the same name is refused and its pending copy removed.
        std::fs::create_dir(&pending).unwrap();
        info("snap").write(&pending).unwrap();
        let e = commit(&pending, home.path(), "snap").unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        assert!(!pending.exists());

        remove(home.path(), "snap").unwrap();
        assert!(list(home.path()).unwrap().is_empty());
        assert!(matches!(
            open(home.path(), "snap").unwrap_err(),
            Error::SnapshotNotFound { .. }
        ));
        assert!(open(home.path(), "../x").is_err());
    }

    #[test]
    fn a_corrupt_description_is_a_clear_error() {
        let home = tempfile::tempdir().unwrap();
        let dir = snapshot_dir(home.path(), "bad").unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(INFO_FILE), b"{not json").unwrap();
        let e = open(home.path(), "bad").unwrap_err();
        assert!(e.to_string().contains("not a snapshot description"), "{e}");
        assert!(list(home.path()).unwrap().is_empty());
    }
}
