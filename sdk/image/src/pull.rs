//! Pulling images from an OCI distribution registry (through the `oci-client` crate).
//!
//! Manifests are fetched raw so exactly the bytes the registry serves are stored under
//! their digest; indexes are resolved to one platform here. Blobs download into
//! `tmp/blob-<hex>.partial` under the blob's lock, resume with an HTTP range request when
//! a partial file is left over (falling back to a full download when the registry ignores
//! the range), and are renamed into `blobs/` only after their sha256 matched.

use std::path::Path;
use std::sync::Once;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::digest::{finish, sha256_of};
use crate::error::{io_err, Error, Result};
use crate::progress::PullProgress;
use crate::reference::ImageName;
use crate::spec::{
    is_layer_media_type, Descriptor, Manifest, Platform, ACCEPTED_MANIFESTS, MAX_JSON_BYTES,
};
use crate::store::{ImageInfo, ImageStore};

/// Largest blob a pull accepts, in bytes.
const MAX_BLOB_BYTES: u64 = 64 << 30;
/// Blobs downloaded at the same time.
const PARALLEL_DOWNLOADS: usize = 3;

/// Credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    Anonymous,
    /// Username and password (HTTP basic, or exchanged for a token when the registry uses
    /// token authentication).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A bearer token obtained beforehand.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// Credentials for the image's registry.
    pub auth: Auth,
    /// Registries (`host:port`, as written in references) to reach over plain HTTP instead
    /// of HTTPS: local test registries only.
    pub insecure_plain_http_registries: Vec<String>,
    /// Platform to pick from multi-platform images; default: Linux on the host architecture.
    pub platform: Option<Platform>,
}

fn registry_error(name: &ImageName, e: OciDistributionError) -> Error {
    let unauthorized = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    };
    if unauthorized {
        Error::Unauthorized {
            registry: name.registry.clone().unwrap_or_default(),
            reference: name.to_string(),
            detail: e.to_string(),
        }
    } else {
        Error::Registry {
            reference: name.to_string(),
            detail: e.to_string(),
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Io {
        context: "a blocking store task failed".into(),
        source: std::io::Error::other(e),
    }
}

/// The TLS stack needs a process-wide crypto provider; ring keeps the build free of a C
/// toolchain-heavy dependency. Installing fails harmlessly when the host program set one.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Per-pull state: the client, the reference and the store.
struct Puller<'a> {
    store: &'a ImageStore,
    client: Client,
    auth: RegistryAuth,
    name: ImageName,
    reference: Reference,
    progress: &'a dyn PullProgress,
}

impl ImageStore {
    /// Pulls `reference` (`host[:port]/repository[:tag|@digest]`) into the store and records
    /// it; blobs and layers already present are reused. A reference without a registry host
    /// takes the one from `MSBVM_REGISTRY` or is refused.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &dyn PullProgress,
    ) -> Result<ImageInfo> {
        let name = ImageName::parse_for_pull(reference)?;
        let oci_ref: Reference = name
            .to_string()
            .parse()
            .map_err(|e| Error::InvalidReference {
                reference: reference.to_string(),
                reason: format!("{e}"),
            })?;
        install_crypto_provider();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_plain_http_registries.clone()),
            platform_resolver: None,
            ..Default::default()
        };
        // oci-client 0.18 builds a default client inside `try_from` and panics when the
        // system has no CA certificates (even for plain-HTTP registries): turn that into an
        // error that names the fix instead of taking the process down.
        let client = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            Client::try_from(config)
        }))
        .map_err(|_| Error::Registry {
            reference: name.to_string(),
            detail: "cannot set up TLS: no CA certificates were found on this system \
                         (install the ca-certificates package)"
                .into(),
        })?
        .map_err(|e| registry_error(&name, e))?;
        let auth = match &options.auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Auth::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        };
        let store = self.clone();
        let _gc = tokio::task::spawn_blocking(move || store.gc_guard())
            .await
            .map_err(join_error)??;
        let puller = Puller {
            store: self,
            client,
            auth,
            name: name.clone(),
            reference: oci_ref,
            progress,
        };
        let platform = options.platform.clone().unwrap_or_else(Platform::host);
        let (manifest_digest, index_digest) = puller.manifests(&platform).await?;
        let manifest = Manifest::parse(&self.read_json_blob(&manifest_digest)?)?;
        let (config, layers) = manifest.image_parts()?;
        if config.size()? > MAX_JSON_BYTES {
            return Err(Error::InvalidImage(format!(
                "config {} is too large",
                config.digest
            )));
        }
        if let Some(bad) = layers.iter().find(|l| !is_layer_media_type(&l.media_type)) {
            return Err(Error::InvalidImage(format!(
                "layer {} has media type {:?}, which is not a container image layer",
                bad.digest, bad.media_type
            )));
        }
        puller.blob(config, false).await?;
        // Collected first: a stream over a closure that borrows each layer makes the future
        // not `Send` for every lifetime (a rustc limitation), and callers spawn it.
        let downloads: Vec<_> = layers.iter().map(|l| puller.blob(l, true)).collect();
        futures_util::stream::iter(downloads)
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        let store = self.clone();
        let progress_events = Recorder::default();
        let info = {
            let recorder = progress_events.clone();
            tokio::task::spawn_blocking(move || {
                store.install(&name, &manifest_digest, index_digest, &recorder)
            })
            .await
            .map_err(join_error)??
        };
        progress_events.replay(progress);
        Ok(info)
    }
}

