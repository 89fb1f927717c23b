//! Shared code of the msbvm benchmarks: the result line of the `msbvm-boot-timing` helper,
//! medians, the comparison table and the JSON record.
//!
//! The helper runs inside the L1 machine and can only talk through the console, so each
//! measured run becomes one `msbvm-boot-timing: result key=value ...` line that the benchmark
//! parses back on the host.
//!
//! [`boot_runs`] sets up the boot runs of msbvm and its peers in L1 (used by both benchmarks);
//! [`boot_arm64`] does the same in an arm64 L1 against QEMU's virt board, whose arm64 build
//! [`qemu_arm64`] brings in with only the libraries it needs;
//! [`sandbox`] holds the sandbox benchmark's result lines, table and JSON; [`image_bench`] and
//! [`net_bench`] are the host-side image (pull + unpack vs skopeo + umoci) and network (netstack
//! vs slirp4netns and pasta) benchmarks; [`tls_bench`] is the host-side TLS interception
//! benchmark (netstack splicing, intercepting, and mitmproxy); [`tls_l1`] is its in-L1 variant
//! (sandboxes with curl in L1, nested KVM); [`virtiofs_bench`] sets msbvm's virtio-fs against
//! virtiofsd under QEMU's microvm in L1.

use std::fmt::Write as _;

pub mod boot_arm64;
pub mod boot_runs;
pub mod image_bench;
pub mod net_bench;
pub mod qemu_arm64;
pub mod sandbox;
pub mod tls_bench;
pub mod tls_l1;
pub mod virtiofs_bench;
pub mod vm_net;

pub use msbvm_tests::report::Stats;

/// Whether this bench target was started by `cargo bench`, which passes `--bench`, or asked
/// for its short mode (`--quick`, see [`quick`]). `cargo test --all-targets` runs bench targets
/// without either, and a benchmark of minutes has no place there: the target `name` then says
/// how to run it, and does nothing.
pub fn bench_mode(name: &str) -> bool {
    let bench = std::env::args().any(|a| a == "--bench") || quick();
    if quick() {
        println!(
            "{name} bench: quick mode (few runs: the ratios show a regression, they are not \
             a measurement to quote; `cargo bench -p msbvm-benches --bench {name}` for that)"
        );
    }
    if !bench {
        println!(
            "{name} bench: not run in test mode; use `cargo bench -p msbvm-benches --bench {name}`"
        );
    }
    bench
}

/// Whether the benchmark runs in its short mode: `--quick` among its arguments (CI runs
/// `cargo test -p msbvm-benches --bench NAME -- --quick` for boot, sandbox and net). Fewer
/// runs and shorter transfers, the same ratios printed; a measurement that fails still
/// fails, a slow one never does.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// `full`, or `short` in [`quick`] mode: a count's default.
pub fn by_mode(full: u32, short: u32) -> u32 {
    if quick() {
        short
    } else {
        full
    }
}

