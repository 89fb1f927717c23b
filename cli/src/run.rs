//! `msbvm run` (create a sandbox and run a command in it) and `msbvm exec` (run a command in
//! a running sandbox).
//!
//! Exit status: the command's own; 128 + N when a signal N killed it; 124 when its timeout
//! expired; 125 when msbvm itself failed (the message is on stderr).

use std::time::Duration;

use clap::Args;
use msbvm_sdk::{names, Error, ExecOptions, Sandbox, DEFAULT_CPUS, DEFAULT_MEMORY_MIB};

use crate::session;

/// Where `run -d CMD` sends the background command's output, in the guest.
pub const BACKGROUND_LOG: &str = "/tmp/msbvm-run.log";

/// Options of the process to run, shared by `run` and `exec`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ProcessArgs {
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Give the command a terminal: the local one goes raw, its size follows the window.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Kill the command after this many seconds (exit status 124).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// The command and its arguments (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// Arguments of `msbvm run`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct RunArgs {
    /// Sandbox name (default: a generated one such as `brave-otter`).
    #[arg(long)]
    pub name: Option<String>,
    /// Start a detached sandbox that outlives this command; print its name. A command, if
    /// given, runs in it in the background (output in the guest's /tmp/msbvm-run.log).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Number of vCPUs.
    #[arg(long, default_value_t = DEFAULT_CPUS)]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MiB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    #[command(flatten)]
    pub sandbox: crate::sandbox_opts::SandboxArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// Arguments of `msbvm exec`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ExecArgs {
    /// The sandbox.
    pub name: String,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// A command-line value that does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `KEY=VALUE` with a non-empty key.
    #[error("expected KEY=VALUE, got {0:?}")]
    NotKeyValue(String),
    /// Not a positive, finite number of seconds.
    #[error("expected a positive number of seconds, got {0:?}")]
    NotSeconds(String),
}

/// Parses `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), ValueError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(ValueError::NotKeyValue(s.to_string())),
    }
}

/// Parses a number of seconds (fractions allowed).
pub fn parse_secs(s: &str) -> Result<Duration, ValueError> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| ValueError::NotSeconds(s.to_string()))
}

impl ProcessArgs {
    /// The exec options; `env` false leaves the environment to the sandbox (`run`).
    fn options(&self, with_env: bool) -> ExecOptions {
        let argv = if self.command.is_empty() {
            vec!["/bin/sh".to_string()]
        } else {
            self.command.clone()
        };
        ExecOptions {
            argv,
            env: if with_env {
                self.env.clone()
            } else {
                Vec::new()
            },
            cwd: self.workdir.clone(),
            timeout: self.timeout,
            ..Default::default()
        }
    }
}

/// Builds the guest kernel first if needed, with a progress bar, so a first `msbvm run` shows
/// what it is waiting for.
async fn ensure_kernel() -> Result<(), Error> {
    if !matches!(msbvm_kernel::find_built(), Ok(None)) {
        // Built, or an error the runtime will report in context.
        return Ok(());
    }
    eprintln!("msbvm: building the guest kernel (first use; this takes a few minutes)");
    tokio::task::spawn_blocking(|| msbvm_kernel::build(msbvm_kernel::Progress::auto()))
        .await
        .map_err(|e| Error::Kernel(e.to_string()))?
        .map(drop)
        .map_err(|e| Error::Kernel(e.to_string()))
}

/// Creates the sandbox, retrying with another generated name if one was taken meanwhile.
async fn create(args: &RunArgs) -> Result<Sandbox, Error> {
    let home = msbvm_sdk::msbvm_home()?;
    let mut attempt = 0;
    loop {
        let name = match &args.name {
            Some(n) => n.clone(),
            None => names::unused_name(&home),
        };
        let raw: Vec<String> = std::env::args().collect();
        let mut builder = Sandbox::builder(name)
            .cpus(args.cpus)
            .memory_mib(args.memory)
            .detached(args.detach)
            .spec(args.sandbox.spec(&raw)?);
        for secret in args.sandbox.secrets()? {
            builder = builder.secret(secret);
        }
        for (k, v) in &args.process.env {
            builder = builder.env(k, v);
        }
        match builder.create().await {
            Err(Error::NameInUse { .. }) if args.name.is_none() && attempt < 5 => attempt += 1,
            other => return other,
        }
    }
}

