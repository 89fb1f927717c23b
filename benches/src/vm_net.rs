//! TCP throughput from inside a VM (issue 15 §2, at VM level): iperf3 in a guest to iperf3 on
//! L1's loopback, through msbvm's netstack and through QEMU's user-mode network, in one L1
//! machine with nested KVM, same guest kernel, 1 vCPU and 256 MiB.
//!
//! The host-side `net` bench compares the stacks alone (a TAP in a network namespace, no
//! VM); this one compares what a guest gets, device included:
//! - `msbvm`: `msbvm run` of the default image, iperf3 from a read-only volume, to
//!   `host.msbvm.internal` (10.0.2.254, which the netstack maps to L1's loopback);
//! - `qemu-slirp`: QEMU `-M microvm` with `-netdev user` (libslirp, the engine of
//!   slirp4netns), to its host alias 10.0.2.2 (L1's loopback).
//!
//! passt (pasta's engine, which QEMU reaches with `-netdev stream`) is not measured here: it
//! confines itself with `pivot_root`, which the kernel refuses while the root is the initial
//! ramfs, as L1's is, and chrooted elsewhere it may not create the user namespace it also
//! needs. The host-side `net` bench compares msbvm's stack with pasta's.
//!
//! The QEMU guest boots [`qemu_initramfs`]: the static busybox, iperf3 with its libraries and
//! an `/init` that configures `eth0`, runs one iperf3 client and reboots (QEMU exits under
//! `-no-reboot`). [`l1_script`] takes turns run by run (msbvm, then slirp, for each MTU and
//! direction) so the emulated L1's drift falls on all alike; [`parse`] reads the [`RESULT`]
//! lines back and [`table`] gives medians with their range and msbvm's ratio to the peer,
//! paired run by run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use msbvm_kernel::Initramfs;
use msbvm_tests::artifacts::L1_KERNEL;

use crate::boot_runs::{busybox_initramfs, L1_QEMU};
use crate::spread;

/// Marker of a result line (and, with a suffix, of a failed run's line).
pub const RESULT: &str = "VMNET";
/// Guest vCPUs on every side.
pub const CPUS: u32 = 1;
/// Guest memory in MiB on every side.
pub const MEMORY_MIB: u32 = 256;
/// The MTUs measured. QEMU's `-netdev user` has no MTU setting (libslirp's is 1500), so
/// slirp is measured at the first only.
pub const MTUS: [u32; 2] = [1500, 65520];
/// The targets, in the order each run takes them.
pub const TARGETS: [&str; 2] = ["msbvm", "qemu-slirp"];
/// Where the QEMU guest's initramfs lives in L1.
const L1_QEMU_INITRD: &str = "/bench/vmnet-initrd.cpio";
/// Where iperf3 and its libraries go in the guests (a volume for msbvm, the initramfs for QEMU).
const GUEST_IPERF_DIR: &str = "/ip";
/// QEMU's user-mode network: the guest's address and the host alias (L1's loopback).
const SLIRP_ADDR: &str = "10.0.2.15/24";
const SLIRP_GW: &str = "10.0.2.2";
/// msbvm's name for the host: `host.msbvm.internal`.
const MSBVM_HOST: &str = "10.0.2.254";
/// Per-run limit in L1: a wedged guest becomes a failed run, not a stuck benchmark.
const RUN_TIMEOUT_SECS: u32 = 300;

/// The rest of the QEMU guest's `/init`, after [`busybox_initramfs`]'s mounts. Its settings
/// reach init as environment from the kernel command line: `VMNET_TARGET`, `VMNET_RUN`,
/// `VMNET_DIR` (`up`: guest to host, `down`: `-R`), `VMNET_MTU`, `VMNET_SECS`, `VMNET_ADDR`
/// and `VMNET_GW` (the iperf3 server's address).
const QEMU_INIT: &str = r#"ip link set lo up
ip link set eth0 mtu "$VMNET_MTU" && ip link set eth0 up && ip addr add "$VMNET_ADDR" dev eth0 \
  && ip route add default via "$VMNET_GW"
