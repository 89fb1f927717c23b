//! The image benchmark's parts: a generated multi-layer test image, a local registry holding
//! it, the two pull-and-unpack pipelines (msbvm's store; skopeo + umoci) and disk usage.
//!
//! The image is built in memory from a fixed seed so every run and every host sees the same
//! bytes: a base layer of a few thousand small compressible files, a layer of incompressible
//! "binaries", and a top layer with whiteouts (single files and an opaque directory). A second
//! image shares the first two layers and has its own top layer, to show layer reuse.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Errors of the benchmark: a sentence saying what failed (a benchmark reports and stops).
pub type BenchResult<T> = Result<T, String>;

/// Deterministic filler bytes. Any fast generator does for benchmark data, so a xorshift
/// stream stands in for a random-number crate.
pub struct Filler(u64);

impl Filler {
    /// A stream from `seed` (any value; zero is mapped to a non-zero state).
    pub fn new(seed: u64) -> Filler {
        Filler(seed | 1)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// `len` incompressible bytes.
    pub fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// About `len` bytes of word soup: compresses roughly like documentation and scripts.
    pub fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&str; 24] = [
            "the", "sandbox", "kernel", "virtio", "queue", "guest", "host", "memory", "layer",
            "image", "config", "file", "open", "close", "read", "write", "error", "return",
            "value", "struct", "fn", "let", "mut", "impl",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let word = WORDS[self.range(0, WORDS.len())];
            out.extend_from_slice(word.as_bytes());
            out.push(if self.range(0, 12) == 0 { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }
}

/// One layer: the gzip blob as pushed and its uncompressed tar's digest.
pub struct Layer {
    /// The gzip-compressed tar.
    pub blob: Vec<u8>,
    /// `sha256:` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub tar_len: u64,
    /// Regular files, directories and links in the tar.
    pub entries: usize,
}

impl Layer {
    fn from_tar(tar: Vec<u8>, entries: usize) -> BenchResult<Layer> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar)
            .map_err(|e| format!("compressing a layer: {e}"))?;
        let blob = gz
            .finish()
            .map_err(|e| format!("compressing a layer: {e}"))?;
        Ok(Layer {
            blob,
            diff_id: format!("sha256:{:x}", Sha256::digest(&tar)),
            tar_len: tar.len() as u64,
            entries,
        })
    }
}

/// Collects tar entries (root-owned, fixed mtime) and counts them.
struct TarWriter {
    builder: tar::Builder<Vec<u8>>,
    entries: usize,
}

