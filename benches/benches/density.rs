//! Density benchmark (issue 15 §5): what idle sandboxes cost the host, and what a guest gives
//! back after freeing memory, in one L1 machine with nested KVM.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench density
//! ```
//!
//! Detached sandboxes of 256 MiB on the default image are started one after the other (the
//! CLI, as a user would) up to 1, 10 and 30 (`MSBVM_BENCH_DENSITY`, a comma-separated list).
//! At each count, after the guests settled (`MSBVM_BENCH_SETTLE_SECS`, default 10: long
//! enough for free page reporting, which runs about 2 s after a guest frees memory), the
//! benchmark records the sum of the runtime processes' PSS (their own memory plus the guest
//! RAM actually resident) and how much L1's used memory (`MemTotal - MemAvailable`) grew
//! since before the first sandbox, which also counts the page cache of the image's files and
//! the kernel's own structures. Per sandbox, both are set against the configured 256 MiB.
//!
//! Then the first sandbox fills a 200 MiB tmpfs file, deletes it, and the runtime's resident
//! memory is sampled every half second for 10 s: how much came back and when (free page
//! reporting through virtio-balloon).
//!
//! Environment: `MSBVM_BENCH_DENSITY` (default `1,10,30`), `MSBVM_BENCH_SETTLE_SECS`,
//! `MSBVM_BENCH_L1_MIB` (default 4096), `MSBVM_STATIC_DIR`, `MSBVM_SKIP_NESTED=1`. Every sample
//! goes to `target/bench-density.json`. Numbers from an emulated L1.

use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::{failure_lines, l1_bench_main, write_record};
use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild, L1_KERNEL};
use msbvm_tests::report::field;
use msbvm_tests::{nested, Error, NestedVm, Stream};

const RESULT: &str = "msbvm-density-bench:";
const AGENT_BIN: &str = "msbvm-agent";
const L1_AGENT: &str = "/bin/msbvm-agent";
/// Each sandbox's configured memory.
const SANDBOX_MIB: u64 = 256;
/// What the first sandbox allocates and frees.
const FILL_MIB: u64 = 200;

/// The L1 script. `@COUNTS@`: the sandbox counts to measure at, ascending.
const SCRIPT: &str = r#"export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL=@KERNEL@ HOME=/root
mkdir -p /root
M=/bin/msbvm
pid_of() { grep -o '"pid": *[0-9]*' /tmp/msbvm/sandboxes/$1/state.json | grep -o '[0-9]*$'; }
pss_kib() { t=0; for s in $(ls /tmp/msbvm/sandboxes); do
  k=$(awk '/^Pss:/ {print $2}' /proc/$(pid_of $s)/smaps_rollup); t=$((t + ${k:-0})); done; echo $t; }
used_kib() { awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print t - a}' /proc/meminfo; }
rss_kib() { awk '/^VmRSS:/ {print $2}' /proc/$1/status; }
sync; echo 3 > /proc/sys/vm/drop_caches
base=$(used_kib)
n=0
for target in @COUNTS@; do
  while [ $n -lt $target ]; do
    n=$((n+1))
    $M run -d --name d$n --memory @MIB@ >/dev/null || echo "FAILED start d$n"
  done
  sleep @SETTLE@
  echo "@RESULT@ kind=idle n=$n pss_kib=$(pss_kib) used_kib=$(( $(used_kib) - base ))"
done
p=$(pid_of d1)
$M exec d1 -- sh -c 'mkdir -p /run/fill && mount -t tmpfs -o size=300m fill /run/fill && dd if=/dev/zero of=/run/fill/x bs=1M count=@FILL@ 2>/dev/null' || echo "FAILED fill"
echo "@RESULT@ kind=filled rss_kib=$(rss_kib $p)"
$M exec d1 -- sh -c 'rm /run/fill/x' || echo "FAILED free"
i=0; t0=$(cut -d' ' -f1 /proc/uptime)
while [ $i -lt 20 ]; do
  sleep 0.5; i=$((i+1))
  echo "@RESULT@ kind=after_free t=$(awk -v a=$t0 '{printf "%.2f", $1 - a}' /proc/uptime) rss_kib=$(rss_kib $p)"
done
echo "bench: done"
"#;

/// One `kind=idle` line.
struct Idle {
    n: u64,
    pss_mib: f64,
    used_mib: f64,
}

fn mib(line: &str, key: &str) -> Option<f64> {
    Some(field(line, RESULT, key)?.parse::<f64>().ok()? / 1024.0)
}

