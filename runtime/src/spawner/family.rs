//! The children of one sandbox and the grant they live within: the spawn service's
//! answers to each request.

use std::collections::BTreeMap;
use std::time::Duration;

use msbvm_protocol::spawn::{
    ChildInfo, ChildSpec, SpawnRequest, SpawnResponse, MAX_FILE_LEN, MAX_OUTPUT_LEN,
};
use msbvm_sdk::spawn::{child_name, SpawnGrant, DEFAULT_CHILD_MEMORY_MIB};
use msbvm_sdk::spec::{NetRule, RootSpec, SandboxSpec, DEFAULT_IMAGE};
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
    /// Its own spawn grant, whose children, CPUs and memory count against this family's.
    grant: Option<SpawnGrant>,
}

impl Child {
    /// What this child takes of the grant: sandboxes, CPUs, MiB (its own and its grant's).
    fn share(&self) -> (u32, u32, u64) {
        let (n, c, m) = self.grant.as_ref().map_or((0, 0, 0), |g| {
            (g.max_children, g.max_cpus, g.max_memory_mib)
        });
        (1 + n, u32::from(self.cpus) + c, self.memory_mib + m)
    }
}

/// What [`Family::reserve`] granted a child.
#[derive(Debug)]
struct Reserved {
    full: String,
    cpus: u8,
    memory_mib: u64,
    image: String,
    grant: Option<SpawnGrant>,
}

/// The children and the grant they live within.
pub(super) struct Family {
    pub(super) parent: String,
    pub(super) grant: SpawnGrant,
    pub(super) images: Vec<String>,
    pub(super) children: Mutex<BTreeMap<String, Child>>,
    /// The parent's secrets the grant names (in this process's memory only).
    secrets: Vec<msbvm_sdk::Secret>,
}

impl Family {
    /// The family of `parent`, children of `images` within `grant`.
    pub(super) fn new(parent: String, grant: SpawnGrant, images: Vec<String>) -> Family {
        Family {
            parent,
            grant,
            images,
            children: Mutex::new(BTreeMap::new()),
            secrets: Vec::new(),
        }
    }

    /// The parent's secrets children may be given.
    pub(super) fn with_secrets(mut self, secrets: Vec<msbvm_sdk::Secret>) -> Family {
        self.secrets = secrets;
        self
    }

