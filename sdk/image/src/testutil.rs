//! Builders for the archives the tests feed the store: tars with arbitrary (also hostile)
//! entries, and OCI image layouts.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One tar entry to write.
pub(crate) enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    Owned(&'a str, u32, u32, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    Xattr(&'a str, &'a str, &'a [u8]),
}

/// A header whose name and link name are written byte for byte, bypassing the tar crate's
/// path checks (hostile archives need `..` and absolute paths).
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    let gnu = h.as_gnu_mut().expect("gnu header");
    gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

/// An uncompressed tar of `entries`, in order.
pub(crate) fn tar_of(entries: &[Entry]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match *e {
            Entry::Dir(p, mode) => b.append(&header(p, T::Directory, mode, 0, ""), &[][..]),
            Entry::File(p, mode, data) => {
                b.append(&header(p, T::Regular, mode, data.len() as u64, ""), data)
            }
            Entry::Owned(p, mode, uid, gid) => {
                let mut h = header(p, T::Regular, mode, 0, "");
                h.set_uid(uid.into());
                h.set_gid(gid.into());
                h.set_cksum();
                b.append(&h, &[][..])
            }
            Entry::Symlink(p, target) => {
                b.append(&header(p, T::Symlink, 0o777, 0, target), &[][..])
            }
            Entry::Hardlink(p, target) => b.append(&header(p, T::Link, 0o644, 0, target), &[][..]),
            Entry::Char(p, major, minor) => {
                let mut h = header(p, T::Char, 0o666, 0, "");
                h.set_device_major(major).unwrap();
                h.set_device_minor(minor).unwrap();
                h.set_cksum();
                b.append(&h, &[][..])
            }
            Entry::Fifo(p) => b.append(&header(p, T::Fifo, 0o644, 0, ""), &[][..]),
            Entry::Xattr(p, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), value)]).unwrap();
                b.append(&header(p, T::Regular, 0o755, 0, ""), &[][..])
            }
        }
        .unwrap();
    }
    b.into_inner().unwrap()
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Writes an OCI image layout at `dir` holding one image with `layers` (compressed blobs
/// with their uncompressed tars) and `config` fields; returns the manifest digest.
pub(crate) fn write_oci_layout(
    dir: &Path,
    layers: &[(Vec<u8>, Vec<u8>)],
    cmd: &str,
    ref_name: &str,
) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let diff_ids: Vec<String> = layers.iter().map(|(_, tar)| sha256(tar)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin", "A=b"], "WorkingDir": "/work", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_digest = put(config.as_bytes());
    let layer_descs: Vec<_> = layers
        .iter()
        .map(|(blob, _)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(blob), "size": blob.len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    })
    .to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": ref_name},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    manifest_digest
}
