//! Peer sandboxes from inside a sandbox: code in a guest whose creator granted spawning
//! creates, drives and removes sandboxes of its own through the host's spawn service (the
//! Rust SDK's `peer` module).

use std::collections::HashMap;

use msbvm_sdk as sdk;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use crate::options::whole;
use crate::to_js;

/// Whether this program runs inside an msbvm sandbox.
#[napi]
pub fn in_sandbox() -> bool {
    sdk::peer::in_sandbox()
}

/// Connects to the host's spawn service (inside a sandbox only).
#[napi]
pub async fn connect_peers() -> napi::Result<Peers> {
    let inner = sdk::peer::Peers::connect().await.map_err(to_js)?;
    Ok(Peers { inner })
}

/// A child to create; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct ChildOptions {
    /// Its image (within the grant's images).
    pub image: Option<String>,
    /// vCPUs (a whole number, checked as `create` checks it).
    pub cpus: Option<f64>,
    /// Memory in MiB (a whole number, checked as `create` checks it).
    pub memory: Option<f64>,
    /// Environment.
    pub env: Option<HashMap<String, String>>,
    /// Network allow rules (within the grant's).
    pub net_allow: Option<Vec<String>>,
    /// Network deny rules.
    pub net_deny: Option<Vec<String>>,
    /// Give it a network at all (default true).
    pub network: Option<bool>,
    /// A grant of its own, in the CLI's `--allow-spawn` grammar.
    pub allow_spawn: Option<String>,
    /// This sandbox's secrets it gets (its own placeholders).
    pub secrets: Option<Vec<String>>,
}

/// What a child's process left behind.
#[napi(object)]
pub struct PeerOutput {
    /// The exit code as a shell reports it.
    pub exit_code: i32,
    /// Its stdout.
    pub stdout: Buffer,
    /// Its stderr.
    pub stderr: Buffer,
    /// Whether the host cut the output at its limit.
    pub truncated: bool,
}

/// A child as `list` reports it.
#[napi(object)]
pub struct PeerInfo {
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: String,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: f64,
    /// Its image.
    pub image: String,
}

/// This sandbox's connection to the host's spawn service.
#[napi]
pub struct Peers {
    inner: sdk::peer::Peers,
}

#[napi]
impl Peers {
    /// Creates the child `name` (within this sandbox's grant).
    #[napi]
    pub async fn create(&self, name: String, options: Option<ChildOptions>) -> napi::Result<()> {
        let o = options.unwrap_or_default();
        let mut env: Vec<_> = o.env.unwrap_or_default().into_iter().collect();
        env.sort();
        // A number JavaScript hands over is checked here, as `create` and `fork` check theirs,
        // instead of napi coercing -1 or 1.5 into some u32.
        let cpus = o
            .cpus
            .map(|c| sdk::checked_cpus(whole("cpus", c)?).map_err(to_js))
            .transpose()?;
        let memory_mib = o
            .memory
            .map(|m| sdk::checked_memory_mib(whole("memory", m)?).map_err(to_js))
            .transpose()?;
        let spec = sdk::peer::ChildSpec {
            name,
            image: o.image,
            cpus,
            memory_mib,
            env,
            net_allow: o.net_allow.unwrap_or_default(),
            net_deny: o.net_deny.unwrap_or_default(),
            no_network: !o.network.unwrap_or(true),
            allow_spawn: o.allow_spawn,
            secrets: o.secrets.unwrap_or_default(),
        };
        self.inner.create(spec).await.map_err(to_js)
    }

    /// Runs `argv` in the child `name` to its end, with `stdin`.
    #[napi]
    pub async fn exec(
        &self,
        name: String,
        argv: Vec<String>,
        stdin: Option<Buffer>,
    ) -> napi::Result<PeerOutput> {
        let stdin = stdin.map(|b| b.to_vec()).unwrap_or_default();
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.inner.exec(&name, &args, &stdin).await.map_err(to_js)?;
        Ok(PeerOutput {
            exit_code: out.code,
            stdout: out.stdout.into(),
            stderr: out.stderr.into(),
            truncated: out.truncated,
        })
    }

    /// The child's file `path`.
    #[napi]
    pub async fn read_file(&self, name: String, path: String) -> napi::Result<Buffer> {
        Ok(self
            .inner
            .read_file(&name, &path)
            .await
            .map_err(to_js)?
            .into())
    }

    /// Writes the child's file `path`.
    #[napi]
    pub async fn write_file(&self, name: String, path: String, data: Buffer) -> napi::Result<()> {
        let bytes = data.to_vec();
        self.inner
            .write_file(&name, &path, &bytes)
            .await
            .map_err(to_js)
    }

    /// This sandbox's children.
    #[napi]
    pub async fn list(&self) -> napi::Result<Vec<PeerInfo>> {
        let all = self.inner.list().await.map_err(to_js)?;
        Ok(all
            .into_iter()
            .map(|c| PeerInfo {
                name: c.name,
                status: c.status,
                cpus: u32::from(c.cpus),
                memory_mib: c.memory_mib as f64,
                image: c.image,
            })
            .collect())
    }

    /// Sends the event `kind` with the JSON text `data` to the child `name`.
    #[napi]
    pub async fn emit(&self, name: String, kind: String, data: String) -> napi::Result<()> {
        let data = crate::json_arg("event data", &data)?;
        self.inner.emit(&name, &kind, &data).await.map_err(to_js)
    }

    /// Stops the child `name`.
    #[napi]
    pub async fn stop(&self, name: String) -> napi::Result<()> {
        self.inner.stop(&name).await.map_err(to_js)
    }

    /// Stops and removes the child `name`.
    #[napi]
    pub async fn remove(&self, name: String) -> napi::Result<()> {
        self.inner.remove(&name).await.map_err(to_js)
    }
}