impl TarWriter {
    fn new() -> TarWriter {
        TarWriter {
            builder: tar::Builder::new(Vec::new()),
            entries: 0,
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    fn dir(&mut self, path: &str) -> BenchResult<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.append(&mut h, path, &[])
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> BenchResult<()> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.append(&mut h, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> BenchResult<()> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.entries += 1;
        self.builder
            .append_link(&mut h, path, target)
            .map_err(|e| format!("building a layer ({path}): {e}"))
    }

    fn append(&mut self, h: &mut tar::Header, path: &str, data: &[u8]) -> BenchResult<()> {
        self.entries += 1;
        self.builder
            .append_data(h, path, data)
            .map_err(|e| format!("building a layer ({path}): {e}"))
    }

    fn finish(self) -> BenchResult<Layer> {
        let entries = self.entries;
        let tar = self
            .builder
            .into_inner()
            .map_err(|e| format!("building a layer: {e}"))?;
        Layer::from_tar(tar, entries)
    }
}

/// Packages in the base layer; each gets a documentation directory of small files.
const PACKAGES: usize = 120;
/// Small files per package in the base layer.
const FILES_PER_PACKAGE: usize = 25;
/// Shared libraries (incompressible) in the second layer.
const LIBRARIES: usize = 140;

/// The base layer: `PACKAGES` x `FILES_PER_PACKAGE` text files of 0.5-12 KiB.
fn base_layer() -> BenchResult<Layer> {
    let mut rng = Filler::new(1);
    let mut t = TarWriter::new();
    for dir in ["usr", "usr/share", "usr/share/doc", "etc", "usr/bin"] {
        t.dir(dir)?;
    }
    for p in 0..PACKAGES {
        t.dir(&format!("usr/share/doc/pkg{p}"))?;
        for f in 0..FILES_PER_PACKAGE {
            let len = rng.range(512, 12 * 1024);
            t.file(
                &format!("usr/share/doc/pkg{p}/file{f}.txt"),
                0o644,
                &rng.text(len),
            )?;
        }
        t.file(&format!("usr/bin/tool{p}"), 0o755, &rng.text(4096))?;
    }
    t.finish()
}

/// The library layer: incompressible files of 64-300 KiB with `.so` symlinks.
fn library_layer() -> BenchResult<Layer> {
    let mut rng = Filler::new(2);
    let mut t = TarWriter::new();
    t.dir("usr")?;
    t.dir("usr/lib")?;
    for l in 0..LIBRARIES {
        let len = rng.range(64 * 1024, 300 * 1024);
        t.file(
            &format!("usr/lib/lib{l}.so.1"),
            0o755,
            &rng.random_bytes(len),
        )?;
        t.symlink(&format!("usr/lib/lib{l}.so"), &format!("lib{l}.so.1"))?;
    }
    t.finish()
}

/// A top layer (one per image, told apart by `seed`): whiteouts of base files, an opaque
/// directory refilled, new configuration files and one large file.
fn top_layer(seed: u64) -> BenchResult<Layer> {
    let mut rng = Filler::new(seed);
    let mut t = TarWriter::new();
    for dir in ["usr", "usr/share", "usr/share/doc", "etc", "etc/app", "opt"] {
        t.dir(dir)?;
    }
    for p in (0..PACKAGES).step_by(3) {
        t.dir(&format!("usr/share/doc/pkg{p}"))?;
        t.file(&format!("usr/share/doc/pkg{p}/.wh.file0.txt"), 0o644, &[])?;
    }
    t.dir("usr/share/doc/pkg1")?;
    t.file("usr/share/doc/pkg1/.wh..wh..opq", 0o644, &[])?;
    t.file("usr/share/doc/pkg1/README", 0o644, &rng.text(2048))?;
    for c in 0..400 {
        let len = rng.range(100, 4096);
        t.file(&format!("etc/app/conf{c}.ini"), 0o640, &rng.text(len))?;
    }
    t.file("opt/data.bin", 0o644, &rng.random_bytes(4 << 20))?;
    t.finish()
}

/// A test image ready to push.
pub struct BenchImage {
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// The image config (JSON).
    pub config: Vec<u8>,
}

impl BenchImage {
    /// Sum of the gzip blobs.
    pub fn compressed_len(&self) -> u64 {
        self.layers.iter().map(|l| l.blob.len() as u64).sum()
    }

    /// Sum of the uncompressed tars.
    pub fn tar_len(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_len).sum()
    }

    /// Entries in all layers.
    pub fn entries(&self) -> usize {
        self.layers.iter().map(|l| l.entries).sum()
    }
}

/// The two test images: (first, second sharing the first's lower two layers).
pub fn build_images() -> BenchResult<(BenchImage, BenchImage)> {
    let base = base_layer()?;
    let libs = library_layer()?;
    let image = |layers: Vec<Layer>| -> BenchResult<BenchImage> {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = serde_json::json!({
            "architecture": msbvm_image::Platform::host().architecture,
            "os": "linux",
            "config": {"Cmd": ["/usr/bin/tool0"], "Env": ["PATH=/usr/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        Ok(BenchImage {
            config: serde_json::to_vec(&config).map_err(|e| e.to_string())?,
            layers,
        })
    };
    let clone = |l: &Layer| Layer {
        blob: l.blob.clone(),
        diff_id: l.diff_id.clone(),
        tar_len: l.tar_len,
        entries: l.entries,
    };
    let second = image(vec![clone(&base), clone(&libs), top_layer(4)?])?;
    let first = image(vec![base, libs, top_layer(3)?])?;
    Ok((first, second))
}

/// A `docker-registry` on a free local port with its storage in a temporary directory,
/// stopped on drop (the tests crate's registry fixture).
pub struct Registry {
    inner: msbvm_tests::registry::LocalRegistry,
    /// `127.0.0.1:PORT`.
    pub host: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry with its storage in a temporary directory under `parent` and waits
    /// until `/v2/` answers.
    pub fn start(parent: &Path) -> BenchResult<Registry> {
        let dir = tempfile::tempdir_in(parent).map_err(|e| format!("temp dir: {e}"))?;
        let inner =
            msbvm_tests::registry::LocalRegistry::start(dir.path()).map_err(|e| e.to_string())?;
        Ok(Registry {
            host: inner.host.clone(),
            inner,
            _dir: dir,
        })
    }

    /// Pushes `image` as `repository:tag`.
    pub async fn push(&self, reference: &str, image: &BenchImage) -> BenchResult<()> {
        let blobs: Vec<Vec<u8>> = image.layers.iter().map(|l| l.blob.clone()).collect();
        self.inner
            .push(reference, &blobs, image.config.clone())
            .await
            .map_err(|e| e.to_string())
    }
}

/// Pulls `host/reference` into the msbvm store at `store` (opened, created if needed);
/// returns the wall time of open + pull (download, verify, unpack).
pub async fn msbvm_pull(store: &Path, host: &str, reference: &str) -> BenchResult<Duration> {
    let start = Instant::now();
    let store =
        msbvm_image::ImageStore::open(store).map_err(|e| format!("opening the store: {e}"))?;
    let options = msbvm_image::PullOptions {
        insecure_plain_http_registries: vec![host.to_string()],
        ..Default::default()
    };
    store
        .pull(
            &format!("{host}/{reference}"),
            &options,
            &msbvm_image::NoProgress,
        )
        .await
        .map_err(|e| format!("msbvm pull {reference}: {e}"))?;
    Ok(start.elapsed())
}

/// Times of one skopeo + umoci pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PeerTimes {
    /// `skopeo copy` from the registry into the OCI layout.
    pub copy: Duration,
    /// `umoci unpack` of the layout into a bundle.
    pub unpack: Duration,
}

/// Runs a command to completion; its stderr goes into the error when it fails.
fn run_timed(cmd: &mut Command) -> BenchResult<Duration> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(start.elapsed())
}

/// `skopeo copy` of `host/repository:tag` into the OCI layout `dir/layout` (tag `tag`), then
/// `umoci unpack --rootless` into `bundle`.
pub fn peer_pull(
    dir: &Path,
    host: &str,
    repository: &str,
    tag: &str,
    bundle: &Path,
) -> BenchResult<PeerTimes> {
    let layout = format!("{}:{tag}", dir.join("layout").display());
    let copy = run_timed(
        Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
            ])
            .arg(format!("docker://{host}/{repository}:{tag}"))
            .arg(format!("oci:{layout}")),
    )?;
    let unpack = run_timed(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image", &layout])
            .arg(bundle),
    )?;
    Ok(PeerTimes { copy, unpack })
}

