//! The children of one sandbox and the grant they live within: the spawn service's
//! answers to each request.

use std::collections::BTreeMap;
use std::time::Duration;

use msbvm_protocol::spawn::{
    ChildInfo, ChildSpec, SpawnRequest, SpawnResponse, MAX_FILE_LEN, MAX_OUTPUT_LEN,
};
use msbvm_sdk::spawn::{child_name, SpawnGrant, DEFAULT_CHILD_MEMORY_MIB};
use msbvm_sdk::spec::{RootSpec, SandboxSpec, DEFAULT_IMAGE};
use msbvm_sdk::{ExecEvent, ExecOptions, Sandbox, WriteOptions};
use tokio::io::AsyncReadExt;
use tokio::sync::Mutex;

/// How long removing the children may take when the parent ends.
const TEARDOWN: Duration = Duration::from_secs(60);

/// One child as the service keeps it.
pub(super) struct Child {
    /// `None` while it is being created.
    sandbox: Option<Sandbox>,
    cpus: u8,
    memory_mib: u64,
    image: String,
    stopped: bool,
}

/// The children and the grant they live within.
pub(super) struct Family {
    pub(super) parent: String,
    pub(super) grant: SpawnGrant,
    pub(super) images: Vec<String>,
    pub(super) children: Mutex<BTreeMap<String, Child>>,
}

impl Family {
    /// The family of `parent`, children of `images` within `grant`.
    pub(super) fn new(parent: String, grant: SpawnGrant, images: Vec<String>) -> Family {
        Family {
            parent,
            grant,
            images,
            children: Mutex::new(BTreeMap::new()),
        }
    }

    pub(super) async fn handle(&self, request: SpawnRequest) -> Result<SpawnResponse, String> {
        match request {
            SpawnRequest::Hello { .. } => Err("hello was already received".into()),
            SpawnRequest::ExecStream { .. } | SpawnRequest::Events { .. } => {
                Err("a stream is served by its connection".into())
            }
            SpawnRequest::Emit { name, kind, data } => {
                let sandbox = self.running(&name).await?;
                let data: serde_json::Value = serde_json::from_str(&data)
                    .map_err(|e| format!("the event data is not JSON: {e}"))?;
                sandbox.emit(&kind, data).await.map_err(|e| e.to_string())?;
                Ok(SpawnResponse::Done)
            }
            SpawnRequest::Stdin(_) | SpawnRequest::CloseStdin | SpawnRequest::Signal(_) => {
                Err("no exec is streaming on this connection".into())
            }
            SpawnRequest::Create(spec) => self.create(spec).await,
            SpawnRequest::Exec {
                name,
                argv,
                stdin,
                timeout_secs,
            } => {
                let sandbox = self.running(&name).await?;
                exec(&sandbox, argv, stdin, timeout_secs).await
            }
            SpawnRequest::ReadFile { name, path } => {
                let sandbox = self.running(&name).await?;
                let mut reader = sandbox
                    .read_file_stream(&path)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut data = Vec::new();
                (&mut reader)
                    .take(MAX_FILE_LEN as u64 + 1)
                    .read_to_end(&mut data)
                    .await
                    .map_err(|e| e.to_string())?;
                if data.len() > MAX_FILE_LEN {
                    return Err(format!(
                        "{path} in {name} is larger than {MAX_FILE_LEN} bytes, the most one copy carries"
                    ));
                }
                Ok(SpawnResponse::File(data))
            }
            SpawnRequest::WriteFile {
                name,
                path,
                data,
                mode,
            } => {
                if data.len() > MAX_FILE_LEN {
                    return Err(format!("at most {MAX_FILE_LEN} bytes per copy"));
                }
                let sandbox = self.running(&name).await?;
                let options = WriteOptions {
                    mode: Some(mode & 0o7777),
                    create_parents: true,
                    append: false,
                };
                sandbox
                    .write_file_with(&path, &data[..], options)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(SpawnResponse::Done)
            }
            SpawnRequest::Stop { name } => {
                let sandbox = self.running(&name).await?;
                sandbox.stop().await.map_err(|e| e.to_string())?;
                if let Some(child) = self.children.lock().await.get_mut(&name) {
                    child.stopped = true;
                }
                Ok(SpawnResponse::Done)
            }
            SpawnRequest::Remove { name } => {
                let child = {
                    let mut children = self.children.lock().await;
                    match children.get(&name) {
                        None => return Err(self.unknown(&name)),
                        Some(c) if c.sandbox.is_none() => {
                            return Err(format!("{name} is still being created"))
                        }
                        Some(_) => children.remove(&name),
                    }
                };
                if let Some(sandbox) = child.and_then(|c| c.sandbox) {
                    sandbox.remove().await.map_err(|e| e.to_string())?;
                }
                Ok(SpawnResponse::Done)
            }
            SpawnRequest::List => {
                let children = self.children.lock().await;
                let list = children
                    .iter()
                    .map(|(name, c)| ChildInfo {
                        name: name.clone(),
                        status: match (&c.sandbox, c.stopped) {
                            (None, _) => "creating",
                            (Some(_), true) => "stopped",
                            (Some(_), false) => "running",
                        }
                        .into(),
                        cpus: c.cpus,
                        memory_mib: c.memory_mib,
                        image: c.image.clone(),
                    })
                    .collect();
                Ok(SpawnResponse::Children(list))
            }
        }
    }

