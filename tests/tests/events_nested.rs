//! End-to-end events between guest programs and the host (issue 12 §1), in one L1 boot: a
//! sandbox of the suite's Debian image ([`msbvm_tests::test_image`], for Python) whose shell
//! (through the in-guest `msbvm`, and through OpenBSD `nc -U` on the socket: send, subscribe,
//! receive) and Python program (through the Unix socket, standard
//! library only: `tests/guest-tools/events_client.py`) send events that `msbvm events -f`
//! (the SDK's stream) receives in order with their metadata; replies both ways; a 10,000-event
//! burst; malformed and 1 MiB lines; the ring kept while nobody listens; a guest connection
//! that never reads while the host floods it, with the runtime's memory measured.
//!
//! `cargo test -p msbvm-tests --test events_nested -- --nocapture`.

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, msbvm_l1, prelude, run_scenarios};
use msbvm_tests::test_image::{TestImage, IMAGE_REF};

const L1_TIMEOUT: Duration = Duration::from_secs(1200);
/// Where the image's OCI layout goes in L1 (for `msbvm import`).
const L1_IMAGE: &str = "/e2e-image";
/// The guest's Python client, at /e2e/events_client.py in L1 and in the guest.
const CLIENT: &str = include_str!("../guest-tools/events_client.py");

