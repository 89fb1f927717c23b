//! Creating, finding and driving sandboxes; snapshots, forks and image pulls.

use msbvm_sdk as sdk;
use napi::bindgen_prelude::Buffer;
use napi::threadsafe_function::{ErrorStrategy, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::options::{seconds, CreateOptions, ExecOptions, ForkOptions, NetRule};
use crate::process::{EventStream, ExecResult, ExecStream};
use crate::{config_error, json_arg, to_js};

/// A running sandbox (the native half of the package's `Sandbox`).
#[napi]
pub struct Sandbox {
    inner: sdk::Sandbox,
}

/// A sandbox as `list` reports it.
#[napi(object)]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// "starting", "running", "stopping", "stopped", "failed" or "crashed".
    pub status: String,
    /// Its runtime's pid on the host.
    pub pid: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: f64,
    /// Whether it outlives its creator.
    pub detached: bool,
}

/// An entry of a guest directory, or what a guest path is.
#[napi(object)]
pub struct DirEntry {
    /// The name in its directory (or the path asked about).
    pub name: String,
    /// "file", "dir", "symlink" or "other".
    pub kind: String,
    /// Size in bytes.
    pub size: f64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: f64,
}

impl DirEntry {
    fn new(name: String, stat: &sdk::FileStat) -> Self {
        DirEntry {
            name,
            kind: stat.kind.as_str().into(),
            size: stat.size as f64,
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            mtime: stat.mtime as f64,
        }
    }
}

/// A snapshot, as `snapshot` reports it.
#[napi(object)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: String,
    /// The sandbox it was taken of.
    pub source: String,
    /// When, in seconds since the Unix epoch.
    pub created: f64,
    /// The source's vCPUs.
    pub cpus: u32,
    /// The source's memory in MiB.
    pub memory_mib: f64,
}

/// An image in the store, as `pull` reports it.
#[napi(object)]
pub struct ImageInfo {
    /// The reference it was pulled by.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Its layers' compressed size in bytes.
    pub size: f64,
    /// How many layers it has.
    pub layers: u32,
}

/// Starts a sandbox called `name` and waits until it is ready.
#[napi]
pub async fn create(name: String, options: Option<CreateOptions>) -> napi::Result<Sandbox> {
    let builder = options.unwrap_or_default().builder(name)?;
    let inner = builder.create().await.map_err(to_js)?;
    Ok(Sandbox { inner })
}

/// Attaches to the running sandbox `name`.
#[napi]
pub async fn get(name: String) -> napi::Result<Sandbox> {
    sdk::validate_name(&name).map_err(to_js)?;
    let inner = sdk::Sandbox::get(&name).await.map_err(to_js)?;
    Ok(Sandbox { inner })
}

/// Stops (if running) and removes the sandbox `name`.
#[napi]
pub async fn remove_named(name: String) -> napi::Result<()> {
    sdk::validate_name(&name).map_err(to_js)?;
    sdk::Sandbox::remove_named(&name).await.map_err(to_js)
}

/// The sandboxes of this user (`$MSBVM_HOME`).
#[napi]
pub fn list() -> napi::Result<Vec<SandboxInfo>> {
    let all = sdk::Sandbox::list().map_err(to_js)?;
    Ok(all
        .into_iter()
        .map(|i| SandboxInfo {
            name: i.name,
            status: i.status.as_str().into(),
            pid: i.pid,
            cpus: u32::from(i.cpus),
            memory_mib: i.memory_mib as f64,
            detached: i.detached,
        })
        .collect())
}

/// Starts sandboxes from the snapshot `snapshot`.
#[napi]
pub async fn fork(snapshot: String, options: Option<ForkOptions>) -> napi::Result<Vec<Sandbox>> {
    let builder = match options {
        Some(o) => o.builder(&snapshot)?,
        None => sdk::Sandbox::fork(&snapshot),
    };
    let forks = builder.create().await.map_err(to_js)?;
    Ok(forks.into_iter().map(|inner| Sandbox { inner }).collect())
}

/// One step of a pull, as the progress callback gets it: `kind` is "download_started"
/// (`done` bytes already on disk of `total`), "download_progress" (`done` bytes),
/// "download_finished" / "unpack_finished" (`done` is 1 when it was cached) or
/// "unpack_started"; `id` is the blob's digest or the layer's diff id.
#[napi(object)]
pub struct PullEvent {
    /// What happened.
    pub kind: String,
    /// The blob or layer.
    pub id: String,
    /// Bytes (or the cached flag).
    pub done: f64,
    /// The blob's size, where known.
    pub total: f64,
}