/// The exit of host-side benchmark `name` after `result` (its error printed, if any).
pub fn exit(name: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `main` of helper program `name`, run in L1 by a benchmark: its arguments (after the
/// program name) go through `parse` (a bad one exits 2 with the message), then `bench` runs
/// on a single-threaded async runtime; it returns whether every step worked.
pub fn helper_main<A, F>(
    name: &str,
    parse: impl FnOnce(std::env::Args) -> Result<A, String>,
    bench: impl FnOnce(A) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = bool>,
{
    let mut argv = std::env::args();
    argv.next();
    let args = match parse(argv) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{name}: {msg}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if rt.block_on(bench(args)) {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The exit of benchmark `name` that failed with `error`: a skip (success) where the host
/// cannot run L1 and skipping was asked for, a failure otherwise.
pub fn error_exit(name: &str, error: &msbvm_tests::Error) -> std::process::ExitCode {
    if error.is_environment() && msbvm_tests::skip::skip_requested() {
        println!(
            "skipped: {}",
            error.to_string().lines().next().unwrap_or_default()
        );
        return std::process::ExitCode::SUCCESS;
    }
    eprintln!("{name} bench: {error}");
    std::process::ExitCode::FAILURE
}

/// The lines of an L1 run's `console` that contain `marker` (the script's failure lines),
/// each printed as found, so a failed measurement shows above the tables.
pub fn failure_lines<'a>(console: &'a str, marker: &str) -> Vec<&'a str> {
    let failed: Vec<&str> = console.lines().filter(|l| l.contains(marker)).collect();
    for line in &failed {
        println!("{}", line.trim());
    }
    failed
}

/// The `main` of benchmark `name` that runs in L1: nothing in test mode ([`bench_mode`]);
/// otherwise `bench`, whose `Ok(false)` (some measurement failed) exits with `failed` as the
/// reason and whose error goes through [`error_exit`].
pub fn l1_bench_main(
    name: &str,
    failed: &str,
    bench: impl FnOnce() -> Result<bool, msbvm_tests::Error>,
) -> std::process::ExitCode {
    if !bench_mode(name) {
        return std::process::ExitCode::SUCCESS;
    }
    match bench() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{name} bench: {failed}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => error_exit(name, &e),
    }
}

/// Prefix of the helper's result line.
pub const RESULT_PREFIX: &str = "msbvm-boot-timing: result";

/// One measured run of one VMM.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Which VMM (msbvm, qemu, firecracker).
    pub vmm: String,
    /// 1-based run number.
    pub run: u32,
    /// Exit status of the VMM process (128 + signal when killed).
    pub status: i32,
    /// Milliseconds from spawning the VMM to the first console line with `MSBVM-INIT-OK`.
    pub init_ms: Option<f64>,
    /// Milliseconds from spawning the VMM to its exit.
    pub exit_ms: f64,
    /// msbvm's own `boot-timer ms=` (from its process start), when it printed one.
    pub boot_timer_ms: Option<f64>,
    /// msbvm's `--stats` line, when it printed one.
    pub stats: Option<Stats>,
}

/// Formats an optional number as the value of a result-line field (`-` for none).
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl Sample {
    /// Whether the run booted to the init marker and the VMM exited with status 0.
    pub fn ok(&self) -> bool {
        self.status == 0 && self.init_ms.is_some()
    }

    /// The result line the helper prints.
    pub fn to_line(&self) -> String {
        format!(
            "{RESULT_PREFIX} vmm={} run={} status={} init_ms={} exit_ms={:.3} boot_timer_ms={} vmm_rss_kib={} guest_resident_kib={} overhead_kib={}",
            self.vmm,
            self.run,
            self.status,
            opt(self.init_ms.map(|v| format!("{v:.3}"))),
            self.exit_ms,
            opt(self.boot_timer_ms),
            opt(self.stats.map(|s| s.vmm_rss_kib)),
            opt(self.stats.map(|s| s.guest_resident_kib)),
            opt(self.stats.map(|s| s.overhead_kib)),
        )
    }

    /// Parses a result line (the prefix may be preceded by console noise).
    pub fn parse(line: &str) -> Option<Sample> {
        let get = |key: &str| msbvm_tests::report::field(line, RESULT_PREFIX, key);
        let num = |key: &str| get(key).and_then(|v| v.parse::<f64>().ok());
        let int = |key: &str| get(key).and_then(|v| v.parse::<u64>().ok());
        let stats = match (
            int("vmm_rss_kib"),
            int("guest_resident_kib"),
            int("overhead_kib"),
        ) {
            (Some(vmm_rss_kib), Some(guest_resident_kib), Some(overhead_kib)) => Some(Stats {
                vmm_rss_kib,
                guest_resident_kib,
                overhead_kib,
            }),
            _ => None,
        };
        Some(Sample {
            vmm: get("vmm")?.to_string(),
            run: get("run")?.parse().ok()?,
            status: get("status")?.parse().ok()?,
            init_ms: num("init_ms"),
            exit_ms: num("exit_ms")?,
            boot_timer_ms: num("boot_timer_ms"),
            stats,
        })
    }
}

/// All result lines in a console transcript.
pub fn parse_samples(console: &str) -> Vec<Sample> {
    console.lines().filter_map(Sample::parse).collect()
}

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Medians over the runs of one VMM.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The VMM.
    pub vmm: String,
    /// Runs made.
    pub runs: usize,
    /// Runs that booted and exited cleanly.
    pub ok_runs: usize,
    /// Median of msbvm's boot-timer, over runs that reached the init marker.
    pub boot_timer_ms: Option<f64>,
    /// Median time to the init marker, over runs that reached it.
    pub init_ms: Option<f64>,
    /// Median time to exit, over clean runs.
    pub exit_ms: Option<f64>,
    /// Median memory overhead in KiB (msbvm's --stats), over clean runs.
    pub overhead_kib: Option<f64>,
}