/// Collects unpack events inside the blocking task (which cannot borrow the caller's
/// progress sink) and replays them afterwards.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>);

impl PullProgress for Recorder {
    fn unpack_finished(&self, diff_id: &str, cached: bool) {
        if let Ok(mut v) = self.0.lock() {
            v.push((diff_id.to_string(), cached));
        }
    }
}

impl Recorder {
    fn replay(&self, progress: &dyn PullProgress) {
        if let Ok(v) = self.0.lock() {
            for (diff_id, cached) in v.iter() {
                progress.unpack_finished(diff_id, *cached);
            }
        }
    }
}

impl Puller<'_> {
    /// Fetches the manifest (through the index if there is one), stores both, and returns
    /// the image manifest's digest and the index's.
    async fn manifests(&self, platform: &Platform) -> Result<(String, Option<String>)> {
        let (bytes, digest) = self.manifest_raw(&self.reference).await?;
        let top = Manifest::parse(&bytes)?;
        if !top.is_index() {
            self.store_json(&digest, &bytes)?;
            return Ok((digest, None));
        }
        let entries = top.manifests.as_deref().unwrap_or_default();
        let entry = platform.select(entries)?;
        let (inner_bytes, inner_digest) = self
            .manifest_raw(&self.reference.clone_with_digest(entry.digest.clone()))
            .await?;
        if inner_digest != entry.digest || Manifest::parse(&inner_bytes)?.is_index() {
            return Err(Error::InvalidImage(format!(
                "index entry {} for {platform} is not an image manifest",
                entry.digest
            )));
        }
        self.store_json(&digest, &bytes)?;
        self.store_json(&inner_digest, &inner_bytes)?;
        Ok((inner_digest, Some(digest)))
    }

    async fn manifest_raw(&self, reference: &Reference) -> Result<(Vec<u8>, String)> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry_error(&self.name, e))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(Error::InvalidImage(format!(
                "manifest {digest} is too large"
            )));
        }
        // oci-client checked the registry's digest header; the store checks the bytes.
        let actual = sha256_of(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {}", self.name),
                expected: digest,
                actual,
            });
        }
        Ok((bytes.to_vec(), digest))
    }

    fn store_json(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        self.store
            .put_blob(Some(digest), bytes, MAX_JSON_BYTES)
            .map(|_| ())
    }

    /// Downloads one blob into the store unless present, resuming a partial download.
    async fn blob(&self, desc: &Descriptor, report: bool) -> Result<()> {
        let store = self.store;
        if self.present(desc, report)? {
            return Ok(());
        }
        let total = desc.size()?;
        if total > MAX_BLOB_BYTES {
            return Err(Error::InvalidImage(format!(
                "blob {} is larger than the limit",
                desc.digest
            )));
        }
        let lock_path = store.blob_lock(&desc.digest)?;
        let _lock = tokio::task::spawn_blocking(move || crate::lock::exclusive(&lock_path))
            .await
            .map_err(join_error)??;
        // Another process may have fetched it while this one waited for the lock.
        if self.present(desc, report)? {
            return Ok(());
        }
        let partial = store.partial_path(&desc.digest)?;
        let context = format!("downloading {}", desc.digest);
        let Some(mut download) = Partial::resume(&partial, desc, total, &context).await? else {
            return self.commit_partial(desc, report).await;
        };
        if report {
            self.progress
                .download_started(&desc.digest, total, download.offset);
        }
        let stream = self.stream(desc, &mut download).await?;
        let mut chunks = stream.stream;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(io_err(download.context))?;
            download.offset += chunk.len() as u64;
            if download.offset > total {
                drop(download);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(Error::InvalidImage(format!(
                    "registry sent more than the {total} bytes of {}",
                    desc.digest
                )));
            }
            download.hasher.update(&chunk);
            download
                .file
                .write_all(&chunk)
                .await
                .map_err(io_err(download.context))?;
            if report {
                self.progress
                    .download_progress(&desc.digest, download.offset);
            }
        }
        let actual = download.finish().await?;
        if actual != desc.digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(Error::DigestMismatch {
                what: format!("blob of {}", self.name),
                expected: desc.digest.clone(),
                actual,
            });
        }
        self.commit_partial(desc, report).await
    }

    /// Whether the store has the blob already (reported as a finished download).
    fn present(&self, desc: &Descriptor, report: bool) -> Result<bool> {
        let present = self.store.has_blob(&desc.digest)?;
        if present && report {
            self.progress.download_finished(&desc.digest, true);
        }
        Ok(present)
    }

    /// The registry's stream of the blob from `download.offset` on (from the start when the
    /// registry ignores the range; `download` starts over then).
    async fn stream(&self, desc: &Descriptor, download: &mut Partial<'_>) -> Result<SizedStream> {
        let od = OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size,
            ..Default::default()
        };
        let err = |e| registry_error(&self.name, e);
        if download.offset == 0 {
            return self
                .client
                .pull_blob_stream(&self.reference, &od)
                .await
                .map_err(err);
        }
        match self
            .client
            .pull_blob_stream_partial(&self.reference, &od, download.offset, None)
            .await
            .map_err(err)?
        {
            BlobResponse::Partial(s) => Ok(s),
            BlobResponse::Full(s) => {
                // The registry ignored the range: start over.
                download.restart().await?;
                Ok(s)
            }
        }
    }

    async fn commit_partial(&self, desc: &Descriptor, report: bool) -> Result<()> {
        let partial = self.store.partial_path(&desc.digest)?;
        let path = self.store.blob_path(&desc.digest)?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(io_err(format!("renaming into {}", path.display())))?;
        if report {
            self.progress.download_finished(&desc.digest, false);
        }
        Ok(())
    }
}

