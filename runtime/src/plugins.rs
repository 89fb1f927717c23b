//! The sandbox's plugins, from the runtime's side.
//!
//! Plugins configured in the spec (`--plugin`, the SDK's `.plugin(..)`) are the user's: they
//! run as the sandbox's creator and may start programs, which a confined runtime cannot. So
//! before confining itself the runtime starts `msbvm __plugins` ([`launch`]), which starts and
//! supervises them ([`msbvm_plugins::serve`]); afterwards it attaches that host as one
//! out-of-process plugin ([`attach`]), behind the in-process plugins of the embedding
//! program ([`crate::devices::Extensions::plugins`]). What happens to plugins, and what they
//! emit, goes to the runtime log and the sandbox's event stream (type `msbvm.plugin` for
//! notices, the plugin's own type for its events).

use std::ffi::OsString;
use std::process::{Child, ExitCode};
use std::sync::Arc;

use msbvm_plugins::data::{FsAccess, FsIo, Lifecycle, SandboxInfo};
use msbvm_plugins::external::{External, ExternalSpec};
use msbvm_plugins::serve::NOTICE_TOPIC;
use msbvm_plugins::{Chain, Decision, FailurePolicy, Hook, Notice, NoticeSink, Plugin};
use msbvm_sdk::{Error, Result, RuntimeArgs, SandboxDir};

use crate::event_hub::EventHub;

/// Event type of plugin notices in the sandbox's event stream.
pub const NOTICE_EVENT: &str = NOTICE_TOPIC;

/// Starts the plugin host for the plugins `args` configures (none: `None`). Called before
/// the runtime confines itself.
pub fn launch(args: &RuntimeArgs, dir: &SandboxDir) -> Result<Option<Child>> {
    use std::os::unix::process::CommandExt;
    if args.spec.plugins.is_empty() {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(Error::io("finding the msbvm binary"))?;
    let specs = serde_json::to_string(&args.spec.plugins).unwrap_or_default();
    let state_dir = std::fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().into());
    let mut command = std::process::Command::new(&exe);
    command
        .arg("__plugins")
        .arg("--sandbox")
        .arg(&args.name)
        .arg("--dir")
        .arg(&state_dir)
        .arg("--specs")
        .arg(specs)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only sigprocmask, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // The runtime blocks the signals it waits for; the host starts with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(Error::io("starting the plugin host"))?;
    tracing::info!(
        plugins = args.spec.plugins.len(),
        pid = child.id(),
        "plugin host started"
    );
    Ok(Some(child))
}

/// The sandbox's chain: the embedding program's `in_process` plugins, then the plugin host
/// `host` started by [`launch`] (after its handshake). Notices go to the log and `hub`.
pub fn attach(
    host: Option<Child>,
    args: &RuntimeArgs,
    in_process: &[Arc<dyn Plugin>],
    hub: &Arc<EventHub>,
) -> Result<Arc<Chain>> {
    let notices = notice_sink(hub.clone());
    let mut plugins: Vec<Arc<dyn Plugin>> = in_process.to_vec();
    if let Some(child) = host {
        let mut spec = ExternalSpec::new(std::env::current_exe().unwrap_or_default());
        spec.timeout = msbvm_plugins::serve::chain_timeout(&args.spec.plugins);
        spec.failure_policy = FailurePolicy::Closed;
        // A confined runtime cannot start programs: if the host dies, its plugins' decisions
        // fail closed from then on, and an event says so.
        spec.restart = false;
        // The host starts every plugin (each has its own handshake time) before it answers.
        let count = u32::try_from(args.spec.plugins.len()).unwrap_or(u32::MAX);
        spec.handshake_timeout =
            msbvm_plugins::external::HANDSHAKE_TIMEOUT.saturating_mul(count.saturating_add(1));
        let external = External::attach(child, spec, &args.name, notices.clone()).map_err(|e| {
            Error::InvalidConfig(format!("the sandbox's plugins did not start: {e}"))
        })?;
        plugins.push(Arc::new(external));
    }
    let chain = Arc::new(Chain::new(plugins, notices));
    hub.set_plugins(chain.clone());
    if !chain.is_empty() {
        tracing::info!(plugins = ?chain.names(), hooks = ?chain.interests().iter().map(|h| h.name()).collect::<Vec<_>>(), "plugins attached");
    }
    Ok(chain)
}

/// The plugins' view of the guest's filesystem operations on one share, as a virtio-fs hook:
/// `fs` decides on the operations that reach a file or change the tree (a denial is
/// `EACCES`), `fs.change` hears of the changes that succeeded, `fs.read` may answer a read
/// with its own data and `fs.write` may replace what a write writes (or deny either). Lookups
/// and attribute reads are not asked about. Paths are the guest's: the share's mount point
/// joined with the path inside the share. Reads the guest's page cache serves never reach the
/// filesystem, so `fs.read` sees only the ones that do.
pub struct FsPlugins {
    chain: Arc<Chain>,
    /// Where the share is mounted in the guest (`/` for the root).
    mount: String,
}