    fn unknown(&self, name: &str) -> String {
        format!(
            "{} has no child named {name:?} (`msbvm ls` lists them)",
            self.parent
        )
    }

    pub(super) async fn running(&self, name: &str) -> Result<Sandbox, String> {
        let children = self.children.lock().await;
        match children.get(name) {
            None => Err(self.unknown(name)),
            Some(Child { sandbox: None, .. }) => Err(format!("{name} is still being created")),
            Some(Child { stopped: true, .. }) => Err(format!("{name} is stopped")),
            Some(Child {
                sandbox: Some(s), ..
            }) => Ok(s.clone()),
        }
    }

    /// Checks the request against the grant and reserves its share, under the lock.
    async fn reserve(&self, spec: &ChildSpec) -> Result<(String, u8, u64, String), String> {
        let full = child_name(&self.parent, &spec.name).map_err(|e| e.to_string())?;
        let cpus = spec.cpus.unwrap_or(1);
        let memory = spec.memory_mib.unwrap_or(DEFAULT_CHILD_MEMORY_MIB);
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        if !self.images.contains(&image) {
            return Err(format!(
                "image {image:?} is not granted to {}'s children (granted: {}); the host adds images with --allow-spawn N,image=REF",
                self.parent,
                self.images.join(", ")
            ));
        }
        if cpus == 0 || memory < 64 {
            return Err("a child needs at least 1 CPU and 64 MiB".into());
        }
        let mut children = self.children.lock().await;
        if children.contains_key(&spec.name) {
            return Err(format!(
                "{} already has a child named {:?}",
                self.parent, spec.name
            ));
        }
        let live: Vec<&Child> = children.values().filter(|c| !c.stopped).collect();
        let used_cpus: u32 = live.iter().map(|c| u32::from(c.cpus)).sum();
        let used_memory: u64 = live.iter().map(|c| c.memory_mib).sum();
        let g = &self.grant;
        if live.len() as u32 >= g.max_children {
            return Err(format!(
                "spawn quota exceeded: {} may have {} live children and has {} (the host raises it with --allow-spawn)",
                self.parent,
                g.max_children,
                live.len()
            ));
        }
        if used_cpus + u32::from(cpus) > g.max_cpus {
            return Err(format!(
                "spawn quota exceeded: {cpus} more CPUs would make {} of the {} granted",
                used_cpus + u32::from(cpus),
                g.max_cpus
            ));
        }
        if used_memory + memory > g.max_memory_mib {
            return Err(format!(
                "spawn quota exceeded: {memory} MiB more would make {} of the {} MiB granted",
                used_memory + memory,
                g.max_memory_mib
            ));
        }
        children.insert(
            spec.name.clone(),
            Child {
                sandbox: None,
                cpus,
                memory_mib: memory,
                image: image.clone(),
                stopped: false,
            },
        );
        Ok((full, cpus, memory, image))
    }

    async fn create(&self, spec: ChildSpec) -> Result<SpawnResponse, String> {
        if spec.env.len() > 256 || spec.env.iter().any(|(k, v)| k.len() + v.len() > 32 << 10) {
            return Err("at most 256 environment variables of 32 KiB each".into());
        }
        let (full, cpus, memory, image) = self.reserve(&spec).await?;
        let sandbox_spec = SandboxSpec {
            root: RootSpec::Image { reference: image },
            parent: Some(self.parent.clone()),
            ..SandboxSpec::default()
        };
        let mut builder = Sandbox::builder(&full)
            .spec(sandbox_spec)
            .cpus(cpus)
            .memory_mib(memory);
        for (k, v) in &spec.env {
            builder = builder.env(k, v);
        }
        match builder.create().await {
            Ok(sandbox) => {
                let mut children = self.children.lock().await;
                match children.get_mut(&spec.name) {
                    Some(child) => child.sandbox = Some(sandbox),
                    // The parent is ending and took the children: this one goes too.
                    None => {
                        drop(children);
                        let _ = sandbox.remove().await;
                        return Err("the parent sandbox is ending".into());
                    }
                }
                eprintln!("msbvm spawner: created {full}");
                Ok(SpawnResponse::Done)
            }
            Err(e) => {
                self.children.lock().await.remove(&spec.name);
                Err(format!("creating {}: {e}", spec.name))
            }
        }
    }
}

