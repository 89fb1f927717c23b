//! End-to-end snapshot and fork (issue 13 §3), in one L1 boot: a sandbox of the suite's
//! Debian image ([`msbvm_tests::test_image`], for Python) gets files, a "package" unpacked
//! from a tarball, a background HTTP server and a process holding a file it unlinked;
//! `msbvm snapshot create` takes it while it runs; `msbvm fork --count 20` starts 20 forks
//! at once. Every fork sees the files and the running server, its writes stay its own, its
//! kernel RNG, wall clock and MAC address are its own, and exec, files and new network
//! flows work; a fork's process still reads its unlinked file; the source runs on
//! throughout; the idle forks' memory (PSS) is printed. A snapshot of a fork forks with the
//! files of both snapshots and holds the first one; forks still start once the source and
//! its image are removed (the snapshot pins the image's layers), and removing the snapshot
//! frees them; a fork runs on fewer vCPUs than its snapshot's, not on more. Then the
//! errors: resources other than the snapshot's, a missing snapshot, no memory
//! (`ulimit -v`), no disk (a full tmpfs under the sandboxes), a corrupted snapshot: each
//! fails with a message and leaves no sandbox behind.
//!
//! `cargo test -p msbvm-tests --test fork_nested -- --nocapture`.

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, msbvm_l1, prelude, run_scenarios};
use msbvm_tests::test_image::{TestImage, IMAGE_REF};

const L1_TIMEOUT: Duration = Duration::from_secs(1500);
/// Where the image's OCI layout goes in L1 (for `msbvm import`).
const L1_IMAGE: &str = "/e2e-image";
/// Forks started at once.
const FORKS: usize = 20;

const SCRIPT: &str = r#"@PRELUDE@
# Twenty sandboxes restored at once in an emulated L1 that shares its host's cores with
# another suite: readiness may take minutes, which is no failure of the fork.
export MSBVM_READY_TIMEOUT_SECS=300
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -e /etc/group ] || echo 'root:x:0:' > /etc/group
N=@FORKS@
mkdir -p /www && echo host-page > /www/index.html
httpd -f -p 127.0.0.1:8000 -h /www &
# A "package": a tarball of a small tree, unpacked in the guest as pip would.
mkdir -p /e2e/pkg/mypkg && echo 'VALUE = 42' > /e2e/pkg/mypkg/__init__.py
tar -C /e2e/pkg -czf /e2e/pkg.tgz mypkg

$M import @L1_IMAGE@ >/dev/null; check import_rc $?
$M run -d --name src --image @IMAGE@ --net-allow host -v /e2e:/e2e:ro; check run_rc $?
g() { n=$1; shift; $M exec $n -- "$@"; }
g src sh -c 'mkdir -p /srv /opt/site && echo base-file > /srv/hello.txt && tar -C /opt/site -xzf /e2e/pkg.tgz'
check setup_rc $?
g src sh -c 'cd /srv && setsid python3 -m http.server 8080 >/tmp/http.log 2>&1 < /dev/null &'
# A process holding a file it unlinked (a temporary file): on SIGUSR1 it drops the file's
# cached pages and reads it again through its descriptor, so the read reaches virtio-fs.
cat > /e2e/holder.py <<'PY'
import os, signal, time
f = open("/srv/held.tmp", "w+")
f.write("held-data")
f.flush()
os.unlink("/srv/held.tmp")
def dump(*_):
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    f.seek(0)
    try:
        data = f.read()
    except OSError as e:
        data = "error %d" % e.errno
    with open("/srv/held.out", "w") as out:
        out.write(data)
signal.signal(signal.SIGUSR1, dump)
open("/srv/holder.pid", "w").write(str(os.getpid()))
while True:
    time.sleep(3600)
PY
g src sh -c 'setsid python3 /e2e/holder.py >/dev/null 2>&1 < /dev/null &'
i=0; until g src test -s /srv/holder.pid || [ $i -ge 60 ]; do sleep 1; i=$((i+1)); done
held() { g $1 sh -c 'rm -f /srv/held.out; kill -USR1 $(cat /srv/holder.pid); i=0; while [ ! -s /srv/held.out ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; cat /srv/held.out'; }
i=0; until g src python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8080/hello.txt")' 2>/dev/null || [ $i -ge 60 ]; do sleep 1; i=$((i+1)); done
check server_up "$(g src python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:8080/hello.txt").read().decode().strip())')"
# The source's guest clock (CLOCK_BOOTTIME) shows that it runs through the snapshot.
up() { g src cut -d' ' -f1 /proc/uptime; }
$M snapshot create src --tag base; check snapshot_rc $?
check snapshot_listed $($M snapshot ls | grep -c '^base ')
check inspect_source "$($M snapshot inspect base | sed -n 's/.*"source": "\(.*\)".*/\1/p')"
t1=$(up); sleep 2; t2=$(up)
check source_runs_after_snapshot $(awk -v a=$t1 -v b=$t2 'BEGIN { print (b > a + 1) ? "yes" : "no:" a ":" b }')
# A change in the source after the snapshot is not in the forks.
g src sh -c 'echo after > /srv/after.txt'