    pub(super) async fn handle(&self, request: SpawnRequest) -> Result<SpawnResponse, String> {
        self.forget_detached().await;
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
                self.own_child_only(&name, "stop")?;
                let sandbox = self.running(&name).await?;
                sandbox.stop().await.map_err(|e| e.to_string())?;
                if let Some(child) = self.children.lock().await.get_mut(&name) {
                    child.stopped = true;
                }
                Ok(SpawnResponse::Done)
            }
            SpawnRequest::Remove { name } => {
                self.own_child_only(&name, "rm")?;
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
                let mut list: Vec<ChildInfo> = children
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
                drop(children);
                list.extend(self.descendants());
                Ok(SpawnResponse::Children(list))
            }
        }
    }

    /// Whether the host detached the child whose host name is `full`: its record no longer
    /// names this parent. A child without a readable record is still ours (removing it
    /// deals with whatever is left).
    fn is_detached(&self, full: &str) -> bool {
        let record = msbvm_sdk::SandboxDir::for_name(full)
            .and_then(|dir| msbvm_sdk::state::StateRecord::read(&dir));
        matches!(record, Ok(Some(r)) if r.parent.as_deref() != Some(self.parent.as_str()))
    }

    /// Drops the children the host detached: they no longer count against the grant, the
    /// parent can no longer reach them, and they outlive it.
    async fn forget_detached(&self) {
        let mut children = self.children.lock().await;
        let detached: Vec<String> = children
            .iter()
            .filter_map(|(name, c)| {
                let full = c.sandbox.as_ref()?.name();
                self.is_detached(full).then(|| name.clone())
            })
            .collect();
        for name in detached {
            children.remove(&name);
            eprintln!("msbvm spawner: {name} was detached by the host");
        }
    }

    fn unknown(&self, name: &str) -> String {
        format!(
            "{} has no child named {name:?} (`msbvm ls` lists them)",
            self.parent
        )
    }

    /// Reaches a running sandbox below the parent by the parent's name for it: a child
    /// (`c1`) or a descendant through the children's own grants (`c1.g1`), whose records
    /// must lead back to this parent (so a detached one is out of reach).
    pub(super) async fn running(&self, name: &str) -> Result<Sandbox, String> {
        let Some((child, _)) = name.split_once('.') else {
            return self.child(name).await;
        };
        // The first step is ours and running; the rest is on record.
        self.child(child).await?;
        if name.split('.').any(|part| child_name("x", part).is_err()) {
            return Err(self.unknown(name));
        }
        let full = format!("{}.{name}", self.parent);
        if !descends_from(&full, &self.parent, read_parent) {
            return Err(self.unknown(name));
        }
        Sandbox::get(&full).await.map_err(|e| e.to_string())
    }

    /// Refuses to stop or remove a grandchild directly: its own parent holds it in its grant.
    fn own_child_only(&self, name: &str, verb: &str) -> Result<(), String> {
        match name.split_once('.') {
            None => Ok(()),
            Some((child, rest)) => Err(format!(
                "{name} is {child}'s child: {verb} it through {child} (`msbvm exec {child} -- msbvm {verb} {rest}`)"
            )),
        }
    }

    /// The sandboxes below the children (grandchildren and further), by the parent's names
    /// for them.
    fn descendants(&self) -> Vec<ChildInfo> {
        let prefix = format!("{}.", self.parent);
        let Ok(all) = Sandbox::list() else {
            return Vec::new();
        };
        all.into_iter()
            .filter(|info| {
                info.name
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| rest.contains('.'))
                    && descends_from(&info.name, &self.parent, read_parent)
            })
            .map(|info| ChildInfo {
                name: info.name[prefix.len()..].to_string(),
                status: info.status.to_string(),
                cpus: info.cpus,
                memory_mib: info.memory_mib,
                image: read_image(&info.name).unwrap_or_default(),
            })
            .collect()
    }

    async fn child(&self, name: &str) -> Result<Sandbox, String> {
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
    async fn reserve(&self, spec: &ChildSpec) -> Result<Reserved, String> {
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
        if let Some(rule) = spec.net_allow.iter().find(|r| !self.grant.net.contains(r)) {
            return Err(format!(
                "network rule {rule:?} is not granted to {}'s children (granted: {}); the host adds rules with --allow-spawn N,net=RULE",
                self.parent,
                if self.grant.net.is_empty() { "none".to_string() } else { self.grant.net.join(", ") }
            ));
        }
        if spec.net_allow.len() + spec.net_deny.len() > 256 {
            return Err("at most 256 network rules".into());
        }
        if let Some(name) = spec
            .secrets
            .iter()
            .find(|n| !self.secrets.iter().any(|s| s.name() == n.as_str()))
        {
            return Err(format!(
                "secret {name:?} is not granted to {}'s children; the host adds secrets with --allow-spawn N,secret=NAME",
                self.parent
            ));
        }
        let grant = match &spec.allow_spawn {
            None => None,
            Some(text) => {
                let grant = SpawnGrant::parse(text).map_err(|e| e.to_string())?;
                self.grant.admits(&grant, &self.images)?;
                // A child passes on only the secrets it was given.
                if let Some(name) = grant.secrets.iter().find(|n| !spec.secrets.contains(n)) {
                    return Err(format!(
                        "the child's grant names secret {name:?}, which the child is not given (--secret {name})"
                    ));
                }
                Some(grant)
            }
        };
        let mut children = self.children.lock().await;
        if children.contains_key(&spec.name) {
            return Err(format!(
                "{} already has a child named {:?}",
                self.parent, spec.name
            ));
        }
        let (mut used_sandboxes, mut used_cpus, mut used_memory) = (0u32, 0u32, 0u64);
        for child in children.values().filter(|c| !c.stopped) {
            let (n, c, m) = child.share();
            used_sandboxes += n;
            used_cpus += c;
            used_memory += m;
        }
        let candidate = Child {
            sandbox: None,
            cpus,
            memory_mib: memory,
            image: image.clone(),
            stopped: false,
            grant: grant.clone(),
        };
        let (n, c, m) = candidate.share();
        let g = &self.grant;
        if used_sandboxes + n > g.max_children {
            return Err(format!(
                "spawn quota exceeded: {} may have {} live sandboxes below it and has {used_sandboxes}{} (the host raises it with --allow-spawn)",
                self.parent,
                g.max_children,
                if n > 1 { format!("; this one with its grant takes {n}") } else { String::new() }
            ));
        }
        if used_cpus + c > g.max_cpus {
            return Err(format!(
                "spawn quota exceeded: {c} more CPUs would make {} of the {} granted",
                used_cpus + c,
                g.max_cpus
            ));
        }
        if used_memory + m > g.max_memory_mib {
            return Err(format!(
                "spawn quota exceeded: {m} MiB more would make {} of the {} MiB granted",
                used_memory + m,
                g.max_memory_mib
            ));
        }
        children.insert(spec.name.clone(), candidate);
        Ok(Reserved {
            full,
            cpus,
            memory_mib: memory,
            image,
            grant,
        })
    }

    async fn create(&self, spec: ChildSpec) -> Result<SpawnResponse, String> {
        if spec.env.len() > 256 || spec.env.iter().any(|(k, v)| k.len() + v.len() > 32 << 10) {
            return Err("at most 256 environment variables of 32 KiB each".into());
        }
        let Reserved {
            full,
            cpus,
            memory_mib,
            image,
            grant,
        } = self.reserve(&spec).await?;
        let mut sandbox_spec = SandboxSpec {
            root: RootSpec::Image { reference: image },
            parent: Some(self.parent.clone()),
            spawn: grant,
            ..SandboxSpec::default()
        };
        // Denies first: the first matching rule wins, and they only narrow.
        let network = &mut sandbox_spec.network;
        network.enabled = !spec.no_network;
        for (allow, rules) in [(false, &spec.net_deny), (true, &spec.net_allow)] {
            network.rules.extend(rules.iter().map(|rule| NetRule {
                allow,
                rule: rule.clone(),
            }));
        }
        let mut builder = Sandbox::builder(&full)
            .spec(sandbox_spec)
            .cpus(cpus)
            .memory_mib(memory_mib);
        for (k, v) in &spec.env {
            builder = builder.env(k, v);
        }
        for secret in self
            .secrets
            .iter()
            .filter(|s| spec.secrets.iter().any(|n| n == s.name()))
        {
            builder = builder.secret(secret.clone());
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
    /// Removes every child (the parent is ending), except those the host detached.
    pub(super) async fn remove_all(&self) {
        self.forget_detached().await;
        let children = std::mem::take(&mut *self.children.lock().await);
        let removals = children
            .into_values()
            .filter_map(|c| c.sandbox)
            .filter(|sandbox| !self.is_detached(sandbox.name()))
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

/// The parent on record of the sandbox `full` (`None` when it has none or no record).
fn read_parent(full: &str) -> Option<String> {
    let dir = msbvm_sdk::SandboxDir::for_name(full).ok()?;
    msbvm_sdk::state::StateRecord::read(&dir).ok()??.parent
}

/// The image on record of the sandbox `full`.
fn read_image(full: &str) -> Option<String> {
    let dir = msbvm_sdk::SandboxDir::for_name(full).ok()?;
    msbvm_sdk::state::StateRecord::read(&dir).ok()??.image
}

/// Whether `full` is below `ancestor` on record: each step's parent (from `parent_of`) is
/// its name less the last part, up to `ancestor`. A name alone proves nothing (the host may
/// have detached a sandbox in between), and the walk is bounded by the name's parts.
fn descends_from(full: &str, ancestor: &str, parent_of: impl Fn(&str) -> Option<String>) -> bool {
    let mut name = full;
    let mut owned;
    while let Some((up, _)) = name.rsplit_once('.') {
        if parent_of(name).as_deref() != Some(up) {
            return false;
        }
        if up == ancestor {
            return true;
        }
        if !up
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('.'))
        {
            return false;
        }
        owned = up.to_string();
        name = &owned;
    }
    false
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
            e.contains("quota exceeded") && e.contains("2 live sandboxes"),
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

    #[tokio::test]
    async fn network_rules_come_only_from_the_grant() {
        let f = family(SpawnGrant::children(3).net_allow("host"));
        let mut s = spec("a", 1, 64);
        s.net_allow = vec!["10.0.0.0/8".into()];
        let e = f.reserve(&s).await.err().unwrap();
        assert!(e.contains("not granted") && e.contains("host"), "{e}");
        s.net_allow = vec!["host".into()];
        s.net_deny = vec!["example.com".into()];
        assert!(f.reserve(&s).await.is_ok());
    }

    #[test]
    fn descendants_are_reached_only_along_their_records() {
        let records = |name: &str| -> Option<String> {
            match name {
                "p.c" => Some("p".into()),
                "p.c.g" => Some("p.c".into()),
                "p.c.g.h" => Some("p.c.g".into()),
                // Detached by the host: no parent any more.
                "p.d.g" => None,
                // A record naming someone else.
                "p.e.g" => Some("q.e".into()),
                _ => None,
            }
        };
        assert!(descends_from("p.c", "p", records));
        assert!(descends_from("p.c.g", "p", records));
        assert!(descends_from("p.c.g.h", "p", records));
        assert!(descends_from("p.c.g.h", "p.c", records));
        assert!(!descends_from("p.d.g", "p", records));
        assert!(!descends_from("p.e.g", "p", records));
        assert!(!descends_from("p.c.g", "q", records));
        assert!(!descends_from("p", "p", records));
        assert!(!descends_from("pp.c", "p", |_| Some("pp".into())));
    }

    #[tokio::test]
    async fn grandchildren_are_stopped_and_removed_through_their_parent() {
        let f = family(SpawnGrant::children(1));
        let e = f.own_child_only("c.g", "rm").unwrap_err();
        assert!(e.contains("msbvm exec c -- msbvm rm g"), "{e}");
        assert!(f.own_child_only("c", "stop").is_ok());
        let e = f.running("c.g").await.unwrap_err();
        assert!(e.contains("no child named \"c\""), "{e}");
    }

    #[tokio::test]
    async fn a_childs_own_grant_is_carved_out_of_the_parents() {
        let f = family(SpawnGrant::children(3).cpus(3).memory_mib(1024));
        let mut s = spec("a", 1, 128);
        s.allow_spawn = Some("1".into());
        let e = f.reserve(&s).await.err().unwrap();
        assert!(e.contains("may not spawn"), "{e}");

        let f = family(SpawnGrant::children(3).cpus(3).memory_mib(1024).depth(2));
        s.allow_spawn = Some("1,depth=2".into());
        let e = f.reserve(&s).await.err().unwrap();
        assert!(e.contains("depth 1 at most"), "{e}");
        // 1 + 1 sandboxes, 1 + 1 CPUs, 128 + 512 MiB.
        s.allow_spawn = Some("1".into());
        assert!(f.reserve(&s).await.is_ok());
        let e = f.reserve(&spec("b", 1, 512)).await.err().unwrap();
        assert!(e.contains("MiB"), "{e}");
        assert!(f.reserve(&spec("b", 1, 256)).await.is_ok());
        let e = f.reserve(&spec("c", 1, 64)).await.err().unwrap();
        assert!(e.contains("3 live sandboxes below it and has 3"), "{e}");
    }
}
