//! `msbvm-sandbox-bench`: measures sandboxes through the SDK inside the L1 machine.
//!
//! ```text
//! msbvm-sandbox-bench [--runs N] [--boot-run K] [--execs N] [--mib N] [--cpus N] [--memory MIB]
//! ```
//!
//! 1. Boots `--runs` sandboxes one after another (`Sandbox::builder(..).create()`), records the
//!    SDK's create duration, the runtime's `ReadyInfo` and the agent's `BootTimes`, then stops
//!    and removes each. With `--boot-run K`, boots only run K (of `--runs`) and stops there:
//!    the benchmark calls it once per round, between the reference boots it is compared with.
//! 2. In one more sandbox (the default image's root over virtio-fs) and one with the root in
//!    the runtime's initramfs: `--execs` sequential `exec("true")` round trips in each, taking
//!    turns (after one warm-up each); then, in the first, `--mib` MiB streamed into `wc -c`'s
//!    stdin (the count proves every byte arrived) and `--mib` MiB read from
//!    `head -c <bytes> /dev/zero`, each timed from the process start to its exit report.
//!
//! Prints one result line per measurement (see `msbvm_benches::sandbox`). Finds `msbvm` next
//! to itself (or `MSBVM_BIN`), like any SDK user; the caller sets `MSBVM_HOME`,
//! `MSBVM_KERNEL`. Built static, as it runs in L1. Exits 1 if anything failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use msbvm_benches::sandbox::{
    BootRun, ExecRuns, StreamRun, GUEST_TO_HOST, HOST_TO_GUEST, ROOT_IMAGE, ROOT_INITRAMFS,
};
use msbvm_sdk::spec::RootSpec;
use msbvm_sdk::{ExecEvent, ExecOptions, ExitStatus, Sandbox};

const USAGE: &str = "usage: msbvm-sandbox-bench [--runs N] [--boot-run K] [--execs N] [--mib N] \
                     [--cpus N] [--memory MIB]";
/// Limit on any one step (a create, an exec, a transfer): only turns a hang into a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(240);
/// Bytes per stdin write (the SDK splits it into protocol frames).
const WRITE_CHUNK: usize = 1 << 20;

/// The parsed command line.
#[derive(Debug, Clone, Copy)]
struct Args {
    runs: u32,
    /// Only this boot run, nothing else.
    boot_run: Option<u32>,
    execs: u32,
    mib: u32,
    cpus: u8,
    memory_mib: u64,
}

/// Parses the command line; `Err` is the message to print.
fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        runs: 5,
        boot_run: None,
        execs: 50,
        mib: 64,
        cpus: 1,
        memory_mib: 256,
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |_| format!("{flag}: {value:?} is not a number");
        match flag.as_str() {
            "--runs" => a.runs = value.parse().map_err(bad)?,
            "--boot-run" => a.boot_run = Some(value.parse().map_err(bad)?),
            "--execs" => a.execs = value.parse().map_err(bad)?,
            "--mib" => a.mib = value.parse().map_err(bad)?,
            "--cpus" => a.cpus = value.parse().map_err(bad)?,
            "--memory" => a.memory_mib = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

/// Milliseconds of a duration.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `step` under [`STEP_TIMEOUT`], flattening both failures into a message.
async fn step<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, msbvm_sdk::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {}s", STEP_TIMEOUT.as_secs())),
    }
}

/// Reports a failure for a person (the result lines say which measurement it spoiled).
fn fail(msg: &str) {
    println!("msbvm-sandbox-bench: FAILED {msg}");
}

fn builder(name: &str, args: Args) -> msbvm_sdk::SandboxBuilder {
    Sandbox::builder(name)
        .cpus(args.cpus)
        .memory_mib(args.memory_mib)
}

/// Stops and removes a sandbox; returns the time it took.
async fn stop_and_remove(sandbox: Sandbox) -> Result<Duration, String> {
    let t = Instant::now();
    step("stop", sandbox.stop()).await?;
    step("remove", sandbox.remove()).await?;
    Ok(t.elapsed())
}

