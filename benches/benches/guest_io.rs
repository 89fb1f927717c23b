//! Guest I/O benchmark: what a process in a sandbox gets from virtio-fs and the netstack,
//! measured from inside the guest, in one L1 machine with nested KVM.
//!
//! ```text
//! cargo bench -p msbvm-benches --bench guest_io
//! ```
//!
//! Filesystems, same workload on each, side by side: the image root (virtio-fs, layered
//! backend, copy-on-write upper), a host-directory volume (virtio-fs, passthrough backend) and
//! the guest's own tmpfs (no virtio-fs at all: the ceiling). Workload: create N empty files,
//! `ls -l` them (lookup + getattr each), remove them; write 64 MiB sequentially with fsync;
//! drop the guest's page cache and read it back. virtiofsd, the usual peer, is measured by the
//! `virtiofs` bench (built with `scripts/bench-deps`, run under QEMU in the same kind of L1).
//!
//! Network: iperf3 in the guest (the distribution's binary with its libraries, from a
//! read-only volume) against iperf3 on L1's loopback through `host.msbvm.internal`, both
//! directions, at MTU 1500 and 65520. The netstack's side-by-side comparison with
//! slirp4netns and pasta under identical conditions is the host-side `net` bench.
//!
//! Environment: `MSBVM_BENCH_FILES` (default 2000), `MSBVM_BENCH_RUNS` (default 3),
//! `MSBVM_SKIP_NESTED=1` (skip on hosts that cannot run L1). Numbers come from an emulated
//! L1 machine: compare them with each other, not with hardware.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::median;
use msbvm_tests::e2e::{prelude, with_msbvm};
use msbvm_tests::nested::shared_libraries;
use msbvm_tests::skip::skip_requested;
use msbvm_tests::{nested, NestedVm, Stream};

const IPERF: &str = "/usr/bin/iperf3";

fn script(files: u32, runs: u32, iperf_libs: &[String]) -> String {
    let libs = iperf_libs.join(" ");
    format!(
        r#"{prelude}
up() {{ cut -d' ' -f1 /proc/uptime; }}
WORK='D=$1; N=$2; mkdir -p $D/m && cd $D/m
t0=$(cut -d" " -f1 /proc/uptime); i=0; while [ $i -lt $N ]; do : > f$i; i=$((i+1)); done
t1=$(cut -d" " -f1 /proc/uptime); ls -l > /dev/null
t2=$(cut -d" " -f1 /proc/uptime); rm -f f*
t3=$(cut -d" " -f1 /proc/uptime); dd if=/dev/zero of=$D/big bs=1048576 count=64 conv=fsync 2>/dev/null
t4=$(cut -d" " -f1 /proc/uptime); sync; echo 3 > /proc/sys/vm/drop_caches; dd if=$D/big of=/dev/null bs=1048576 2>/dev/null
t5=$(cut -d" " -f1 /proc/uptime); rm -f $D/big
echo "FSBENCH target=$3 create=$t0:$t1 stat=$t1:$t2 unlink=$t2:$t3 write=$t3:$t4 read=$t4:$t5"'
mkdir -p /tmp/vol
r=0; while [ $r -lt {runs} ]; do
  $M run -v /tmp/vol:/vol -- sh -c "$WORK" work /root/bench {files} image-root
  $M run -v /tmp/vol:/vol -- sh -c "$WORK" work /vol/bench {files} volume
  $M run -- sh -c "$WORK" work /tmp/bench {files} guest-tmpfs
  r=$((r+1))
done

mkdir -p /tmp/ip && cp {IPERF} {libs} /tmp/ip/
iperf3 -s -B 127.0.0.1 -D
sleep 1
for mtu in 1500 65520; do
  for dir in up down; do
    flag=""; [ $dir = down ] && flag="-R"
    out=$($M run --mtu $mtu --net-allow host -v /tmp/ip:/ip:ro -- /ip/ld-linux-x86-64.so.2 --library-path /ip /ip/iperf3 -c 10.0.2.254 -t 5 -f m $flag 2>&1 | grep -E 'receiver$' | tail -1)
    echo "NETBENCH mtu=$mtu dir=$dir $out"
  done
done
echo "BENCH done"
"#,
        prelude = prelude(),
    )
}

