//! End-to-end boots of the project's guest (kernel + `msbvm-init`) by `msbvm boot`, inside an
//! L1 machine with nested KVM (see `msbvm_tests::nested`).
//!
//! Each L1 boot costs seconds of emulation, so one test batches several `msbvm boot` runs in
//! one L1 machine. Timeouts are generous: they only turn hangs into failures.

use std::sync::OnceLock;
use std::time::Duration;

use msbvm_tests::artifacts::{l2_initramfs, GuestArtifacts, Progress, StaticBuild, L1_KERNEL};
use msbvm_tests::report::{self, batch_script, shell_command, BatchRun, RunSection};
use msbvm_tests::{nested, or_skip, NestedVm, Stream};

/// Kills L1 after this long: far above a healthy run, only a guard against hangs.
const L1_TIMEOUT: Duration = Duration::from_secs(600);
/// Per `msbvm boot` run inside L1, so that one hanging run is reported as such.
const RUN_TIMEOUT_SECS: u64 = 240;
/// `msbvm boot`'s exit status for a guest panic (contract of the CLI).
const STATUS_PANIC: i32 = 4;
/// `msbvm boot`'s exit status for a guest that halted every vCPU (contract of the CLI).
const STATUS_HALTED: i32 = 5;

/// The artifacts, built once per test binary (the tests run in parallel threads).
fn artifacts() -> &'static GuestArtifacts {
    static ARTIFACTS: OnceLock<Result<GuestArtifacts, String>> = OnceLock::new();
    ARTIFACTS
        .get_or_init(|| {
            GuestArtifacts::prepare(&StaticBuild::new(), Progress::Lines).map_err(|e| e.to_string())
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `runs` in one L1 machine with the artifacts (plus `extra` files) and returns the
/// sections of the console, one per run, or `None` when the test is skipped.
fn run_batch(runs: &[BatchRun], extra: &[(&str, Vec<u8>)]) -> Option<Vec<RunSection>> {
    // Check the host before spending minutes on builds that could not be used.
    or_skip(nested::preflight())?;
    let mut vm = artifacts()
        .add_to(NestedVm::builder())
        .timeout(L1_TIMEOUT)
        .stream(Stream::Stderr);
    for (path, data) in extra {
        vm = vm.add_bytes(path, data.clone(), 0o644);
    }
    let out = or_skip(vm.run_script(&batch_script(runs, RUN_TIMEOUT_SECS)))?;
    eprintln!("L1 run took {:.1} s", out.elapsed.as_secs_f64());
    assert_eq!(
        out.exit_code, 0,
        "L1 script failed; console:\n{}",
        out.console
    );
    let sections = report::split_runs(&out.console);
    let labels: Vec<&str> = sections.iter().map(|s| s.label.as_str()).collect();
    let wanted: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, wanted, "console:\n{}", out.console);
    Some(sections)
}

/// Where the test puts the guest kernel's bzImage in L1.
const L1_BZIMAGE: &str = "/msbvm/bzImage";

/// The guest boots to `msbvm-init` with 1 vCPU/256 MiB and with 2 vCPUs/512 MiB from the
/// uncompressed vmlinux (PVH entry), and with 1 vCPU/256 MiB from the bzImage of the same
/// kernel (64-bit boot protocol); each sees exactly its CPUs and memory and powers off cleanly.
#[test]
fn boots_with_one_and_two_vcpus() {
    let configs: [(u32, u64, bool); 3] = [(1, 256, false), (2, 512, false), (1, 256, true)];
    // The vmlinux is built (or found) by the artifacts; its bzImage lies beside it.
    let _ = artifacts();
    let bzimage = msbvm_kernel::find_built_bzimage()
        .expect("looking up the guest kernel")
        .expect("the guest kernel build keeps a bzImage next to vmlinux");
    let runs: Vec<BatchRun> = configs
        .iter()
        .map(|(cpus, mem, bz)| {
            let (c, m) = (cpus.to_string(), mem.to_string());
            let mut argv = artifacts().boot_argv(&["--cpus", &c, "--memory", &m, "--stats"]);
            if *bz {
                let at = argv.iter().position(|a| a == "--kernel").unwrap() + 1;
                argv[at] = L1_BZIMAGE.to_string();
            }
            let kind = if *bz { "bzimage" } else { "pvh" };
            BatchRun {
                label: format!("{kind}-cpus{cpus}-mem{mem}"),
                command: shell_command(&argv),
            }
        })
        .collect();
    let bz_bytes = std::fs::read(&bzimage).expect("reading the bzImage");
    let Some(sections) = run_batch(&runs, &[(L1_BZIMAGE, bz_bytes)]) else {
        return;
    };
    for ((cpus, mem, _), s) in configs.iter().zip(&sections) {
        let text = &s.text;
        let ctx = format!("run {} console:\n{text}", s.label);
        let init =
            report::init_ok(text).unwrap_or_else(|| panic!("no {} line; {ctx}", report::INIT_OK));
        assert_eq!(init.cpus, *cpus, "{ctx}");
        let max_kib = mem * 1024;
        assert!(
            init.mem_total_kib * 100 >= max_kib * 80 && init.mem_total_kib <= max_kib,
            "MemTotal {} KiB not within 80..100% of {max_kib} KiB; {ctx}",
            init.mem_total_kib
        );
        let exit = report::exit_line(text).unwrap_or_else(|| panic!("no exit line; {ctx}"));
        assert_eq!((exit.reason.as_str(), exit.code), ("poweroff", 0), "{ctx}");
        assert_eq!(s.status, Some(0), "msbvm exit status; {ctx}");
        let timer =
            report::boot_timer_ms(text).unwrap_or_else(|| panic!("no boot-timer line; {ctx}"));
        assert!(
            timer > 0.0 && timer <= exit.ms,
            "boot-timer {timer} ms vs exit {} ms; {ctx}",
            exit.ms
        );
        assert!(report::stats(text).is_some(), "no stats line; {ctx}");
        eprintln!(
            "{}: boot-timer {timer:.1} ms, exit {:.1} ms, MemTotal {} KiB",
            s.label, exit.ms, init.mem_total_kib
        );
    }
}

/// An initramfs of the host's busybox with `init` as its /init script, or `None` (with the
/// reason printed) where the nested tests cannot run.
fn busybox_initramfs(init: &str) -> Option<Vec<u8>> {
    or_skip(nested::preflight())?;
    let busybox = std::fs::read(nested::HOST_BUSYBOX).expect("reading the host's busybox");
    let mut cpio = msbvm_kernel::initramfs::Initramfs::new();
    for d in ["/proc", "/sys", "/dev", "/bin"] {
        cpio.dir(d, 0o755);
    }
    cpio.file("/bin/busybox", 0o755, busybox);
    cpio.file("/init", 0o755, init.to_string());
    Some(cpio.to_bytes())
}

/// A busybox initramfs whose init runs a plain `poweroff -f`: the project kernel has no
/// power-off method, so Linux prints `Power off not available: System halted instead` and
/// halts every CPU with interrupts off.
fn halting_initramfs() -> Option<Vec<u8>> {
    busybox_initramfs(
        "#!/bin/busybox sh\n/bin/busybox echo halting-guest-init\n/bin/busybox poweroff -f\n",
    )
}

/// Abnormal ends, in one L1 boot: a guest whose kernel finds no init panics, and `msbvm boot`
/// reports that as a panic (reason=panic, status 4) instead of hanging or calling it a clean
/// exit; a guest (2 vCPUs) whose init runs `poweroff -f` halts, and `msbvm boot` ends with
/// reason=halted, status 5, whatever the console says (it used to hang forever because the
/// kernel's line was not the one the VMM waited for).
#[test]
fn guest_panic_and_halt_are_reported() {
    // An initramfs without /init: the kernel then looks for a root device, finds none and
    // panics, with the VMM's default command line left as it is.
    const NO_INIT: &str = "/msbvm/noinit.cpio";
    const HALT_INIT: &str = "/msbvm/halt.cpio";
    let Some(initrd) = or_skip(l2_initramfs(None)) else {
        return;
    };
    let Some(halting) = halting_initramfs() else {
        return;
    };
    let boot = |initrd: &str, extra: &[&str]| {
        let mut argv = vec![
            msbvm_tests::artifacts::L1_MSBVM,
            "boot",
            "--kernel",
            L1_KERNEL,
        ];
        argv.extend_from_slice(&["--initrd", initrd]);
        argv.extend_from_slice(extra);
        shell_command(&argv)
    };
    let runs = [
        BatchRun {
            label: "panic".into(),
            command: boot(NO_INIT, &[]),
        },
        BatchRun {
            label: "halt".into(),
            command: boot(HALT_INIT, &["--cpus", "2"]),
        },
    ];
    let Some(sections) = run_batch(&runs, &[(NO_INIT, initrd), (HALT_INIT, halting)]) else {
        return;
    };
    let s = &sections[0];
    let ctx = format!("console:\n{}", s.text);
    assert!(
        s.text.contains("Kernel panic"),
        "the guest did not panic; {ctx}"
    );
    assert!(!s.text.contains(report::INIT_OK), "{ctx}");
    let exit = report::exit_line(&s.text).unwrap_or_else(|| panic!("no exit line; {ctx}"));
    assert_eq!(exit.reason, "panic", "{ctx}");
    assert_eq!(s.status, Some(STATUS_PANIC), "msbvm exit status; {ctx}");

    let s = &sections[1];
    let ctx = format!("console:\n{}", s.text);
    assert!(
        s.text.contains("halting-guest-init"),
        "init did not run; {ctx}"
    );
    let exit = report::exit_line(&s.text).unwrap_or_else(|| panic!("no exit line; {ctx}"));
    assert_eq!(exit.reason, "halted", "{ctx}");
    assert_eq!(s.status, Some(STATUS_HALTED), "msbvm exit status; {ctx}");
}

/// A busybox initramfs whose init prints `started`, then `tick N UPTIME` every 0.1 s for
/// `ticks` turns (sleeping on the guest's timers between them, with output through the UART's
/// interrupts), then its clocksource and the end of its kernel log (what a clock gone wrong
/// leaves there), then `ticks-done`, and halts.
fn ticking_initramfs(ticks: u32) -> Option<Vec<u8>> {
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox echo started\n\
         i=0\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         while [ $i -lt {ticks} ]; do read up idle < /proc/uptime; /bin/busybox echo tick $i $up; i=$((i+1)); /bin/busybox sleep 0.1; done\n\
         /bin/busybox echo clocksource $(/bin/busybox cat /sys/devices/system/clocksource/clocksource0/current_clocksource)\n\
         /bin/busybox dmesg | /bin/busybox tail -n 8\n\
         /bin/busybox echo ticks-done\n\
         /bin/busybox poweroff -f\n"
    );
    busybox_initramfs(&init)
}

