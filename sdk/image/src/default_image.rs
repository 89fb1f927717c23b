//! The embedded default image, `msbvm-default:latest`: busybox and a minimal `/etc`, built
//! by `build.rs` from the distribution's static busybox, so a sandbox can start without any
//! registry.

use crate::error::Result;
use crate::import::descriptor;
use crate::progress::NoProgress;
use crate::reference::ImageName;
use crate::spec::{Manifest, OCI_CONFIG, OCI_LAYER_GZIP};
use crate::store::{ImageInfo, ImageStore};

/// Reference of the embedded default image.
pub const DEFAULT_IMAGE: &str = "msbvm-default:latest";

static LAYER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-layer.tar.gz"));
static CONFIG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-config.json"));
include!(concat!(env!("OUT_DIR"), "/default-digests.rs"));

/// Imports [`DEFAULT_IMAGE`] into `store` unless it is already there (and current).
pub fn ensure_default_image(store: &ImageStore) -> Result<ImageInfo> {
    let layer_digest = LAYER_DIGEST.to_string();
    let config_digest = CONFIG_DIGEST.to_string();
    let manifest = Manifest::oci_image(
        descriptor(OCI_CONFIG, config_digest.clone(), CONFIG.len() as u64),
        vec![descriptor(
            OCI_LAYER_GZIP,
            layer_digest.clone(),
            LAYER.len() as u64,
        )],
    );
    let name = ImageName::parse(DEFAULT_IMAGE)?;
    let _gc = store.gc_guard()?;
    if let Some(info) = store
        .list()?
        .into_iter()
        .find(|i| i.reference == DEFAULT_IMAGE)
    {
        if info.config_digest == config_digest && store.resolve(DEFAULT_IMAGE).is_ok() {
            return Ok(info);
        }
    }
    store.put_blob(Some(&layer_digest), LAYER, LAYER.len() as u64)?;
    store.put_blob(Some(&config_digest), CONFIG, CONFIG.len() as u64)?;
    let manifest_digest = store.put_manifest(&manifest)?;
    store.install(&name, &manifest_digest, None, &NoProgress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_of;
    use msbvm_layer_meta::LayerMeta;

    #[test]
    fn the_digests_built_in_are_the_embedded_bytes_digests() {
        assert_eq!(LAYER_DIGEST, sha256_of(LAYER));
        assert_eq!(CONFIG_DIGEST, sha256_of(CONFIG));
    }

    #[test]
    fn default_image_has_busybox_a_shell_and_os_release_and_imports_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let first = ensure_default_image(&store).unwrap();
        let second = ensure_default_image(&store).unwrap();
        assert_eq!(first, second);
        let image = store.resolve("msbvm-default").unwrap();
        assert_eq!(image.config.cmd, ["/bin/sh"]);
        assert!(image.config.env.iter().any(|e| e.starts_with("PATH=")));
        let [layer] = image.lower_dirs.as_slice() else {
            panic!("one layer expected")
        };
        let rootfs = layer.join("rootfs");
        assert!(rootfs.join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(),
            Some("busybox")
        );
        let os = std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap();
        assert!(os.contains("ID=msbvm"));
        let meta = LayerMeta::load(layer).unwrap();
        assert_eq!(meta.entries["tmp"].mode, libc::S_IFDIR | 0o1777);
        // The agent mounts a tmpfs there at boot: present, so no boot has to create it.
        assert_eq!(meta.entries["run"].mode, libc::S_IFDIR | 0o755);
        assert_eq!(meta.entries["bin/busybox"].uid, 0);
    }

    /// Debian's busybox 1.35 `wget -T SEC` wrote through a NULL pointer and died of SIGSEGV
    /// (see build.rs); the image's busybox accepts it and fetches by name.
    #[test]
    fn default_busybox_wget_takes_a_timeout_and_a_name() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        ensure_default_image(&store).unwrap();
        let image = store.resolve("msbvm-default").unwrap();
        let busybox = dir.path().join("busybox");
        std::fs::copy(image.lower_dirs[0].join("rootfs/bin/busybox"), &busybox).unwrap();
        std::fs::set_permissions(
            &busybox,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        });
        let out = std::process::Command::new(&busybox)
            .args(["wget", "-q", "-T", "5", "-O", "-"])
            .arg(format!("http://localhost:{port}/"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"hello");
        server.join().unwrap();
    }
}
