//! End-to-end sandboxes: the `msbvm` CLI (SDK, runtime process, VMM with
//! virtio-vsock, guest kernel, `msbvm-agent`) inside an L1 machine with nested
//! KVM (see `msbvm_tests::nested`).
//!
//! One L1 run executes a shell script of scenarios; each prints `CHECK <name>
//! <value>` lines that the test then asserts on, so one failure still shows
//! every other result. Timeouts only turn hangs into failures.

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, msbvm_l1, prelude, run_scenarios};

const L1_TIMEOUT: Duration = Duration::from_secs(900);

/// The scenarios, on the embedded default image.
fn script() -> String {
    format!(
        r#"{prelude}

out=$($M run -- echo hello); check echo_rc $?; check echo_out "$out"
$M run -- sh -c 'exit 3'; check exit3_rc $?

$M run -d --name box; check detach_rc $?
check ls_sees_box $($M ls --json | grep -c '"box"')
out=$($M exec box -- cat /proc/sys/kernel/hostname); check hostname "$out"
# The guest kernel names tasks stuck for a minute on the console (see the diagnostics below).
out=$($M exec box -- cat /proc/sys/kernel/hung_task_timeout_secs); check hung_task_secs "$out"

# The runtime confined itself: user 65534 (it runs as root here), no new privileges, seccomp
# filters on its main thread, and it said so in its log.
pid=$(grep -o '"pid": *[0-9]*' /tmp/msbvm/sandboxes/box/state.json | grep -o '[0-9]*$')
check runtime_uid "$(awk '/^Uid:/ {{print $2 $3 $4 $5}}' /proc/$pid/status)"
check runtime_nnp "$(awk '/^NoNewPrivs:/ {{print $2}}' /proc/$pid/status)"
check runtime_seccomp "$(awk '/^Seccomp:/ {{print $2}}' /proc/$pid/status)"
f=$(grep -l '^Seccomp:.*2' /proc/$pid/task/*/status | wc -l); t=$(ls /proc/$pid/task | wc -l)
check runtime_threads_filtered $([ $f -eq $t ] && echo all || echo "$f/$t")
check runtime_confined $(grep -c 'confinement planned seccomp=true' /tmp/msbvm/sandboxes/box/runtime.log)
grep -o 'landlock_abi=[0-9]*' /tmp/msbvm/sandboxes/box/runtime.log

head -c 1048576 /dev/urandom > /tmp/in
want=$(md5sum < /tmp/in | cut -d' ' -f1)
got=$($M exec box -- cat < /tmp/in | md5sum | cut -d' ' -f1)
check stdin_roundtrip $([ "$want" = "$got" ] && echo same || echo "differs:$want:$got")

want=$(yes 0123456789abcdef | head -c 10485760 | md5sum | cut -d' ' -f1)
got=$($M exec box -- sh -c 'yes 0123456789abcdef | head -c 10485760' | md5sum | cut -d' ' -f1)
check output_10mib $([ "$want" = "$got" ] && echo same || echo "differs:$want:$got")

out=$($M exec box -- sh -c 'echo to-err >&2' 2>/dev/null); check stderr_not_in_stdout "[$out]"
out=$($M exec box -- sh -c 'echo to-err >&2' 2>&1 >/dev/null); check stderr_out "$out"

i=1; while [ $i -le 20 ]; do ($M exec box -- sh -c "echo out-$i" > /tmp/c$i 2>&1) & i=$((i+1)); done; wait
n=$(cat /tmp/c* | grep -c '^out-'); check concurrent_20 $n
if [ "$n" != 20 ]; then
  for f in /tmp/c*; do grep -q '^out-' $f || echo "$f: $(head -c 300 $f)"; done
  # Where the guest's processes are (state and kernel wait channel), and the runtime's view.
  $M exec --timeout 30 box -- sh -c 'for p in /proc/[0-9]*; do echo "guest: ${{p#/proc/}} $(cut -d" " -f3 $p/stat) $(cat $p/wchan) $(cat $p/comm)"; done' 2>&1 | grep -v ' S do_wait \| I \| S 0 ' | head -n 60
  tail -n 40 /tmp/msbvm/sandboxes/box/runtime.log
  tail -n 40 /tmp/msbvm/sandboxes/box/console.log
fi

start=$(date +%s); $M exec --timeout 2 box -- sleep 100; rc=$?; took=$(( $(date +%s) - start ))
check timeout_rc $rc; check timeout_fast $([ $took -lt 30 ] && echo yes || echo "no:$took")

out=$(printf 'tty\nstty size\nexit 7\n' | $M exec -t box -- sh 2>&1); rc=$?
check pty_rc $rc; check pty_dev $(echo "$out" | grep -c '^/dev/pts/')

out=$($M exec -e FOO=bar -w /tmp box -- sh -c 'echo $FOO $(pwd)'); check env_cwd "$out"

# Ctrl-C typed into a PTY session interrupts the foreground process, not the session.
start=$(date +%s)
out=$( (printf 'sleep 100\n'; sleep 3; printf '\003'; sleep 2; printf 'echo after-int\nexit 5\n') | $M exec -t box -- sh 2>&1); rc=$?
took=$(( $(date +%s) - start ))
check ctrl_c_rc $rc; check ctrl_c_fast $([ $took -lt 60 ] && echo yes || echo "no:$took")
check ctrl_c_after $(echo "$out" | grep -c '^after-int')

# Free page reporting: 200 MiB the guest fills and frees again leave the host (the runtime's
# resident memory) within seconds. How long it took is printed, not asserted.
rss() {{ awk '/^VmRSS:/ {{print int($2 / 1024)}}' /proc/$pid/status; }}
$M exec box -- sh -c 'mkdir -p /run/fill && mount -t tmpfs -o size=300m fill /run/fill && dd if=/dev/zero of=/run/fill/x bs=1M count=200 2>/dev/null'
check fill_rc $?
full=$(rss)
$M exec box -- sh -c 'rm /run/fill/x && umount /run/fill'
n=0; while [ $n -lt 120 ] && [ $((full - $(rss))) -lt 150 ]; do sleep 0.25; n=$((n+1)); done
echo "balloon: runtime RSS ${{full}} MiB filled, $(rss) MiB after about $((n / 4)) s"
check balloon_returned $([ $((full - $(rss))) -ge 150 ] && echo yes || echo "no:$full:$(rss)")

check no_sigsys $(grep -c 'forbidden system call' /tmp/msbvm/sandboxes/box/runtime.log)
# Printed, not asserted: device interrupts the VMM found lost and raised again (see
# msbvm_virtio::Interrupt::recover_lost); nested emulation is where they go missing.
grep 'interrupt looked lost' /tmp/msbvm/sandboxes/box/runtime.log | head -n 5
# Also printed only: guest tasks the kernel saw stuck for a minute (CONFIG_DETECT_HUNG_TASK).
grep 'blocked for more than' /tmp/msbvm/sandboxes/box/console.log | head -n 5
$M stop box; check stop_rc $?
$M rm box; check rm_rc $?
check rm_gone $([ -e /tmp/msbvm/sandboxes/box ] && echo no || echo yes)

# The creator dies: the sandbox must stop and leave nothing behind.
$M run --name orphan -- sleep 1000 > /dev/null 2>&1 &
creator=$!
n=0; while [ $n -lt 600 ] && ! $M ls --json 2>/dev/null | grep -q '"orphan"'; do sleep 0.1; n=$((n+1)); done
n=0; while [ $n -lt 600 ] && [ "$($M ls --json | grep -c running)" = 0 ]; do sleep 0.1; n=$((n+1)); done
check orphan_seen $($M ls --json | grep -c '"orphan"')
kill -9 $creator
n=0; while [ $n -lt 300 ] && [ -e /tmp/msbvm/sandboxes/orphan ]; do sleep 0.1; n=$((n+1)); done
check orphan_state_gone $([ -e /tmp/msbvm/sandboxes/orphan ] && echo no || echo yes)
check orphan_runtime_gone $(ps | grep -v grep | grep -c __runtime)
check orphan_ls_empty $($M ls --json | grep -c '"orphan"')

# Not ready in time: the sandbox is stopped and the error says where its guest was (vCPU
# state and the guest kernel's log, read from memory: the console is quiet).
# Three busy loops share L1's CPU with the guest, so that it cannot be ready in 3 s (idle, it
# can be).
hogs=""; for h in 1 2 3; do (while :; do :; done) & hogs="$hogs $!"; done
out=$(MSBVM_READY_TIMEOUT_SECS=3 $M run --name late -- true 2>&1); check late_rc $?
kill $hogs
echo "$out" | head -n 12
check late_where $(echo "$out" | grep -c 'where the guest was when it was stopped')
check late_vcpu $(echo "$out" | grep -c 'stopped before ready: vCPU 0 (.*) at RIP 0x')
check late_devices $(echo "$out" | grep 'stopped before ready: mmio@0x[0-9a-f]* virtio-' | grep -c -e virtio-fs: -e virtio-vsock:)
# The log's last 40 lines, or none when the starved guest has not printed yet (it may still be
# at its entry point): only that it was read, with no "unavailable".
k=$(echo "$out" | grep -c 'guest kernel log (read from guest memory)')
u=$(echo "$out" | grep -c 'kernel log unavailable'); check late_klog "$k:$u"
check late_gone $([ -e /tmp/msbvm/sandboxes/late ] && echo no || echo yes)
echo "CHECK done yes"
"#,
        prelude = prelude(),
    )
}

#[test]
fn sandboxes_run_commands_end_to_end() {
    let vm = msbvm_l1().map(|vm| vm.timeout(L1_TIMEOUT));
    let Some(out) = vm.and_then(|vm| run_scenarios(vm, &script())) else {
        return;
    };
    let expected = [
        ("done", "yes"),
        ("echo_rc", "0"),
        ("echo_out", "hello"),
        ("exit3_rc", "3"),
        ("detach_rc", "0"),
        ("ls_sees_box", "1"),
        ("hostname", "box"),
        ("hung_task_secs", "60"),
        ("runtime_uid", "65534655346553465534"),
        ("runtime_nnp", "1"),
        ("runtime_seccomp", "2"),
        ("runtime_threads_filtered", "all"),
        ("runtime_confined", "1"),
        ("stdin_roundtrip", "same"),
        ("output_10mib", "same"),
        ("stderr_not_in_stdout", "[]"),
        ("stderr_out", "to-err"),
        ("concurrent_20", "20"),
        ("timeout_rc", "124"),
        ("timeout_fast", "yes"),
        ("pty_rc", "7"),
        ("pty_dev", "1"),
        ("env_cwd", "bar /tmp"),
        ("ctrl_c_rc", "5"),
        ("ctrl_c_fast", "yes"),
        ("ctrl_c_after", "1"),
        ("fill_rc", "0"),
        ("balloon_returned", "yes"),
        ("no_sigsys", "0"),
        ("stop_rc", "0"),
        ("rm_rc", "0"),
        ("rm_gone", "yes"),
        ("orphan_seen", "1"),
        ("orphan_state_gone", "yes"),
        ("orphan_runtime_gone", "0"),
        ("orphan_ls_empty", "0"),
        ("late_rc", "125"),
        ("late_where", "1"),
        ("late_vcpu", "1"),
        ("late_devices", "2"),
        ("late_klog", "1:0"),
        ("late_gone", "yes"),
    ];
    assert_checks(&out.console, &expected);
}