/// The numbers of the `tick N UPTIME` lines of a console, in order.
fn ticks(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The guest's uptime at its first and last tick.
fn uptime_span(text: &str) -> (f64, f64) {
    let ups: Vec<f64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.split_whitespace().nth(1)?.parse().ok())
        .collect();
    (
        ups.first().copied().unwrap_or(f64::NAN),
        ups.last().copied().unwrap_or(f64::NAN),
    )
}

/// Snapshot and restore of a real Linux guest, in one L1 boot: a guest with 2 vCPUs that
/// ticks on its timers is snapshotted while it runs (`msbvm boot --snapshot-dir`) and goes
/// on to the end; then two VMs restored from the snapshot (`msbvm boot --restore`, one with
/// the memory mapped from the snapshot, one with it copied) each go on from where the
/// snapshot was taken, without booting or starting init again, through to the end:
/// interrupts, timers, the clock and the console all survived. How long each took is
/// printed (the two memory modes differ under nested emulation).
#[test]
fn a_linux_guest_is_snapshotted_and_restored_twice() {
    const TICK_INIT: &str = "/msbvm/tick.cpio";
    const SNAPSHOT: &str = "/tmp/msbvm-boot-snapshot";
    const TICKS: u32 = 80;
    let Some(ticking) = ticking_initramfs(TICKS) else {
        return;
    };
    let boot = |extra: &[&str]| {
        let mut argv = vec![
            msbvm_tests::artifacts::L1_MSBVM,
            "boot",
            "--kernel",
            L1_KERNEL,
        ];
        argv.extend_from_slice(extra);
        shell_command(&argv)
    };
    let runs = [
        BatchRun {
            label: "source".into(),
            command: boot(&[
                "--initrd",
                TICK_INIT,
                "--cpus",
                "2",
                "--snapshot-dir",
                SNAPSHOT,
                "--snapshot-after",
                "10",
            ]),
        },
        BatchRun {
            label: "restored-shared".into(),
            command: boot(&["--restore", SNAPSHOT]),
        },
        BatchRun {
            label: "restored-copy".into(),
            command: boot(&["--restore", SNAPSHOT, "--restore-memory", "copy"]),
        },
    ];
    let Some(sections) = run_batch(&runs, &[(TICK_INIT, ticking)]) else {
        return;
    };
    let source = &sections[0];
    let ctx = format!("source console:\n{}", source.text);
    assert!(
        source.text.contains("msbvm: snapshot dir="),
        "no snapshot was taken; {ctx}"
    );
    assert!(source.text.contains("ticks-done"), "{ctx}");
    assert_eq!(source.status, Some(STATUS_HALTED), "{ctx}");
    let source_ticks = ticks(&source.text);
    assert_eq!(source_ticks, (0..TICKS).collect::<Vec<_>>(), "{ctx}");
    let took = |text: &str| report::exit_line(text).map_or(f64::NAN, |e| e.ms / 1e3);
    let (up0, up1) = uptime_span(&source.text);
    eprintln!(
        "source: {TICKS} ticks in {:.1} s (guest uptime {up0:.2} to {up1:.2}), {}",
        took(&source.text),
        source
            .text
            .lines()
            .find(|l| l.contains("msbvm: snapshot dir="))
            .unwrap_or_default()
    );
    for restored in &sections[1..] {
        let ctx = format!("{} console:\n{}\n{ctx}", restored.label, restored.text);
        assert!(
            !restored.text.contains("started"),
            "the restored guest started init again (or the snapshot came before init); {ctx}"
        );
        let got = ticks(&restored.text);
        let first = *got.first().unwrap_or_else(|| panic!("no ticks; {ctx}"));
        assert!(first > 0, "{ctx}");
        assert_eq!(got, (first..TICKS).collect::<Vec<_>>(), "{ctx}");
        assert!(restored.text.contains("ticks-done"), "{ctx}");
        assert_eq!(restored.status, Some(STATUS_HALTED), "{ctx}");
        let (up0, up1) = uptime_span(&restored.text);
        // The guest's clock went on from the snapshot: no jump (a wrong KVM_SET_CLOCK once
        // moved it by the age of the Unix epoch) and no going back before the source's start.
        let (source_up0, source_up1) = uptime_span(&source.text);
        assert!(
            up0 > source_up0 && up0 < source_up1 + 60.0 && up1 >= up0,
            "guest uptime {up0}..{up1} after the restore, {source_up0}..{source_up1} in the source; {ctx}"
        );
        let restored_ms = restored
            .text
            .lines()
            .find_map(|l| l.trim().strip_prefix("msbvm: restored ms="))
            .unwrap_or_else(|| panic!("no `msbvm: restored` line; {ctx}"));
        eprintln!(
            "{}: running {restored_ms} ms after the start, went on from tick {first}, {} ticks in {:.1} s (guest uptime {up0:.2} to {up1:.2})",
            restored.label,
            TICKS - first,
            took(&restored.text)
        );
    }
}
