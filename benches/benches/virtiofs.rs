//! virtio-fs benchmark (issue 15 §3): msbvm's in-process virtio-fs server against virtiofsd
//! (the Rust reference daemon) under QEMU's microvm, in one L1 machine with nested KVM.
//!
//! ```text
//! scripts/bench-deps && cargo bench -p msbvm-benches --bench virtiofs
//! ```
//!
//! Both guests run the project's kernel with 1 vCPU and 256 MiB and the same busybox
//! workload (`virtiofs_bench::WORKLOAD`) on a share of the same L1 tmpfs directory: create
//! N empty files, `ls -l` them (lookup + getattr each), unlink them; write 64 MiB with fsync;
//! drop the guest's page cache and read it back; untar a tree of 3000 files of 1 KiB in 30
//! directories (from the guest's memory); drop the cache and `find` over the tree; `rm -rf`
//! it. Each step is timed in the guest with `/proc/uptime` (10 ms ticks).
//!
//! msbvm: `msbvm run -v DIR:/vol` (the passthrough backend: the same kind of share as
//! virtiofsd's), and the image root (`/root`, the layered backend) as an extra column with
//! no peer. virtiofsd: `--cache auto` (its default, close-to-open with 1 s timeouts like
//! msbvm's volume), the strongest `--sandbox` that starts in L1 (said in the output), a
//! vhost-user-fs device of QEMU `-M microvm` with a shared memfd, booting an initramfs of
//! the static busybox whose `/init` mounts the tag, runs the workload and reboots. The
//! targets take turns run by run (volume, virtiofsd, image root), so that the emulated L1's
//! drift falls on all alike; each row gives the medians with their range and msbvm's ratio
//! to virtiofsd computed run by run. Every sample goes to `target/bench-virtiofs.json`.
//!
//! virtiofsd is not a distribution package: `scripts/bench-deps` builds it into the bench
//! cache (`$XDG_CACHE_HOME/msbvm/bench/virtiofsd`); `MSBVM_BENCH_VIRTIOFSD=/path` names
//! another. Without it the msbvm columns still run.
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_FILES` (default 2000),
//! `MSBVM_BENCH_L1_MIB` (default 3072), `MSBVM_STATIC_DIR`, `MSBVM_SKIP_NESTED=1`. Numbers
//! come from an emulated L1: compare them with each other, not with hardware.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use msbvm_benches::boot_runs::env_count;
use msbvm_benches::virtiofs_bench::{self as vb, Span};
use msbvm_benches::{failure_lines, l1_bench_main, write_record};
use msbvm_tests::artifacts::{GuestArtifacts, Progress, StaticBuild};
use msbvm_tests::e2e::{prelude, L1_AGENT};
use msbvm_tests::nested::HOST_BUSYBOX;
use msbvm_tests::report::field;
use msbvm_tests::{nested, Error, NestedVm, Stream};

const AGENT_BIN: &str = "msbvm-agent";

/// The peer's setup, or why it is left out: (virtiofsd, QEMU) on the host.
fn peer() -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let virtiofsd = vb::find_virtiofsd()?;
    let qemu = vb::host_qemu().ok_or_else(|| format!("{} not in PATH", nested::QEMU))?;
    Ok((virtiofsd, qemu))
}

/// `virtiofsd --version`'s first line on the host.
fn version(virtiofsd: &Path) -> Option<String> {
    let out = Command::new(virtiofsd).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

fn bench() -> Result<bool, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let files = env_count("MSBVM_BENCH_FILES", 2000);
    let l1_mib = env_count("MSBVM_BENCH_L1_MIB", 3072);
    nested::preflight()?;
    let build = StaticBuild::new().bin("msbvm-guest-agent", AGENT_BIN);
    let artifacts = GuestArtifacts::prepare(&build, Progress::Lines)?;
    let mut vm = artifacts
        .add_to(NestedVm::builder())
        .memory_mib(l1_mib)
        .add_file(&artifacts.binaries.extra[AGENT_BIN], L1_AGENT)
        .stream(Stream::Stderr);
    vm = vb::add_workload(vm);
    let mut peer_record = serde_json::json!({"cache": vb::VIRTIOFSD_CACHE});
    let peer = match peer() {
        Ok((virtiofsd, qemu)) => {
            let initrd = vb::qemu_initramfs(Path::new(HOST_BUSYBOX)).map_err(Error::Initramfs)?;
            vm = vb::add_peer(vm, &qemu, &virtiofsd, initrd);
            peer_record["version"] = serde_json::json!(version(&virtiofsd));
            peer_record["path"] = serde_json::json!(virtiofsd.display().to_string());
            true
        }
        Err(why) => {
            println!("skipped: virtiofsd peer: {why}");
            peer_record["skipped"] = serde_json::json!(why);
            false
        }
    };
    let script = vb::l1_script(&prelude(), runs, files, peer);
    eprintln!(
        "virtiofs bench: {runs} interleaved runs of msbvm's volume{} and image root, {files} files, in one L1 machine",
        if peer { ", virtiofsd under QEMU microvm" } else { "" }
    );
    let out = vm.timeout(Duration::from_secs(5400)).run_script(&script)?;
    eprintln!("virtiofs bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());
    let failed = failure_lines(&out.console, "VFSBENCH-FAILED");
    let spans: Vec<Span> = vb::parse_spans(&out.console);

    println!();
    if let Some(line) = out.console.lines().find(|l| l.contains("VFSBENCH-SANDBOX")) {
        let get = |k: &str| field(line, "VFSBENCH-SANDBOX", k);
        let mode = get("mode").unwrap_or("?");
        let why = line.split_once("why=").map_or("", |(_, w)| w.trim());
        println!(
            "{} --cache {} --sandbox {mode}{}",
            peer_record["version"].as_str().unwrap_or("virtiofsd"),
            vb::VIRTIOFSD_CACHE,
            if why == "none" {
                String::new()
            } else {
                format!(" (stronger sandboxes failed in L1:{why})")
            }
        );
        peer_record["sandbox"] = serde_json::json!(mode);
        peer_record["sandbox_failures"] = serde_json::json!(why);
    }
    let expected_found = 1 + vb::TREE.0 * (1 + vb::TREE.1);
    for line in out.console.lines().filter(|l| l.contains("VFSBENCH ")) {
        if let Some(found) =
            field(line, "VFSBENCH ", "found").filter(|f| f.trim() != expected_found.to_string())
        {
            println!(
                "warning: find saw {found} entries, not {expected_found}: {}",
                line.trim()
            );
        }
    }
    println!(
        "virtio-fs workload in the guest ({} vCPU, {} MiB, same kernel), {runs} interleaved runs in L1;\n\
         guest ms as median [min-max] (lower is better); ratio < 1: msbvm faster",
        vb::CPUS,
        vb::MEMORY_MIB
    );
    print!("{}", vb::table(&spans, files));
    write_record(
        "bench-virtiofs.json",
        &vb::record(&spans, files, runs, peer_record),
    )?;
    let targets = if peer { 3 } else { 2 };
    let complete = spans.len() == runs as usize * targets * vb::STEPS.len();
    Ok(failed.is_empty() && complete && out.console.contains("bench: done"))
}

fn main() -> ExitCode {
    l1_bench_main(
        "virtiofs",
        "some measurements failed (VFSBENCH-FAILED lines above)",
        bench,
    )
}