/// Missing peer tools, as the sentence of a `skipped:` line; `None` when all are there.
pub fn missing_peer() -> Option<String> {
    let missing: Vec<&str> = ["skopeo", "umoci"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not installed (apt-get install -y skopeo umoci)",
            missing.join(", ")
        )
    })
}

/// Whether `name` is an executable on `PATH`.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Disk space used under `path` (allocated blocks, each hard-linked inode once), in bytes.
pub fn disk_usage(path: &Path) -> u64 {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            total += meta.blocks() * 512;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_image_has_thousands_of_files_and_tens_of_mib() {
        let (first, second) = build_images().unwrap();
        assert!(first.entries() > 3000, "{} entries", first.entries());
        let mib = first.tar_len() >> 20;
        assert!((30..=60).contains(&mib), "{mib} MiB uncompressed");
        // The base text compresses, the libraries do not: the blobs sit between the two.
        assert!(first.compressed_len() < first.tar_len() * 3 / 4);
        assert_eq!(first.layers[0].diff_id, second.layers[0].diff_id);
        assert_eq!(first.layers[1].diff_id, second.layers[1].diff_id);
        assert_ne!(first.layers[2].diff_id, second.layers[2].diff_id);
    }

    #[test]
    fn disk_usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let one = disk_usage(dir.path());
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert_eq!(disk_usage(dir.path()), one);
        assert!(one >= 64 * 1024);
    }
}
