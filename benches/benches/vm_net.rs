//! TCP throughput a guest gets (issue 15 §2 at VM level): msbvm's virtio-net and netstack
//! against QEMU's user-mode network, libslirp (`-netdev user`, slirp4netns' engine), in one
//! L1 machine with nested KVM. (passt, pasta's engine, cannot confine itself in L1, whose root
//! is an initramfs: see `vm_net` in the library.)
//!
//! ```text
//! cargo bench -p msbvm-benches --bench vm_net
//! ```
//!
//! Every guest runs the project's kernel with 1 vCPU and 256 MiB and the distribution's
//! iperf3 against iperf3 on L1's loopback, for `MSBVM_BENCH_SECS` seconds (default 5), both
//! directions, at MTU 1500 and 65520 (slirp: 1500 only, it has no MTU setting). msbvm's guest
//! is a `msbvm run` sandbox of the default image; QEMU's is `-M microvm` booting a busybox
//! initramfs with iperf3 (`vm_net::qemu_initramfs`). The targets take turns run by run, so
//! the emulated L1's drift falls on all alike; the table gives each one's median with its
//! range and msbvm's ratio to slirp's, paired run by run. The samples go to
//! `target/bench-vm-net.json`.
//!
//! The host-side `net` bench compares the stacks alone (no VM, a TAP in a network
//! namespace, and the connection rate); this one includes each VMM's device and its way to
//! the stack (QEMU's slirp runs in QEMU's main loop; msbvm's virtio-net worker runs on the
//! netstack's thread, the frames crossing a socketpair within it).
//!
//! Environment: `MSBVM_BENCH_RUNS` (default 3), `MSBVM_BENCH_SECS` (default 5),
//! `MSBVM_STATIC_DIR`, `MSBVM_SKIP_NESTED=1`. Needs iperf3 and QEMU on the host. Numbers
//! come from an emulated L1: compare them with each other, not with hardware.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use msbvm_benches::boot_runs::{add_qemu, env_count, host_qemu};
use msbvm_benches::vm_net::{self as vn, Sample};
use msbvm_benches::{failure_lines, l1_bench_main, write_record};
use msbvm_tests::e2e::{prelude, with_msbvm};
use msbvm_tests::nested::{shared_libraries, HOST_BUSYBOX};
use msbvm_tests::{nested, Error, NestedVm, Stream};

const IPERF: &str = "/usr/bin/iperf3";

fn bench() -> Result<bool, Error> {
    let runs = env_count("MSBVM_BENCH_RUNS", 3);
    let secs = env_count("MSBVM_BENCH_SECS", 5);
    nested::preflight()?;
    if !Path::new(IPERF).is_file() {
        return Err(Error::Harness(format!(
            "{IPERF} is missing (apt-get install iperf3)"
        )));
    }
    let qemu = host_qemu().ok_or_else(|| {
        Error::Harness(format!(
            "{} is not in PATH (apt-get install qemu-system-x86)",
            nested::QEMU
        ))
    })?;
    let libraries: Vec<PathBuf> = shared_libraries(Path::new(IPERF))?;
    let initrd = vn::qemu_initramfs(Path::new(HOST_BUSYBOX), Path::new(IPERF), &libraries)
        .map_err(Error::Initramfs)?;
    let mut vm = with_msbvm(NestedVm::builder())
        .memory_mib(3072)
        .timeout(Duration::from_secs(3600))
        .stream(Stream::Stderr)
        .add_program(IPERF, IPERF)
        .add_bytes(vn::l1_initrd_path(), initrd, 0o644);
    vm = add_qemu(vm, &qemu);
    let mut files = vec![IPERF.to_string()];
    files.extend(libraries.iter().map(|p| p.display().to_string()));
    eprintln!(
        "vm_net bench: {runs} interleaved rounds of msbvm and QEMU + slirp, iperf3 -t {secs}, in one L1 machine"
    );
    let out = vm.run_script(&vn::l1_script(&prelude(), runs, secs, &files))?;
    eprintln!("vm_net bench: L1 ran {:.1} s", out.elapsed.as_secs_f64());
    let failed = failure_lines(&out.console, "VMNET-");
    let samples: Vec<Sample> = vn::parse(&out.console);
    println!(
        "\nTCP throughput from a guest ({} vCPU, {} MiB, same kernel) to iperf3 on L1's loopback, \
         iperf3 -t {secs}, {runs} interleaved rounds in L1;\nMbit/s as median [min-max] \
         (higher is better); ratio > 1: msbvm faster",
        vn::CPUS,
        vn::MEMORY_MIB
    );
    print!("{}", vn::table(&samples));
    let record = serde_json::json!({
        "runs": runs,
        "secs": secs,
        "cpus": vn::CPUS,
        "memory_mib": vn::MEMORY_MIB,
        "samples": samples.iter().map(|s| serde_json::json!({
            "target": s.target, "mtu": s.mtu, "dir": s.dir, "run": s.run, "mbps": s.mbps,
        })).collect::<Vec<_>>(),
    });
    write_record("bench-vm-net.json", &record)?;
    let complete = samples.len() == vn::expected_samples(runs);
    Ok(failed.is_empty() && complete && out.console.contains("bench: done"))
}

fn main() -> ExitCode {
    l1_bench_main(
        "vm_net",
        "some measurements failed (VMNET- lines above)",
        bench,
    )
}