/// One boot to agent-ready, then stop and remove.
async fn boot_run(run: u32, args: Args) -> BootRun {
    let mut result = BootRun::failed(run);
    let name = format!("bench-boot-{run}");
    let sandbox = match step("create", builder(&name, args).create()).await {
        Ok(s) => s,
        Err(e) => {
            fail(&format!("boot run {run}: {e}"));
            return result;
        }
    };
    result.create_ms = sandbox.create_duration().map(ms);
    if let Some(ready) = sandbox.ready_info() {
        result.ready_after_ms = Some(ready.ready_after_ms);
        result.vm_start_ms = Some(ready.vm_start_ms);
    }
    if let Some(boot) = sandbox.boot_times() {
        result.agent_start_ns = Some(boot.agent_start_ns);
        result.ready_ns = Some(boot.ready_ns);
        if boot.root_ns > 0 {
            result.steps_ns = Some([boot.root_ns, boot.mounts_ns, boot.network_ns]);
        }
    }
    match stop_and_remove(sandbox).await {
        Ok(d) => {
            result.stop_ms = Some(ms(d));
            result.ok = result.create_ms.is_some() && result.ready_after_ms.is_some();
        }
        Err(e) => fail(&format!("boot run {run}: {e}")),
    }
    result
}

/// `true` round trips in each sandbox in turn (one in the first, one in the second, ...), after
/// one warm-up in each: the two sets see the same drift of the emulated machine.
async fn exec_runs(sandboxes: &[(&Sandbox, &str)], count: u32) -> Vec<ExecRuns> {
    let none: [&str; 0] = [];
    let mut runs: Vec<ExecRuns> = sandboxes
        .iter()
        .map(|(_, root)| ExecRuns::new(root, count))
        .collect();
    for (sandbox, root) in sandboxes {
        if let Err(e) = step("warm-up exec", sandbox.exec("true", none)).await {
            fail(&format!("{root} root: {e}"));
        }
    }
    for i in 1..=count {
        for ((sandbox, root), runs) in sandboxes.iter().zip(&mut runs) {
            let t = Instant::now();
            let took = match step("exec true", sandbox.exec("true", none)).await {
                Ok(out) if out.success() => Some(ms(t.elapsed())),
                Ok(out) => {
                    fail(&format!(
                        "exec {i} ({root} root): `true` ended with {:?}",
                        out.status
                    ));
                    None
                }
                Err(e) => {
                    fail(&format!("exec {i} ({root} root): {e}"));
                    None
                }
            };
            runs.ms.push(took);
        }
    }
    runs
}

/// Streams `bytes` into `wc -c` and checks the count it prints.
async fn host_to_guest(sandbox: &Sandbox, bytes: u64) -> StreamRun {
    let mut run = StreamRun::new(HOST_TO_GUEST, bytes);
    let mut stream = match step(
        "start wc",
        sandbox.exec_stream(ExecOptions::new(["wc", "-c"])),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            fail(&e);
            return run;
        }
    };
    let control = stream.control();
    let t = Instant::now();
    let writer = async {
        let chunk = vec![0xa5u8; WRITE_CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(WRITE_CHUNK as u64) as usize;
            control.write(&chunk[..n]).await?;
            left -= n as u64;
        }
        control.close_stdin().await
    };
    let reader = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(event) = stream.next_event().await? {
            match event {
                ExecEvent::Stdout(d) => out.extend_from_slice(&d),
                ExecEvent::Stderr(d) => err.extend_from_slice(&d),
                ExecEvent::Started { .. } => {}
                ExecEvent::Exited(status) => return Ok((status, out, err)),
            }
        }
        Err(msbvm_sdk::Error::ConnectionLost)
    };
    let both = async {
        let (w, r) = tokio::join!(writer, reader);
        w.and(r)
    };
    match step("stream into wc -c", both).await {
        Ok((status, out, err)) => {
            run.secs = Some(t.elapsed().as_secs_f64());
            let text = String::from_utf8_lossy(&out);
            run.moved = text.trim().parse().unwrap_or(0);
            run.ok = status == ExitStatus::Code(0) && run.moved == bytes;
            if !run.ok {
                fail(&format!(
                    "host->guest: wc -c ended with {status:?}, printed {:?}, stderr {:?}",
                    text.trim(),
                    String::from_utf8_lossy(&err).trim()
                ));
            }
        }
        Err(e) => fail(&e),
    }
    run
}

