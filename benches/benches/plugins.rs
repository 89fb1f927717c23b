//! Plugin cost benchmark (issue 14 §2): four sandboxes side by side in one L1 machine,
//! interleaved run by run: *none* (no plugin), *observer* (an out-of-process plugin watching
//! only `exec.after`, so commands pass the exec gateway), *audit* (the shipped `audit`, in
//! the plugin host: `exec.before`, `exec.after`, `fs.change`, flows, events) and *netguard*
//! (an out-of-process plugin deciding `net.flow`: every new connection waits for its answer).
//!
//! ```text
//! cargo bench -p msbvm-benches --bench plugins
//! ```
//!
//! Per run and sandbox: 20 × `msbvm exec S -- true` (the CLI, process start included; ms per
//! exec), 300 files created and written then removed in the guest (ms), a 32 MiB `wget` from
//! L1's loopback (ms) and 10 `wget`s of a small page (ms per connection); each run starts
//! with another of the four. The table gives medians with their range, and each row's ratio
//! to *none* computed run by run. Timing in L1 is `/proc/uptime` (10 ms resolution). Every sample
//! goes to `target/bench-plugins.json`. An in-process observer (a Rust plugin of a program
//! embedding the runtime) is not measured here.
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_L1_MIB` (default 3072),
//! `MSBVM_STATIC_DIR`, `MSBVM_SKIP_NESTED=1`. Numbers from an emulated L1: compare them with
//! each other only.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::{failure_lines, l1_bench_main, l1_samples, spread, write_record, L1Sample};
use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild, L1_KERNEL};
use msbvm_tests::{nested, Error, NestedVm, Stream};

const RESULT: &str = "msbvm-plugins-bench: result";
const AGENT_BIN: &str = "msbvm-agent";
const L1_AGENT: &str = "/bin/msbvm-agent";
const SANDBOXES: [&str; 4] = ["none", "observer", "audit", "netguard"];
const KINDS: [(&str, &str); 4] = [
    ("exec", "exec round trip (ms per exec)"),
    ("fs", "300 files written and removed (ms)"),
    ("net", "32 MiB over HTTP (ms)"),
    (
        "conn",
        "small page over a new connection (ms per connection)",
    ),
];

/// The L1 script: `@RUNS@` rounds over the three sandboxes.
const SCRIPT: &str = r#"export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL=@KERNEL@ HOME=/root
mkdir -p /root /www
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -e /etc/group ] || echo 'root:x:0:' > /etc/group
M=/bin/msbvm
ms() { read u _ < /proc/uptime; echo $(( ${u%.*}${u#*.}0 )); }
result() { echo "@RESULT@ kind=$1 sandbox=$2 run=$3 value=$4"; }
dd if=/dev/urandom of=/www/big bs=1M count=32 2>/dev/null
echo small > /www/small
httpd -f -p 127.0.0.1:8000 -h /www &
cat > /tmp/observer.sh <<'EOS'
#!/bin/sh
read hello
echo '{"type":"hello","protocol":1,"name":"observer","hooks":["exec.after"]}'
cat > /dev/null
EOS
chmod +x /tmp/observer.sh
cat > /tmp/netguard.sh <<'EOS'
#!/bin/sh
read hello
echo '{"type":"hello","protocol":1,"name":"netguard","hooks":["net.flow"]}'
while read -r line; do
  case "$line" in
    *'"type":"decide"'*) id=${line#*\"id\":}; id=${id%%,*}
      echo "{\"type\":\"decision\",\"id\":$id,\"verdict\":\"continue\"}";;
  esac
done
EOS
chmod +x /tmp/netguard.sh
$M run -d --name none --net-allow host >/dev/null || echo FAILED none
$M run -d --name observer --net-allow host --plugin /tmp/observer.sh >/dev/null || echo FAILED observer
$M run -d --name audit --net-allow host --plugin audit:path=/tmp/audit.jsonl >/dev/null || echo FAILED audit
$M run -d --name netguard --net-allow host --plugin /tmp/netguard.sh >/dev/null || echo FAILED netguard
for s in none observer audit netguard; do $M exec $s -- true || echo FAILED warm-up $s; done
# Guest-side elapsed time of a shell command, in ms.
guest_ms() { $M exec $1 -- sh -c "a=\$(cat /proc/uptime); $2; b=\$(cat /proc/uptime); echo \$a \$b" | {
  read a _ b _; echo $(( (${b%.*}${b#*.} - ${a%.*}${a#*.}) * 10 )); }; }
# Each run starts with another sandbox, so no one always goes first.
order() { r=$(( $1 % 4 )); set -- none observer audit netguard
  while [ $r -gt 0 ]; do x=$1; shift; set -- "$@" $x; r=$((r-1)); done; echo "$@"; }
run=1
while [ $run -le @RUNS@ ]; do
  for s in $(order $run); do
    t0=$(ms); i=0; while [ $i -lt 20 ]; do $M exec $s -- true || echo FAILED exec $s; i=$((i+1)); done
    result exec $s $run $(( ($(ms) - t0) / 20 ))
  done
  for s in $(order $run); do
    result fs $s $run $(guest_ms $s 'mkdir -p /root/f; i=0; while [ $i -lt 300 ]; do echo x > /root/f/$i; i=$((i+1)); done; rm -rf /root/f')
  done
  for s in $(order $run); do
    result net $s $run $(guest_ms $s 'wget -q -O /dev/null http://host.msbvm.internal:8000/big')
  done
  for s in $(order $run); do
    result conn $s $run $(( $(guest_ms $s 'i=0; while [ $i -lt 10 ]; do
      wget -q -O /dev/null http://host.msbvm.internal:8000/small; i=$((i+1)); done') / 10 ))
  done
  run=$((run+1))
done
echo "bench: audit lines $(wc -l < /tmp/audit.jsonl)"
echo "bench: done"
"#;

fn bench() -> Result<bool, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let l1_mib = env_count("MSBVM_BENCH_L1_MIB", 3072);
    nested::preflight()?;
    let build = StaticBuild::new().bin("msbvm-guest-agent", AGENT_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let vm = artifacts
        .add_to(NestedVm::builder())
        .memory_mib(l1_mib)
        .add_file(&artifacts.binaries.extra[AGENT_BIN], L1_AGENT)
        .stream(Stream::Stderr);
    let script = SCRIPT
        .replace("@KERNEL@", L1_KERNEL)
        .replace("@RESULT@", RESULT)
        .replace("@RUNS@", &runs.to_string());
    eprintln!("plugins bench: {runs} interleaved runs of four sandboxes, in one L1 machine");
    let out = vm.timeout(Duration::from_secs(3600)).run_script(&script)?;
    eprintln!("plugins bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());
    let samples = l1_samples(&out.console, RESULT, "sandbox");
    let failed = failure_lines(&out.console, "FAILED");

    println!();
    println!("Plugins' cost ({runs} interleaved runs, nested L1; ratio to no plugin, run by run)");
    for (kind, title) in KINDS {
        println!("{title}");
        let none: BTreeMap<u32, f64> = samples
            .iter()
            .filter(|s| s.kind == kind && s.label == "none")
            .map(|s| (s.run, s.value))
            .collect();
        for sandbox in SANDBOXES {
            let list: Vec<&L1Sample> = samples
                .iter()
                .filter(|s| s.kind == kind && s.label == sandbox)
                .collect();
            let values: Vec<f64> = list.iter().map(|s| s.value).collect();
            let ratios: Vec<f64> = list
                .iter()
                .filter_map(|s| none.get(&s.run).filter(|v| **v > 0.0).map(|v| s.value / v))
                .collect();
            println!(
                "  {sandbox:<10} {:>26} {:>24}",
                spread(&values, 0),
                spread(&ratios, 2)
            );
        }
    }

    let json = serde_json::json!({
        "runs": runs,
        "samples": samples.iter().map(|s| serde_json::json!({
            "kind": s.kind, "sandbox": s.label, "run": s.run, "value": s.value,
        })).collect::<Vec<_>>(),
    });
    write_record("bench-plugins.json", &json)?;
    let complete = samples.len() == runs as usize * SANDBOXES.len() * KINDS.len();
    Ok(failed.is_empty() && complete && out.console.contains("bench: done"))
}

fn main() -> ExitCode {
    l1_bench_main(
        "plugins",
        "some measurements failed (FAILED lines above)",
        bench,
    )
}