$M fork base --count $N --name f > /tmp/forks.txt; rc=$?; check fork_rc $rc
check fork_names $(grep -c '^f-' /tmp/forks.txt)

# One shell and one Python exec per fork (execs are slow in the emulated L1), each printing
# `key value` lines.
cat > /e2e/probe.py <<'PY'
import os, sys, urllib.request as u
sys.path.insert(0, "/opt/site")
import mypkg
get = lambda url: u.urlopen(url, timeout=30).read().decode().strip()
print("file", open("/srv/hello.txt").read().strip())
print("pkg", mypkg.VALUE)
print("server", get("http://127.0.0.1:8080/hello.txt"))
print("host", get("http://host.msbvm.internal:8000/"))
print("urandom", os.urandom(32).hex())
print("uuid", open("/proc/sys/kernel/random/uuid").read().strip())
PY
files=0; pkg=0; server=0; host=0; own=0; hostnames=0; clock=0; noafter=0
: > /tmp/uuids; : > /tmp/urandom; : > /tmp/macs
# A probe that does not finish in 180 s shows the fork's logs.
stuck() { echo "--- $1 stuck; runtime.log:"; tail -30 $MSBVM_HOME/sandboxes/$1/runtime.log; echo "--- console.log:"; tail -30 $MSBVM_HOME/sandboxes/$1/console.log; }
for i in $(seq 1 $N); do
  f=f-$i
  timeout 180 $M exec $f -- python3 /e2e/probe.py > /tmp/p 2>&1 || { cat /tmp/p; stuck $f; }
  v() { sed -n "s/^$1 //p" /tmp/p; }
  [ "$(v file)" = base-file ] && files=$((files+1))
  [ "$(v pkg)" = 42 ] && pkg=$((pkg+1))
  [ "$(v server)" = base-file ] && server=$((server+1))
  [ "$(v host)" = host-page ] && host=$((host+1))
  v uuid >> /tmp/uuids; v urandom >> /tmp/urandom
  before=$(date +%s)
  timeout 180 $M exec $f -- sh -c "echo mine-$i > /srv/mine.txt; echo own \$(cat /srv/mine.txt); echo hostname \$(hostname); echo mac \$(cat /sys/class/net/eth0/address); echo date \$(date +%s); test -e /srv/after.txt && echo after yes; true" > /tmp/p 2>&1 || stuck $f
  after=$(date +%s)
  [ "$(v own)" = mine-$i ] && own=$((own+1))
  [ "$(v hostname)" = $f ] && hostnames=$((hostnames+1))
  v mac >> /tmp/macs
  # The guest read its clock while the exec ran: within 1 s of L1's clock over that time.
  t=$(v date)
  if [ "$t" -ge $((before - 1)) ] && [ "$t" -le $((after + 1)) ]; then clock=$((clock+1))
  else echo "clock of $f: $t, L1 read $before before the exec and $after after"; fi
  [ -z "$(v after)" ] && noafter=$((noafter+1))
  echo "probed $f"
done
check forks_see_files $files
check forks_see_package $pkg
check forks_reach_their_server $server
check forks_new_flows $host
check forks_write $own
check forks_hostnames $hostnames
check forks_clock $clock
check forks_miss_later_source_writes $noafter
g src python3 /e2e/probe.py > /tmp/p 2>&1
v uuid >> /tmp/uuids; v urandom >> /tmp/urandom
g src cat /sys/class/net/eth0/address >> /tmp/macs
check macs_distinct "$(grep -c . /tmp/macs) $(sort -u /tmp/macs | wc -l)"
check uuids_distinct $(sort -u /tmp/uuids | wc -l)
check urandom_distinct $(sort -u /tmp/urandom | wc -l)
# Writes stay in their fork: each sees only its own file, the source none.
mine=0; for i in $(seq 1 $N); do [ "$(g f-$i cat /srv/mine.txt)" = mine-$i ] && mine=$((mine+1)); done
check writes_stay_in_their_fork $mine
g src test -e /srv/mine.txt; check source_unchanged_by_forks $?
t3=$(up); check source_ran_throughout $(awk -v a=$t2 -v b=$t3 'BEGIN { print (b > a) ? "yes" : "no:" a ":" b }')
# The unlinked file the source's process held: read through its descriptor in a fork (from
# the copy the snapshot kept), and still in the source.
check unlinked_file_in_fork "$(held f-1)"
check unlinked_file_in_source "$(held src)"
check source_server_after_forks "$(g src python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:8080/hello.txt").read().decode().strip())')"