/// One summary per VMM, in order of first appearance.
pub fn summarize(samples: &[Sample]) -> Vec<Summary> {
    let mut vmms: Vec<&str> = Vec::new();
    for s in samples {
        if !vmms.contains(&s.vmm.as_str()) {
            vmms.push(&s.vmm);
        }
    }
    vmms.into_iter()
        .map(|vmm| {
            let all: Vec<&Sample> = samples.iter().filter(|s| s.vmm == vmm).collect();
            let ok: Vec<&Sample> = all.iter().copied().filter(|s| s.ok()).collect();
            let med = |runs: &[&Sample], f: &dyn Fn(&Sample) -> Option<f64>| {
                median(runs.iter().filter_map(|s| f(s)).collect())
            };
            // Times up to the init marker are valid for every run that got there, even one
            // that then ended badly; the exit time and memory only for clean runs.
            Summary {
                vmm: vmm.to_string(),
                runs: all.len(),
                ok_runs: ok.len(),
                boot_timer_ms: med(&all, &|s| s.init_ms.and(s.boot_timer_ms)),
                init_ms: med(&all, &|s| s.init_ms),
                exit_ms: med(&ok, &|s| Some(s.exit_ms)),
                overhead_kib: med(&ok, &|s| s.stats.map(|st| st.overhead_kib as f64)),
            }
        })
        .collect()
}

/// `a / b` of two medians, when both exist and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A cell of the table: the value with `digits` decimals, or `-`.
fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The comparison table, with msbvm's ratios to each peer below it.
pub fn table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<12} {:>7} {:>18} {:>16} {:>16} {:>14}",
        "vmm", "ok/runs", "start->timer ms", "start->init ms", "start->exit ms", "overhead KiB"
    );
    for s in summaries {
        let _ = writeln!(
            t,
            "{:<12} {:>7} {:>18} {:>16} {:>16} {:>14}",
            s.vmm,
            format!("{}/{}", s.ok_runs, s.runs),
            cell(s.boot_timer_ms, 1),
            cell(s.init_ms, 1),
            cell(s.exit_ms, 1),
            cell(s.overhead_kib, 0),
        );
    }
    if let Some(ours) = summaries.iter().find(|s| s.vmm == "msbvm") {
        for peer in summaries.iter().filter(|s| s.vmm != "msbvm") {
            let _ = writeln!(
                t,
                "msbvm/{}: start->init x{}, start->exit x{}",
                peer.vmm,
                cell(ratio(ours.init_ms, peer.init_ms), 3),
                cell(ratio(ours.exit_ms, peer.exit_ms), 3),
            );
        }
    }
    t
}