impl Family {
    /// Removes every child (the parent is ending).
    pub(super) async fn remove_all(&self) {
        let children = std::mem::take(&mut *self.children.lock().await);
        let removals = children
            .into_values()
            .filter_map(|c| c.sandbox)
            .map(|sandbox| async move {
                let name = sandbox.name().to_string();
                if let Err(e) = sandbox.remove().await {
                    eprintln!("msbvm spawner: removing child {name}: {e}");
                }
            });
        let all = futures_join_all(removals.collect());
        if tokio::time::timeout(TEARDOWN, all).await.is_err() {
            eprintln!("msbvm spawner: children still ending after {TEARDOWN:?}; leaving them to end with this process");
        }
    }
}

/// Runs futures to completion together (without a dependency for it).
async fn futures_join_all<F: std::future::Future<Output = ()> + 'static>(all: Vec<F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in all {
        set.spawn_local(f);
    }
    while set.join_next().await.is_some() {}
}

/// Runs a command in `sandbox` to its end, output bounded by [`MAX_OUTPUT_LEN`].
async fn exec(
    sandbox: &Sandbox,
    argv: Vec<String>,
    stdin: Vec<u8>,
    timeout_secs: Option<u64>,
) -> Result<SpawnResponse, String> {
    if argv.is_empty() {
        return Err("no command given".into());
    }
    if stdin.len() > MAX_FILE_LEN {
        return Err(format!("at most {MAX_FILE_LEN} bytes of input"));
    }
    let mut options = ExecOptions::new(argv);
    if let Some(secs) = timeout_secs {
        options = options.timeout(Duration::from_secs(secs));
    }
    let mut stream = sandbox
        .exec_stream(options)
        .await
        .map_err(|e| e.to_string())?;
    let control = stream.control();
    let feeder = tokio::spawn(async move {
        if !stdin.is_empty() {
            let _ = control.write(&stdin).await;
        }
        let _ = control.close_stdin().await;
    });
    let (mut stdout, mut stderr, mut truncated) = (Vec::new(), Vec::new(), false);
    let code = loop {
        match stream.next_event().await.map_err(|e| e.to_string())? {
            Some(ExecEvent::Stdout(data)) | Some(ExecEvent::Stderr(data))
                if stdout.len() + stderr.len() + data.len() > MAX_OUTPUT_LEN =>
            {
                truncated = true;
            }
            Some(ExecEvent::Stdout(data)) => stdout.extend_from_slice(&data),
            Some(ExecEvent::Stderr(data)) => stderr.extend_from_slice(&data),
            Some(ExecEvent::Started { .. }) => {}
            Some(ExecEvent::Exited(status)) => break msbvm_sdk::shell_exit_code(status),
            None => return Err("the child's agent went away".into()),
        }
    };
    feeder.abort();
    Ok(SpawnResponse::Exited {
        code,
        stdout,
        stderr,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(grant: SpawnGrant) -> Family {
        Family::new("p".into(), grant, vec![DEFAULT_IMAGE.into()])
    }

    fn spec(name: &str, cpus: u8, memory: u64) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            cpus: Some(cpus),
            memory_mib: Some(memory),
            ..ChildSpec::default()
        }
    }

    #[tokio::test]
    async fn the_grant_caps_children_cpus_memory_and_images() {
        let f = family(SpawnGrant::children(2).cpus(3).memory_mib(600));
        assert!(f.reserve(&spec("a", 1, 256)).await.is_ok());
        let e = f.reserve(&spec("a", 1, 64)).await.unwrap_err();
        assert!(e.contains("already has"), "{e}");
        let e = f.reserve(&spec("b", 3, 64)).await.unwrap_err();
        assert!(e.contains("CPUs"), "{e}");
        let e = f.reserve(&spec("b", 1, 400)).await.unwrap_err();
        assert!(e.contains("MiB"), "{e}");
        assert!(f.reserve(&spec("b", 2, 300)).await.is_ok());
        let e = f.reserve(&spec("c", 1, 64)).await.unwrap_err();
        assert!(
            e.contains("quota exceeded") && e.contains("2 live children"),
            "{e}"
        );
        let mut other = spec("d", 1, 64);
        other.image = Some("evil:latest".into());
        f.children.lock().await.clear();
        let e = f.reserve(&other).await.unwrap_err();
        assert!(e.contains("not granted"), "{e}");
        for bad in ["../x", "A", "a.b", ""] {
            assert!(f.reserve(&spec(bad, 1, 64)).await.is_err(), "{bad}");
        }
    }
}
