//! Snapshots of a running VM, and the VMs restored from them.
//!
//! A snapshot is a directory of two files:
//!
//! - [`STATE_FILE`]: a [`format`] header (magic, format version, checksum)
//!   around the [`VmSnapshot`]: what the snapshot says about itself
//!   ([`Header`]: msbvm version, kernel hash, host CPU, vCPUs, memory), the
//!   hypervisor's VM and vCPU state as opaque blobs, and each device's state.
//! - [`MEMORY_FILE`]: guest RAM, region after region, sparse: pages that are
//!   all zeros are holes ([`memory`]).
//!
//! A restored VM maps the memory file privately, so every VM restored from
//! one snapshot shares its pages through the page cache until it writes them.
//! The state file is written last and renamed into place, so a directory with
//! a state file holds a complete snapshot.

pub mod format;
pub mod kernel_stamp;
pub mod memory;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use memory::{keep_page_map, MemoryLayout, RestoreMemory};

/// The state file's name inside a snapshot directory.
pub const STATE_FILE: &str = "vm.state";
/// The memory file's name inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// What a snapshot says about itself: enough to tell whether this host and
/// this msbvm can restore it, and to show it to a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The msbvm version that wrote it (the crate version).
    pub msbvm_version: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// SHA-256 of the guest kernel image, hex, when the VM booted a Linux kernel.
    pub kernel_sha256: Option<String>,
    /// The host CPU it was taken on, in words.
    pub host_cpu: String,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Where guest RAM sits in the memory file, and its checksum.
    pub memory: MemoryLayout,
}

/// One device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// The device's name (as attached), to match it on restore.
    pub name: String,
    /// Its state, in the device's own encoding.
    pub state: Vec<u8>,
}

/// Everything in a snapshot but the guest memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// What the snapshot says about itself.
    pub header: Header,
    /// The hypervisor's VM-wide state.
    pub vm: Vec<u8>,
    /// The hypervisor's state of each vCPU, in index order.
    pub vcpus: Vec<Vec<u8>>,
    /// The state of each device on the buses that has some (the console
    /// UART, the virtio transports and their devices), named by address.
    pub devices: Vec<DeviceState>,
}

/// Why a snapshot could not be taken, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state file does not start with msbvm's magic.
    #[error("{} is not an msbvm snapshot (bad magic)", .0.display())]
    NotASnapshot(PathBuf),
    /// A format this msbvm does not read.
    #[error("snapshot format {found} is not readable by this msbvm (it reads format {supported}); take the snapshot again with this version")]
    Format {
        /// The file's format version.
        found: u32,
        /// The one this build reads.
        supported: u32,
    },
    /// The state file's length or checksum is wrong.
    #[error("snapshot state {} is corrupt: {why}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Another msbvm version wrote the snapshot.
    #[error("the snapshot was taken by msbvm {snapshot}; this is msbvm {here}, which restores only its own snapshots")]
    Version {
        /// The version in the snapshot.
        snapshot: String,
        /// This build's.
        here: String,
    },
    /// The restore was asked for different resources than the snapshot has.
    #[error("the snapshot has {what} {snapshot}; the restore asked for {asked}")]
    Mismatch {
        /// Which resource.
        what: &'static str,
        /// The snapshot's.
        snapshot: String,
        /// The one asked for.
        asked: String,
    },
    /// The hypervisor could not save or load state (or this host cannot run
    /// the saved CPU).
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::Error),
    /// A device could not save or load its state.
    #[error("device {name}: {why}")]
    Device {
        /// The device.
        name: String,
        /// Why.
        why: String,
    },
    /// The VM is not running (or stopped while the snapshot was taken).
    #[error("the VM is not running")]
    NotRunning,
    /// The vCPUs did not pause in time.
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(std::time::Duration),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    }
}

/// A snapshot read from disk and checked: ready to restore VMs from.
#[derive(Debug)]
pub struct Snapshot {
    /// Its directory.
    pub dir: PathBuf,
    /// Its contents but the memory.
    pub state: VmSnapshot,
}

impl Snapshot {
    /// Reads and checks the snapshot in `dir`: magic, format, checksum,
    /// msbvm version, and that the memory file has the recorded length. The
    /// memory's checksum is not read here (that would touch every page of it;
    /// see [`Snapshot::verify_memory`]).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(STATE_FILE);
        let bytes = read_bounded(&path)?;
        let state = format::decode(&bytes, &path)?;
        let here = env!("CARGO_PKG_VERSION");
        if state.header.msbvm_version != here {
            return Err(Error::Version {
                snapshot: state.header.msbvm_version,
                here: here.into(),
            });
        }
        memory::check_length(&dir.join(MEMORY_FILE), &state.header.memory)?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// Reads the whole memory file and compares its checksum with the one recorded.
    pub fn verify_memory(&self) -> Result<(), Error> {
        memory::verify(&self.dir.join(MEMORY_FILE), &self.state.header.memory)
    }

    /// The memory file's path.
    pub fn memory_path(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }
}

/// Reads a state file, refusing one larger than any msbvm writes.
fn read_bounded(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(Error::io("cannot open", path))?;
    let mut bytes = Vec::new();
    file.take(format::MAX_STATE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::io("cannot read", path))?;
    if bytes.len() as u64 > format::MAX_STATE_BYTES {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            why: format!("larger than {} bytes", format::MAX_STATE_BYTES),
        });
    }
    Ok(bytes)
}

/// Writes `state` as the state file of `dir`, atomically (a temporary file
/// renamed into place, synced first).
pub fn write_state(dir: &Path, state: &VmSnapshot) -> Result<(), Error> {
    use std::io::Write;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let bytes = format::encode(state);
    let mut file = std::fs::File::create(&tmp).map_err(Error::io("cannot create", &tmp))?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(Error::io("cannot write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("cannot rename into place", &path))
}

/// The SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, Error> {
    let file = std::fs::File::open(path).map_err(Error::io("cannot open", path))?;
    sha256_open(&file, path)
}

/// The SHA-256 (hex) of the open file `file` (named `path` in errors), read
/// with positioned reads from its start: a file opened before the process
/// confined itself can still be hashed afterwards.
pub fn sha256_open(file: &std::fs::File, path: &Path) -> Result<String, Error> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    crate::read_at::each_chunk(file, |chunk| {
        hasher.update(chunk);
        Ok(())
    })
    .map_err(Error::io("cannot read", path))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