const SCRIPT: &str = r#"@PRELUDE@
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -e /etc/group ] || echo 'root:x:0:' > /etc/group
EV=/tmp/ev.jsonl
# Lines of $EV of type $1.
of() { grep -F "\"type\":\"$1\"" $EV; }
# Waits up to $2 s until $EV has $3 (default 1) lines of type $1.
wait_for() { i=0; while [ "$(of $1 | wc -l)" -lt "${3:-1}" ] && [ $i -lt $2 ]; do sleep 1; i=$((i+1)); done; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p"; }

$M import @L1_IMAGE@ >/dev/null; check import_rc $?
$M run -d --name ev --image @IMAGE@ -v /e2e:/e2e:ro; check run_rc $?
g() { $M exec ev -- "$@"; }
check guest_env "$(g sh -c 'echo $MSBVM_EVENTS_SOCKET $(command -v msbvm)')"
# The guest CLI is the agent's own binary bound read-only, not a copy in /run's RAM.
check guest_cli_bound "$(g sh -c 'echo $(grep -c " /run/msbvm/bin/msbvm .* ro," /proc/mounts) $(readlink /proc/1/exe)')"

# The host listens (the SDK's stream, through the CLI) from here on.
$M events ev -f --json > $EV 2>/tmp/ev.err &
LISTENER=$!
sleep 2

# ---- a shell script, through the in-guest msbvm ----
SH=$(g sh -c 'echo $$; for i in 1 2 3; do msbvm emit shell.step "{\"i\":$i}" || echo emit-failed; done')
SHPID=$(echo "$SH" | head -1)
check shell_emits_ok $(echo "$SH" | grep -c emit-failed)
wait_for shell.step 30 3
check shell_order "$(of shell.step | sed 's/.*"data":{"i":\([0-9]*\)}.*/\1/' | tr '\n' ,)"
check shell_exec_id $(of shell.step | grep -c "\"exec\":$SHPID,")
check shell_sender_pid $(of shell.step | field pid | awk -v s=$SHPID '$1 > 0 && $1 != s' | wc -l)
check shell_time $(of shell.step | field time_ms | awk '$1 > 1600000000000' | wc -l)

# ---- a shell script with OpenBSD nc on the socket (no msbvm; busybox sh would run its
# own nc applet, which has no -U, for a plain `nc`) ----
NC=$(g sh -c 'echo $$; printf "{\"type\":\"nc.step\",\"data\":{\"i\":1}}\n{\"type\":\"nc.step\",\"data\":{\"i\":2}}\n" | nc.openbsd -q 1 -U $MSBVM_EVENTS_SOCKET')
NCPID=$(echo "$NC" | head -1)
wait_for nc.step 30 2
check nc_order "$(of nc.step | sed 's/.*"data":{"i":\([0-9]*\)}.*/\1/' | tr '\n' ,)"
check nc_metadata $(of nc.step | grep "\"exec\":$NCPID," | field pid | awk '$1 > 0' | wc -l)
g sh -c '(echo "{\"subscribe\":[\"nc.*\"]}"; sleep 40) | nc.openbsd -q 0 -U $MSBVM_EVENTS_SOCKET' > /tmp/ncsub.out 2>&1 &
i=0; while ! grep -q subscribed /tmp/ncsub.out && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
check nc_subscribed $(grep -c '"subscribed"' /tmp/ncsub.out)
$M emit ev nc.reply '{"ok":1}'; $M emit ev other.reply '{"ok":2}'
i=0; while ! grep -q nc.reply /tmp/ncsub.out && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
check nc_got_reply "$(grep -c '"type":"nc.reply"' /tmp/ncsub.out),$(grep -c other.reply /tmp/ncsub.out)"

# ---- a Python program on the socket ----
PY=$(g python3 /e2e/events_client.py emit 5 | sed -n 's/^pid //p')
wait_for py.step 30 5
check py_order "$(of py.step | sed 's/.*"data":{"i":\([0-9]*\)}.*/\1/' | tr '\n' ,)"
check py_pid_and_exec $(of py.step | grep "\"pid\":$PY," | grep -c "\"exec\":$PY,")

# ---- the guest asks, the host answers on its connection ----
g python3 /e2e/events_client.py ask > /tmp/ask.out 2>&1 &
ASK=$!
wait_for py.question 60
Q=$(of py.question | head -1)
check question_id "$(echo "$Q" | field id)"
$M emit ev answer '{"ok":true}' --connection "$(echo "$Q" | field connection)" --reply-to q1
check answer_rc $?
wait $ASK
check guest_got_reply $(grep '"reply_to": "q1"' /tmp/ask.out | grep -c '"ok": true')

# ---- the host asks, a guest subscriber answers ----
g python3 /e2e/events_client.py serve > /tmp/serve.out 2>&1 &
SERVE=$!
i=0; while ! grep -q subscribed /tmp/serve.out && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done
R=$($M request ev ask '{"n":7}' --timeout 30 2>&1)
check host_request_rc $?
check host_got_reply $(echo "$R" | grep '"type":"answer"' | grep -c '"got":{"n":7}')
wait $SERVE

# ---- the in-guest msbvm receives a host event ----
g msbvm events --type go > /tmp/go.out 2>&1 &
GO=$!
i=0; while kill -0 $GO 2>/dev/null && [ $i -lt 30 ]; do $M emit ev go '{"x":1}'; sleep 1; i=$((i+1)); done
wait $GO
check guest_cli_event $(grep -c '"type":"go"' /tmp/go.out)

# ---- malformed and 1 MiB lines: an error line back each, the connection goes on ----
B=$(g python3 /e2e/events_client.py bad 2>&1)
echo "$B" | head -c 600
check malformed_error $(echo "$B" | grep '^malformed:' | grep -c '"error"')
check oversized_error $(echo "$B" | grep '^oversized:' | grep -c '"error"')
wait_for after.bad 30
check after_bad $(of after.bad | grep -c still-here)
check no_big_event $(of big | wc -l)

# ---- 10,000 events in a burst, in order, nothing lost with a listener attached ----
s=$(date +%s)
g python3 /e2e/events_client.py burst 10000
wait_for burst 300 10000
echo "timing: burst of 10000 in $(( $(date +%s) - s )) s"
of burst | sed 's/.*"data":{"seq":\([0-9]*\)}.*/\1/' > /tmp/got
seq 0 9999 > /tmp/want
cmp -s /tmp/got /tmp/want && check burst_in_order yes || check burst_in_order "no:$(wc -l < /tmp/got)"
check burst_dropped $(of msbvm.dropped | wc -l)

# ---- nobody listening: the newest 1024 are kept, the rest counted ----
kill $LISTENER; wait $LISTENER 2>/dev/null
sleep 2
g python3 /e2e/events_client.py burst 1500 >/dev/null
sleep 2
$M events ev --json > /tmp/ring.jsonl; check ring_rc $?
check ring_dropped "$(head -1 /tmp/ring.jsonl | grep -F '"type":"msbvm.dropped"' | sed 's/.*"count":\([0-9]*\).*/\1/')"
check ring_kept $(grep -c '"type":"burst"' /tmp/ring.jsonl)
check ring_first "$(grep '"type":"burst"' /tmp/ring.jsonl | head -1 | sed 's/.*"seq":\([0-9]*\).*/\1/')"
check ring_drained $($M events ev --json | wc -l)

# ---- a guest connection that never reads while the host floods it ----
g python3 /e2e/events_client.py deaf 2>&1 > /tmp/deaf.out &
DEAF=$!
sleep 5
RT=$($M ls --json | grep -A3 '"name": "ev"' | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
rss() { awk '/VmRSS/ {print $2}' /proc/$RT/status; }
R0=$(rss)
BIG=$(head -c 16000 /dev/zero | tr '\0' x)
s=$(date +%s); n=0
while [ $n -lt 300 ]; do $M emit ev flood "\"$BIG\"" || echo flood-failed; n=$((n+1)); done > /tmp/flood.out 2>&1
echo "timing: 300 host events of 16 kB in $(( $(date +%s) - s )) s"
R1=$(rss)
echo "runtime VmRSS before ${R0} kB after ${R1} kB"
check flood_ok $(grep -c flood-failed /tmp/flood.out)
check runtime_rss_growth $(atmost $((R1 - R0)) 8192)
g touch /tmp/flood-done
wait $DEAF
cat /tmp/deaf.out
check deaf_bounded "$(awk '/^deaf got/ { print ($5 > 0 && $3 + $5 == 300) ? "yes" : "no:" $0 }' /tmp/deaf.out)"

$M rm ev >/dev/null
echo "CHECK done yes"
"#;

#[test]
fn events_between_guest_programs_and_the_host() {
    let Some(vm) = msbvm_l1() else {
        return;
    };
    let image = TestImage::prepare().unwrap_or_else(|e| panic!("{e}"));
    let vm = vm
        .memory_mib(3072)
        .timeout(L1_TIMEOUT)
        .add_file(&image.layout, L1_IMAGE)
        .add_bytes("/e2e/events_client.py", CLIENT, 0o644);
    let script = SCRIPT
        .replace("@PRELUDE@", &prelude())
        .replace("@L1_IMAGE@", L1_IMAGE)
        .replace("@IMAGE@", IMAGE_REF);
    let Some(out) = run_scenarios(vm, &script) else {
        return;
    };
    assert_checks(
        &out.console,
        &[
            ("import_rc", "0"),
            ("run_rc", "0"),
            ("guest_env", "/run/msbvm/events.sock /run/msbvm/bin/msbvm"),
            ("guest_cli_bound", "1 /init"),
            ("shell_emits_ok", "0"),
            ("shell_order", "1,2,3,"),
            ("shell_exec_id", "3"),
            ("shell_sender_pid", "3"),
            ("shell_time", "3"),
            ("nc_order", "1,2,"),
            ("nc_metadata", "2"),
            ("nc_subscribed", "1"),
            ("nc_got_reply", "1,0"),
            ("py_order", "0,1,2,3,4,"),
            ("py_pid_and_exec", "5"),
            ("question_id", "\"q1\""),
            ("answer_rc", "0"),
            ("guest_got_reply", "1"),
            ("host_request_rc", "0"),
            ("host_got_reply", "1"),
            ("guest_cli_event", "1"),
            ("malformed_error", "1"),
            ("oversized_error", "1"),
            ("after_bad", "1"),
            ("no_big_event", "0"),
            ("burst_in_order", "yes"),
            ("burst_dropped", "0"),
            ("ring_rc", "0"),
            ("ring_dropped", "476"),
            ("ring_kept", "1024"),
            ("ring_first", "476"),
            ("ring_drained", "0"),
            ("flood_ok", "0"),
            ("runtime_rss_growth", "yes"),
            ("deaf_bounded", "yes"),
            ("done", "yes"),
        ],
    );
}
