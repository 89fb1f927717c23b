//! The sandbox benchmark's results: the result lines of the `msbvm-sandbox-bench` helper (boot
//! to agent-ready through the SDK, exec round trips, vsock throughput through exec streams),
//! their summary table next to the boot references, and the JSON record.
//!
//! Like `msbvm-boot-timing`, the helper runs inside L1 and talks only through the console:
//! one `msbvm-sandbox-bench: <kind> key=value ...` line per measurement.

use std::fmt::Write as _;

use crate::{json_int, json_num, json_string, median, ratio, Summary};

/// Prefix of every helper result line.
pub const PREFIX: &str = "msbvm-sandbox-bench:";

/// Formats an optional value as a result-line field (`-` for none).
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The value of `key` on a result line of `kind`.
fn get<'a>(line: &'a str, kind: &str, key: &str) -> Option<&'a str> {
    msbvm_tests::report::field(line, &format!("{PREFIX} {kind} "), key)
}

/// One sandbox boot: `create()` until the agent is ready, then stop and remove.
#[derive(Debug, Clone, PartialEq)]
pub struct BootRun {
    /// 1-based run number.
    pub run: u32,
    /// Whether the sandbox became ready and was stopped and removed cleanly.
    pub ok: bool,
    /// Host wall clock of `create()`: the SDK's `create_duration`, which covers spawning the
    /// runtime process and waiting for the agent's ready message.
    pub create_ms: Option<f64>,
    /// The runtime's own measure: its process start to the agent's ready message.
    pub ready_after_ms: Option<f64>,
    /// The runtime's process start to the VM thread starting.
    pub vm_start_ms: Option<f64>,
    /// When the agent's `main` began, in guest boot time.
    pub agent_start_ns: Option<u64>,
    /// When the agent was ready, in guest boot time.
    pub ready_ns: Option<u64>,
    /// When the agent's root filesystem, mounts and network were in place, in guest boot
    /// time (agents that report them).
    pub steps_ns: Option<[u64; 3]>,
    /// Host wall clock of `stop()` plus `remove()`.
    pub stop_ms: Option<f64>,
}

impl BootRun {
    /// Run `run` with nothing measured yet (and not ok).
    pub fn failed(run: u32) -> BootRun {
        BootRun {
            run,
            ok: false,
            create_ms: None,
            ready_after_ms: None,
            vm_start_ms: None,
            agent_start_ns: None,
            ready_ns: None,
            steps_ns: None,
            stop_ms: None,
        }
    }

    /// The result line.
    pub fn to_line(&self) -> String {
        let ms = |v: Option<f64>| opt(v.map(|v| format!("{v:.3}")));
        format!(
            "{PREFIX} boot run={} ok={} create_ms={} ready_after_ms={} vm_start_ms={} agent_start_ns={} ready_ns={} steps_ns={} stop_ms={}",
            self.run,
            self.ok,
            ms(self.create_ms),
            ms(self.ready_after_ms),
            ms(self.vm_start_ms),
            opt(self.agent_start_ns),
            opt(self.ready_ns),
            opt(self.steps_ns.map(|[a, b, c]| format!("{a}:{b}:{c}"))),
            ms(self.stop_ms),
        )
    }

    /// Parses a result line (console noise before the prefix is fine).
    pub fn parse(line: &str) -> Option<Self> {
        let f = |k: &str| get(line, "boot", k).and_then(|v| v.parse::<f64>().ok());
        let n = |k: &str| get(line, "boot", k).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            run: get(line, "boot", "run")?.parse().ok()?,
            ok: get(line, "boot", "ok")?.parse().ok()?,
            create_ms: f("create_ms"),
            ready_after_ms: f("ready_after_ms"),
            vm_start_ms: f("vm_start_ms"),
            agent_start_ns: n("agent_start_ns"),
            ready_ns: n("ready_ns"),
            steps_ns: get(line, "boot", "steps_ns").and_then(|v| {
                let mut it = v.split(':').map(|n| n.parse::<u64>().ok());
                Some([it.next()??, it.next()??, it.next()??])
            }),
            stop_ms: f("stop_ms"),
        })
    }
}

