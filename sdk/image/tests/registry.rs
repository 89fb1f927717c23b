//! Pulls through the store from a real registry (the distribution's `docker-registry`),
//! started on a free local port with its storage in a temporary directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use msbvm_image::{Auth, Error, ImageStore, NoProgress, Platform, PullOptions, PullProgress};
use msbvm_layer_meta::LayerMeta;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageIndex;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

struct Registry {
    child: Child,
    host: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a registry, with htpasswd authentication when `user` is given; `None` (after
/// printing why) when the binary is missing.
fn start_registry(user: Option<(&str, &str)>) -> Option<Registry> {
    if !Path::new(REGISTRY_BIN).exists() {
        eprintln!("skipped: docker-registry not installed (apt-get install docker-registry)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let mut config = format!(
        "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
        dir.path().join("data").display()
    );
    if let Some((name, password)) = user {
        let htpasswd = dir.path().join("htpasswd");
        let hash = bcrypt::hash(password, 4).unwrap();
        std::fs::write(&htpasswd, format!("{name}:{hash}\n")).unwrap();
        config += &format!(
            "auth:\n  htpasswd:\n    realm: msbvm-test\n    path: {}\n",
            htpasswd.display()
        );
    }
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new(REGISTRY_BIN)
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        host,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !v2_answers(&registry.host) {
        assert!(
            Instant::now() < deadline,
            "registry did not come up on {}",
            registry.host
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(registry)
}

fn v2_answers(host: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 ")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A tar of regular files, `(path, mode, uid, contents)`.
fn tar_of(files: &[(&str, u32, u64, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, uid, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_mtime(0);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// An image to push: gzip layers (with their tars) and a config.
struct TestImage {
    layers: Vec<(Vec<u8>, Vec<u8>)>,
    config: Vec<u8>,
}

fn test_image(arch: &str, extra: &[u8]) -> TestImage {
    let base = tar_of(&[
        ("etc/motd", 0o644, 0, b"welcome\n"),
        ("bin/tool", 0o4755, 0, extra),
    ]);
    let top = tar_of(&[
        ("etc/.wh.motd", 0o644, 0, b""),
        ("home/user/notes", 0o600, 1000, b"n"),
    ]);
    let diff_ids = [sha256(&base), sha256(&top)];
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/tool"], "Cmd": ["--help"], "Env": ["PATH=/bin"], "User": "1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    TestImage {
        layers: vec![(gzip(&base), base), (gzip(&top), top)],
        config: serde_json::to_vec(&config).unwrap(),
    }
}

fn client(host: &str) -> Client {
    // The store installs this itself on its first pull; the test's own pushes come first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(vec![host.to_string()]),
        ..Default::default()
    })
}

/// Pushes `image` as `reference`; returns the manifest digest and size.
async fn push(
    host: &str,
    reference: &str,
    image: &TestImage,
    auth: &RegistryAuth,
) -> (String, usize) {
    let client = client(host);
    let r: Reference = reference.parse().unwrap();
    let layers: Vec<ImageLayer> = image
        .layers
        .iter()
        .map(|(blob, _)| {
            ImageLayer::new(
                blob.clone(),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                None,
            )
        })
        .collect();
    let config = Config::new(
        image.config.clone(),
        "application/vnd.oci.image.config.v1+json".into(),
        None,
    );
    client.push(&r, &layers, config, auth, None).await.unwrap();
    let (bytes, digest) = client
        .pull_manifest_raw(&r, auth, &["application/vnd.oci.image.manifest.v1+json"])
        .await
        .unwrap();
    (digest, bytes.len())
}

fn options(host: &str) -> PullOptions {
    PullOptions {
        insecure_plain_http_registries: vec![host.to_string()],
        ..Default::default()
    }
}

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    }
}

/// Records download events.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl PullProgress for Recorder {
    fn download_started(&self, digest: &str, total: u64, resumed_from: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("start {digest} {total} {resumed_from}"));
    }
    fn download_finished(&self, digest: &str, cached: bool) {
        self.0
            .lock()
            .unwrap()
            .push(format!("done {digest} cached={cached}"));
    }
}

fn store_in(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("images")).unwrap()
}

#[tokio::test]
async fn pulls_images_and_indexes_from_a_registry() {
    let Some(registry) = start_registry(None) else {
        return;
    };
    let host = registry.host.clone();
    let image = test_image("amd64", b"amd64 tool");
    let reference = format!("{host}/test/app:v1");
    let (manifest_digest, _) = push(&host, &reference, &image, &RegistryAuth::Anonymous).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let recorder = Recorder::default();
    let info = store
        .pull(&reference, &options(&host), &recorder)
        .await
        .unwrap();
    assert_eq!(info.reference, reference);
    assert_eq!(info.manifest_digest, manifest_digest);
    assert_eq!(
        info.layers,
        [sha256(&image.layers[0].1), sha256(&image.layers[1].1)]
    );
    assert_eq!(
        info.size,
        (image.layers[0].0.len() + image.layers[1].0.len()) as u64
    );

    let resolved = store.resolve(&reference).unwrap();
    assert_eq!(resolved.config.entrypoint, ["/bin/tool"]);
    assert_eq!(resolved.config.cmd, ["--help"]);
    assert_eq!(resolved.config.user.as_deref(), Some("1000"));
    let [base, top] = resolved.lower_dirs.as_slice() else {
        panic!("two layers expected")
    };
    assert_eq!(
        std::fs::read(base.join("rootfs/bin/tool")).unwrap(),
        b"amd64 tool"
    );
    assert!(top.join("rootfs/etc/.wh.motd").is_file());
    let meta = LayerMeta::load(base).unwrap();
    assert_eq!(meta.entries["bin/tool"].mode, libc::S_IFREG | 0o4755);
    assert_eq!(
        LayerMeta::load(top).unwrap().entries["home/user/notes"].uid,
        1000
    );
    let events = recorder.0.lock().unwrap().clone();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("start")).count(),
        2,
        "{events:?}"
    );