flag=""; [ "$VMNET_DIR" = down ] && flag="-R"
out=$(@IPERF@ -c "$VMNET_GW" -t "$VMNET_SECS" -f m $flag 2>&1)
line=$(echo "$out" | grep -E 'receiver$' | tail -n 1)
if [ -n "$line" ]; then
  echo "VMNET target=$VMNET_TARGET mtu=$VMNET_MTU dir=$VMNET_DIR run=$VMNET_RUN $line"
else
  echo "VMNET-FAILED target=$VMNET_TARGET mtu=$VMNET_MTU dir=$VMNET_DIR run=$VMNET_RUN $(echo "$out" | tail -n 1)"
fi
reboot -f
"#;

/// How a guest runs iperf3 from [`GUEST_IPERF_DIR`]: through the loader, which finds the
/// libraries beside it (neither guest has them at their host paths).
fn guest_iperf() -> String {
    format!(
        "{GUEST_IPERF_DIR}/ld-linux-x86-64.so.2 --library-path {GUEST_IPERF_DIR} {GUEST_IPERF_DIR}/iperf3"
    )
}

/// The QEMU guest's initramfs (uncompressed cpio): the static `busybox`, `/init`, and
/// `iperf3` with `libraries` (its shared libraries and loader, as `ldd` names them) in
/// [`GUEST_IPERF_DIR`].
pub fn qemu_initramfs(
    busybox: &Path,
    iperf: &Path,
    libraries: &[PathBuf],
) -> Result<Vec<u8>, String> {
    let init = QEMU_INIT.replace("@IPERF@", &guest_iperf());
    let mut cpio = busybox_initramfs(busybox, &[GUEST_IPERF_DIR], &init)?;
    let add = |cpio: &mut Initramfs, host: &Path, guest: &str| {
        cpio.host_file(guest, host)
            .map(|_| ())
            .map_err(|e| format!("cannot add {}: {e}", host.display()))
    };
    add(&mut cpio, iperf, &format!("{GUEST_IPERF_DIR}/iperf3"))?;
    for lib in libraries {
        let name = lib
            .file_name()
            .ok_or_else(|| format!("{} has no file name", lib.display()))?;
        add(
            &mut cpio,
            lib,
            &format!("{GUEST_IPERF_DIR}/{}", name.to_string_lossy()),
        )?;
    }
    Ok(cpio.to_bytes())
}

/// Where the QEMU guest's initramfs goes in L1 (for [`msbvm_tests::NestedVmBuilder::add_bytes`]).
pub fn l1_initrd_path() -> &'static str {
    L1_QEMU_INITRD
}