/// The root of the sandbox [`ExecRuns`] measured in: the default image over virtio-fs.
pub const ROOT_IMAGE: &str = "image";
/// See [`ROOT_IMAGE`]: the runtime's initramfs in guest RAM (no virtio-fs at all).
pub const ROOT_INITRAMFS: &str = "initramfs";

/// Sequential exec round trips of `true` in one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRuns {
    /// The sandbox's root: [`ROOT_IMAGE`] or [`ROOT_INITRAMFS`].
    pub root: String,
    /// Round trips attempted.
    pub count: u32,
    /// Host wall clock of each round trip in milliseconds, in order; `None` for one that
    /// failed (so that round trip `i` of two interleaved sandboxes can be paired).
    pub ms: Vec<Option<f64>>,
}

impl ExecRuns {
    /// Nothing measured yet in a sandbox with `root`.
    pub fn new(root: &str, count: u32) -> Self {
        Self {
            root: root.into(),
            count,
            ms: Vec::new(),
        }
    }

    /// The result line.
    pub fn to_line(&self) -> String {
        let ms: Vec<String> = self
            .ms
            .iter()
            .map(|v| v.map_or_else(|| "x".into(), |v| format!("{v:.3}")))
            .collect();
        let ms = if ms.is_empty() {
            "-".to_string()
        } else {
            ms.join(",")
        };
        format!(
            "{PREFIX} exec root={} count={} ok={} ms={ms}",
            self.root,
            self.count,
            self.ok().len()
        )
    }

    /// Parses a result line.
    pub fn parse(line: &str) -> Option<Self> {
        let root = get(line, "exec", "root")?.to_string();
        let count = get(line, "exec", "count")?.parse().ok()?;
        let ms = get(line, "exec", "ms")?;
        let ms = if ms == "-" {
            Vec::new()
        } else {
            ms.split(',')
                .map(|v| {
                    if v == "x" {
                        Some(None)
                    } else {
                        v.parse().ok().map(Some)
                    }
                })
                .collect::<Option<Vec<Option<f64>>>>()?
        };
        Some(Self { root, count, ms })
    }

    /// The round trips that succeeded.
    pub fn ok(&self) -> Vec<f64> {
        self.ms.iter().flatten().copied().collect()
    }

    /// Whether every round trip attempted succeeded.
    pub fn all_ok(&self) -> bool {
        self.count > 0
            && self.ms.len() == self.count as usize
            && self.ms.iter().all(Option::is_some)
    }

    /// The median round trip.
    pub fn median(&self) -> Option<f64> {
        median(self.ok())
    }

    /// The 90th percentile round trip.
    pub fn p90(&self) -> Option<f64> {
        percentile(&self.ok(), 90.0)
    }
}

/// How one set of interleaved round trips compares with another: the ratio of the medians and
/// the 10th to 90th percentile of the ratios of round trips made one after the other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedRatio {
    /// Median of `a` over median of `b`.
    pub of_medians: f64,
    /// 10th percentile of `a[i] / b[i]`.
    pub p10: f64,
    /// 90th percentile of `a[i] / b[i]`.
    pub p90: f64,
    /// Pairs where both succeeded.
    pub pairs: usize,
}

impl PairedRatio {
    /// `a` against `b`, round trip `i` of one paired with round trip `i` of the other.
    pub fn of(a: &ExecRuns, b: &ExecRuns) -> Option<Self> {
        let ratios: Vec<f64> =
            a.ms.iter()
                .zip(&b.ms)
                .filter_map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
                    _ => None,
                })
                .collect();
        Some(Self {
            of_medians: ratio(a.median(), b.median())?,
            p10: percentile(&ratios, 10.0)?,
            p90: percentile(&ratios, 90.0)?,
            pairs: ratios.len(),
        })
    }
}

/// Which way a stream moved its bytes.
pub const HOST_TO_GUEST: &str = "host_to_guest";
/// See [`HOST_TO_GUEST`].
pub const GUEST_TO_HOST: &str = "guest_to_host";

