//! `msbvm-fork-bench`: forks against cold boots, through the SDK, inside the L1 machine.
//!
//! ```text
//! msbvm-fork-bench [--runs N] [--counts 1,10,100] [--memory MIB]
//! ```
//!
//! Creates a source sandbox on the default image, runs one exec in it and snapshots it. Then,
//! `--runs` times, interleaved so that drift in the emulated L1 touches both alike: one cold
//! sandbox (create to its first `exec("true")` returning), and for each N of `--counts` N forks
//! at once (the fork call to the last fork's first `exec("true")` returning); after the forks
//! of the largest N have idled for 2 s, the proportional set size of each fork's runtime
//! process (guest memory included: it is mapped from the snapshot, shared until written).
//!
//! Prints `msbvm-fork-bench: result kind=cold|fork|pss n=N run=R value=X` lines (milliseconds,
//! or KiB per fork for `pss`). Finds `msbvm` next to itself (or `MSBVM_BIN`); the caller sets
//! `MSBVM_HOME` and `MSBVM_KERNEL`. Built static, as it runs in L1. Exits 1 if anything failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use msbvm_sdk::Sandbox;

const USAGE: &str = "usage: msbvm-fork-bench [--runs N] [--counts 1,10,100] [--memory MIB]";
/// Prefix of every result line.
const RESULT: &str = "msbvm-fork-bench: result";
/// Limit on any one step: only turns a hang into a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// The snapshot every fork starts from.
const SNAPSHOT: &str = "fork-bench";

struct Args {
    runs: u32,
    counts: Vec<u32>,
    memory_mib: u64,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        runs: 3,
        counts: vec![1, 10],
        memory_mib: 256,
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |_| format!("{flag}: {value:?} is not a number");
        match flag.as_str() {
            "--runs" => a.runs = value.parse().map_err(bad)?,
            "--memory" => a.memory_mib = value.parse().map_err(bad)?,
            "--counts" => {
                a.counts = value
                    .split(',')
                    .map(|n| n.parse::<u32>().map_err(bad))
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

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

async fn exec_true(sandbox: &Sandbox) -> Result<(), String> {
    let none: [&str; 0] = [];
    let out = step("exec", sandbox.exec("true", none)).await?;
    if out.status == msbvm_sdk::ExitStatus::Code(0) {
        Ok(())
    } else {
        Err(format!("true in {}: {:?}", sandbox.name(), out.status))
    }
}

fn result(kind: &str, n: u32, run: u32, value: f64) {
    println!("{RESULT} kind={kind} n={n} run={run} value={value:.3}");
}

/// Proportional set size of process `pid` in KiB.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn remove_all(sandboxes: Vec<Sandbox>) {
    for s in sandboxes {
        let _ = step("remove", s.remove()).await;
    }
}

async fn cold(run: u32, args: &Args) -> Result<(), String> {
    let t = Instant::now();
    let sandbox = step(
        "create",
        Sandbox::builder(format!("fb-cold-{run}"))
            .memory_mib(args.memory_mib)
            .create(),
    )
    .await?;
    let done = exec_true(&sandbox).await;
    let elapsed = t.elapsed();
    remove_all(vec![sandbox]).await;
    done?;
    result("cold", 1, run, elapsed.as_secs_f64() * 1e3);
    Ok(())
}

async fn forks(run: u32, n: u32, measure_memory: bool) -> Result<(), String> {
    let t = Instant::now();
    let forks = step(
        "fork",
        Sandbox::fork(SNAPSHOT)
            .count(n)
            .name(format!("fb-{run}-{n}"))
            .create(),
    )
    .await?;
    let execs = futures_util::future::join_all(forks.iter().map(exec_true)).await;
    let elapsed = t.elapsed();
    let failed = execs.into_iter().find_map(Result::err);
    if failed.is_none() {
        result("fork", n, run, elapsed.as_secs_f64() * 1e3);
        if measure_memory {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pss: Vec<u64> = forks.iter().filter_map(|f| pss_kib(f.pid())).collect();
            if !pss.is_empty() {
                result(
                    "pss",
                    n,
                    run,
                    pss.iter().sum::<u64>() as f64 / pss.len() as f64,
                );
            }
        }
    }
    remove_all(forks).await;
    failed.map_or(Ok(()), Err)
}

async fn bench(args: Args) -> bool {
    let source = match step(
        "create the source",
        Sandbox::builder("fb-src")
            .memory_mib(args.memory_mib)
            .create(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            println!("msbvm-fork-bench: FAILED {e}");
            return false;
        }
    };
    let snapshot = match exec_true(&source).await {
        Ok(()) => step("snapshot", source.snapshot(SNAPSHOT)).await,
        Err(e) => Err(e),
    };
    match snapshot {
        Ok(info) => println!(
            "msbvm-fork-bench: snapshot taken, guest paused {:.1} ms",
            info.paused_ms
        ),
        Err(e) => {
            println!("msbvm-fork-bench: FAILED {e}");
            return false;
        }
    }
    remove_all(vec![source]).await;
    let largest = args.counts.iter().copied().max().unwrap_or(1);
    let mut ok = true;
    for run in 1..=args.runs {
        if let Err(e) = cold(run, &args).await {
            println!("msbvm-fork-bench: FAILED cold run {run}: {e}");
            ok = false;
        }
        for &n in &args.counts {
            if let Err(e) = forks(run, n, n == largest).await {
                println!("msbvm-fork-bench: FAILED {n} forks, run {run}: {e}");
                ok = false;
            }
        }
    }
    let home = msbvm_sdk::msbvm_home().ok();
    if let Some(home) = home {
        let _ = msbvm_sdk::snapshots::remove(&home, SNAPSHOT);
    }
    ok
}

fn main() -> ExitCode {
    msbvm_benches::helper_main("msbvm-fork-bench", parse, bench)
}