impl FsPlugins {
    /// The hook of the share mounted at `mount`, if any plugin asked for a file hook.
    pub fn wanted(chain: &Arc<Chain>, mount: &str) -> Option<Arc<dyn msbvm_fs::hooks::Hook>> {
        [Hook::Fs, Hook::FsChange, Hook::FsRead, Hook::FsWrite]
            .into_iter()
            .any(|h| chain.wants(h))
            .then(|| {
                Arc::new(FsPlugins {
                    chain: chain.clone(),
                    mount: mount.trim_end_matches('/').to_string(),
                }) as Arc<dyn msbvm_fs::hooks::Hook>
            })
    }

    /// The guest's path of a path inside the share.
    fn guest_path(&self, inside: &Option<std::path::PathBuf>) -> Option<String> {
        let inside = inside.as_ref()?.display().to_string();
        Some(format!("{}/{}", self.mount, inside.trim_start_matches('/')))
    }

    fn access(&self, op: &msbvm_fs::hooks::Op<'_>, size: u64) -> FsAccess {
        FsAccess {
            op: op.kind.name().to_string(),
            path: self.guest_path(&op.path),
            new_path: self.guest_path(&op.new_path),
            size,
        }
    }

    fn io(&self, op: &msbvm_fs::hooks::Op<'_>, data: Option<Vec<u8>>) -> FsIo {
        FsIo {
            path: self.guest_path(&op.path),
            offset: op.offset,
            size: op.size,
            data,
        }
    }
}

fn denied(op: &msbvm_fs::hooks::Op<'_>, reason: &str) -> std::io::Error {
    tracing::debug!(op = op.kind.name(), path = ?op.path, reason, "a plugin denied a file operation");
    std::io::Error::from_raw_os_error(libc::EACCES)
}

impl msbvm_fs::hooks::Hook for FsPlugins {
    fn before(&self, op: &msbvm_fs::hooks::Op<'_>) -> std::io::Result<()> {
        use msbvm_fs::hooks::OpKind as K;
        let decided = changes_tree(op.kind) || matches!(op.kind, K::Open | K::Opendir);
        if decided && self.chain.wants(Hook::Fs) {
            if let Decision::Deny { reason } = self.chain.fs_access(&self.access(op, op.size)) {
                return Err(denied(op, &reason));
            }
        }
        Ok(())
    }

    fn answer_read(&self, op: &msbvm_fs::hooks::Op<'_>) -> Option<std::io::Result<Vec<u8>>> {
        if !self.chain.wants(Hook::FsRead) {
            return None;
        }
        let mut read = self.io(op, None);
        match self.chain.fs_read(&mut read) {
            Decision::Deny { reason } => Some(Err(denied(op, &reason))),
            Decision::Continue => read.data.map(|mut data| {
                data.truncate(usize::try_from(op.size).unwrap_or(usize::MAX));
                Ok(data)
            }),
        }
    }

    fn rewrite_write(
        &self,
        op: &msbvm_fs::hooks::Op<'_>,
        data: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        if !self.chain.wants(Hook::FsWrite) {
            return Ok(());
        }
        let mut write = self.io(op, Some(std::mem::take(data)));
        let decision = self.chain.fs_write(&mut write);
        // A plugin that sets no data has the write write nothing.
        *data = write.data.unwrap_or_default();
        match decision {
            Decision::Deny { reason } => Err(denied(op, &reason)),
            Decision::Continue => Ok(()),
        }
    }

    fn after(&self, op: &msbvm_fs::hooks::Op<'_>, result: std::result::Result<u64, i32>) {
        use msbvm_fs::hooks::OpKind as K;
        let changed = changes_tree(op.kind) || matches!(op.kind, K::Write | K::Fallocate);
        if let (true, Ok(size)) = (changed && self.chain.wants(Hook::FsChange), result) {
            self.chain.fs_change(&self.access(op, size));
        }
    }
}

/// Whether an operation of `kind` changes the tree or a node's metadata.
fn changes_tree(kind: msbvm_fs::hooks::OpKind) -> bool {
    use msbvm_fs::hooks::OpKind as K;
    matches!(
        kind,
        K::Create
            | K::Mkdir
            | K::Mknod
            | K::Symlink
            | K::Link
            | K::Unlink
            | K::Rmdir
            | K::Rename
            | K::Setattr
            | K::Setxattr
            | K::Removexattr
    )
}

/// Tells the chain about a lifecycle step of sandbox `name`, if any plugin asked.
pub fn lifecycle(chain: &Chain, name: &str, step: Lifecycle) {
    if chain.wants(Hook::Lifecycle) {
        chain.lifecycle(
            &SandboxInfo {
                name: name.to_string(),
            },
            &step,
        );
    }
}

