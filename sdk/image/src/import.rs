//! Importing images from files: OCI image layouts (directories) and `docker save` archives.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::digest::{sha256_hex, sha256_of};
use crate::error::{io_err, Error, Result};
use crate::progress::NoProgress;
use crate::reference::ImageName;
use crate::spec::{
    ConfigFile, Descriptor, DockerArchiveImage, Manifest, Platform, MAX_JSON_BYTES, OCI_CONFIG,
    OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
};
use crate::store::{ImageInfo, ImageStore};

/// Largest blob an import accepts, in bytes.
const MAX_BLOB_BYTES: u64 = 64 << 30;
/// Most files in a docker archive.
const MAX_ARCHIVE_FILES: usize = 100_000;
/// Annotation naming an image in an OCI layout index (a tag or a full reference).
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full reference.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

impl ImageStore {
    /// Imports the image of the OCI image layout at `dir` (`oci-layout`, `index.json`,
    /// `blobs/`). With several images in the layout, `reference`'s tag (or the full
    /// reference) selects the one whose `org.opencontainers.image.ref.name` matches. The
    /// image is recorded as `reference`, else as the name the layout gives it.
    pub fn import_oci_layout(&self, dir: &Path, reference: Option<&str>) -> Result<ImageInfo> {
        let _gc = self.gc_guard()?;
        let index_path = dir.join("index.json");
        let index_bytes = read_small(&index_path)?;
        let index = Manifest::parse(&index_bytes)?;
        let entries = index.manifests.as_deref().unwrap_or_default();
        let wanted = reference.map(ImageName::parse).transpose()?;
        let annotation =
            |d: &Descriptor, key: &str| d.annotations.as_ref().and_then(|a| a.get(key).cloned());
        let entry = match (entries, &wanted) {
            ([], _) => {
                return Err(Error::InvalidImage(
                    "the OCI layout's index.json lists no image".into(),
                ))
            }
            ([only], _) => only,
            (many, Some(w)) => many
                .iter()
                .find(|d| {
                    annotation(d, REF_NAME)
                        .is_some_and(|n| Some(&n) == w.tag.as_ref() || n == w.to_string())
                        || annotation(d, CONTAINERD_NAME).is_some_and(|n| n == w.to_string())
                })
                .ok_or_else(|| {
                    Error::InvalidImage(format!("the OCI layout has no image named {w}"))
                })?,
            (_, None) => {
                return Err(Error::InvalidImage(
                    "the OCI layout holds several images; name the one to import".into(),
                ))
            }
        };
        let name = match wanted {
            Some(w) => w,
            None => {
                let given = annotation(entry, CONTAINERD_NAME)
                    .or_else(|| annotation(entry, REF_NAME).filter(|n| n.contains([':', '/'])))
                    .ok_or_else(|| {
                        Error::InvalidImage(
                            "the OCI layout does not name its image; give a reference".into(),
                        )
                    })?;
                ImageName::parse(&given)?
            }
        };
        let copy = |digest: &str, limit: u64| -> Result<()> {
            if self.has_blob(digest)? {
                return Ok(());
            }
            let src = dir.join("blobs/sha256").join(sha256_hex(digest)?);
            let file =
                fs::File::open(&src).map_err(io_err(format!("opening {}", src.display())))?;
            self.put_blob(Some(digest), file, limit).map(|_| ())
        };
        copy(&entry.digest, MAX_JSON_BYTES)?;
        let mut manifest_digest = entry.digest.clone();
        let mut index_digest = None;
        let mut manifest = Manifest::parse(&self.read_json_blob(&manifest_digest)?)?;
        if manifest.is_index() {
            let inner = Platform::host()
                .select(manifest.manifests.as_deref().unwrap_or_default())?
                .clone();
            copy(&inner.digest, MAX_JSON_BYTES)?;
            index_digest = Some(manifest_digest);
            manifest_digest = inner.digest;
            manifest = Manifest::parse(&self.read_json_blob(&manifest_digest)?)?;
        }
        let (config, layers) = manifest.image_parts()?;
        copy(&config.digest, MAX_JSON_BYTES)?;
        for layer in layers {
            copy(&layer.digest, MAX_BLOB_BYTES)?;
        }
        self.install(&name, &manifest_digest, index_digest, &NoProgress)
    }