# Memory of idle forks: the proportional set size of each fork's runtime (the guest's memory
# is mapped from the snapshot file and shared until written), against the source's.
sleep 3
# A fork that died has no process: 0, so that the script goes on to every other check.
pss() { awk '/^Pss:/ {print $2}' /proc/$1/smaps_rollup 2>/dev/null || echo 0; }
pid_of() { grep -o '"pid": *[0-9]*' $MSBVM_HOME/sandboxes/$1/state.json | grep -o '[0-9]*$'; }
total=0; for i in $(seq 1 $N); do total=$((total + $(pss $(pid_of f-$i)))); done
echo "memory: idle fork PSS $((total / N / 1024)) MiB on average over $N forks of a 512 MiB guest; source PSS $(( $(pss $(pid_of src)) / 1024 )) MiB"

# A snapshot of a fork lies on the snapshot the fork came from: its forks see the files of
# both, and the first cannot be removed before it.
$M snapshot create f-1 --tag second >/dev/null; check second_rc $?
$M fork second --name grand >/dev/null; check grand_rc $?
check grand_files "$(echo $(g grand cat /srv/hello.txt /srv/mine.txt))"
$M snapshot rm base 2>/tmp/e0; check base_kept_under_second $(nz $?)
check base_kept_says "$(grep -c 'remove second first' /tmp/e0)"
$M rm grand >/dev/null; $M snapshot rm second >/dev/null; check second_removed $?

# Forks of a snapshot whose source and image are gone (the snapshot pins the image's
# layers), and a single fork with its own name (restore).
$M rm src >/dev/null; check source_removed $?
$M rmi @IMAGE@ >/dev/null; check image_removed $?
$M fork base --name solo >/dev/null; check solo_rc $?
check solo_files "$(g solo cat /srv/hello.txt)"
$M rm $(cat /tmp/forks.txt) solo >/dev/null; check forks_removed $?

# Errors: other resources, a missing snapshot; no memory, no disk; a corrupted snapshot.
# Each fails with a message and leaves no sandbox behind.
$M fork base --name big --memory 999 2>/tmp/e1; check memory_override_refused $(nz $?)
$M fork nosuch 2>/tmp/e2; check missing_refused $(nz $?)
(ulimit -v 400000; $M fork base --name oom 2>/tmp/e3); check out_of_memory_fails $(nz $?)
mkdir -p $MSBVM_HOME/sandboxes && mount -t tmpfs -o size=256k tmpfs $MSBVM_HOME/sandboxes
dd if=/dev/zero of=$MSBVM_HOME/sandboxes/.fill bs=4k 2>/dev/null
$M fork base --name nodisk 2>/tmp/e4; check out_of_disk_fails $(nz $?)
rm -f $MSBVM_HOME/sandboxes/.fill
check out_of_disk_left "$(ls -A $MSBVM_HOME/sandboxes | wc -l)"
umount $MSBVM_HOME/sandboxes
printf 'garbage' | dd of=$MSBVM_HOME/snapshots/base/vm/vm.state bs=1 seek=40 conv=notrunc 2>/dev/null
$M fork base --name broken 2>/tmp/e5; check corrupt_refused $(nz $?)
for e in 1 2 3 4 5; do echo "error $e: $(cat /tmp/e$e)"; done
check memory_override_says "$(grep -c 'has 512 MiB of memory' /tmp/e1)"
check missing_says "$(grep -c 'no snapshot named' /tmp/e2)"
check corrupt_says "$(some $(grep -c 'corrupt' /tmp/e5))"
check nothing_left "$($M ls | grep -c -e broken -e big -e oom -e nodisk)"
$M snapshot rm base >/dev/null; check snapshot_removed $?
check snapshots_empty "$($M snapshot ls | grep -vc '^NAME')"
# With the image and the snapshot gone, nothing pins the layers any more.
check layers_collected "$(ls $MSBVM_HOME/images/layers | wc -l)"