/// Seconds between two `/proc/uptime` readings `a:b`.
fn span(v: &str) -> Option<f64> {
    let (a, b) = v.split_once(':')?;
    Some(b.parse::<f64>().ok()? - a.parse::<f64>().ok()?)
}

/// The guest's filesystem timings by (target, operation), in seconds, from its `FSBENCH` lines.
fn fs_spans(console: &str) -> BTreeMap<(String, String), Vec<f64>> {
    let mut fs: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in console.lines() {
        let Some(rest) = line.trim().strip_prefix("FSBENCH ") else {
            continue;
        };
        let fields: BTreeMap<&str, &str> =
            rest.split(' ').filter_map(|f| f.split_once('=')).collect();
        let Some(target) = fields.get("target") else {
            continue;
        };
        for op in ["create", "stat", "unlink", "write", "read"] {
            if let Some(s) = fields.get(op).and_then(|v| span(v)) {
                fs.entry((target.to_string(), op.to_string()))
                    .or_default()
                    .push(s);
            }
        }
    }
    fs
}

/// Prints the filesystem rates per target (medians) and the shares' ratios to the guest's tmpfs.
fn report_fs(fs: &BTreeMap<(String, String), Vec<f64>>, files: u32, runs: u32) {
    println!("\nguest filesystem workload ({files} files, 64 MiB), medians of {runs} runs in L1:");
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "target", "create/s", "stat/s", "unlink/s", "write MB/s", "read MB/s"
    );
    let rate = |target: &str, op: &str, amount: f64| {
        fs.get(&(target.to_string(), op.to_string()))
            .and_then(|v| median(v.clone()))
            .filter(|s| *s > 0.0)
            .map(|s| amount / s)
    };
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for target in ["image-root", "volume", "guest-tmpfs"] {
        let n = f64::from(files);
        println!(
            "{:<12} {:>12} {:>12} {:>12} {:>10} {:>10}",
            target,
            cell(rate(target, "create", n)),
            cell(rate(target, "stat", n)),
            cell(rate(target, "unlink", n)),
            cell(rate(target, "write", 64.0 * 1.048_576)),
            cell(rate(target, "read", 64.0 * 1.048_576)),
        );
    }
    for target in ["image-root", "volume"] {
        let n = f64::from(files);
        let ratio = |op: &str, amount: f64| match (
            rate(target, op, amount),
            rate("guest-tmpfs", op, amount),
        ) {
            (Some(a), Some(b)) => format!("{:.3}", a / b),
            _ => "-".into(),
        };
        println!(
            "{target}/guest-tmpfs: create x{} stat x{} unlink x{} write x{} read x{}",
            ratio("create", n),
            ratio("stat", n),
            ratio("unlink", n),
            ratio("write", 67.1),
            ratio("read", 67.1)
        );
    }
}

fn main() -> ExitCode {
    if let Err(e) = nested::preflight() {
        if skip_requested() {
            eprintln!("skipped: {e}");
            return ExitCode::SUCCESS;
        }
        eprintln!("guest_io bench: {e}");
        return ExitCode::FAILURE;
    }
    let files = env_count("MSBVM_BENCH_FILES", 2000);
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let mut builder = NestedVm::builder()
        .memory_mib(3072)
        .timeout(Duration::from_secs(1800))
        .stream(Stream::Off);
    let mut libs = Vec::new();
    if Path::new(IPERF).exists() {
        builder = builder.add_program(IPERF, IPERF);
        libs = shared_libraries(Path::new(IPERF))
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
    } else {
        println!("skipped: network part: iperf3 not installed (apt-get install iperf3)");
    }
    println!(
        "virtiofsd peer: measured by `cargo bench -p msbvm-benches --bench virtiofs`, not here"
    );
    let out = match with_msbvm(builder).run_script(&script(files, runs, &libs)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("guest_io bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    report_fs(&fs_spans(&out.console), files, runs);
    println!("\nTCP through the netstack (iperf3 in the guest to L1's loopback, 5 s):");
    for line in out.console.lines() {
        if let Some(rest) = line.trim().strip_prefix("NETBENCH ") {
            println!("  {rest}");
        }
    }
    if !out.console.contains("BENCH done") {
        eprintln!(
            "guest_io bench: the script did not finish; console:\n{}",
            out.console
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