/// Below [`table`]: each VMM's times to the init marker as median [min-max], and msbvm's
/// against each peer's run by run (run `r` of both were made one after the other, see
/// `boot_runs::interleaved_runs`): the median of those ratios and their spread.
pub fn spread_lines(samples: &[Sample]) -> String {
    let mut t = String::new();
    let init = |vmm: &str| -> Vec<(u32, f64)> {
        samples
            .iter()
            .filter(|s| s.vmm == vmm)
            .filter_map(|s| Some((s.run, s.init_ms?)))
            .collect()
    };
    for s in summarize(samples) {
        let v: Vec<f64> = init(&s.vmm).into_iter().map(|(_, ms)| ms).collect();
        let _ = writeln!(t, "{:<12} start->init ms {}", s.vmm, spread(&v, 1));
    }
    let ours = init("msbvm");
    for peer in summarize(samples).iter().filter(|s| s.vmm != "msbvm") {
        let theirs = init(&peer.vmm);
        let ratios: Vec<f64> = ours
            .iter()
            .filter_map(|(run, a)| {
                let (_, b) = theirs.iter().find(|(r, _)| r == run)?;
                (*b > 0.0).then(|| a / b)
            })
            .collect();
        if !ratios.is_empty() {
            let _ = writeln!(
                t,
                "msbvm/{} start->init, run by run: x{} ({} pairs)",
                peer.vmm,
                spread(&ratios, 3),
                ratios.len()
            );
        }
    }
    t
}

/// Prefix of the timing helper's exit-counter line.
pub const EXITS_PREFIX: &str = "msbvm-boot-timing: exits";

/// KVM's counters of one VM up to the guest's init marker, read from debugfs in L1 (exits by
/// reason, page faults, injections, ...): the same for every VMM, so the counts say where one
/// guest's boot does more work than another's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitCounts {
    /// Which VMM.
    pub vmm: String,
    /// 1-based run number.
    pub run: u32,
    /// (counter, value), sorted by name: every counter file of the VM's debugfs directory.
    pub counts: Vec<(String, u64)>,
}

impl ExitCounts {
    /// Where KVM's debugfs is.
    const DEBUGFS: &'static str = "/sys/kernel/debug/kvm";

    /// The counters of every VM process `pid` holds (`<pid>-<fd>` directories; KVM sums each
    /// over the VM's vCPUs), summed; `None` when debugfs is not mounted or there is no such VM.
    pub fn of_pid(pid: u32) -> Option<Vec<(String, u64)>> {
        let prefix = format!("{pid}-");
        let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(Self::DEBUGFS)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        if dirs.is_empty() {
            return None;
        }
        let mut counts = std::collections::BTreeMap::<String, u64>::new();
        for dir in &dirs {
            for entry in std::fs::read_dir(dir).ok()?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let value = entry
                    .file_type()
                    .ok()
                    .filter(|t| t.is_file())
                    .and_then(|_| {
                        std::fs::read_to_string(entry.path())
                            .ok()?
                            .trim()
                            .parse::<u64>()
                            .ok()
                    });
                if let Some(v) = value {
                    *counts.entry(name).or_default() += v;
                }
            }
        }
        Some(counts.into_iter().collect())
    }

    /// The result line.
    pub fn to_line(counts: &[(String, u64)], vmm: &str, run: u32) -> String {
        let mut line = format!("{EXITS_PREFIX} vmm={vmm} run={run}");
        for (name, value) in counts {
            let _ = write!(line, " {name}={value}");
        }
        line
    }

    /// Parses a result line.
    pub fn parse(line: &str) -> Option<Self> {
        let get = |key: &str| msbvm_tests::report::field(line, EXITS_PREFIX, key);
        let rest = &line[line.find(EXITS_PREFIX)? + EXITS_PREFIX.len()..];
        Some(Self {
            vmm: get("vmm")?.to_string(),
            run: get("run")?.parse().ok()?,
            counts: rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| *k != "vmm" && *k != "run")
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect(),
        })
    }

    /// The value of one counter.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counts.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Mappings at least this large are taken for guest RAM in [`vmm_memory`] (the benchmarks'
/// guests have 256 MiB; no VMM maps anything else this large with resident pages).
const GUEST_MAPPING_MIN_KIB: u64 = 64 << 10;