/// One bulk transfer through an exec stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRun {
    /// [`HOST_TO_GUEST`] (stdin) or [`GUEST_TO_HOST`] (stdout).
    pub dir: String,
    /// Whether every byte arrived and the process exited 0.
    pub ok: bool,
    /// Bytes meant to move.
    pub bytes: u64,
    /// Bytes that did move (counted by the receiving side).
    pub moved: u64,
    /// Seconds from the process start to its exit report.
    pub secs: Option<f64>,
}

impl StreamRun {
    /// A transfer of `bytes` in direction `dir`, nothing moved yet (and not ok).
    pub fn new(dir: &str, bytes: u64) -> StreamRun {
        StreamRun {
            dir: dir.into(),
            ok: false,
            bytes,
            moved: 0,
            secs: None,
        }
    }

    /// The result line.
    pub fn to_line(&self) -> String {
        format!(
            "{PREFIX} stream dir={} ok={} bytes={} moved={} secs={}",
            self.dir,
            self.ok,
            self.bytes,
            self.moved,
            opt(self.secs.map(|v| format!("{v:.4}"))),
        )
    }

    /// Parses a result line.
    pub fn parse(line: &str) -> Option<Self> {
        let k = "stream";
        Some(Self {
            dir: get(line, k, "dir")?.to_string(),
            ok: get(line, k, "ok")?.parse().ok()?,
            bytes: get(line, k, "bytes")?.parse().ok()?,
            moved: get(line, k, "moved")?.parse().ok()?,
            secs: get(line, k, "secs").and_then(|v| v.parse().ok()),
        })
    }

    /// Throughput in MB/s (10^6 bytes), for a clean transfer.
    pub fn mb_per_s(&self) -> Option<f64> {
        match self.secs {
            Some(s) if self.ok && s > 0.0 => Some(self.moved as f64 / s / 1e6),
            _ => None,
        }
    }
}

/// Everything the helper reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxResults {
    /// Boot runs, in order.
    pub boots: Vec<BootRun>,
    /// The exec round trips, one set per root measured.
    pub exec: Vec<ExecRuns>,
    /// The transfers, in order.
    pub streams: Vec<StreamRun>,
}

impl SandboxResults {
    /// Collects the helper's result lines from a console transcript.
    pub fn parse(console: &str) -> Self {
        let mut r = Self::default();
        for line in console.lines() {
            if let Some(b) = BootRun::parse(line) {
                r.boots.push(b);
            } else if let Some(e) = ExecRuns::parse(line) {
                r.exec.push(e);
            } else if let Some(s) = StreamRun::parse(line) {
                r.streams.push(s);
            }
        }
        r
    }

    /// Whether nothing failed and every phase reported.
    pub fn all_ok(&self, runs: u32) -> bool {
        self.boots.len() == runs as usize
            && self.boots.iter().all(|b| b.ok)
            && [ROOT_IMAGE, ROOT_INITRAMFS]
                .iter()
                .all(|root| self.exec_on(root).is_some_and(ExecRuns::all_ok))
            && self.streams.len() == 2
            && self.streams.iter().all(|s| s.ok)
    }

    /// The exec round trips in the sandbox with `root`.
    pub fn exec_on(&self, root: &str) -> Option<&ExecRuns> {
        self.exec.iter().find(|e| e.root == root)
    }

    /// The image root's round trips against the initramfs root's.
    pub fn image_over_initramfs(&self) -> Option<PairedRatio> {
        PairedRatio::of(self.exec_on(ROOT_IMAGE)?, self.exec_on(ROOT_INITRAMFS)?)
    }

    /// A stream by direction.
    pub fn stream(&self, dir: &str) -> Option<&StreamRun> {
        self.streams.iter().find(|s| s.dir == dir)
    }

    /// Medians over the boot runs that reached ready.
    pub fn boot_medians(&self) -> BootMedians {
        let ready: Vec<&BootRun> = self
            .boots
            .iter()
            .filter(|b| b.create_ms.is_some())
            .collect();
        let med = |f: &dyn Fn(&BootRun) -> Option<f64>| {
            median(ready.iter().filter_map(|b| f(b)).collect())
        };
        BootMedians {
            create_ms: med(&|b| b.create_ms),
            ready_after_ms: med(&|b| b.ready_after_ms),
            vm_start_ms: med(&|b| b.vm_start_ms),
            agent_start_ms: med(&|b| b.agent_start_ns.map(ns_to_ms)),
            agent_ready_ms: med(&|b| b.ready_ns.map(ns_to_ms)),
            stop_ms: med(&|b| b.stop_ms),
        }
    }
}