    // A second pull downloads nothing.
    let again = Recorder::default();
    store
        .pull(&reference, &options(&host), &again)
        .await
        .unwrap();
    let events = again.0.lock().unwrap().clone();
    assert!(
        events.iter().all(|e| e.ends_with("cached=true")),
        "{events:?}"
    );

    // Multi-platform: an index with amd64 and arm64 manifests.
    let arm = test_image("arm64", b"arm64 tool");
    let (arm_digest, arm_size) = push(
        &host,
        &format!("{host}/test/multi:arm64"),
        &arm,
        &RegistryAuth::Anonymous,
    )
    .await;
    let amd_size = push(
        &host,
        &format!("{host}/test/multi:amd64"),
        &image,
        &RegistryAuth::Anonymous,
    )
    .await
    .1;
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest, "size": arm_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": amd_size,
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let multi = format!("{host}/test/multi:1");
    client(&host)
        .push_manifest_list(&multi.parse().unwrap(), &RegistryAuth::Anonymous, index)
        .await
        .unwrap();
    let opts = PullOptions {
        platform: Some(amd64()),
        ..options(&host)
    };
    let info = store.pull(&multi, &opts, &NoProgress).await.unwrap();
    assert_eq!(info.manifest_digest, manifest_digest);
    let opts = PullOptions {
        platform: Some(Platform {
            architecture: "arm64".into(),
            ..amd64()
        }),
        ..options(&host)
    };
    let info = store.pull(&multi, &opts, &NoProgress).await.unwrap();
    assert_eq!(info.manifest_digest, arm_digest);
    let arm_layer = &store.resolve(&multi).unwrap().lower_dirs[0];
    assert_eq!(
        std::fs::read(arm_layer.join("rootfs/bin/tool")).unwrap(),
        b"arm64 tool"
    );
    let opts = PullOptions {
        platform: Some(Platform {
            architecture: "riscv64".into(),
            ..amd64()
        }),
        ..options(&host)
    };
    let err = store.pull(&multi, &opts, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");

    // Unknown tags fail with the registry's answer.
    let err = store
        .pull(
            &format!("{host}/test/app:nope"),
            &options(&host),
            &NoProgress,
        )
        .await;
    assert!(matches!(err, Err(Error::Registry { .. })), "{err:?}");
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let Some(registry) = start_registry(None) else {
        return;
    };
    let host = registry.host.clone();
    let image = test_image("amd64", &[7u8; 100_000]);
    let reference = format!("{host}/test/resume:1");
    push(&host, &reference, &image, &RegistryAuth::Anonymous).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    let blob = &image.layers[0].0;
    let digest = sha256(blob);
    let half = blob.len() / 2;
    let partial: PathBuf = store
        .root()
        .join(format!("tmp/blob-{}.partial", &digest[7..]));
    std::fs::write(&partial, &blob[..half]).unwrap();
    let recorder = Recorder::default();
    store
        .pull(&reference, &options(&host), &recorder)
        .await
        .unwrap();
    let events = recorder.0.lock().unwrap().clone();
    let expected = format!("start {digest} {} {half}", blob.len());
    assert!(events.contains(&expected), "{events:?}");
    assert!(!partial.exists());
    let base = &store.resolve(&reference).unwrap().lower_dirs[0];
    assert_eq!(
        std::fs::read(base.join("rootfs/bin/tool")).unwrap().len(),
        100_000
    );
}

#[tokio::test]
async fn basic_auth_accepts_right_credentials_and_refuses_wrong_ones() {
    let Some(registry) = start_registry(Some(("alice", "s3cret"))) else {
        return;
    };
    let host = registry.host.clone();
    let image = test_image("amd64", b"private");
    let reference = format!("{host}/private/app:1");
    let right = RegistryAuth::Basic("alice".into(), "s3cret".into());
    push(&host, &reference, &image, &right).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path());
    for auth in [
        Auth::Anonymous,
        Auth::Basic {
            username: "alice".into(),
            password: "wrong".into(),
        },
    ] {
        let opts = PullOptions {
            auth: auth.clone(),
            ..options(&host)
        };
        let err = store
            .pull(&reference, &opts, &NoProgress)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{auth:?}: {err}");
        assert!(err.to_string().contains(&host), "{err}");
    }
    assert!(store.list().unwrap().is_empty());
    let opts = PullOptions {
        auth: Auth::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        },
        ..options(&host)
    };
    let info = store.pull(&reference, &opts, &NoProgress).await.unwrap();
    assert_eq!(info.layers.len(), 2);
    let mut sizes = BTreeMap::new();
    for l in store.resolve(&reference).unwrap().lower_dirs {
        sizes.insert(l.clone(), LayerMeta::load(&l).unwrap().entries.len());
    }
    assert_eq!(sizes.len(), 2);
}