/// The memory of VMM process `pid` now, from `/proc/PID/smaps`, in KiB, as counters for the
/// exits line: `vmm_rss_kib` (everything resident), `vmm_guest_kib` (resident in mappings of
/// 64 MiB or more: guest RAM), `vmm_anon_kib` (anonymous pages elsewhere: heap, stacks, the
/// VMM's own buffers, what one more VM costs) and `vmm_file_kib` (file pages elsewhere: the
/// VMM's binary and libraries, page cache that every process running them shares). The same
/// reading for every VMM, from outside, so their overheads compare; `None` if the process is
/// gone.
pub fn vmm_memory(pid: u32) -> Option<Vec<(String, u64)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(memory_counters(&smaps))
}

/// [`vmm_memory`] from the text of a smaps file.
fn memory_counters(smaps: &str) -> Vec<(String, u64)> {
    // (size, rss, anonymous) of each mapping, in KiB.
    let mut maps: Vec<(u64, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let value = || words.clone().next().and_then(|v| v.parse::<u64>().ok());
        let is_header = first.split_once('-').is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        });
        if is_header {
            maps.push((0, 0, 0));
            continue;
        }
        let Some(last) = maps.last_mut() else {
            continue;
        };
        match first {
            "Size:" => last.0 = value().unwrap_or(0),
            "Rss:" => last.1 = value().unwrap_or(0),
            "Anonymous:" => last.2 = value().unwrap_or(0),
            _ => {}
        }
    }
    let (mut rss, mut guest, mut anon, mut file) = (0, 0, 0, 0);
    for (size, r, a) in maps {
        rss += r;
        if size >= GUEST_MAPPING_MIN_KIB {
            guest += r;
        } else {
            anon += a;
            file += r.saturating_sub(a);
        }
    }
    [
        ("vmm_rss_kib", rss),
        ("vmm_guest_kib", guest),
        ("vmm_anon_kib", anon),
        ("vmm_file_kib", file),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Each VMM's median counters up to the init marker (one column per VMM; counters that are 0
/// for every VMM left out), or nothing when no run reported them.
pub fn exit_table(console: &str) -> String {
    let all: Vec<ExitCounts> = console.lines().filter_map(ExitCounts::parse).collect();
    let mut vmms: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for e in &all {
        if !vmms.contains(&e.vmm.as_str()) {
            vmms.push(&e.vmm);
        }
        for (n, v) in &e.counts {
            if *v > 0 && !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    if vmms.is_empty() {
        return String::new();
    }
    names.sort_unstable();
    let mut t = String::from(
        "KVM counters up to the init marker (L1 debugfs), and the VMM process's memory then \
         (vmm_*: KiB from /proc/PID/smaps; anon: its own, file: its binary and libraries, \
         shared), median over runs\n",
    );
    let _ = write!(t, "{:<26}", "counter");
    for v in &vmms {
        let _ = write!(t, " {v:>12}");
    }
    t.push('\n');
    for name in names {
        let _ = write!(t, "{name:<26}");
        for v in &vmms {
            let values: Vec<f64> = all
                .iter()
                .filter(|e| e.vmm == *v)
                .filter_map(|e| e.get(name))
                .map(|n| n as f64)
                .collect();
            let _ = write!(t, " {:>12}", cell(median(values), 0));
        }
        t.push('\n');
    }
    t
}

/// Escapes a string for JSON.
pub fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number, or `null`.
pub(crate) fn json_num(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "null".to_string(), |v| format!("{v:.3}"))
}

/// A JSON integer, or `null`.
pub(crate) fn json_int(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

/// The settings a boot benchmark ran with, recorded next to its results.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// The guest command line every VMM got.
    pub cmdline: String,
    /// vCPUs of the guest.
    pub cpus: u32,
    /// Memory of the guest in MiB.
    pub memory_mib: u32,
    /// Peers that were not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// The results as a JSON document.
pub fn to_json(setup: &BootSetup, samples: &[Sample], summaries: &[Summary]) -> String {
    let mut j = String::from("{\n");
    let _ = writeln!(j, "  \"benchmark\": \"boot\",");
    let _ = writeln!(j, "  \"cmdline\": {},", json_string(&setup.cmdline));
    let _ = writeln!(j, "  \"cpus\": {},", setup.cpus);
    let _ = writeln!(j, "  \"memory_mib\": {},", setup.memory_mib);
    let skipped: Vec<String> = setup
        .skipped
        .iter()
        .map(|(vmm, why)| {
            format!(
                "{{\"vmm\": {}, \"reason\": {}}}",
                json_string(vmm),
                json_string(why)
            )
        })
        .collect();
    let _ = writeln!(j, "  \"skipped\": [{}],", skipped.join(", "));
    let rows: Vec<String> = summaries
        .iter()
        .map(|s| {
            format!(
                "    {{\"vmm\": {}, \"runs\": {}, \"ok_runs\": {}, \"median_boot_timer_ms\": {}, \"median_init_ms\": {}, \"median_exit_ms\": {}, \"median_overhead_kib\": {}}}",
                json_string(&s.vmm),
                s.runs,
                s.ok_runs,
                json_num(s.boot_timer_ms),
                json_num(s.init_ms),
                json_num(s.exit_ms),
                json_num(s.overhead_kib),
            )
        })
        .collect();
    let _ = writeln!(j, "  \"summary\": [\n{}\n  ],", rows.join(",\n"));
    let ours = summaries.iter().find(|s| s.vmm == "msbvm");
    let ratios: Vec<String> = summaries
        .iter()
        .filter(|s| s.vmm != "msbvm")
        .map(|peer| {
            format!(
                "    {{\"peer\": {}, \"init\": {}, \"exit\": {}}}",
                json_string(&peer.vmm),
                json_num(ratio(ours.and_then(|o| o.init_ms), peer.init_ms)),
                json_num(ratio(ours.and_then(|o| o.exit_ms), peer.exit_ms)),
            )
        })
        .collect();
    let _ = writeln!(j, "  \"msbvm_ratios\": [\n{}\n  ],", ratios.join(",\n"));
    let rows: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "    {{\"vmm\": {}, \"run\": {}, \"status\": {}, \"ok\": {}, \"init_ms\": {}, \"exit_ms\": {}, \"boot_timer_ms\": {}, \"overhead_kib\": {}, \"vmm_rss_kib\": {}, \"guest_resident_kib\": {}}}",
                json_string(&s.vmm),
                s.run,
                s.status,
                s.ok(),
                json_num(s.init_ms),
                json_num(Some(s.exit_ms)),
                json_num(s.boot_timer_ms),
                json_int(s.stats.map(|st| st.overhead_kib)),
                json_int(s.stats.map(|st| st.vmm_rss_kib)),
                json_int(s.stats.map(|st| st.guest_resident_kib)),
            )
        })
        .collect();
    let _ = writeln!(j, "  \"samples\": [\n{}\n  ]", rows.join(",\n"));
    j.push_str("}\n");
    j
}

