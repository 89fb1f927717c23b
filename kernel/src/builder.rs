//! The build recipe: from the distribution's source tarball to the image the VMM loads.
//!
//! Steps, all inside the cache's private build directory:
//! 1. extract the tarball into `src/`;
//! 2. `make tinyconfig`, merge the fragments with `merge_config.sh -m`, `make olddefconfig`,
//!    then check that every requested option kept its value;
//! 3. `make -j<nproc>` with a fixed build timestamp, user, host and version: `vmlinux bzImage`
//!    for x86_64, `Image` for aarch64;
//! 4. keep the image (`vmlinux` and `bzImage`, the same kernel for the 64-bit boot protocol;
//!    or `Image`), `config` and `build.log`, delete the source tree.
//!
//! For another architecture than the host's, every `make` gets `ARCH=` and `CROSS_COMPILE=`
//! on its command line (the distribution's `<arch>-linux-gnu-` compiler); for the host's own it
//! gets neither, which leaves the x86_64 recipe as it was before arm64 existed.
//!
//! Changing any of this changes the image for the same inputs: bump
//! [`crate::spec::BUILD_RECIPE_VERSION`] with it.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::arch::Arch;
use crate::cache::KernelCache;
use crate::config::{requested_options, verify};
use crate::error::Error;
use crate::error::IoContext;
use crate::progress::{Progress, Reporter};
use crate::spec::KernelSpec;

/// First guess of the number of compile steps for `arch`, used until a build has recorded the
/// real count (on linux-source 6.12.117 the x86_64 spec printed 1681 kbuild step lines; on
/// 6.12.118 the aarch64 one printed 1601).
pub(crate) fn default_build_steps(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 1700,
        Arch::Aarch64 => 1600,
    }
}

/// What one architecture's build runs and keeps.
struct Recipe {
    /// Variables put on every `make` command line (`ARCH=`, `CROSS_COMPILE=`).
    make_vars: Vec<String>,
    /// The targets of the compile step.
    targets: &'static [&'static str],
    /// Files kept from the source tree: (path in the tree, name in the cache entry).
    outputs: &'static [(&'static str, &'static str)],
}

impl Recipe {
    /// The recipe for building for `arch` on a `host` machine (`None`: one msbvm has no
    /// compiler choice for, treated as native).
    fn new(arch: Arch, host: Option<Arch>) -> Recipe {
        let make_vars = if host == Some(arch) || host.is_none() {
            Vec::new()
        } else {
            vec![
                format!("ARCH={}", arch.kbuild_arch()),
                format!("CROSS_COMPILE={}", arch.cross_compile_prefix()),
            ]
        };
        let (targets, outputs): (&[&str], &[(&str, &str)]) = match arch {
            Arch::X86_64 => (
                &["vmlinux", "bzImage"],
                &[
                    ("vmlinux", "vmlinux"),
                    ("arch/x86/boot/bzImage", "bzImage"),
                    (".config", "config"),
                ],
            ),
            Arch::Aarch64 => (
                &["Image"],
                &[("arch/arm64/boot/Image", "Image"), (".config", "config")],
            ),
        };
        Recipe {
            make_vars,
            targets,
            outputs,
        }
    }

    /// `make` arguments: the variables, then `args`.
    fn make_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        self.make_vars
            .iter()
            .map(String::as_str)
            .chain(args.iter().copied())
            .collect()
    }
}

/// How many lines of the log a build failure shows.
const TAIL_LINES: usize = 20;

/// Environment that makes the image independent of when and where it was built.
const REPRODUCIBLE_ENV: &[(&str, &str)] = &[
    ("KBUILD_BUILD_TIMESTAMP", "1970-01-01"),
    ("KBUILD_BUILD_USER", "msbvm"),
    ("KBUILD_BUILD_HOST", "msbvm"),
    ("KBUILD_BUILD_VERSION", "1"),
    ("LC_ALL", "C"),
];

/// Variables of the caller's environment that would change what kbuild does (another
/// architecture, an out-of-tree output directory, a parent make's job server or flags).
const SCRUBBED_ENV: &[&str] = &[
    "ARCH",
    "CROSS_COMPILE",
    "KBUILD_OUTPUT",
    "KCONFIG_CONFIG",
    "O",
    "V",
    "W",
    "C",
    "LLVM",
    "CC",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEOVERRIDES",
];

