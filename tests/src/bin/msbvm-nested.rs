//! `msbvm-nested`: run `msbvm` (or any command) inside an L1 machine with a working /dev/kvm.
//!
//! On hosts whose /dev/kvm cannot run a stock guest (PVM, see PLATFORM.md), this is how a
//! developer boots the project's guest:
//!
//! ```text
//! cargo run -p msbvm-tests --bin msbvm-nested -- boot [msbvm boot args...]
//! cargo run -p msbvm-tests --bin msbvm-nested -- run [msbvm run args...] -- echo hello
//! cargo run -p msbvm-tests --bin msbvm-nested -- [--add HOST:L1]... -- <L1 command...>
//! ```
//!
//! Every form builds the static `msbvm`, `msbvm-init` and `msbvm-agent`, the guest kernel and
//! the guest initramfs and puts them into L1 at /bin/msbvm, /bin/msbvm-agent, /msbvm/vmlinux
//! and /msbvm/initrd.cpio (unless `--bare`). `run` runs `msbvm run` there with its state in
//! L1's /tmp. The console streams to stdout; the exit status is the inner command's, 124 when
//! L1 timed out and 125 when the harness itself failed.

use std::process::ExitCode;
use std::time::Duration;

use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild};
use msbvm_tests::{Error, L1Arch, NestedVm, Stream};

const USAGE: &str = "\
usage: msbvm-nested [OPTIONS] boot [MSBVM-BOOT-ARGS...]
       msbvm-nested [OPTIONS] run [MSBVM-RUN-ARGS...] -- COMMAND [ARGS...]
       msbvm-nested [OPTIONS] -- COMMAND [ARGS...]

Runs `msbvm boot` with the project's guest kernel and initramfs, `msbvm run` (a command in a
sandbox), or any command, inside an L1 machine (QEMU software emulation with AMD SVM) where
/dev/kvm works like hardware.

options:
  --add HOST:L1      copy a host file or directory into L1 (programs must be static)
  --l1-memory MIB    memory of the L1 machine (default 2048)
  --l1-cpus N        vCPUs of the L1 machine (default 1)
  --timeout SECS     kill L1 after this long (default 900)
  --arch ARCH        x86_64 (default) or aarch64 (arm64): an arm64 L1 (QEMU virt with EL2)
                     running msbvm cross-built for arm64 (set up by scripts/setup-arm64)
  --bare             do not build or add msbvm, the guest kernel and initramfs
  -h, --help         this text

exit status: the inner command's; 124 if L1 timed out; 125 if the harness failed";

/// Exit status for a harness failure (as in `timeout`/`nested-kvm-run` conventions).
const HARNESS_FAILED: u8 = 125;
/// Exit status when L1 was killed after its timeout.
const TIMED_OUT: u8 = 124;

/// What the command line asks for.
#[derive(Debug)]
struct Args {
    adds: Vec<(String, String)>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    arch: L1Arch,
    bare: bool,
    /// `Some(args)` for `boot ARGS`, `None` for `-- COMMAND`.
    boot: Option<Vec<String>>,
    /// `Some(args)` for `run ARGS`.
    run: Option<Vec<String>>,
    command: Vec<String>,
}

/// Parses the command line; `Err` carries the message to print (usage on `--help`).
fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        adds: Vec::new(),
        memory_mib: 2048,
        cpus: 1,
        timeout: Duration::from_secs(900),
        arch: L1Arch::X86_64,
        bare: false,
        boot: None,
        run: None,
        command: Vec::new(),
    };
    fn value(argv: &mut impl Iterator<Item = String>, opt: &str) -> Result<String, String> {
        argv.next().ok_or_else(|| format!("{opt} needs a value"))
    }
    fn number<T: std::str::FromStr>(s: String, opt: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("{opt}: not a number: {s}"))
    }
    while let Some(a) = argv.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(USAGE.to_string()),
            "--add" => {
                let spec = value(&mut argv, "--add")?;
                let (host, l1) = spec
                    .split_once(':')
                    .filter(|(h, l)| !h.is_empty() && l.starts_with('/'))
                    .ok_or_else(|| format!("--add wants HOST:/L1/PATH, got {spec}"))?;
                args.adds.push((host.to_string(), l1.to_string()));
            }
            "--l1-memory" => args.memory_mib = number(value(&mut argv, &a)?, &a)?,
            "--l1-cpus" => args.cpus = number(value(&mut argv, &a)?, &a)?,
            "--timeout" => args.timeout = Duration::from_secs(number(value(&mut argv, &a)?, &a)?),
            "--arch" => {
                args.arch = match value(&mut argv, &a)?.as_str() {
                    "x86_64" | "amd64" => L1Arch::X86_64,
                    "aarch64" | "arm64" => L1Arch::Aarch64,
                    other => return Err(format!("--arch: x86_64 or aarch64, not {other}")),
                }
            }
            "--bare" => args.bare = true,
            "boot" => {
                args.boot = Some(argv.collect());
                break;
            }
            "run" => {
                args.run = Some(argv.collect());
                break;
            }
            "--" => {
                args.command = argv.collect();
                if args.command.is_empty() {
                    return Err(format!("no command after --\n\n{USAGE}"));
                }
                break;
            }
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    if args.boot.is_none() && args.run.is_none() && args.command.is_empty() {
        return Err(USAGE.to_string());
    }
    if (args.boot.is_some() || args.run.is_some()) && args.bare {
        return Err("boot and run need msbvm and the guest kernel; drop --bare".to_string());
    }
    Ok(args)
}