/// The end of a boot benchmark, the same for every architecture: writes the record to
/// `<target>/<file>`, fails when the L1 script printed no timing result (with the console's
/// tail), and otherwise returns how many of msbvm's own runs failed (a peer's failures are
/// only reported; ours make the benchmark fail, after the record).
pub fn finish_boot_bench(
    file: &str,
    setup: &BootSetup,
    samples: &[Sample],
    summaries: &[Summary],
    console: &str,
) -> Result<usize, msbvm_tests::Error> {
    let json_path = msbvm_tests::artifacts::target_dir().join(file);
    std::fs::write(&json_path, to_json(setup, samples, summaries)).map_err(|source| {
        msbvm_tests::Error::Io {
            context: format!("cannot write {}", json_path.display()),
            source,
        }
    })?;
    println!("results written to {}", json_path.display());
    if samples.is_empty() {
        return Err(msbvm_tests::Error::NoExitStatus {
            qemu_status: "the L1 script printed no timing results".into(),
            console_tail: msbvm_tests::console::tail(console, 40),
        });
    }
    Ok(samples
        .iter()
        .filter(|s| s.vmm == "msbvm" && !s.ok())
        .count())
}

/// One measurement an in-L1 benchmark script printed on the console, as
/// `MARKER kind=KIND LABEL=VALUE run=N value=V`.
#[derive(Debug, Clone, PartialEq)]
pub struct L1Sample {
    /// What was measured.
    pub kind: String,
    /// What tells samples of one kind apart (a sandbox, a fork count), by the key given to
    /// [`l1_samples`].
    pub label: String,
    /// The run it belongs to.
    pub run: u32,
    /// The measurement.
    pub value: f64,
}