/// Reads `bytes` from `head -c <bytes> /dev/zero`.
async fn guest_to_host(sandbox: &Sandbox, bytes: u64) -> StreamRun {
    let mut run = StreamRun::new(GUEST_TO_HOST, bytes);
    let opts = ExecOptions::new(["head", "-c", &bytes.to_string(), "/dev/zero"]);
    let mut stream = match step("start head", sandbox.exec_stream(opts)).await {
        Ok(s) => s,
        Err(e) => {
            fail(&e);
            return run;
        }
    };
    let t = Instant::now();
    let _ = stream.close_stdin().await;
    let reader = async {
        let (mut moved, mut err) = (0u64, Vec::new());
        while let Some(event) = stream.next_event().await? {
            match event {
                ExecEvent::Stdout(d) => moved += d.len() as u64,
                ExecEvent::Stderr(d) => err.extend_from_slice(&d),
                ExecEvent::Started { .. } => {}
                ExecEvent::Exited(status) => return Ok((status, moved, err)),
            }
        }
        Err(msbvm_sdk::Error::ConnectionLost)
    };
    match step("stream from head", reader).await {
        Ok((status, moved, err)) => {
            run.secs = Some(t.elapsed().as_secs_f64());
            run.moved = moved;
            run.ok = status == ExitStatus::Code(0) && moved == bytes;
            if !run.ok {
                fail(&format!(
                    "guest->host: head ended with {status:?} after {moved} bytes, stderr {:?}",
                    String::from_utf8_lossy(&err).trim()
                ));
            }
        }
        Err(e) => fail(&e),
    }
    run
}

async fn bench(args: Args) -> bool {
    let mut ok = true;
    if let Some(run) = args.boot_run {
        println!("msbvm-sandbox-bench: boot run {run}/{}", args.runs);
        let r = boot_run(run, args).await;
        println!("{}", r.to_line());
        return r.ok;
    }
    for run in 1..=args.runs {
        println!("msbvm-sandbox-bench: boot run {run}/{}", args.runs);
        let r = boot_run(run, args).await;
        ok &= r.ok;
        println!("{}", r.to_line());
    }

    println!("msbvm-sandbox-bench: exec and streams in one sandbox");
    let sandbox = match step("create", builder("bench-io", args).create()).await {
        Ok(s) => s,
        Err(e) => {
            fail(&format!("exec sandbox: {e}"));
            return false;
        }
    };
    // The same round trip with the root in guest RAM instead of the image over virtio-fs.
    let initramfs = match step(
        "create",
        builder("bench-initramfs", args)
            .root(RootSpec::Initramfs)
            .create(),
    )
    .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            fail(&format!("initramfs-root sandbox: {e}"));
            ok = false;
            None
        }
    };
    let mut both = vec![(&sandbox, ROOT_IMAGE)];
    if let Some(s) = &initramfs {
        both.push((s, ROOT_INITRAMFS));
    }
    for execs in exec_runs(&both, args.execs).await {
        ok &= execs.all_ok();
        println!("{}", execs.to_line());
    }
    if let Some(s) = initramfs {
        if let Err(e) = stop_and_remove(s).await {
            fail(&format!("initramfs-root sandbox: {e}"));
            ok = false;
        }
    }
    let bytes = u64::from(args.mib) << 20;
    for r in [
        host_to_guest(&sandbox, bytes).await,
        guest_to_host(&sandbox, bytes).await,
    ] {
        ok &= r.ok;
        println!("{}", r.to_line());
    }
    if let Err(e) = stop_and_remove(sandbox).await {
        fail(&format!("exec sandbox: {e}"));
        ok = false;
    }
    ok
}

fn main() -> ExitCode {
    msbvm_benches::helper_main("msbvm-sandbox-bench", parse, bench)
}