/// Builds the kernel of `spec` (cache key `key`) into `cache` unless it is there already, and
/// returns the image path.
pub(crate) fn build_cached(
    spec: &KernelSpec,
    cache: &KernelCache,
    key: &str,
    progress: Progress,
) -> Result<PathBuf, Error> {
    if let Some(image) = cache.find(key) {
        return Ok(image);
    }
    let mut reporter = Reporter::new(progress);
    let expected_steps = cache
        .last_build_steps()
        .unwrap_or_else(|| default_build_steps(spec.arch()));
    let failed_log = cache.failed_log_path(key);
    let mut steps = None;
    let image = cache.get_or_build(
        key,
        |lock| Reporter::waiting(progress, lock),
        |dir| {
            let result = build_in(dir, spec, expected_steps, &failed_log, &mut reporter);
            steps = result.as_ref().ok().copied();
            result.map(drop)
        },
    )?;
    // `steps` is None when another process built the image while this one waited.
    if let Some(steps) = steps {
        cache.record_build_steps(steps)?;
        // The failure log of an earlier attempt no longer describes the cache; drop it.
        let _ = fs::remove_file(&failed_log);
        reporter.finish(&image);
    }
    Ok(image)
}

/// A failed build step: either a command that exited unsuccessfully (shown with the log's
/// tail) or any other error.
enum StepFailure {
    Command { step: String, status: String },
    Other(Error),
}

impl From<Error> for StepFailure {
    fn from(e: Error) -> Self {
        StepFailure::Other(e)
    }
}

/// Runs the recipe in `dir`, returning the number of compile steps. On failure the log is kept
/// at `failed_log` (the build directory is deleted by the cache) and named in the error.
fn build_in(
    dir: &Path,
    spec: &KernelSpec,
    expected_steps: u64,
    failed_log: &Path,
    reporter: &mut Reporter,
) -> Result<u64, Error> {
    let log_path = dir.join("build.log");
    let mut log = File::create(&log_path).context(|| format!("creating {}", log_path.display()))?;
    let result = run_recipe(dir, spec, expected_steps, &mut log, reporter);
    drop(log);
    let failure = match result {
        Ok(steps) => return Ok(steps),
        Err(failure) => failure,
    };
    reporter.fail();
    let kept = fs::copy(&log_path, failed_log).is_ok();
    match failure {
        StepFailure::Other(e) => Err(e),
        StepFailure::Command { step, status } => {
            let log = if kept { failed_log } else { &log_path };
            Err(Error::BuildFailed {
                step,
                status,
                log: log.to_path_buf(),
                tail: tail_lines(log, TAIL_LINES),
            })
        }
    }
}