/// The samples on the lines of `console` carrying `marker`, their label under the key
/// `label`; a line missing a field, or with a run or value that does not parse, is skipped.
pub fn l1_samples(console: &str, marker: &str, label: &str) -> Vec<L1Sample> {
    console
        .lines()
        .filter_map(|line| {
            let get = |k: &str| msbvm_tests::report::field(line, marker, k);
            Some(L1Sample {
                kind: get("kind")?.to_string(),
                label: get(label)?.to_string(),
                run: get("run")?.parse().ok()?,
                value: get("value")?.parse().ok()?,
            })
        })
        .collect()
}

/// Writes a benchmark's record to `file` in the target directory and says where.
pub fn write_record(file: &str, record: &serde_json::Value) -> Result<(), msbvm_tests::Error> {
    let path = msbvm_tests::artifacts::target_dir().join(file);
    std::fs::write(&path, record.to_string()).map_err(|source| msbvm_tests::Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })?;
    println!("results written to {}", path.display());
    Ok(())
}

/// `median [min-max]` of `values`, with `digits` decimals (`-` when there are none).
pub fn spread(values: &[f64], digits: usize) -> String {
    let Some(m) = median(values.to_vec()) else {
        return "-".into();
    };
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.digits$} [{min:.digits$}-{max:.digits$}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_counters_split_guest_ram_own_and_shared_pages() {
        let smaps = "7f0000000000-7f0010000000 rw-p 00000000 00:00 0\nSize: 262144 kB\nRss: 26624 kB\nAnonymous: 26624 kB\n\
                     55550000-55560000 r-xp 00000000 00:02 7 /bin/vmm\nSize: 4096 kB\nRss: 4000 kB\nAnonymous: 0 kB\n\
                     55560000-55570000 rw-p 00000000 00:00 0 [heap]\nSize: 300 kB\nRss: 212 kB\nAnonymous: 200 kB\n";
        let counters = memory_counters(smaps);
        let get = |k: &str| counters.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        assert_eq!(get("vmm_rss_kib"), Some(30836));
        assert_eq!(get("vmm_guest_kib"), Some(26624));
        assert_eq!(get("vmm_anon_kib"), Some(200));
        assert_eq!(get("vmm_file_kib"), Some(4012));
        assert_eq!(get("vmm_rss_kib"), Some(30836));
        assert_eq!(memory_counters("").len(), 4);
    }

    #[test]
    fn exit_lines_round_trip_and_tabulate() {
        let counts = vec![("exits".to_string(), 1200), ("io_exits".to_string(), 300)];
        let console = format!(
            "noise\n{}\n{}\n{}\n",
            ExitCounts::to_line(&counts, "msbvm", 1),
            ExitCounts::to_line(&[("exits".to_string(), 1000)], "msbvm", 2),
            ExitCounts::to_line(&[("exits".to_string(), 5000)], "firecracker", 1),
        );
        let first = ExitCounts::parse(console.lines().nth(1).unwrap()).unwrap();
        assert_eq!((first.vmm.as_str(), first.run), ("msbvm", 1));
        assert_eq!(first.counts, counts);
        let t = exit_table(&console);
        let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[1], ["counter", "msbvm", "firecracker"], "{t}");
        assert_eq!(rows[2], ["exits", "1100", "5000"], "{t}");
        assert_eq!(rows[3], ["io_exits", "300", "-"], "{t}");
        assert_eq!(exit_table("nothing"), "");
    }

    #[test]
    fn spread_lines_pair_runs_by_number() {
        let sample = |vmm: &str, run, init| Sample {
            vmm: vmm.into(),
            run,
            status: 0,
            init_ms: init,
            exit_ms: 1.0,
            boot_timer_ms: None,
            stats: None,
        };
        let samples = [
            sample("msbvm", 1, Some(100.0)),
            sample("firecracker", 1, Some(200.0)),
            sample("msbvm", 2, Some(90.0)),
            sample("firecracker", 2, Some(100.0)),
            sample("msbvm", 3, Some(50.0)),
            sample("firecracker", 3, None),
        ];
        let t = spread_lines(&samples);
        assert!(
            t.contains("msbvm        start->init ms 90.0 [50.0-100.0]"),
            "{t}"
        );
        assert!(
            t.contains("msbvm/firecracker start->init, run by run: x0.700 [0.500-0.900] (2 pairs)"),
            "{t}"
        );
    }

    #[test]
    fn l1_sample_lines_are_read_back_and_broken_ones_skipped() {
        let console = "noise\n\
            M: result kind=fork n=10 run=2 value=12.5\n\
            M: result kind=fork n=10 run=x value=1\n\
            M: result kind=cold run=1 value=3\n\
            other kind=fork n=1 run=1 value=1\n";
        assert_eq!(
            l1_samples(console, "M: result", "n"),
            vec![L1Sample {
                kind: "fork".into(),
                label: "10".into(),
                run: 2,
                value: 12.5,
            }]
        );
    }

    fn sample(vmm: &str, run: u32, init: Option<f64>, exit: f64) -> Sample {
        Sample {
            vmm: vmm.into(),
            run,
            status: 0,
            init_ms: init,
            exit_ms: exit,
            boot_timer_ms: None,
            stats: None,
        }
    }

    #[test]
    fn result_line_round_trips() {
        let mut s = sample("msbvm", 2, Some(120.5), 300.25);
        s.boot_timer_ms = Some(99.5);
        s.stats = Some(Stats {
            vmm_rss_kib: 1,
            guest_resident_kib: 2,
            overhead_kib: 3,
        });
        let line = format!("noise {}", s.to_line());
        assert_eq!(Sample::parse(&line), Some(s));
        let q = sample("qemu", 1, None, 5.0);
        assert_eq!(Sample::parse(&q.to_line()), Some(q));
        assert_eq!(Sample::parse("msbvm-boot-timing: result vmm=x"), None);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let samples = [
            sample("msbvm", 1, Some(100.0), 200.0),
            sample("msbvm", 2, Some(300.0), 400.0),
            sample("msbvm", 3, None, 1.0), // failed: no init marker, left out of medians
            Sample {
                status: 3, // reached init, then ended badly: counts for init only
                ..sample("msbvm", 4, Some(200.0), 9999.0)
            },
            sample("qemu", 1, Some(1000.0), 2000.0),
        ];
        let sums = summarize(&samples);
        assert_eq!(sums.len(), 2);
        assert_eq!((sums[0].runs, sums[0].ok_runs), (4, 2));
        assert_eq!(sums[0].init_ms, Some(200.0));
        assert_eq!(ratio(sums[0].init_ms, sums[1].init_ms), Some(0.2));
        let t = table(&sums);
        assert!(
            t.contains("msbvm/qemu: start->init x0.200, start->exit x0.150"),
            "{t}"
        );
        let setup = BootSetup {
            cmdline: "console=ttyS0 \"q\"".into(),
            cpus: 1,
            memory_mib: 256,
            skipped: vec![("firecracker".into(), "not set".into())],
        };
        let j = to_json(&setup, &samples, &sums);
        assert!(
            j.contains("\"cmdline\": \"console=ttyS0 \\\"q\\\"\""),
            "{j}"
        );
        assert!(j.contains("\"init_ms\": null"), "{j}");
    }
}