/// Nanoseconds as milliseconds.
fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Medians of the boot runs (see [`BootRun`] for each field).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BootMedians {
    /// `create()` to ready, host wall clock.
    pub create_ms: Option<f64>,
    /// Runtime start to ready.
    pub ready_after_ms: Option<f64>,
    /// Runtime start to VM start.
    pub vm_start_ms: Option<f64>,
    /// Agent start, guest boot time.
    pub agent_start_ms: Option<f64>,
    /// Agent ready, guest boot time.
    pub agent_ready_ms: Option<f64>,
    /// Stop and remove.
    pub stop_ms: Option<f64>,
}

/// The `p`th percentile (nearest rank) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// A cell: the value with `digits` decimals, or `-`.
fn cell(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The settings the sandbox benchmark ran with.
#[derive(Debug, Clone)]
pub struct SandboxSetup {
    /// Sandbox boots.
    pub runs: u32,
    /// Exec round trips.
    pub execs: u32,
    /// MiB per transfer.
    pub mib: u32,
    /// vCPUs of every guest.
    pub cpus: u32,
    /// Memory of every guest in MiB.
    pub memory_mib: u32,
    /// The reference boots' guest command line.
    pub cmdline: String,
    /// Reference peers not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// msbvm's boot to agent-ready (create, host wall clock) over each reference's spawn to init.
fn ratios(results: &SandboxResults, refs: &[Summary]) -> Vec<(String, Option<f64>)> {
    let ours = results.boot_medians().create_ms;
    refs.iter()
        .map(|r| (r.vmm.clone(), ratio(ours, r.init_ms)))
        .collect()
}

/// Per reference VMM, the ratio of each sandbox boot's create-to-ready to the same round's
/// boot of that VMM to its init marker (rounds where both succeeded), in run order.
pub fn paired_ratios(
    results: &SandboxResults,
    ref_samples: &[crate::Sample],
) -> Vec<(String, Vec<f64>)> {
    let mut vmms: Vec<String> = Vec::new();
    for s in ref_samples {
        if !vmms.contains(&s.vmm) {
            vmms.push(s.vmm.clone());
        }
    }
    vmms.into_iter()
        .map(|vmm| {
            let pairs = results
                .boots
                .iter()
                .filter(|b| b.ok)
                .filter_map(|b| {
                    let create = b.create_ms?;
                    let init = ref_samples
                        .iter()
                        .find(|s| s.vmm == vmm && s.run == b.run)?
                        .init_ms?;
                    (init > 0.0).then(|| create / init)
                })
                .collect();
            (vmm, pairs)
        })
        .collect()
}

/// The report: per-run boots, their medians, exec and throughput, the references and ratios
/// (of medians, and round by round).
pub fn table(
    setup: &SandboxSetup,
    results: &SandboxResults,
    refs: &[Summary],
    ref_samples: &[crate::Sample],
    refs_table: &str,
) -> String {
    let mut t = String::new();
    boot_table(&mut t, setup, results);
    t.push('\n');
    exec_lines(&mut t, results);
    t.push('\n');
    reference_lines(&mut t, setup, results, refs, refs_table);
    for (vmm, pairs) in paired_ratios(results, ref_samples) {
        if pairs.is_empty() {
            continue;
        }
        let _ = writeln!(
            t,
            "sandbox create->agent-ready / {vmm} start->init, round by round: median x{} \
             (p10-p90 x{}-x{}, {} pairs)",
            cell(crate::median(pairs.clone()), 3),
            cell(percentile(&pairs, 10.0), 3),
            cell(percentile(&pairs, 90.0), 3),
            pairs.len()
        );
    }
    t
}

/// The per-run boot rows of [`table`] with their header and medians.
fn boot_table(t: &mut String, setup: &SandboxSetup, results: &SandboxResults) {
    let _ = writeln!(
        t,
        "sandbox boot to agent-ready: {} vCPU, {} MiB, SDK create(); nested KVM, L1 under emulation",
        setup.cpus, setup.memory_mib
    );
    let _ = writeln!(
        t,
        "{:<8} {:>4} {:>12} {:>17} {:>14} {:>15} {:>15} {:>10}",
        "run",
        "ok",
        "create ms",
        "runtime->ready",
        "runtime->vm",
        "guest agent ms",
        "guest ready ms",
        "stop+rm ms"
    );
    for b in &results.boots {
        let _ = writeln!(
            t,
            "{:<8} {:>4} {:>12} {:>17} {:>14} {:>15} {:>15} {:>10}",
            b.run,
            if b.ok { "yes" } else { "NO" },
            cell(b.create_ms, 1),
            cell(b.ready_after_ms, 1),
            cell(b.vm_start_ms, 1),
            cell(b.agent_start_ns.map(ns_to_ms), 1),
            cell(b.ready_ns.map(ns_to_ms), 1),
            cell(b.stop_ms, 1),
        );
    }
    let m = results.boot_medians();
    let ok = results.boots.iter().filter(|b| b.ok).count();
    let _ = writeln!(
        t,
        "{:<8} {:>4} {:>12} {:>17} {:>14} {:>15} {:>15} {:>10}",
        "median",
        format!("{ok}/{}", results.boots.len()),
        cell(m.create_ms, 1),
        cell(m.ready_after_ms, 1),
        cell(m.vm_start_ms, 1),
        cell(m.agent_start_ms, 1),
        cell(m.agent_ready_ms, 1),
        cell(m.stop_ms, 1),
    );
    let _ = writeln!(
        t,
        "  (create: host wall clock of create(), runtime spawn included; runtime->: the runtime's own clock; guest: agent timestamps in guest boot time)"
    );
    // The agent's start-up, step by step (guest clock): each step's own time, median over runs.
    let step = |f: &dyn Fn(&BootRun) -> Option<f64>| {
        cell(median(results.boots.iter().filter_map(f).collect()), 1)
    };
    let ms = |from: u64, to: u64| (to.saturating_sub(from)) as f64 / 1e6;
    let _ = writeln!(
        t,
        "agent start-up (guest ms, median): root filesystem {}, mounts {}, network {}, listening {}",
        step(&|b| Some(ms(b.agent_start_ns?, b.steps_ns?[0]))),
        step(&|b| Some(ms(b.steps_ns?[0], b.steps_ns?[1]))),
        step(&|b| Some(ms(b.steps_ns?[1], b.steps_ns?[2]))),
        step(&|b| Some(ms(b.steps_ns?[2], b.ready_ns?))),
    );
}

/// The exec round trip and stream throughput lines of [`table`].
fn exec_lines(t: &mut String, results: &SandboxResults) {
    for root in [ROOT_IMAGE, ROOT_INITRAMFS] {
        match results.exec_on(root) {
            Some(e) => {
                let _ = writeln!(
                    t,
                    "exec `true` round trip, {root:<9} root: {}/{} ok, median {} ms, p90 {} ms",
                    e.ok().len(),
                    e.count,
                    cell(e.median(), 2),
                    cell(e.p90(), 2)
                );
            }
            None => {
                let _ = writeln!(
                    t,
                    "exec `true` round trip, {root:<9} root: not measured (see output above)"
                );
            }
        }
    }
    if let Some(r) = results.image_over_initramfs() {
        let _ = writeln!(
            t,
            "exec round trip image root / initramfs root (interleaved): x{:.2} (pairs p10-p90 x{:.2}-x{:.2}, {} pairs)",
            r.of_medians, r.p10, r.p90, r.pairs
        );
    }
    for (dir, label) in [
        (HOST_TO_GUEST, "host->guest (stdin)"),
        (GUEST_TO_HOST, "guest->host (stdout)"),
    ] {
        let line = match results.stream(dir) {
            Some(s) => format!(
                "{} MB/s ({} of {} bytes in {} s){}",
                cell(s.mb_per_s(), 1),
                s.moved,
                s.bytes,
                cell(s.secs, 3),
                if s.ok { "" } else { " FAILED" }
            ),
            None => "not measured (see output above)".into(),
        };
        let _ = writeln!(t, "vsock via exec stream, {label:<21} {line}");
    }
}

/// The references and ratios of [`table`].
fn reference_lines(
    t: &mut String,
    setup: &SandboxSetup,
    results: &SandboxResults,
    refs: &[Summary],
    refs_table: &str,
) {
    let _ = writeln!(
        t,
        "references: boot to init marker (msbvm-init initramfs, cmdline {:?}), same L1",
        setup.cmdline
    );
    t.push_str(refs_table);
    for (vmm, why) in &setup.skipped {
        let _ = writeln!(t, "{vmm}: skipped: {why}");
    }
    for (vmm, r) in ratios(results, refs) {
        let _ = writeln!(
            t,
            "sandbox create->agent-ready / {vmm} start->init: x{}",
            cell(r, 3)
        );
    }
}

/// The results as a JSON document.
pub fn to_json(
    setup: &SandboxSetup,
    results: &SandboxResults,
    refs: &[Summary],
    ref_samples: &[crate::Sample],
) -> String {
    let mut j = String::from("{\n");
    let _ = writeln!(j, "  \"benchmark\": \"sandbox\",");
    let _ = writeln!(
        j,
        "  \"runs\": {}, \"execs\": {}, \"stream_mib\": {}, \"cpus\": {}, \"memory_mib\": {},",
        setup.runs, setup.execs, setup.mib, setup.cpus, setup.memory_mib
    );
    let _ = writeln!(
        j,
        "  \"boots\": [\n{}\n  ],",
        boots_json(results).join(",\n")
    );
    let m = results.boot_medians();
    let _ = writeln!(
        j,
        "  \"boot_median\": {{\"create_ms\": {}, \"ready_after_ms\": {}, \"vm_start_ms\": {}, \"agent_start_ms\": {}, \"agent_ready_ms\": {}, \"stop_ms\": {}}},",
        json_num(m.create_ms),
        json_num(m.ready_after_ms),
        json_num(m.vm_start_ms),
        json_num(m.agent_start_ms),
        json_num(m.agent_ready_ms),
        json_num(m.stop_ms),
    );
    exec_json(&mut j, results);
    let _ = writeln!(
        j,
        "  \"streams\": [\n{}\n  ],",
        streams_json(results).join(",\n")
    );
    let boot_setup = crate::BootSetup {
        cmdline: setup.cmdline.clone(),
        cpus: setup.cpus,
        memory_mib: setup.memory_mib,
        skipped: setup.skipped.clone(),
    };
    let refs_json = crate::to_json(&boot_setup, ref_samples, refs);
    let _ = writeln!(
        j,
        "  \"references\": {},",
        refs_json.trim_end().replace('\n', "\n  ")
    );
    let ratios: Vec<String> = ratios(results, refs)
        .into_iter()
        .map(|(vmm, r)| {
            format!(
                "    {{\"reference\": {}, \"create_to_ready_over_start_to_init\": {}}}",
                json_string(&vmm),
                json_num(r)
            )
        })
        .collect();
    let _ = writeln!(j, "  \"ratios\": [\n{}\n  ]", ratios.join(",\n"));
    j.push_str("}\n");
    j
}

/// The per-run boot objects of [`to_json`].
fn boots_json(results: &SandboxResults) -> Vec<String> {
    results
        .boots
        .iter()
        .map(|b| {
            format!(
                "    {{\"run\": {}, \"ok\": {}, \"create_ms\": {}, \"ready_after_ms\": {}, \"vm_start_ms\": {}, \"agent_start_ns\": {}, \"ready_ns\": {}, \"stop_ms\": {}}}",
                b.run,
                b.ok,
                json_num(b.create_ms),
                json_num(b.ready_after_ms),
                json_num(b.vm_start_ms),
                json_int(b.agent_start_ns),
                json_int(b.ready_ns),
                json_num(b.stop_ms),
            )
        })
        .collect()
}

/// The stream objects of [`to_json`].
fn streams_json(results: &SandboxResults) -> Vec<String> {
    results
        .streams
        .iter()
        .map(|s| {
            format!(
                "    {{\"dir\": {}, \"ok\": {}, \"bytes\": {}, \"moved\": {}, \"secs\": {}, \"mb_per_s\": {}}}",
                json_string(&s.dir),
                s.ok,
                s.bytes,
                s.moved,
                json_num(s.secs),
                json_num(s.mb_per_s()),
            )
        })
        .collect()
}

/// The `exec_true` member of [`to_json`].
fn exec_json(j: &mut String, results: &SandboxResults) {
    let _ = writeln!(j, "  \"exec_true\": {{");
    for root in [ROOT_IMAGE, ROOT_INITRAMFS] {
        match results.exec_on(root) {
            Some(e) => {
                let ms: Vec<String> = e.ms.iter().map(|v| json_num(*v)).collect();
                let _ = writeln!(
                    j,
                    "    \"{root}\": {{\"count\": {}, \"ok\": {}, \"median_ms\": {}, \"p90_ms\": {}, \"ms\": [{}]}},",
                    e.count,
                    e.ok().len(),
                    json_num(e.median()),
                    json_num(e.p90()),
                    ms.join(", ")
                );
            }
            None => {
                let _ = writeln!(j, "    \"{root}\": null,");
            }
        }
    }
    match results.image_over_initramfs() {
        Some(r) => {
            let _ = writeln!(
                j,
                "    \"image_over_initramfs\": {{\"of_medians\": {}, \"p10\": {}, \"p90\": {}, \"pairs\": {}}}",
                json_num(Some(r.of_medians)),
                json_num(Some(r.p10)),
                json_num(Some(r.p90)),
                r.pairs
            );
        }
        None => {
            let _ = writeln!(j, "    \"image_over_initramfs\": null");
        }
    }
    let _ = writeln!(j, "  }},");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(run: u32, create: f64) -> BootRun {
        BootRun {
            run,
            ok: true,
            create_ms: Some(create),
            ready_after_ms: Some(create - 1.0),
            vm_start_ms: Some(2.0),
            agent_start_ns: Some(900_000_000),
            ready_ns: Some(950_000_000),
            steps_ns: Some([910_000_000, 920_000_000, 940_000_000]),
            stop_ms: Some(30.0),
        }
    }

    #[test]
    fn result_lines_round_trip() {
        let b = boot(3, 1234.5);
        assert_eq!(BootRun::parse(&format!("junk{}", b.to_line())), Some(b));
        let failed = BootRun::failed(1);
        assert_eq!(BootRun::parse(&failed.to_line()), Some(failed));
        let e = ExecRuns {
            root: ROOT_IMAGE.into(),
            count: 3,
            ms: vec![Some(1.5), Some(2.25), Some(3.0)],
        };
        assert_eq!(ExecRuns::parse(&e.to_line()), Some(e));
        let none = ExecRuns::new(ROOT_INITRAMFS, 2);
        assert_eq!(ExecRuns::parse(&none.to_line()), Some(none));
        let s = StreamRun {
            dir: HOST_TO_GUEST.into(),
            ok: true,
            bytes: 10,
            moved: 10,
            secs: Some(0.5),
        };
        assert_eq!(StreamRun::parse(&s.to_line()), Some(s.clone()));
        assert_eq!(s.mb_per_s(), Some(10.0 / 0.5 / 1e6));
        // Kinds are not confused with each other.
        assert_eq!(BootRun::parse(&s.to_line()), None);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&v, 90.0), Some(45.0));
        assert_eq!(percentile(&v, 50.0), Some(25.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 90.0), None);
    }

    #[test]
    fn parses_a_transcript_and_reports() {
        let e = ExecRuns {
            root: ROOT_IMAGE.into(),
            count: 2,
            ms: vec![Some(4.0), Some(6.0)],
        };
        let i = ExecRuns {
            root: ROOT_INITRAMFS.into(),
            count: 2,
            ms: vec![Some(2.0), Some(4.0)],
        };
        let h2g = StreamRun {
            dir: HOST_TO_GUEST.into(),
            ok: true,
            bytes: 2_000_000,
            moved: 2_000_000,
            secs: Some(1.0),
        };
        let g2h = StreamRun {
            dir: GUEST_TO_HOST.into(),
            ..h2g.clone()
        };
        let console = [
            boot(1, 1000.0).to_line(),
            "noise".into(),
            boot(2, 3000.0).to_line(),
            e.to_line(),
            i.to_line(),
            h2g.to_line(),
            g2h.to_line(),
        ]
        .join("\n");
        let r = SandboxResults::parse(&console);
        assert_eq!(r.boots.len(), 2);
        assert!(r.all_ok(2));
        assert!(!r.all_ok(3));
        assert_eq!(r.boot_medians().create_ms, Some(2000.0));
        assert_eq!(r.boot_medians().agent_ready_ms, Some(950.0));
        let refs = vec![Summary {
            vmm: "qemu".into(),
            runs: 1,
            ok_runs: 1,
            boot_timer_ms: None,
            init_ms: Some(4000.0),
            exit_ms: Some(4100.0),
            overhead_kib: None,
        }];
        let setup = SandboxSetup {
            runs: 2,
            execs: 2,
            mib: 2,
            cpus: 1,
            memory_mib: 256,
            cmdline: "console=ttyS0".into(),
            skipped: vec![("firecracker".into(), "not set".into())],
        };
        let sample = |run, init_ms| crate::Sample {
            vmm: "qemu".into(),
            run,
            status: 0,
            init_ms,
            exit_ms: 5000.0,
            boot_timer_ms: None,
            stats: None,
        };
        // Round 1 pairs 1000 ms with 4000, round 2 3000 with 2000; round 3 has no sandbox.
        let samples = [
            sample(1, Some(4000.0)),
            sample(2, Some(2000.0)),
            sample(3, Some(1.0)),
        ];
        let t = table(&setup, &r, &refs, &samples, "");
        assert!(
            t.contains(
                "qemu start->init, round by round: median x0.875 (p10-p90 x0.250-x1.500, 2 pairs)"
            ),
            "{t}"
        );
        assert_eq!(
            paired_ratios(&r, &[sample(1, None), sample(2, Some(0.0))]),
            [("qemu".to_string(), vec![])],
            "runs without an init marker pair with nothing"
        );
        assert!(
            t.contains("image     root: 2/2 ok, median 5.00 ms, p90 6.00 ms"),
            "{t}"
        );
        assert!(
            t.contains("initramfs root (interleaved): x1.67 (pairs p10-p90 x1.50-x2.00, 2 pairs)"),
            "{t}"
        );
        assert!(
            t.contains("sandbox create->agent-ready / qemu start->init: x0.500"),
            "{t}"
        );
        assert!(t.contains("firecracker: skipped: not set"), "{t}");
        assert!(t.contains("2.0 MB/s"), "{t}");
        let j = to_json(&setup, &r, &refs, &[]);
        assert!(
            j.contains("\"create_to_ready_over_start_to_init\": 0.500"),
            "{j}"
        );
        assert!(j.contains("\"p90_ms\": 6.000"), "{j}");
        assert!(j.contains("\"of_medians\": 1.667"), "{j}");
    }

    #[test]
    fn exec_lines_keep_failed_round_trips_in_place() {
        let e = ExecRuns {
            root: ROOT_INITRAMFS.into(),
            count: 3,
            ms: vec![Some(1.5), None, Some(2.5)],
        };
        let line = e.to_line();
        assert!(
            line.ends_with("exec root=initramfs count=3 ok=2 ms=1.500,x,2.500"),
            "{line}"
        );
        let back = ExecRuns::parse(&line).unwrap();
        assert_eq!(back, e);
        assert!(!back.all_ok());
        let image = ExecRuns {
            root: ROOT_IMAGE.into(),
            count: 3,
            ms: vec![Some(3.0), Some(9.0), Some(5.0)],
        };
        // The failed round trip pairs with nothing.
        let r = PairedRatio::of(&image, &e).unwrap();
        assert_eq!(r.pairs, 2);
        assert_eq!((r.p10, r.p90), (2.0, 2.0));
    }
}