fn run_recipe(
    dir: &Path,
    spec: &KernelSpec,
    expected_steps: u64,
    log: &mut File,
    reporter: &mut Reporter,
) -> Result<u64, StepFailure> {
    let src = dir.join("src");
    fs::create_dir(&src).context(|| format!("creating {}", src.display()))?;

    extract(spec.source_tarball(), &src, log, reporter)?;

    let recipe = Recipe::new(spec.arch(), Arch::host());
    reporter.stage("configuring", 0, "");
    let mut tick = |_: &[u8]| reporter.set(0);
    run_step(
        log,
        &src,
        "make",
        &recipe.make_args(&["tinyconfig"]),
        &mut tick,
    )?;
    let mut merge_args = vec!["-m", ".config"];
    for fragment in spec.fragments() {
        let path = src.join(&fragment.name);
        fs::write(&path, &fragment.text).context(|| format!("writing {}", path.display()))?;
        merge_args.push(fragment.name.as_str());
    }
    run_step(
        log,
        &src,
        "scripts/kconfig/merge_config.sh",
        &merge_args,
        &mut tick,
    )?;
    run_step(
        log,
        &src,
        "make",
        &recipe.make_args(&["olddefconfig"]),
        &mut tick,
    )?;
    let dotconfig_path = src.join(".config");
    let dotconfig = fs::read_to_string(&dotconfig_path)
        .context(|| format!("reading {}", dotconfig_path.display()))?;
    let mismatches = verify(&requested_options(spec.fragments())?, &dotconfig);
    if !mismatches.is_empty() {
        return Err(Error::ConfigMismatch { mismatches }.into());
    }

    reporter.stage("compiling", expected_steps, "steps");
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = format!("-j{jobs}");
    let mut steps = 0u64;
    let mut compile = vec![jobs.as_str()];
    compile.extend(recipe.targets);
    run_step(
        log,
        &src,
        "make",
        &recipe.make_args(&compile),
        &mut |line| {
            if is_build_step(line) {
                steps += 1;
                reporter.set(steps);
            }
        },
    )?;

    for (from, to) in recipe.outputs {
        let (from, to) = (src.join(from), dir.join(to));
        fs::copy(&from, &to)
            .context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    // The source tree is over a gigabyte once built; only the image is worth keeping.
    fs::remove_dir_all(&src).context(|| format!("removing {}", src.display()))?;
    Ok(steps)
}

/// Extracts `tarball` into `dest` (dropping its top directory). The tarball is fed to `tar`
/// through a pipe so that the bytes read measure progress.
fn extract(
    tarball: &Path,
    dest: &Path,
    log: &mut File,
    reporter: &mut Reporter,
) -> Result<(), StepFailure> {
    let mut input = File::open(tarball).context(|| format!("opening {}", tarball.display()))?;
    let size = input
        .metadata()
        .context(|| format!("reading {}", tarball.display()))?
        .len();
    let args = ["-xJf", "-", "--strip-components=1", "-C"];
    let step = format!(
        "tar {} {} < {}",
        args.join(" "),
        dest.display(),
        tarball.display()
    );
    writeln!(log, "==> {step}").context(|| "writing the build log".to_string())?;
    reporter.stage("extracting the kernel source", size, "bytes");

    // tar prints nothing on success; its complaints go straight to the log.
    let log_out = log
        .try_clone()
        .context(|| "duplicating the build log".to_string())?;
    let log_err = log
        .try_clone()
        .context(|| "duplicating the build log".to_string())?;
    let mut child = Command::new("tar")
        .args(args)
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(log_out)
        .stderr(log_err)
        .spawn()
        .map_err(|source| Error::Spawn {
            program: "tar".into(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let copied: io::Result<()> = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        // A write error means tar stopped reading; its exit status says why.
        if stdin.write_all(&buf[..n]).is_err() {
            break Ok(());
        }
        done += n as u64;
        reporter.set(done);
    };
    drop(stdin);
    let status = child.wait().context(|| "waiting for tar".to_string())?;
    copied.context(|| format!("reading {}", tarball.display()))?;
    succeeded(step, status)
}

/// Runs one build command in `cwd`, appending its combined stdout and stderr to `log` and
/// handing each output line to `on_line`.
fn run_step(
    log: &mut File,
    cwd: &Path,
    program: &str,
    args: &[&str],
    on_line: &mut dyn FnMut(&[u8]),
) -> Result<(), StepFailure> {
    let step = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(log, "==> {step}").context(|| "writing the build log".to_string())?;

    // One pipe for both streams keeps errors next to the step lines that led to them.
    let (reader, writer) = pipe().context(|| "creating a pipe".to_string())?;
    let writer2 = writer
        .try_clone()
        .context(|| "duplicating a pipe".to_string())?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
    command.envs(REPRODUCIBLE_ENV.iter().copied());
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.to_string(),
        source,
    })?;
    // Our copies of the write end must be closed, or the reader never sees end-of-file.
    drop(command);

    let copied = copy_lines(File::from(reader), log, on_line);
    if copied.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().context(|| format!("waiting for {program}"))?;
    copied.context(|| format!("recording the output of `{step}` in the build log"))?;
    succeeded(step, status)
}

/// `Ok` when `step` exited successfully with `status`.
fn succeeded(step: String, status: ExitStatus) -> Result<(), StepFailure> {
    if !status.success() {
        return Err(StepFailure::Command {
            step,
            status: status.to_string(),
        });
    }
    Ok(())
}

fn copy_lines(
    reader: impl Read,
    log: &mut impl Write,
    on_line: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return log.flush();
        }
        log.write_all(&line)?;
        on_line(&line);
    }
}

/// A pipe whose ends are closed on exec (only the copies a child is given survive there).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe() succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&read, &write] {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own, with a valid command and flag.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((read, write))
}

/// Whether `line` is one of kbuild's step lines ("  CC      kernel/fork.o", "  LD      vmlinux"):
/// two spaces, an upper-case tag, spaces, the target.
fn is_build_step(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"  ") else {
        return false;
    };
    let tag_len = rest
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_' || **b == b'-')
        .count();
    tag_len >= 2 && rest[0].is_ascii_uppercase() && rest.get(tag_len).is_some_and(|b| *b == b' ')
}