/// The L1 script: iperf3's server on L1's loopback, then `runs` rounds; each round measures
/// every MTU and direction on msbvm, then on QEMU with slirp (MTU 1500 only). `iperf_files`
/// are the host paths of iperf3 and its libraries (also L1's paths: the harness puts them
/// there), copied into the directory msbvm's guest mounts.
pub fn l1_script(prelude: &str, runs: u32, secs: u32, iperf_files: &[String]) -> String {
    let slirp = format!(
        "timeout {RUN_TIMEOUT_SECS} {L1_QEMU} -M microvm,acpi=off -enable-kvm -cpu host \
         -smp {CPUS} -m {MEMORY_MIB}M -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
         -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
         -kernel {L1_KERNEL} -initrd {L1_QEMU_INITRD} \
         -append \"console=ttyS0 reboot=t panic=-1 quiet VMNET_TARGET=qemu-slirp VMNET_RUN=$r \
         VMNET_DIR=$dir VMNET_MTU=$mtu VMNET_SECS={secs} VMNET_ADDR={SLIRP_ADDR} VMNET_GW={SLIRP_GW}\" \
         </dev/null || echo \"VMNET-FAILED target=qemu-slirp mtu=$mtu dir=$dir run=$r qemu\""
    );
    format!(
        r#"{prelude}
mkdir -p /tmp/ip && cp {files} /tmp/ip/
iperf3 -s -B 127.0.0.1 -D
sleep 1
r=1
while [ $r -le {runs} ]; do
  echo "bench: round $r/{runs}"
  for mtu in {mtus}; do
    for dir in up down; do
      flag=""; [ $dir = down ] && flag="-R"
      out=$(timeout {RUN_TIMEOUT_SECS} $M run --cpus {CPUS} --memory {MEMORY_MIB} --mtu $mtu --net-allow host \
        -v /tmp/ip:{GUEST_IPERF_DIR}:ro -- {iperf} -c {MSBVM_HOST} -t {secs} -f m $flag 2>&1)
      line=$(echo "$out" | grep -E 'receiver$' | tail -n 1)
      if [ -n "$line" ]; then echo "VMNET target=msbvm mtu=$mtu dir=$dir run=$r $line"
      else echo "VMNET-FAILED target=msbvm mtu=$mtu dir=$dir run=$r $(echo "$out" | tail -n 1)"; fi
      if [ $mtu = 1500 ]; then
        {slirp}
      fi
    done
  done
  r=$((r+1))
done
echo "bench: done"
"#,
        files = iperf_files.join(" "),
        mtus = MTUS.map(|m| m.to_string()).join(" "),
        iperf = guest_iperf(),
    )
}

/// One iperf3 result: receiver throughput of one run of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// One of [`TARGETS`].
    pub target: String,
    /// One of [`MTUS`].
    pub mtu: u32,
    /// `up` (guest to host) or `down`.
    pub dir: String,
    /// 1-based run.
    pub run: u32,
    /// Receiver throughput in Mbit/s.
    pub mbps: f64,
}

/// The samples on the console's [`RESULT`] lines (`VMNET target=T mtu=M dir=D run=R <iperf3
/// receiver line>`); a line that does not parse is left out.
pub fn parse(console: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(rest) = line.trim().strip_prefix("VMNET ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |key: &str| {
            words
                .iter()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        let mbps = words
            .iter()
            .position(|w| *w == "Mbits/sec")
            .filter(|i| *i > 0)
            .and_then(|i| words[i - 1].parse::<f64>().ok());
        let (Some(target), Some(mtu), Some(dir), Some(run), Some(mbps)) = (
            field("target"),
            field("mtu").and_then(|m| m.parse().ok()),
            field("dir"),
            field("run").and_then(|r| r.parse().ok()),
            mbps,
        ) else {
            continue;
        };
        out.push(Sample {
            target: target.to_string(),
            mtu,
            dir: dir.to_string(),
            run,
            mbps,
        });
    }
    out
}

/// Throughput by run of `target` at `mtu` in `dir`.
fn by_run(samples: &[Sample], target: &str, mtu: u32, dir: &str) -> BTreeMap<u32, f64> {
    samples
        .iter()
        .filter(|s| s.target == target && s.mtu == mtu && s.dir == dir)
        .map(|s| (s.run, s.mbps))
        .collect()
}

/// msbvm's throughput over `peer`'s, for each run both measured.
pub fn ratios(samples: &[Sample], peer: &str, mtu: u32, dir: &str) -> Vec<f64> {
    let ours = by_run(samples, "msbvm", mtu, dir);
    let theirs = by_run(samples, peer, mtu, dir);
    ours.iter()
        .filter_map(|(run, a)| theirs.get(run).filter(|b| **b > 0.0).map(|b| a / b))
        .collect()
}