/// Whether `opt` (e.g. `--kernel`) is among the user's msbvm arguments, as `--opt` or `--opt=`.
fn has_option(args: &[String], opt: &str) -> bool {
    args.iter()
        .any(|a| a == opt || a.starts_with(&format!("{opt}=")))
}

/// Prepares and runs L1; returns the inner exit status.
fn run(args: Args) -> Result<i32, Error> {
    let mut vm = NestedVm::builder()
        .arch(args.arch)
        .memory_mib(args.memory_mib)
        .cpus(args.cpus)
        .timeout(args.timeout)
        .stream(Stream::Stdout);
    let mut command = args.command;
    if !args.bare {
        let build = StaticBuild::new()
            .arch(args.arch)
            .bin("msbvm-guest-agent", "msbvm-agent");
        let artifacts = GuestArtifacts::prepare(&build, Progress::auto())?;
        vm = artifacts.add_to(vm);
        if let Some(agent) = artifacts.binaries.extra.get("msbvm-agent") {
            vm = vm.add_file(agent, "/bin/msbvm-agent");
        }
        if let Some(user) = args.run {
            // State in L1's tmpfs; the kernel where GuestArtifacts put it.
            let mut argv = vec![msbvm_tests::artifacts::L1_MSBVM.to_string(), "run".into()];
            argv.extend(user);
            let script = format!(
                "export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL={} HOME=/root; mkdir -p /root; exec {}",
                msbvm_tests::artifacts::L1_KERNEL,
                msbvm_tests::report::shell_command(&argv)
            );
            command = vec!["/bin/sh".into(), "-c".into(), script];
        }
        if let Some(user) = args.boot {
            // The user may point msbvm at another kernel or initramfs they --add'ed.
            let mut extra = Vec::new();
            if !has_option(&user, "--kernel") {
                extra.extend([
                    "--kernel".to_string(),
                    msbvm_tests::artifacts::L1_KERNEL.into(),
                ]);
            }
            if !has_option(&user, "--initrd") {
                extra.extend([
                    "--initrd".to_string(),
                    msbvm_tests::artifacts::L1_INITRD.into(),
                ]);
            }
            command = vec![msbvm_tests::artifacts::L1_MSBVM.to_string(), "boot".into()];
            command.extend(extra);
            command.extend(user);
        }
    }
    for (host, l1) in &args.adds {
        vm = vm.add_file(host, l1);
    }
    eprintln!("msbvm-nested: starting L1 (QEMU software emulation; L1 boots in a few seconds)");
    let out = vm.run(&command)?;
    eprintln!(
        "msbvm-nested: L1 ran {:.1} s; command exit status {}",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    Ok(out.exit_code)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg == USAGE => {
            println!("{msg}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("msbvm-nested: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(HARNESS_FAILED)),
        Err(e @ Error::Timeout { .. }) => {
            eprintln!("msbvm-nested: {e}");
            ExitCode::from(TIMED_OUT)
        }
        Err(e) => {
            eprintln!("msbvm-nested: {e}");
            ExitCode::from(HARNESS_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_boot_and_command_forms() {
        let a = p("--l1-cpus 1 boot --cpus 2 --stats").unwrap();
        assert_eq!(a.cpus, 1);
        assert_eq!(a.boot.unwrap(), ["--cpus", "2", "--stats"]);
        let a = p("--add /tmp/x:/x --bare -- /x -v").unwrap();
        assert_eq!(a.adds, [("/tmp/x".to_string(), "/x".to_string())]);
        assert!(a.bare && a.boot.is_none());
        assert_eq!(a.command, ["/x", "-v"]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(p("").is_err());
        assert!(p("--add nocolon -- x").is_err());
        assert!(p("--l1-memory lots -- x").is_err());
        assert!(p("--bare boot").is_err());
        assert!(p("--").is_err());
        assert_eq!(p("--help").unwrap_err(), USAGE);
    }

    #[test]
    fn finds_user_options() {
        let args: Vec<String> = vec!["--kernel=/k".into(), "--cpus".into()];
        assert!(has_option(&args, "--kernel"));
        assert!(!has_option(&args, "--initrd"));
    }
}