fn bench() -> Result<bool, Error> {
    let counts = std::env::var("MSBVM_BENCH_DENSITY").unwrap_or_else(|_| "1,10,30".into());
    let mut counts: Vec<u64> = counts
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        counts.push(1);
    }
    let settle = env_count("MSBVM_BENCH_SETTLE_SECS", 10);
    let l1_mib = env_count("MSBVM_BENCH_L1_MIB", 4096);
    nested::preflight()?;
    let build = StaticBuild::new().bin("msbvm-guest-agent", AGENT_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let vm = artifacts
        .add_to(NestedVm::builder())
        .memory_mib(l1_mib)
        .add_file(&artifacts.binaries.extra[AGENT_BIN], L1_AGENT)
        .stream(Stream::Stderr);
    let list: Vec<String> = counts.iter().map(u64::to_string).collect();
    let script = SCRIPT
        .replace("@KERNEL@", L1_KERNEL)
        .replace("@RESULT@", RESULT)
        .replace("@COUNTS@", &list.join(" "))
        .replace("@MIB@", &SANDBOX_MIB.to_string())
        .replace("@FILL@", &FILL_MIB.to_string())
        .replace("@SETTLE@", &settle.to_string());
    eprintln!(
        "density bench: up to {} idle {SANDBOX_MIB} MiB sandboxes, in one L1 machine of {l1_mib} MiB",
        counts.last().copied().unwrap_or(1)
    );
    let out = vm.timeout(Duration::from_secs(3600)).run_script(&script)?;
    eprintln!("density bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());
    let failed = failure_lines(&out.console, "FAILED");
    let lines = || out.console.lines().filter(|l| l.contains(RESULT));
    let idle: Vec<Idle> = lines()
        .filter(|l| field(l, RESULT, "kind") == Some("idle"))
        .filter_map(|l| {
            Some(Idle {
                n: field(l, RESULT, "n")?.parse().ok()?,
                pss_mib: mib(l, "pss_kib")?,
                used_mib: mib(l, "used_kib")?,
            })
        })
        .collect();
    let filled = lines()
        .filter(|l| field(l, RESULT, "kind") == Some("filled"))
        .find_map(|l| mib(l, "rss_kib"));
    let after: Vec<(f64, f64)> = lines()
        .filter(|l| field(l, RESULT, "kind") == Some("after_free"))
        .filter_map(|l| Some((field(l, RESULT, "t")?.parse().ok()?, mib(l, "rss_kib")?)))
        .collect();

    println!();
    println!("Idle sandboxes of {SANDBOX_MIB} MiB, default image (nested L1; settled {settle} s)");
    println!(
        "  {:>9} {:>14} {:>16} {:>18} {:>16}",
        "sandboxes", "PSS total MiB", "PSS per sandbox", "L1 used growth MiB", "growth per sandbox"
    );
    for i in &idle {
        let n = i.n as f64;
        println!(
            "  {:>9} {:>14.1} {:>9.1} ({:>4.2}×) {:>18.1} {:>9.1} ({:>4.2}×)",
            i.n,
            i.pss_mib,
            i.pss_mib / n,
            i.pss_mib / n / SANDBOX_MIB as f64,
            i.used_mib,
            i.used_mib / n,
            i.used_mib / n / SANDBOX_MIB as f64,
        );
    }
    println!("  (× = share of the configured memory; the target is at most 0.25×)");
    let mut returned = None;
    if let Some(full) = filled {
        println!("Freeing {FILL_MIB} MiB in a guest: runtime RSS {full:.1} MiB when filled");
        returned = after
            .iter()
            .find(|(_, rss)| full - rss >= 150.0)
            .map(|&(t, _)| t);
        // The samples up to the first that reached 150 MiB, and the last.
        let shown = after
            .iter()
            .enumerate()
            .filter(|&(i, &(t, _))| returned.is_none_or(|r| t <= r) || i + 1 == after.len());
        for (_, &(t, rss)) in shown {
            println!(
                "  {t:>5.2} s after the free: RSS {rss:>7.1} MiB, returned {:>6.1} MiB",
                full - rss
            );
        }
        match returned {
            Some(t) => println!("  150 MiB or more returned {t:.2} s after the free"),
            None => println!("  150 MiB were not returned within the samples"),
        }
    }

    let json = serde_json::json!({
        "sandbox_mib": SANDBOX_MIB,
        "settle_secs": settle,
        "idle": idle.iter().map(|i| serde_json::json!({
            "sandboxes": i.n, "pss_mib": i.pss_mib, "l1_used_growth_mib": i.used_mib,
        })).collect::<Vec<_>>(),
        "fill_mib": FILL_MIB,
        "filled_rss_mib": filled,
        "after_free": after.iter().map(|(t, rss)| serde_json::json!({"t": t, "rss_mib": rss})).collect::<Vec<_>>(),
        "returned_150_mib_after_s": returned,
    });
    write_record("bench-density.json", &json)?;
    Ok(failed.is_empty() && idle.len() == counts.len() && out.console.contains("bench: done"))
}

fn main() -> ExitCode {
    l1_bench_main(
        "density",
        "some measurements failed (FAILED lines above)",
        bench,
    )
}