    /// Imports an image from a `docker save` archive (`manifest.json`, the config and the
    /// layer tars). With several images in the archive, `reference` selects one of its
    /// `RepoTags`. The image is recorded as `reference`, else under its first tag.
    pub fn import_docker_archive(&self, tar: &Path, reference: Option<&str>) -> Result<ImageInfo> {
        let _gc = self.gc_guard()?;
        let scratch = tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating an import directory"))?;
        let files = extract_flat(tar, scratch.path())?;
        let file = |name: &str| -> Result<&PathBuf> {
            let key = normalize(Path::new(name)).ok_or_else(|| {
                Error::InvalidImage(format!("bad path {name:?} in manifest.json"))
            })?;
            files
                .get(&key)
                .ok_or_else(|| Error::InvalidImage(format!("the archive has no file {name:?}")))
        };
        let images: Vec<DockerArchiveImage> =
            serde_json::from_slice(&read_small(file("manifest.json")?)?)
                .map_err(|e| Error::InvalidImage(format!("malformed manifest.json: {e}")))?;
        let wanted = reference.map(ImageName::parse).transpose()?;
        let tags = |img: &DockerArchiveImage| -> Vec<String> {
            img.repo_tags
                .iter()
                .flatten()
                .filter_map(|t| ImageName::parse(t).ok().map(|n| n.to_string()))
                .collect()
        };
        let image = match (images.as_slice(), &wanted) {
            ([], _) => return Err(Error::InvalidImage("manifest.json lists no image".into())),
            ([only], _) => only,
            (many, Some(w)) => many
                .iter()
                .find(|img| tags(img).contains(&w.to_string()))
                .ok_or_else(|| {
                    Error::InvalidImage(format!("the archive has no image tagged {w}"))
                })?,
            (_, None) => {
                return Err(Error::InvalidImage(
                    "the archive holds several images; name the one to import".into(),
                ))
            }
        };
        let name = match wanted {
            Some(w) => w,
            None => ImageName::parse(tags(image).first().ok_or_else(|| {
                Error::InvalidImage("the archive's image has no tag; give a reference".into())
            })?)?,
        };
        let put = |path: &Path, limit: u64| -> Result<(String, u64)> {
            let f = fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
            self.put_blob(None, f, limit)
        };
        let (config_digest, config_size) = put(file(&image.config)?, MAX_JSON_BYTES)?;
        // Fail early with a clear message when the config does not parse.
        ConfigFile::parse(&self.read_json_blob(&config_digest)?)?;
        let mut layers = Vec::new();
        for layer in &image.layers {
            let path = file(layer)?;
            let media_type = sniff_layer_type(path)?;
            let (digest, size) = put(path, MAX_BLOB_BYTES)?;
            layers.push(descriptor(media_type, digest, size));
        }
        let manifest =
            Manifest::oci_image(descriptor(OCI_CONFIG, config_digest, config_size), layers);
        let manifest_digest = self.put_manifest(&manifest)?;
        self.install(&name, &manifest_digest, None, &NoProgress)
    }

    /// Stores a manifest the store made itself; returns its digest.
    pub(crate) fn put_manifest(&self, manifest: &Manifest) -> Result<String> {
        let bytes = serde_json::to_vec(manifest).map_err(|e| Error::InvalidImage(e.to_string()))?;
        let digest = sha256_of(&bytes);
        self.put_blob(Some(&digest), bytes.as_slice(), MAX_JSON_BYTES)?;
        Ok(digest)
    }
}

pub(crate) fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: size as i64,
        platform: None,
        annotations: None,
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_JSON_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_err(format!("reading {}", path.display())))?;
    if bytes.len() as u64 > MAX_JSON_BYTES {
        return Err(Error::InvalidImage(format!(
            "{} is too large",
            path.display()
        )));
    }
    Ok(bytes)
}

fn sniff_layer_type(path: &Path) -> Result<&'static str> {
    let mut head = [0u8; 4];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => OCI_LAYER_ZSTD,
        _ => OCI_LAYER_TAR,
    })
}

/// Archive path to a lookup key: relative, `/`-separated, no `.`; `None` with `..`.
fn normalize(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            Component::CurDir | Component::RootDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Copies every regular file of the archive to `dir/<n>` and maps its archive path there;
/// archive paths never become host paths, so the archive cannot write outside `dir`.
fn extract_flat(tar_path: &Path, dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let file =
        fs::File::open(tar_path).map_err(io_err(format!("opening {}", tar_path.display())))?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    let context = format!("reading {}", tar_path.display());
    for entry in archive.entries().map_err(io_err(&context))? {
        let mut entry = entry.map_err(io_err(&context))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(key) = normalize(&entry.path().map_err(io_err(&context))?) else {
            continue;
        };
        if files.len() >= MAX_ARCHIVE_FILES {
            return Err(Error::InvalidImage(format!(
                "{} has too many files",
                tar_path.display()
            )));
        }
        let dest = dir.join(files.len().to_string());
        let mut out =
            fs::File::create(&dest).map_err(io_err(format!("writing {}", dest.display())))?;
        std::io::copy(&mut entry, &mut out).map_err(io_err(&context))?;
        files.insert(key, dest);
    }
    Ok(files)
}
