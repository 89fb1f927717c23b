//! The virtio-fs comparison (issue 15 §3): the same guest workload on msbvm's virtio-fs and on
//! virtiofsd under QEMU's microvm, in one L1 machine, same guest kernel, 1 vCPU and 256 MiB.
//!
//! [`WORKLOAD`] is the guest-side shell script both guests run on their share; it prints one
//! [`RESULT`] line per run with `/proc/uptime` readings around each step, which
//! [`parse_spans`] turns back into [`Span`]s and [`table`] into medians with their range and
//! msbvm's ratio to virtiofsd, run by run. [`qemu_initramfs`] is the QEMU guest's initramfs
//! (busybox and an `/init` that mounts the share and runs the workload), [`tree_tar`] the
//! 3000-file tree both untar, and [`l1_script`] the L1 side that takes turns between them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use msbvm_tests::artifacts::{L1_KERNEL, L1_MSBVM};
use msbvm_tests::report::field;
use msbvm_tests::NestedVmBuilder;

pub use crate::boot_runs::host_qemu;
use crate::boot_runs::{add_qemu, busybox_initramfs, L1_QEMU};
use crate::{median, spread};

/// Marker of the workload's result line (and, with a suffix, of its other lines).
pub const RESULT: &str = "VFSBENCH";
/// Guest vCPUs on both sides.
pub const CPUS: u32 = 1;
/// Guest memory in MiB on both sides.
pub const MEMORY_MIB: u32 = 256;
/// The virtio-fs tag the QEMU guest mounts.
pub const TAG: &str = "bench";
/// virtiofsd's cache mode: its default, named so the record says it. `auto` is close-to-open
/// consistency with 1 s entry and attribute timeouts, which is what msbvm's passthrough
/// volume does too (1 s timeouts, no writeback cache, no DAX).
pub const VIRTIOFSD_CACHE: &str = "auto";
/// The tree both guests untar: directories, files in each, bytes per file.
pub const TREE: (u32, u32, usize) = (30, 100, 1024);
/// Environment variable naming a virtiofsd binary to use instead of the bench cache's.
pub const VIRTIOFSD_ENV: &str = "MSBVM_BENCH_VIRTIOFSD";

/// Where things live in L1.
const L1_VIRTIOFSD: &str = "/bin/virtiofsd";
const L1_WORK: &str = "/bench/work.sh";
const L1_TAR: &str = "/bench/tree.tar";
const L1_QEMU_INITRD: &str = "/bench/qemu-initrd.cpio";
/// Per-run limit in L1: a wedged guest becomes a failed run, not a stuck benchmark.
const RUN_TIMEOUT_SECS: u32 = 900;

/// The steps of the workload in the order it runs them: key in the result line, and the
/// row's label (`{files}` is replaced by the file count).
pub const STEPS: [(&str, &str); 8] = [
    ("create", "create {files} empty files"),
    ("stat", "ls -l of them (stat)"),
    ("unlink", "unlink them"),
    ("write", "write 64 MiB + fsync"),
    ("read", "cold read of it"),
    ("untar", "untar 3000 files"),
    ("find", "cold find over them"),
    ("rmtree", "remove the tree by name"),
];

/// The targets, in the table's order: msbvm's passthrough volume, virtiofsd (the peer of
/// the volume: both share a plain L1 directory), msbvm's image root (layered backend, no peer).
pub const TARGETS: [&str; 3] = ["msbvm-volume", "virtiofsd", "msbvm-image-root"];