/// The table: one row per MTU and direction, each target's median Mbit/s with its range, and
/// msbvm's ratio to slirp (median of the run-by-run ratios, with their range; above 1: msbvm
/// faster).
pub fn table(samples: &[Sample]) -> String {
    let ratio = |v: Vec<f64>| match spread(&v, 2) {
        s if s == "-" => s,
        s => format!("x{s}"),
    };
    let mut s = format!(
        "{:<6} {:<5} {:>20} {:>20} {:>22}\n",
        "MTU", "dir", "msbvm Mbit/s", "qemu-slirp Mbit/s", "msbvm/slirp"
    );
    for mtu in MTUS {
        for dir in ["up", "down"] {
            let values = |t: &str| {
                by_run(samples, t, mtu, dir)
                    .into_values()
                    .collect::<Vec<_>>()
            };
            let _ = writeln!(
                s,
                "{:<6} {:<5} {:>20} {:>20} {:>22}",
                mtu,
                dir,
                spread(&values("msbvm"), 0),
                spread(&values("qemu-slirp"), 0),
                ratio(ratios(samples, "qemu-slirp", mtu, dir)),
            );
        }
    }
    s
}

/// How many samples a complete run of `runs` rounds gives: msbvm at every MTU and direction,
/// slirp at MTU 1500 only.
pub fn expected_samples(runs: u32) -> usize {
    runs as usize * (MTUS.len() * 2 + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = "\
VMNET target=msbvm mtu=1500 dir=up run=1 [  5]   0.00-5.00   sec   612 MBytes  1027 Mbits/sec                  receiver
VMNET target=qemu-slirp mtu=1500 dir=up run=1 [  5]   0.00-5.04   sec   300 MBytes  500.5 Mbits/sec                  receiver
VMNET target=msbvm mtu=1500 dir=up run=2 [  5]   0.00-5.00   sec   612 MBytes  900 Mbits/sec                  receiver
VMNET target=qemu-slirp mtu=1500 dir=up run=2 [  5]   0.00-5.04   sec   300 MBytes  600 Mbits/sec                  receiver
VMNET target=msbvm mtu=1500 dir=up run=3 [  5]   0.00-5.00   sec   612 MBytes  800 Mbits/sec                  receiver
VMNET-FAILED target=qemu-slirp mtu=1500 dir=up run=3 iperf3: error - unable to connect
VMNET target=msbvm mtu=1500 dir=up run=4 garbage
";

    #[test]
    fn result_lines_become_samples_and_failures_are_left_out() {
        let samples = parse(LINES);
        assert_eq!(samples.len(), 5);
        assert_eq!(
            samples[1],
            Sample {
                target: "qemu-slirp".into(),
                mtu: 1500,
                dir: "up".into(),
                run: 1,
                mbps: 500.5
            }
        );
    }

    #[test]
    fn ratios_pair_runs_and_skip_runs_the_peer_missed() {
        let samples = parse(LINES);
        let slirp = ratios(&samples, "qemu-slirp", 1500, "up");
        assert_eq!(slirp.len(), 2);
        assert!((slirp[0] - 1027.0 / 500.5).abs() < 1e-9);
        assert!((slirp[1] - 1.5).abs() < 1e-9);
        let t = table(&samples);
        assert!(t.contains("x1.78 [1.50-2.05]"), "{t}");
        assert_eq!(t.lines().count(), 1 + MTUS.len() * 2, "{t}");
    }

    #[test]
    fn the_script_takes_turns_and_runs_slirp_at_1500_only() {
        let s = l1_script("PRELUDE", 2, 5, &["/usr/bin/iperf3".into()]);
        let msbvm = s.find("$M run").unwrap();
        let slirp = s.find("-netdev user").unwrap();
        assert!(msbvm < slirp, "msbvm, then slirp, in each turn");
        assert!(
            s.contains("if [ $mtu = 1500 ]; then\n        timeout"),
            "slirp only at 1500"
        );
        assert!(s.contains("while [ $r -le 2 ]"));
        assert_eq!(expected_samples(2), 2 * (4 + 2));
    }

    #[test]
    fn the_guest_init_configures_the_link_and_reports_every_outcome() {
        assert!(QEMU_INIT.contains("ip route add default via \"$VMNET_GW\""));
        assert!(QEMU_INIT.contains("VMNET target=") && QEMU_INIT.contains("VMNET-FAILED"));
        assert!(QEMU_INIT.trim_end().ends_with("reboot -f"));
    }
}