/// Pulls `reference` into the image store; `plainHttp` names registries reached without TLS,
/// `progress` is called with each `PullEvent`.
#[napi]
pub async fn pull(
    reference: String,
    plain_http: Option<Vec<String>>,
    progress: Option<ThreadsafeFunction<PullEvent, ErrorStrategy::Fatal>>,
) -> napi::Result<ImageInfo> {
    let mut options = sdk::images::options_from_env();
    options
        .insecure_plain_http_registries
        .extend(plain_http.unwrap_or_default());
    // Each step goes to JavaScript on Node's thread, never blocking the pull.
    let progress = sdk::images::ProgressFn(move |step: sdk::images::PullStep<'_>| {
        if let Some(callback) = &progress {
            let event = PullEvent {
                kind: step.kind.into(),
                id: step.id.into(),
                done: step.done as f64,
                total: step.total as f64,
            };
            callback.call(event, ThreadsafeFunctionCallMode::NonBlocking);
        }
    });
    let info = sdk::images::pull(&reference, &options, &progress)
        .await
        .map_err(to_js)?;
    Ok(ImageInfo {
        reference: info.reference,
        digest: info.manifest_digest,
        size: info.size as f64,
        layers: info.layers.len() as u32,
    })
}

#[napi]
impl Sandbox {
    /// The sandbox's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// Its runtime's pid on the host.
    #[napi(getter)]
    pub fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Runs `argv` to its end.
    #[napi]
    pub async fn exec(
        &self,
        argv: Vec<String>,
        options: Option<ExecOptions>,
    ) -> napi::Result<ExecResult> {
        let opts = exec_options(argv, options)?;
        Ok(self.inner.exec_with(opts).await.map_err(to_js)?.into())
    }

    /// Starts `argv`; its events, stdin, signals and terminal.
    #[napi]
    pub async fn exec_stream(
        &self,
        argv: Vec<String>,
        options: Option<ExecOptions>,
    ) -> napi::Result<ExecStream> {
        let opts = exec_options(argv, options)?;
        let stream = self.inner.exec_stream(opts).await.map_err(to_js)?;
        Ok(ExecStream::new(stream))
    }

    /// The guest file `path`.
    #[napi]
    pub async fn read_file(&self, path: String) -> napi::Result<Buffer> {
        Ok(self.inner.read_file(&path).await.map_err(to_js)?.into())
    }

    /// Writes the guest file `path`.
    #[napi]
    pub async fn write_file(&self, path: String, data: Buffer) -> napi::Result<()> {
        let bytes = data.to_vec();
        self.inner.write_file(&path, bytes).await.map_err(to_js)
    }