/// The guest-side workload: `sh -c "$WORKLOAD" work DIR FILES TARGET RUN TAR`. DIR is made
/// afresh on the share and removed at the end; TAR (on the share) is first copied to the
/// guest's own /tmp, outside the timing, so that the untar reads from memory and writes
/// through virtio-fs only. The page cache is dropped before the cold read and the cold find,
/// outside their spans. The tree is removed by name from find's list (files, then
/// directories) rather than by `rm -rf`: on L1's kernel (6.1) a tmpfs directory's readdir
/// offsets shift under unlinks, so a FUSE readdir that resumes at an offset while `rm -rf`
/// deletes skips entries and the rmdir fails, with either server. A failed step is reported
/// on a `VFSBENCH-FAILED` line and in `failed=`, and the rest still runs. `/proc/uptime`
/// ticks in 10 ms.
pub const WORKLOAD: &str = r#"D=$1; N=$2; T=$3; R=$4; TAR=$5; bad=""
up() { cut -d' ' -f1 /proc/uptime; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fail() { echo "VFSBENCH-FAILED target=$T run=$R step=$1"; bad="$bad,$1"; }
rm -rf $D; mkdir -p $D/m $D/u || fail mkdir
cp $TAR /tmp/tree.tar || fail copy-tar
cd $D/m || fail cd
drop
t0=$(up); i=0; while [ $i -lt $N ]; do : > f$i || fail create; i=$((i+1)); done
t1=$(up); ls -l > /dev/null || fail stat
t2=$(up); rm -f f* || fail unlink
t3=$(up); dd if=/dev/zero of=$D/big bs=1048576 count=64 conv=fsync 2>/dev/null || fail write
t4=$(up); drop
t5=$(up); dd if=$D/big of=/dev/null bs=1048576 2>/dev/null || fail read
t6=$(up); rm -f $D/big; drop
t7=$(up); tar -xf /tmp/tree.tar -C $D/u || fail untar
t8=$(up); drop
t9=$(up); find $D/u > /tmp/list || fail find
t10=$(up); grep '/f[0-9]*$' /tmp/list | xargs rm -f && rmdir $D/u/d* $D/u || fail rmtree
t11=$(up)
cd /; rm -rf $D /tmp/tree.tar
echo "VFSBENCH target=$T run=$R create=$t0:$t1 stat=$t1:$t2 unlink=$t2:$t3 write=$t3:$t4 read=$t5:$t6 untar=$t7:$t8 find=$t9:$t10 rmtree=$t10:$t11 found=$(wc -l < /tmp/list) failed=${bad:-,}"
[ -z "$bad" ]
"#;

/// The rest of the QEMU guest's `/init` (after [`busybox_initramfs`]'s mounts): mounts the
/// share by its tag, runs the workload on it with the run number and file count from the
/// kernel command line (`BENCH_RUN=`, `BENCH_FILES=` reach init as environment), and ends
/// with a reboot: the project kernel has no ACPI, so a power-off would only halt, while a
/// reboot by triple fault (`reboot=t`) makes QEMU exit under `-no-reboot`.
const QEMU_INIT: &str = r#"if mount -t virtiofs @TAG@ /mnt; then
  sh /work.sh /mnt/bench "$BENCH_FILES" virtiofsd "$BENCH_RUN" /mnt/tree.tar
  umount /mnt
else
  echo "VFSBENCH-FAILED target=virtiofsd run=$BENCH_RUN step=mount"
fi
reboot -f
"#;

/// The QEMU guest's initramfs (uncompressed cpio): the static `busybox`, `/init` and the
/// workload at `/work.sh`.
pub fn qemu_initramfs(busybox: &Path) -> Result<Vec<u8>, String> {
    let mut cpio = busybox_initramfs(busybox, &["/mnt"], &QEMU_INIT.replace("@TAG@", TAG))?;
    cpio.file("/work.sh", 0o644, WORKLOAD);
    Ok(cpio.to_bytes())
}

/// A tar of [`TREE`]: `d00/f000` ... (directories first, then their files, as `tar c` of a
/// tree would), each file distinct bytes of the given size.
pub fn tree_tar() -> Vec<u8> {
    let (dirs, files, size) = TREE;
    let mut b = tar::Builder::new(Vec::new());
    let header = |path: &str, kind: tar::EntryType, mode: u32, len: usize| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(len as u64);
        h.set_mtime(0);
        let _ = h.set_path(path);
        h.set_cksum();
        h
    };
    for d in 0..dirs {
        let dir = format!("d{d:02}/");
        let h = header(&dir, tar::EntryType::Directory, 0o755, 0);
        let _ = b.append(&h, std::io::empty());
        for f in 0..files {
            let path = format!("{dir}f{f:03}");
            let data: Vec<u8> = path.bytes().cycle().take(size).collect();
            let h = header(&path, tar::EntryType::Regular, 0o644, size);
            let _ = b.append(&h, data.as_slice());
        }
    }
    // Appending to a Vec cannot fail.
    b.into_inner().unwrap_or_default()
}