# A fork may run on fewer vCPUs than its snapshot's machine has (the others go offline in
# the guest), never on more.
$M run -d --name two --cpus 2 >/dev/null; check two_rc $?
$M snapshot create two --tag two >/dev/null; check two_snapshot_rc $?
$M fork two --name one --cpus 1 >/dev/null; check fewer_cpus_rc $?
check fewer_cpus_nproc "$(g one nproc)"
check fewer_cpus_online "$(g one cat /sys/devices/system/cpu/online)"
check source_cpus_online "$(g two cat /sys/devices/system/cpu/online)"
$M fork two --name three --cpus 3 2>/tmp/e6; check more_cpus_refused $(nz $?)
check more_cpus_says "$(grep -c 'runs on 1 to 2' /tmp/e6)"
$M rm one two >/dev/null; $M snapshot rm two >/dev/null; check two_removed $?
check done yes
"#;

#[test]
fn a_running_sandbox_is_snapshotted_and_forked_twenty_times() {
    let Some(vm) = msbvm_l1() else {
        return;
    };
    let image = TestImage::prepare().unwrap_or_else(|e| panic!("{e}"));
    let vm = vm
        // One L1 vCPU, as every other suite: with two, QEMU's emulated SVM faulted now and
        // then under twenty restored guests (an L1 kernel stack overflow in page-fault
        // handling on a vCPU thread in one CI run, a fork's guest triple-faulting with no
        // kernel message in a local one), as the soft lockups of NestedVmBuilder showed.
        .memory_mib(4096)
        .timeout(L1_TIMEOUT)
        .add_file(&image.layout, L1_IMAGE);
    let script = SCRIPT
        .replace("@PRELUDE@", &prelude())
        .replace("@L1_IMAGE@", L1_IMAGE)
        .replace("@IMAGE@", IMAGE_REF)
        .replace("@FORKS@", &FORKS.to_string());
    let Some(out) = run_scenarios(vm, &script) else {
        return;
    };
    let n = FORKS.to_string();
    let all = (FORKS + 1).to_string();
    assert_checks(
        &out.console,
        &[
            ("import_rc", "0"),
            ("run_rc", "0"),
            ("setup_rc", "0"),
            ("server_up", "base-file"),
            ("snapshot_rc", "0"),
            ("snapshot_listed", "1"),
            ("inspect_source", "src"),
            ("source_runs_after_snapshot", "yes"),
            ("fork_rc", "0"),
            ("fork_names", &n),
            ("forks_see_files", &n),
            ("forks_see_package", &n),
            ("forks_reach_their_server", &n),
            ("forks_new_flows", &n),
            ("forks_write", &n),
            ("forks_hostnames", &n),
            ("forks_clock", &n),
            ("forks_miss_later_source_writes", &n),
            ("macs_distinct", &format!("{all} {all}")),
            ("uuids_distinct", &all),
            ("urandom_distinct", &all),
            ("writes_stay_in_their_fork", &n),
            ("source_unchanged_by_forks", "1"),
            ("source_ran_throughout", "yes"),
            ("unlinked_file_in_fork", "held-data"),
            ("unlinked_file_in_source", "held-data"),
            ("source_server_after_forks", "base-file"),
            ("second_rc", "0"),
            ("grand_rc", "0"),
            ("grand_files", "base-file mine-1"),
            ("base_kept_under_second", "failed"),
            ("base_kept_says", "1"),
            ("second_removed", "0"),
            ("source_removed", "0"),
            ("image_removed", "0"),
            ("solo_rc", "0"),
            ("solo_files", "base-file"),
            ("forks_removed", "0"),
            ("memory_override_refused", "failed"),
            ("memory_override_says", "1"),
            ("missing_refused", "failed"),
            ("missing_says", "1"),
            ("out_of_memory_fails", "failed"),
            ("out_of_disk_fails", "failed"),
            ("out_of_disk_left", "0"),
            ("corrupt_refused", "failed"),
            ("corrupt_says", "yes"),
            ("nothing_left", "0"),
            ("snapshot_removed", "0"),
            ("snapshots_empty", "0"),
            ("layers_collected", "0"),
            ("two_rc", "0"),
            ("two_snapshot_rc", "0"),
            ("fewer_cpus_rc", "0"),
            ("fewer_cpus_nproc", "1"),
            ("fewer_cpus_online", "0"),
            ("source_cpus_online", "0-1"),
            ("more_cpus_refused", "failed"),
            ("more_cpus_says", "1"),
            ("two_removed", "0"),
            ("done", "yes"),
        ],
    );
}