/// The command that runs a sandbox under nested emulation on hosts like ours.
pub const NESTED_RUN_COMMAND: &str =
    "cargo run --release -p msbvm-tests --bin msbvm-nested -- run -- echo hello";

/// Runs `msbvm run`.
pub async fn run(args: RunArgs) -> Result<u8, Error> {
    if msbvm_vmm::kvm::probe_host() == msbvm_vmm::kvm::HostKvm::Pvm {
        // The guest would die at its first system call, after seconds of
        // emulated boot: say why at once instead.
        return Err(Error::NoKvm(format!(
            "this host's /dev/kvm is PVM, a paravirtual KVM that runs only PVM-enabled guest \
             kernels, so it cannot run msbvm's guest. Run sandboxes under nested emulation \
             instead, from the msbvm source tree: {NESTED_RUN_COMMAND}"
        )));
    }
    ensure_kernel().await?;
    if let Some(reference) = &args.sandbox.image {
        crate::images::ensure_for_run(reference).await?;
    }
    let sandbox = create(&args).await?;
    if args.detach {
        if !args.process.command.is_empty() {
            if let Err(e) = start_background(&sandbox, &args.process).await {
                // Leave it stopped, with its logs, rather than running without its command.
                let _ = sandbox.stop().await;
                return Err(e);
            }
        }
        println!("{}", sandbox.name());
        return Ok(0);
    }
    let mut opts = args.process.options(false);
    if args.process.command.is_empty() && !sandbox.default_command().is_empty() {
        opts.argv = sandbox.default_command().to_vec();
    }
    let result = session::attach(&sandbox, opts, args.process.tty).await;
    // Attached: the runtime removes the sandbox once stopped (or once we exit, regardless).
    if let Err(e) = sandbox.stop_with_timeout(Duration::from_secs(2)).await {
        tracing::warn!("stopping {}: {e}", sandbox.name());
    }
    result
}

/// Starts `process`'s command in its own session in the guest and returns once it started.
async fn start_background(sandbox: &Sandbox, process: &ProcessArgs) -> Result<(), Error> {
    let mut opts = process.options(false);
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("setsid \"$@\" </dev/null >>{BACKGROUND_LOG} 2>&1 &"),
        "msbvm-run".to_string(),
    ];
    argv.append(&mut opts.argv);
    opts.argv = argv;
    opts.tty = None;
    let out = sandbox.exec_with(opts).await?;
    if out.success() {
        Ok(())
    } else {
        Err(Error::Agent(format!(
            "starting the background command failed ({:?}): {}",
            out.status,
            out.stderr_str().trim()
        )))
    }
}

/// Runs `msbvm exec`.
pub async fn exec(args: ExecArgs) -> Result<u8, Error> {
    let sandbox = Sandbox::get(&args.name).await?;
    session::attach(&sandbox, args.process.options(true), args.process.tty).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_seconds_parse() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), String::new()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("A").is_err());
        assert_eq!(parse_secs("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("x").is_err());
    }

    #[test]
    fn default_command_is_a_shell_and_run_env_goes_to_the_sandbox() {
        let p = ProcessArgs {
            env: vec![("A".into(), "1".into())],
            workdir: Some("/tmp".into()),
            tty: false,
            timeout: None,
            command: vec![],
        };
        let run_opts = p.options(false);
        assert_eq!(run_opts.argv, ["/bin/sh"]);
        assert!(run_opts.env.is_empty());
        assert_eq!(run_opts.cwd.as_deref(), Some("/tmp"));
        assert_eq!(p.options(true).env, [("A".to_string(), "1".to_string())]);
    }
}