/// The bench cache's virtiofsd, where `scripts/bench-deps` installs it:
/// `$XDG_CACHE_HOME/msbvm/bench/virtiofsd/bin/virtiofsd` (or under `~/.cache`).
pub fn cached_virtiofsd() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("msbvm-cache"));
    base.join("msbvm/bench/virtiofsd/bin/virtiofsd")
}

/// virtiofsd to run: `$MSBVM_BENCH_VIRTIOFSD`, else the bench cache's; the error is the
/// one-line reason the peer is left out.
pub fn find_virtiofsd() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(VIRTIOFSD_ENV).map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{VIRTIOFSD_ENV}={} is not a file", p.display()))
        };
    }
    let cached = cached_virtiofsd();
    if cached.is_file() {
        return Ok(cached);
    }
    Err(format!(
        "virtiofsd not installed at {} (scripts/bench-deps builds it; or set {VIRTIOFSD_ENV})",
        cached.display()
    ))
}

/// `vm` with the peer's side added: QEMU with its libraries and microvm firmware, virtiofsd
/// with its libraries, and the QEMU guest's initramfs.
pub fn add_peer(
    vm: NestedVmBuilder,
    qemu: &Path,
    virtiofsd: &Path,
    initrd: Vec<u8>,
) -> NestedVmBuilder {
    add_qemu(vm, qemu)
        .add_program(virtiofsd, L1_VIRTIOFSD)
        .add_bytes(L1_QEMU_INITRD, initrd, 0o644)
}

/// `vm` with the workload and the tree's tar.
pub fn add_workload(vm: NestedVmBuilder) -> NestedVmBuilder {
    vm.add_bytes(L1_WORK, WORKLOAD, 0o644)
        .add_bytes(L1_TAR, tree_tar(), 0o644)
}

/// The L1 script: `runs` rounds of msbvm's volume, virtiofsd (when `peer`) and msbvm's image
/// root, one after the other, on a share in L1's tmpfs. Before the first round it finds the
/// strongest virtiofsd sandbox that starts in L1 (namespace, then chroot, then none) and
/// says which, with why the stronger ones did not, on a `VFSBENCH-SANDBOX` line.
pub fn l1_script(prelude: &str, runs: u32, files: u32, peer: bool) -> String {
    let cmdline = "console=ttyS0 reboot=t panic=-1 quiet";
    let qemu = format!(
        "timeout {RUN_TIMEOUT_SECS} {L1_QEMU} -M microvm,acpi=off,memory-backend=mem \
         -enable-kvm -cpu host -smp {CPUS} -m {MEMORY_MIB}M \
         -object memory-backend-memfd,id=mem,size={MEMORY_MIB}M,share=on \
         -chardev socket,id=vfs,path=/tmp/vfs.sock \
         -device vhost-user-fs-device,chardev=vfs,tag={TAG},queue-size=1024 \
         -nodefaults -no-user-config -nographic -no-reboot -serial stdio \
         -kernel {L1_KERNEL} -initrd {L1_QEMU_INITRD} \
         -append \"{cmdline} BENCH_RUN=$r BENCH_FILES={files}\" </dev/null"
    );
    let msbvm = format!(
        "timeout {RUN_TIMEOUT_SECS} {L1_MSBVM} run --cpus {CPUS} --memory {MEMORY_MIB} \
         -v /tmp/share:/vol -- sh -c \"$WORK\" work"
    );
    let mut s = format!(
        r#"{prelude}
mkdir -p /tmp/share && cp {L1_TAR} /tmp/share/tree.tar
WORK=$(cat {L1_WORK})
"#
    );
    if peer {
        let _ = write!(
            s,
            r#"vfsd_start() {{
  rm -f /tmp/vfs.sock
  {L1_VIRTIOFSD} --socket-path /tmp/vfs.sock --shared-dir /tmp/share --cache {VIRTIOFSD_CACHE} --sandbox $1 >/tmp/vfsd.log 2>&1 &
  vp=$!; i=0
  while [ ! -S /tmp/vfs.sock ] && [ $i -lt 100 ] && kill -0 $vp 2>/dev/null; do sleep 0.1; i=$((i+1)); done
}}
why=""
SANDBOX=""
for mode in namespace chroot none; do
  vfsd_start $mode; sleep 2
  if kill -0 $vp 2>/dev/null && [ -S /tmp/vfs.sock ]; then
    kill $vp; wait $vp 2>/dev/null; SANDBOX=$mode; break
  fi
  wait $vp 2>/dev/null
  why="$why $mode: $(grep -v '^$' /tmp/vfsd.log | tail -n 1 | tr -s ' ');"
done
echo "VFSBENCH-SANDBOX mode=${{SANDBOX:-failed}} version=$({L1_VIRTIOFSD} --version | sed -n 1p | tr ' ' '_') why=${{why:-none}}"
"#
        );
    }
    let _ = write!(s, "r=1\nwhile [ $r -le {runs} ]; do\n");
    let _ = writeln!(
        s,
        "  echo \"bench: round $r/{runs}\"\n  \
         {msbvm} /vol/bench {files} msbvm-volume $r /vol/tree.tar || echo \"VFSBENCH-FAILED target=msbvm-volume run=$r step=run\""
    );
    if peer {
        let _ = writeln!(
            s,
            "  if [ -n \"$SANDBOX\" ]; then\n    \
             vfsd_start $SANDBOX\n    \
             {qemu} || echo \"VFSBENCH-FAILED target=virtiofsd run=$r step=qemu\"\n    \
             wait $vp || {{ echo \"VFSBENCH-FAILED target=virtiofsd run=$r step=virtiofsd\"; tail -n 5 /tmp/vfsd.log; }}\n  \
             fi"
        );
    }
    let _ = writeln!(
        s,
        "  {msbvm} /root/vfsbench {files} msbvm-image-root $r /vol/tree.tar || echo \"VFSBENCH-FAILED target=msbvm-image-root run=$r step=run\"\n  \
         r=$((r+1))\ndone\necho \"bench: done\""
    );
    s
}

