//! A real OCI registry (the distribution's `docker-registry`) holding a test image, for the
//! nested end-to-end tests.
//!
//! The registry runs on the host only long enough to receive the image (pushed with
//! oci-client); its storage directory then goes into the L1 machine, where a second
//! `docker-registry` serves the same files on 127.0.0.1:5000 for `msbvm pull`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The distribution's registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// Where L1's registry listens.
pub const L1_REGISTRY: &str = "127.0.0.1:5000";
/// The test image's repository and tag.
pub const TEST_IMAGE: &str = "msbvm-test/app:1";

/// The registry configuration serving `storage` on `addr`.
pub fn config_yaml(storage: &Path, addr: &str) -> String {
    format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
        storage.display()
    )
}

/// A `docker-registry` serving a storage directory on a free loopback port; stopped on drop.
pub struct LocalRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    /// Starts the registry with its blobs under `storage/data` and waits until `/v2/` answers.
    pub fn start(storage: &Path) -> Result<LocalRegistry> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::io("picking a port"))?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = storage.join("config.yml");
        let data = storage.join("data");
        std::fs::create_dir_all(&data).map_err(Error::io("creating the registry storage"))?;
        std::fs::write(&config, config_yaml(&data, &host))
            .map_err(Error::io("writing the registry config"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("starting docker-registry"))?;
        let registry = LocalRegistry { child, host };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !v2_answers(&registry.host) {
            if Instant::now() > deadline {
                return Err(Error::Harness(format!(
                    "docker-registry did not come up on {}",
                    registry.host
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Pushes an image of gzip'd OCI layer blobs and a config as `repository:tag`.
    pub async fn push(&self, reference: &str, layers: &[Vec<u8>], config: Vec<u8>) -> Result<()> {
        let layers: Vec<ImageLayer> = layers
            .iter()
            .map(|blob| {
                ImageLayer::new(
                    blob.clone(),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    None,
                )
            })
            .collect();
        let config = Config::new(
            config,
            "application/vnd.oci.image.config.v1+json".into(),
            None,
        );
        // msbvm's image store installs this itself on its first pull; pushes come first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.host.clone()]),
            ..Default::default()
        });
        let target: Reference = format!("{}/{reference}", self.host)
            .parse()
            .map_err(|e| Error::Harness(format!("bad reference {reference}: {e}")))?;
        client
            .push(&target, &layers, config, &RegistryAuth::Anonymous, None)
            .await
            .map_err(|e| Error::Harness(format!("pushing {reference}: {e}")))?;
        Ok(())
    }
}

/// Whether the distribution's registry binary is installed.
pub fn available() -> bool {
    Path::new(REGISTRY_BIN).exists()
}

/// Fills `storage` (a directory) with a registry holding [`TEST_IMAGE`], built from the
/// host's static `busybox`: a base layer (busybox, `/etc/os-release`, `/etc/motd`, a user
/// `app`), and a top layer that deletes `/etc/motd` (whiteout) and adds `/srv/hello`.
/// Its config sets `Env`, `WorkingDir` and `Cmd`.
pub fn fill_storage(storage: &Path, busybox: &Path) -> Result<()> {
    let registry = LocalRegistry::start(storage)?;
    let busybox = std::fs::read(busybox).map_err(Error::io("reading busybox"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting tokio"))?;
    runtime.block_on(push_test_image(&registry, &busybox))
}

fn v2_answers(host: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, u64, &'a [u8]),
    Link(&'a str, &'a str),
}

fn tar_of(items: &[Item]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let r = match item {
            Item::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty())
            }
            Item::File(path, mode, uid, data) => {
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data)
            }
            Item::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)
            }
        };
        r.map_err(Error::io("building a test layer"))?;
    }
    b.into_inner().map_err(Error::io("building a test layer"))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes)
        .map_err(Error::io("compressing a layer"))?;
    gz.finish().map_err(Error::io("compressing a layer"))
}

async fn push_test_image(registry: &LocalRegistry, busybox: &[u8]) -> Result<()> {
    const APPLETS: [&str; 27] = [
        "sh",
        "ls",
        "cat",
        "echo",
        "mkdir",
        "rm",
        "tar",
        "gzip",
        "wc",
        "md5sum",
        "stat",
        "id",
        "pwd",
        "touch",
        "dd",
        "sleep",
        "grep",
        "sed",
        "head",
        "df",
        "find",
        "nc",
        "nslookup",
        "httpd",
        "readlink",
        "test",
        "sha256sum",
    ];
    let mut base = vec![
        Item::Dir("bin", 0o755),
        Item::File("bin/busybox", 0o755, 0, busybox),
        Item::Dir("etc", 0o755),
        Item::File(
            "etc/os-release",
            0o644,
            0,
            b"NAME=\"msbvm test image\"\nID=msbvm-test\n",
        ),
        Item::File("etc/motd", 0o644, 0, b"welcome\n"),
        Item::File(
            "etc/passwd",
            0o644,
            0,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        ),
        Item::File("etc/group", 0o644, 0, b"root:x:0:\napp:x:1000:\n"),
        Item::Dir("root", 0o700),
        Item::Dir("tmp", 0o1777),
        Item::Dir("proc", 0o555),
        Item::Dir("sys", 0o555),
        Item::Dir("dev", 0o755),
    ];
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    for link in &links {
        base.push(Item::Link(link, "busybox"));
    }
    let base = tar_of(&base)?;
    let top = tar_of(&[
        Item::File("etc/.wh.motd", 0o644, 0, b""),
        Item::Dir("srv", 0o755),
        Item::File("srv/hello", 0o640, 1000, b"hello from a layer\n"),
    ])?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
            "WorkingDir": "/srv",
            "Cmd": ["cat", "/srv/hello"],
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&top)]},
    });
    let layers = [gzip(&base)?, gzip(&top)?];
    let config = serde_json::to_vec(&config).map_err(|e| Error::Harness(e.to_string()))?;
    registry.push(TEST_IMAGE, &layers, config).await
}

/// Where the storage lives inside L1.
pub fn l1_storage_dir() -> PathBuf {
    PathBuf::from("/registry")
}