    /// The entries of the guest directory `path`.
    #[napi]
    pub async fn list_dir(&self, path: String) -> napi::Result<Vec<DirEntry>> {
        let entries = self.inner.list_dir(&path).await.map_err(to_js)?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry::new(e.name, &e.stat))
            .collect())
    }

    /// What the guest path `path` is (symlinks followed).
    #[napi]
    pub async fn stat(&self, path: String) -> napi::Result<DirEntry> {
        let stat = self.inner.stat(&path).await.map_err(to_js)?;
        Ok(DirEntry::new(path, &stat))
    }

    /// Makes the guest directory `path`.
    #[napi]
    pub async fn mkdir(&self, path: String, parents: Option<bool>) -> napi::Result<()> {
        self.inner
            .mkdir(&path, parents.unwrap_or(false))
            .await
            .map_err(to_js)
    }

    /// Removes the guest path `path`.
    #[napi]
    pub async fn remove_path(&self, path: String, recursive: Option<bool>) -> napi::Result<()> {
        self.inner
            .remove_path(&path, recursive.unwrap_or(false))
            .await
            .map_err(to_js)
    }

    /// Copies a host file or directory into the guest.
    #[napi]
    pub async fn copy_in(&self, host_path: String, guest_path: String) -> napi::Result<()> {
        self.inner
            .copy_in(&host_path, &guest_path)
            .await
            .map_err(to_js)
    }

    /// Copies a guest file or directory to the host.
    #[napi]
    pub async fn copy_out(&self, guest_path: String, host_path: String) -> napi::Result<()> {
        self.inner
            .copy_out(&guest_path, &host_path)
            .await
            .map_err(to_js)
    }

    /// Replaces the network policy (rules in order, first match wins).
    #[napi]
    pub async fn set_network_policy(
        &self,
        default_allow: bool,
        rules: Vec<NetRule>,
    ) -> napi::Result<()> {
        let rules = rules
            .into_iter()
            .map(|r| sdk::spec::NetRule {
                allow: r.allow,
                rule: r.rule,
            })
            .collect();
        self.inner
            .set_network_policy(default_allow, rules)
            .await
            .map_err(to_js)
    }

    /// Sends the event `kind` with the JSON text `data` to the guest's subscribers.
    #[napi]
    pub async fn emit(&self, kind: String, data: String) -> napi::Result<()> {
        let data = json_arg("event data", &data)?;
        self.inner.emit(&kind, data).await.map_err(to_js)
    }

    /// Subscribes to the guest's events of `types` (all when empty).
    #[napi]
    pub async fn events(&self, types: Vec<String>) -> napi::Result<EventStream> {
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let stream = self.inner.events(&types).await.map_err(to_js)?;
        Ok(EventStream::new(stream))
    }

    /// Takes a snapshot named `name`.
    #[napi]
    pub async fn snapshot(&self, name: String) -> napi::Result<SnapshotInfo> {
        let info = self.inner.snapshot(&name).await.map_err(to_js)?;
        Ok(SnapshotInfo {
            name: info.name,
            source: info.source,
            created: info.created as f64,
            cpus: u32::from(info.cpus),
            memory_mib: info.memory_mib as f64,
        })
    }

    /// Publishes a guest TCP port ("[ADDR:]HOST_PORT:GUEST_PORT"); returns "ADDR:PORT".
    #[napi]
    pub async fn publish(&self, port: String) -> napi::Result<String> {
        let spec = sdk::spec::PortSpec::parse(&port).map_err(to_js)?;
        Ok(self.inner.publish(spec).await.map_err(to_js)?.to_string())
    }

    /// Stops the guest, forcing it off after `timeout` seconds (default 5).
    #[napi]
    pub async fn stop(&self, timeout: Option<f64>) -> napi::Result<()> {
        let timeout = seconds("timeout", timeout)?.unwrap_or(sdk::DEFAULT_STOP_TIMEOUT);
        self.inner.stop_with_timeout(timeout).await.map_err(to_js)
    }

    /// The network stack's counters (bytes, packets, flows, drops) as JSON text.
    #[napi]
    pub async fn network_stats(&self) -> napi::Result<String> {
        self.inner.network_stats().await.map_err(to_js)
    }

    /// The network decisions still on record (flows, DNS queries, HTTP requests), oldest
    /// first, as JSON text of an array.
    #[napi]
    pub fn network_events(&self) -> napi::Result<String> {
        let events = self.inner.network_events().map_err(to_js)?;
        Ok(serde_json::Value::Array(events).to_string())
    }

    /// A reader of the network decisions made from now on (and those on record).
    #[napi]
    pub fn network_event_stream(&self) -> NetEventStream {
        NetEventStream {
            inner: std::sync::Mutex::new(self.inner.network_event_stream()),
        }
    }

    /// Writes all of the guest's RAM to the new host file `path` (mode 0600); its size.
    #[napi]
    pub async fn dump_memory(&self, path: String) -> napi::Result<f64> {
        let bytes = self
            .inner
            .dump_memory(std::path::Path::new(&path))
            .await
            .map_err(to_js)?;
        Ok(bytes as f64)
    }

    /// Sends the event `kind` (JSON text `data`) with a fresh id to the guest's subscribers
    /// and waits up to `timeout` seconds for the guest's answer: that event as JSON text.
    #[napi]
    pub async fn request(&self, kind: String, data: String, timeout: f64) -> napi::Result<String> {
        let data = json_arg("event data", &data)?;
        let timeout = seconds("timeout", Some(timeout))?.unwrap_or_default();
        let event = self
            .inner
            .request(&kind, data, timeout)
            .await
            .map_err(to_js)?;
        Ok(event.to_json().to_string())
    }

    /// Answers the guest event `event` (JSON text, as `events` gave it) with the event
    /// `kind` (JSON text `data`), sent to the connection it came on.
    #[napi]
    pub async fn reply(&self, event: String, kind: String, data: String) -> napi::Result<()> {
        let event = sdk::Event::from_json(&json_arg("event", &event)?).map_err(to_js)?;
        let data = json_arg("event data", &data)?;
        self.inner.reply(&event, &kind, data).await.map_err(to_js)
    }

    /// Forces the VM off now.
    #[napi]
    pub async fn kill(&self) -> napi::Result<()> {
        self.inner.kill().await.map_err(to_js)
    }

    /// Stops the sandbox if running and removes everything it left.
    #[napi]
    pub async fn remove(&self) -> napi::Result<()> {
        self.inner.clone().remove().await.map_err(to_js)
    }
}

/// The network decisions recorded since the last `poll` (the native half of the package's
/// `NetEventStream`).
#[napi]
pub struct NetEventStream {
    inner: std::sync::Mutex<sdk::NetEventStream>,
}

#[napi]
impl NetEventStream {
    /// The events recorded since the last call, oldest first, as JSON text of an array.
    #[napi]
    pub fn poll(&self) -> napi::Result<String> {
        let mut events = Vec::new();
        let mut stream = self
            .inner
            .lock()
            .map_err(|_| config_error("the stream was poisoned by a panic".into()))?;
        stream.poll(&mut |e| events.push(e)).map_err(to_js)?;
        Ok(serde_json::Value::Array(events).to_string())
    }
}

fn exec_options(argv: Vec<String>, options: Option<ExecOptions>) -> napi::Result<sdk::ExecOptions> {
    options.unwrap_or_default().for_argv(argv)
}