/// One timed step of one run on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// One of [`TARGETS`].
    pub target: String,
    /// One of the keys of [`STEPS`].
    pub step: String,
    /// 1-based run.
    pub run: u32,
    /// Guest time the step took, in ms.
    pub ms: f64,
}

/// The spans on the console's [`RESULT`] lines (`VFSBENCH target=T run=R step=A:B ...
/// failed=,S,...`, A and B `/proc/uptime` readings); a step named in `failed`, and a line or
/// step that does not parse, is left out.
pub fn parse_spans(console: &str) -> Vec<Span> {
    let marker = format!("{RESULT} ");
    let mut spans = Vec::new();
    for line in console.lines().filter(|l| l.contains(&marker)) {
        let get = |k: &str| field(line, &marker, k);
        let (Some(target), Some(run)) = (get("target"), get("run").and_then(|r| r.parse().ok()))
        else {
            continue;
        };
        let failed: Vec<&str> = get("failed").unwrap_or("").split(',').collect();
        for (step, _) in STEPS.iter().filter(|(s, _)| !failed.contains(s)) {
            let Some((a, b)) = get(step).and_then(|v| v.split_once(':')) else {
                continue;
            };
            if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>()) {
                spans.push(Span {
                    target: target.to_string(),
                    step: step.to_string(),
                    run,
                    // Readings have two decimals: whole ms are exact, and drop float noise.
                    ms: ((b - a) * 1000.0).round(),
                });
            }
        }
    }
    spans
}

/// The values of one target and step, by run.
fn by_run(spans: &[Span], target: &str, step: &str) -> BTreeMap<u32, f64> {
    spans
        .iter()
        .filter(|s| s.target == target && s.step == step)
        .map(|s| (s.run, s.ms))
        .collect()
}

/// msbvm's volume over virtiofsd for one step, run by run (a zero reading of virtiofsd, under
/// the 10 ms tick, gives no ratio).
pub fn ratios(spans: &[Span], step: &str) -> Vec<f64> {
    let peer = by_run(spans, "virtiofsd", step);
    by_run(spans, "msbvm-volume", step)
        .into_iter()
        .filter_map(|(run, ms)| peer.get(&run).filter(|p| **p > 0.0).map(|p| ms / p))
        .collect()
}