/// Feeds what a partial download already holds into `hasher`; returns its length. A file
/// longer than the blob is corrupt and counts as empty.
/// A blob's partial download file, hashed up to `offset`.
struct Partial<'a> {
    file: tokio::fs::File,
    hasher: Sha256,
    offset: u64,
    /// What errors say was being done.
    context: &'a str,
}

impl<'a> Partial<'a> {
    /// Opens the partial download at `path` and hashes what it holds; `None` when it is
    /// already the whole blob.
    async fn resume(
        path: &Path,
        desc: &Descriptor,
        total: u64,
        context: &'a str,
    ) -> Result<Option<Partial<'a>>> {
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .await
            .map_err(io_err(context))?;
        let mut hasher = Sha256::new();
        let mut offset = hash_existing(&mut file, &mut hasher, total)
            .await
            .map_err(io_err(context))?;
        if offset == total {
            if finish(hasher.clone()) == desc.digest {
                return Ok(None);
            }
            offset = 0;
        }
        let mut partial = Partial {
            file,
            hasher,
            offset,
            context,
        };
        if offset == 0 {
            partial.restart().await?;
        }
        Ok(Some(partial))
    }

    /// Empties the file, to download from the start.
    async fn restart(&mut self) -> Result<()> {
        self.file.set_len(0).await.map_err(io_err(self.context))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        Ok(())
    }

    /// Syncs and closes the file; returns the digest of what it holds.
    async fn finish(self) -> Result<String> {
        self.file.sync_all().await.map_err(io_err(self.context))?;
        Ok(finish(self.hasher))
    }
}

async fn hash_existing(
    file: &mut tokio::fs::File,
    hasher: &mut Sha256,
    total: u64,
) -> std::io::Result<u64> {
    let len = file.metadata().await?.len();
    if len > total {
        return Ok(0);
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    Ok(done)
}