fn notice_sink(hub: Arc<EventHub>) -> NoticeSink {
    Arc::new(move |notice: Notice| {
        let (kind, data) = match notice {
            // The host's own notices about the plugins it runs, and its plugins' events.
            Notice::Event { topic, data, .. } if topic == NOTICE_TOPIC => {
                log_notice(&data);
                (NOTICE_EVENT.to_string(), data)
            }
            Notice::Event { topic, data, .. } => (topic, data),
            other => {
                let data = serde_json::to_value(&other).unwrap_or_default();
                log_notice(&data);
                (NOTICE_EVENT.to_string(), data)
            }
        };
        hub.from_host(&kind, &data.to_string());
    })
}

fn log_notice(data: &serde_json::Value) {
    tracing::warn!(notice = %data, "plugin notice");
}

/// `msbvm __plugins --sandbox NAME --dir DIR --specs JSON`: the plugin host.
pub fn host_main(args: Vec<OsString>) -> ExitCode {
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    let (mut sandbox, mut dir, mut specs) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next();
        match flag.as_str() {
            "--sandbox" => sandbox = value,
            "--dir" => dir = value,
            "--specs" => specs = value,
            _ => {
                eprintln!("msbvm __plugins: unknown argument {flag}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(sandbox), Some(dir), Some(specs)) = (sandbox, dir, specs) else {
        eprintln!("msbvm __plugins: --sandbox, --dir and --specs are needed");
        return ExitCode::from(2);
    };
    let specs: Vec<msbvm_plugins::PluginSpec> = match serde_json::from_str(&specs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("msbvm __plugins: --specs: {e}");
            return ExitCode::from(2);
        }
    };
    // Its stderr is the runtime's log (through the runtime's reader): plain lines.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MSBVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .try_init();
    match msbvm_plugins::serve::main(&sandbox, std::path::Path::new(&dir), &specs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("msbvm __plugins: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_fs::filesystem::{Context, FileSystem};
    use msbvm_fs::hooks::Hooked;
    use msbvm_fs::{MemoryFs, ROOT_INODE};
    use msbvm_plugins::Interests;
    use std::ffi::CString;
    use std::sync::Mutex;

    /// Denies anything named `forbidden`; records the changes it hears of; answers reads of
    /// files named `answered`; writes `secret` as `[redacted]`.
    struct Guard(Mutex<Vec<String>>);

    impl Plugin for Guard {
        fn name(&self) -> &str {
            "guard"
        }
        fn interests(&self) -> Interests {
            [Hook::Fs, Hook::FsChange, Hook::FsRead, Hook::FsWrite]
                .into_iter()
                .collect()
        }
        fn fs_read(&self, read: &mut FsIo) -> Decision {
            if read
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("answered"))
            {
                read.data = Some(b"from the plugin".to_vec());
            }
            Decision::Continue
        }
        fn fs_write(&self, write: &mut FsIo) -> Decision {
            if let Some(data) = &mut write.data {
                let text = String::from_utf8_lossy(data).replace("secret", "[redacted]");
                *data = text.into_bytes();
            }
            Decision::Continue
        }
        fn fs_access(&self, a: &FsAccess) -> Decision {
            if a.path.as_deref().is_some_and(|p| p.ends_with("forbidden")) {
                Decision::deny("no")
            } else {
                Decision::Continue
            }
        }
        fn fs_change(&self, c: &FsAccess) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", c.op, c.path.clone().unwrap_or_default()));
        }
    }

    #[test]
    fn plugins_decide_on_file_operations_and_hear_of_changes() {
        let guard = Arc::new(Guard(Mutex::new(Vec::new())));
        let chain = Arc::new(Chain::new(vec![guard.clone()], Arc::new(|_| {})));
        // A volume's share: paths are the guest's, under its mount point.
        let hook = FsPlugins::wanted(&chain, "/data/").expect("the chain asked for fs hooks");
        let fs = Hooked::new(MemoryFs::new(), vec![hook]);
        let ctx = Context {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let name = |s: &str| CString::new(s).unwrap();
        let err = fs
            .mkdir(&ctx, ROOT_INODE, &name("forbidden"), 0o755, 0)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        fs.mkdir(&ctx, ROOT_INODE, &name("work"), 0o755, 0).unwrap();
        assert_eq!(*guard.0.lock().unwrap(), ["mkdir /data/work"]);
        // Writes are rewritten on their way in; reads are answered by the plugin.
        let (entry, open) = fs
            .create(&ctx, ROOT_INODE, &name("answered"), 0o644, 0, 0)
            .unwrap();
        let wrote = fs
            .write(&ctx, entry.inode, open.handle, 0, b"a secret note", 0)
            .unwrap();
        assert_eq!(wrote, 13, "the guest is told what it wrote was written");
        let stored = fs
            .inner()
            .read(&ctx, entry.inode, open.handle, 0, 64)
            .unwrap();
        assert_eq!(stored, b"a [redacted] note");
        let read = fs.read(&ctx, entry.inode, open.handle, 0, 4).unwrap();
        assert_eq!(read, b"from", "an answer is cut to the size asked for");
        assert!(
            FsPlugins::wanted(&Arc::new(Chain::empty()), "/").is_none(),
            "no plugin asked: no hook, no cost"
        );
    }
}