/// The result table: per step, each target's ms as median [min-max], and msbvm volume /
/// virtiofsd as the median [min-max] of the ratios of runs made one after the other.
pub fn table(spans: &[Span], files: u32) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<26} {:>22} {:>22} {:>24} {:>22}",
        "step (guest ms)", "msbvm volume", "virtiofsd", "msbvm/virtiofsd", "msbvm image root"
    );
    for (step, label) in STEPS {
        let values =
            |target: &str| -> Vec<f64> { by_run(spans, target, step).into_values().collect() };
        let _ = writeln!(
            t,
            "{:<26} {:>22} {:>22} {:>24} {:>22}",
            label.replace("{files}", &files.to_string()),
            spread(&values("msbvm-volume"), 0),
            spread(&values("virtiofsd"), 0),
            spread(&ratios(spans, step), 2),
            spread(&values("msbvm-image-root"), 0),
        );
    }
    t
}

/// The JSON record: setup, every span, and per step each target's median and the median
/// ratio.
pub fn record(spans: &[Span], files: u32, runs: u32, peer: serde_json::Value) -> serde_json::Value {
    let summary: Vec<serde_json::Value> = STEPS
        .iter()
        .map(|(step, _)| {
            let med = |target: &str| median(by_run(spans, target, step).into_values().collect());
            serde_json::json!({
                "step": step,
                "median_ms": TARGETS.iter().map(|t| (t.to_string(), serde_json::json!(med(t))))
                    .collect::<serde_json::Map<_, _>>(),
                "median_ratio_volume_to_virtiofsd": median(ratios(spans, step)),
            })
        })
        .collect();
    serde_json::json!({
        "benchmark": "virtiofs",
        "runs": runs,
        "files": files,
        "tree": {"dirs": TREE.0, "files_per_dir": TREE.1, "file_bytes": TREE.2},
        "cpus": CPUS,
        "memory_mib": MEMORY_MIB,
        "virtiofsd": peer,
        "summary": summary,
        "samples": spans.iter().map(|s| serde_json::json!({
            "target": s.target, "step": s.step, "run": s.run, "ms": s.ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_become_spans_and_ratios_pair_runs() {
        let console = "noise\n\
            VFSBENCH target=msbvm-volume run=1 create=1.00:2.50 stat=2.50:2.60 found=3031\n\
            [  3.1] VFSBENCH target=virtiofsd run=1 create=10.00:13.00 stat=x:1\n\
            VFSBENCH target=msbvm-volume run=2 create=5.00:6.00 stat=1:2 failed=,stat\n\
            VFSBENCH target=virtiofsd run=2 create=7.00:9.00\n\
            VFSBENCH-FAILED target=virtiofsd run=3 step=mount\n";
        let spans = parse_spans(console);
        assert_eq!(spans.len(), 5, "{spans:?}");
        assert_eq!(
            spans[0],
            Span {
                target: "msbvm-volume".into(),
                step: "create".into(),
                run: 1,
                ms: 1500.0,
            }
        );
        let r = ratios(&spans, "create");
        assert_eq!(r.len(), 2);
        assert!(
            (r[0] - 0.5).abs() < 1e-9 && (r[1] - 0.5).abs() < 1e-9,
            "{r:?}"
        );
        let t = table(&spans, 2000);
        assert!(t.contains("create 2000 empty files"), "{t}");
        assert!(t.contains("0.50 [0.50-0.50]"), "{t}");
    }

    #[test]
    fn tree_tar_holds_the_whole_tree() {
        let bytes = tree_tar();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let (mut dirs, mut files) = (0, 0);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            match entry.header().entry_type() {
                tar::EntryType::Directory => dirs += 1,
                _ => {
                    assert_eq!(entry.size(), TREE.2 as u64);
                    files += 1;
                }
            }
        }
        assert_eq!((dirs, files), (TREE.0, TREE.0 * TREE.1));
    }

    #[test]
    fn the_script_takes_turns_and_probes_the_sandbox_once() {
        let s = l1_script("PRELUDE", 3, 2000, true);
        let round = s.find("while [ $r -le 3 ]").unwrap();
        assert!(
            s.find("for mode in namespace chroot none").unwrap() < round,
            "{s}"
        );
        let vol = s.find("msbvm-volume $r").unwrap();
        let peer = s.find("vhost-user-fs-device").unwrap();
        let image = s.find("msbvm-image-root $r").unwrap();
        assert!(round < vol && vol < peer && peer < image, "{s}");
        assert!(s.contains("BENCH_RUN=$r BENCH_FILES=2000"), "{s}");
        assert!(!l1_script("", 1, 10, false).contains("virtiofsd --socket-path"));
    }
}