/// The last `n` lines of the file at `path` (at most its last 64 KiB), indented for display in
/// an error message.
fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn recognises_kbuild_step_lines() {
        for line in [
            "  CC      kernel/fork.o\n",
            "  AS      arch/x86/entry/entry_64.o\n",
            "  LD      vmlinux.o\n",
            "  AR      lib/lib.a\n",
            "  HOSTCC  scripts/basic/fixdep\n",
            "  OBJCOPY arch/x86/boot/setup.bin\n",
            "  SYSHDR  arch/x86/include/generated/uapi/asm/unistd_64.h\n",
        ] {
            assert!(is_build_step(line.as_bytes()), "{line:?}");
        }
        for line in [
            "make[1]: Entering directory '/x'\n",
            "kernel/fork.c:12:3: error: boom\n",
            "   CC x\n",
            "  C x\n",
            "  cc      lower.o\n",
            "#\n",
        ] {
            assert!(!is_build_step(line.as_bytes()), "{line:?}");
        }
    }

    #[test]
    fn native_recipe_passes_no_arch_and_cross_recipe_does() {
        // The x86_64 recipe on an x86_64 host must stay as it was before arm64 existed.
        let native = Recipe::new(Arch::X86_64, Some(Arch::X86_64));
        assert_eq!(native.make_args(&["tinyconfig"]), ["tinyconfig"]);
        assert_eq!(native.targets, ["vmlinux", "bzImage"]);
        assert_eq!(native.outputs[0], ("vmlinux", "vmlinux"));

        let cross = Recipe::new(Arch::Aarch64, Some(Arch::X86_64));
        assert_eq!(
            cross.make_args(&["-j2", "Image"]),
            [
                "ARCH=arm64",
                "CROSS_COMPILE=aarch64-linux-gnu-",
                "-j2",
                "Image"
            ]
        );
        assert_eq!(cross.targets, ["Image"]);
        assert!(cross.outputs.contains(&("arch/arm64/boot/Image", "Image")));
        assert!(cross.outputs.contains(&(".config", "config")));

        let native_arm = Recipe::new(Arch::Aarch64, Some(Arch::Aarch64));
        assert!(native_arm.make_vars.is_empty());
    }

    #[test]
    fn tail_shows_last_lines_indented() {
        let tmp = TempDir::new().unwrap();
        let log = tmp.path().join("build.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        fs::write(&log, text).unwrap();
        let tail = tail_lines(&log, 20);
        assert!(tail.starts_with("    line 11\n"), "{tail}");
        assert!(tail.ends_with("    line 30"), "{tail}");
        assert!(tail_lines(&tmp.path().join("none"), 5).contains("cannot read the log"));
    }

    #[test]
    fn run_step_logs_both_streams_and_reports_failure() {
        let tmp = TempDir::new().unwrap();
        let log_path = tmp.path().join("log");
        let mut log = File::create(&log_path).unwrap();
        let mut lines = Vec::new();
        run_step(
            &mut log,
            tmp.path(),
            "sh",
            &[
                "-c",
                "echo '  CC      a.o'; echo oops >&2; echo \"$KBUILD_BUILD_USER\"",
            ],
            &mut |l| lines.push(String::from_utf8_lossy(l).into_owned()),
        )
        .unwrap_or_else(|_| panic!("sh failed"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.contains(&"msbvm\n".to_string()), "{lines:?}");
        let failed = run_step(&mut log, tmp.path(), "sh", &["-c", "exit 3"], &mut |_| {});
        match failed {
            Err(StepFailure::Command { step, status }) => {
                assert_eq!(step, "sh -c exit 3");
                assert!(status.contains('3'), "{status}");
            }
            _ => panic!("exit 3 not reported as a failed step"),
        }
        let missing = run_step(&mut log, tmp.path(), "/nonexistent/prog", &[], &mut |_| {});
        assert!(matches!(
            missing,
            Err(StepFailure::Other(Error::Spawn { .. }))
        ));
        let text = fs::read_to_string(&log_path).unwrap();
        assert!(text.contains("==> sh -c exit 3"), "{text}");
        assert!(text.contains("oops"), "{text}");
    }

    #[test]
    fn failed_recipe_keeps_log_and_names_it() {
        // A spec whose "tarball" is not an archive: tar fails, which exercises the whole
        // failure path (log kept, tail shown) without a kernel source.
        let tmp = TempDir::new().unwrap();
        let tarball = tmp.path().join("broken.tar.xz");
        fs::write(&tarball, b"this is not xz").unwrap();
        let spec = KernelSpec::default().with_source_tarball(&tarball);
        let cache = KernelCache::new(&tmp.path().join("cache"), Arch::X86_64);
        let err = build_cached(&spec, &cache, "k", Progress::Quiet).unwrap_err();
        let msg = err.to_string();
        let failed_log = cache.failed_log_path("k");
        assert!(matches!(err, Error::BuildFailed { .. }), "{msg}");
        assert!(msg.contains(&failed_log.display().to_string()), "{msg}");
        assert!(msg.contains("==> tar"), "{msg}");
        assert!(failed_log.is_file());
        assert_eq!(cache.find("k"), None);
    }
}
