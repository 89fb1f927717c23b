//! End-to-end: a sandbox that creates peer sandboxes (issue 12 §2), in one L1 boot. A guest
//! script, through the in-guest `msbvm`, creates 3 children of the default image, runs
//! commands in them, copies a file from one to another through the parent and removes one;
//! a 4th child is refused by the quota; a child has none of its parent's files, environment
//! or network grants; the host's `msbvm ls` shows the tree and reaches a child directly; a
//! sandbox without the grant is refused with a message naming `--allow-spawn`; killing the
//! parent's runtime removes its children and their state; the in-guest `msbvm` run on the L1
//! host itself fails at once; a Rust program in the guest drives a child through the SDK's
//! `peer` module (`tests/src/bin/msbvm-e2e-orchestrator.rs`). A second parent gives a child
//! a network rule and a secret only its grant lists (the child sees a placeholder of its own,
//! never the value or the parent's placeholder), a child a grant of its own that it uses for a
//! grandchild (and cannot pass further), which the second parent reaches as `c1.g1` but
//! removes only through `c1`; the host detaches a child that then outlives the parent while
//! the grandchild goes with it.
//!
//! `cargo test -p msbvm-tests --test spawn_nested -- --nocapture`.

use std::time::Duration;

use msbvm_tests::artifacts::build_static_bins;
use msbvm_tests::e2e::{assert_checks, msbvm_l1, prelude, run_scenarios, L1_AGENT};

const L1_TIMEOUT: Duration = Duration::from_secs(1200);

const SCRIPT: &str = r#"@PRELUDE@
[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -e /etc/group ] || echo 'root:x:0:' > /etc/group
mkdir -p /www && echo host-page > /www/index.html
httpd -f -p 127.0.0.1:8000 -h /www &

s=$(date +%s)
$M run -d --name p --allow-spawn 3,memory=768 -e PARENT_ONLY=yes --net-allow host -v /e2e:/e2e:ro; check p_rc $?
$M run -d --name nop; check nop_rc $?
echo "timing: two sandboxes up in $(( $(date +%s) - s )) s"
g() { $M exec p -- sh -c "$1" 2>&1; }
g 'echo parent-file > /parent-file'
check parent_reaches_host "$(g 'wget -q -T 10 -O- http://host.msbvm.internal:8000/')"

# ---- create 3 children and run commands in them ----
s=$(date +%s)
out=$(g 'for w in w1 w2 w3; do msbvm create $w || echo create-failed-$w; done; msbvm ls')
echo "$out"
echo "timing: 3 children created in $(( $(date +%s) - s )) s"
check create_failures $(echo "$out" | grep -c create-failed)
check children_running $(echo "$out" | grep -c running)
check exec_each "$(g 'for w in w1 w2 w3; do msbvm exec $w -- echo in-$w; done' | tr '\n' ,)"
check exec_code "$(g 'msbvm exec w1 -- sh -c "exit 7"; echo rc=$?')"
check exec_stdin "$(g 'echo piped | msbvm exec w2 -i -- cat')"
# Streaming: more output and input than one message carries.
check exec_big_output "$(g 'msbvm exec w1 -- head -c 3000000 /dev/zero | wc -c')"
check exec_big_input "$(g 'head -c 2000000 /dev/zero | msbvm exec w2 -i -- wc -c')"

# ---- a file from w1 to w2 through the parent ----
check copy "$(g 'msbvm exec w1 -- sh -c "echo payload-123 > /data.txt" && msbvm cp w1:/data.txt /tmp/relay && msbvm cp /tmp/relay w2:/copied.txt && msbvm exec w2 -- cat /copied.txt')"
check copy_direct "$(g 'msbvm cp w1:/data.txt w3:/direct.txt && msbvm exec w3 -- cat /direct.txt')"

# ---- a child's events, both ways, through the parent ----
check child_event "$(g 'msbvm exec w1 -- msbvm emit child.hello "{\"n\":1}"; msbvm events --of w1' | grep '"type":"child.hello"' | grep -c '"n":1')"
out=$(g '( msbvm exec w2 -- msbvm events --type ping > /tmp/ping.out 2>&1 ) & P=$!; i=0; while kill -0 $P 2>/dev/null && [ $i -lt 30 ]; do msbvm emit --to w2 ping "{\"x\":2}"; sleep 1; i=$((i+1)); done; cat /tmp/ping.out')
echo "$out"
check event_to_child $(echo "$out" | grep '"type":"ping"' | grep -c '"x":2')

# ---- quota, isolation ----
# (Messages go to stdout inside the guest: the exec's stdout and stderr travel apart, and
# the status line checked with `tail -1` must come after the message.)
out=$(g 'msbvm create w4 2>&1; echo rc=$?')
echo "$out"
check quota_refused $(echo "$out" | grep -c 'quota exceeded')
check quota_rc "$(echo "$out" | tail -1)"
check child_no_parent_file "$(g 'msbvm exec w1 -- cat /parent-file >/dev/null 2>&1; echo rc=$?')"
check child_no_parent_env "$(g 'msbvm exec w1 -- sh -c "echo x\${PARENT_ONLY}x"')"
check child_no_host_grant "$(g 'msbvm exec w1 -- wget -q -T 10 -O- http://host.msbvm.internal:8000/ >/dev/null 2>&1; echo rc=$?')"
out=$(g 'msbvm create ../evil; echo rc=$?; msbvm create w5 --image evil:latest; echo rc=$?')
check bad_names_and_images "$(echo "$out" | grep -c 'rc=1')"

# ---- the host sees the tree and can drive a child ----
check host_sees_parent $($M ls --json | grep -c '"parent": "p"')
check host_exec_child "$($M exec p.w3 -- echo host-reach 2>&1)"

# ---- remove one; the sandbox without a grant; outside any sandbox ----
check rm_one "$(g 'msbvm rm w3 && msbvm ls | wc -l')"
check rm_state_gone $([ -e /tmp/msbvm/sandboxes/p.w3 ] && echo present || echo gone)
# The Rust SDK inside the guest, in the freed slot.
check rust_sdk "$(g '/e2e/orchestrator r1')"
out=$($M exec nop -- sh -c 'msbvm create x 2>&1; echo rc=$?' 2>&1)
echo "$out"
check no_grant_refused $(echo "$out" | grep -c -- '--allow-spawn')
check no_grant_rc "$(echo "$out" | tail -1)"
# The guest's msbvm is the agent's binary under the name `msbvm`.
mkdir -p /tmp/guest-bin && ln -sf @L1_AGENT@ /tmp/guest-bin/msbvm
s=$(date +%s)
out=$(timeout 20 /tmp/guest-bin/msbvm create x 2>&1); rc=$?
echo "$out"
check outside_rc $rc
check outside_message $(echo "$out" | grep -c 'not running inside an msbvm sandbox')
check outside_fast $(fast $(( $(date +%s) - s )))

# ---- killing the parent's runtime removes its children ----
RT=$($M ls --json | grep -A3 '"name": "p"' | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
kill -9 $RT
i=0; while $M ls | grep -q '^p\.w' && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done
echo "children gone ${i} s after the parent was killed"
check children_after_kill $($M ls | grep -c '^p\.w')
check children_state_after_kill $(ls /tmp/msbvm/sandboxes | grep -c '^p\.w')
$M rm p nop >/dev/null 2>&1

# ---- a second parent: network rules from the grant, a grandchild, a detached child ----
TOKEN=real-token-value $M run -d --name q --secret TOKEN@example.com --allow-spawn 3,memory=768,net=host,depth=2,secret=TOKEN; check q_rc $?
h() { $M exec q -- sh -c "$1" 2>&1; }
check net_not_granted $(h 'msbvm create n1 --net-allow 10.0.0.0/8 2>&1; echo rc=$?' | grep -c 'not granted')
check secret_not_granted $(h 'msbvm create s1 --secret OTHER 2>&1; echo rc=$?' | grep -c 'not granted')
check child_granted_rule "$(h 'msbvm create n1 --net-allow host --secret TOKEN && msbvm exec n1 -- wget -q -T 10 -O- http://host.msbvm.internal:8000/')"
parent_token=$(h 'echo $TOKEN')
child_token=$(h 'msbvm exec n1 -- sh -c "echo \$TOKEN"')
echo "parent placeholder $parent_token, child placeholder $child_token"
check child_secret_placeholder $(echo "$child_token" | grep -c '^msbvm_placeholder_')
check child_secret_own $([ "$child_token" != "$parent_token" ] && ! echo "$child_token" | grep -q real-token && echo yes || echo no)
out=$(h 'msbvm create c1 --memory 128 --allow-spawn 1,memory=256 && msbvm exec c1 -- sh -c "msbvm create g1 --memory 128 2>&1 && msbvm exec g1 -- echo from-grandchild 2>&1"')
echo "$out"
check grandchild $(echo "$out" | grep -c from-grandchild)
check grandchild_on_host $($M ls --json | grep -c '"parent": "q.c1"')
check grandchild_direct "$(h 'msbvm exec c1.g1 -- echo via-q')"
check child_without_secret "$(h 'msbvm exec c1 -- sh -c "echo x\$TOKEN"')"
check grandchild_listed $(h 'msbvm ls' | grep -c 'c1\.g1')
check grandchild_rm_refused $(h 'msbvm rm c1.g1 2>&1' | grep -c 'through c1')
check depth_limited $(h 'msbvm exec c1 -- sh -c "msbvm create g2 --allow-spawn 1 2>&1"' | grep -c 'may not spawn')
$M detach q.n1; check detach_rc $?
check detached_not_listed $(h 'msbvm ls' | grep -c n1)
check detached_unreachable "$(h 'msbvm exec n1 -- true 2>&1; echo rc=$?' | tail -1)"
check children_of_q $($M ls --json | grep -c '"parent": "q"')
RT=$($M ls --json | grep -A3 '"name": "q"' | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -1)
kill -9 $RT
i=0; while $M ls | grep -q '^q\.c1' && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
echo "q's descendants gone ${i} s after q was killed"
check descendants_after_kill $($M ls | grep -c '^q\.c1')
check detached_survives "$($M exec q.n1 -- echo alive 2>&1)"
$M rm q.n1 q >/dev/null 2>&1
echo "CHECK done yes"
"#;

#[test]
fn sandboxes_spawn_peer_sandboxes() {
    let Some(vm) = msbvm_l1() else {
        return;
    };
    let orchestrator = build_static_bins(&[("msbvm-tests", "msbvm-e2e-orchestrator")])
        .unwrap_or_else(|e| panic!("{e}"))
        .remove("msbvm-e2e-orchestrator")
        .expect("the static build made the orchestrator");
    let vm = vm
        .memory_mib(3072)
        .timeout(L1_TIMEOUT)
        .add_file(&orchestrator, "/e2e/orchestrator");
    let script = SCRIPT
        .replace("@PRELUDE@", &prelude())
        .replace("@L1_AGENT@", L1_AGENT);
    let Some(out) = run_scenarios(vm, &script) else {
        return;
    };
    assert_checks(
        &out.console,
        &[
            ("p_rc", "0"),
            ("nop_rc", "0"),
            ("parent_reaches_host", "host-page"),
            ("create_failures", "0"),
            ("children_running", "3"),
            ("exec_each", "in-w1,in-w2,in-w3,"),
            ("exec_code", "rc=7"),
            ("exec_stdin", "piped"),
            ("exec_big_output", "3000000"),
            ("exec_big_input", "2000000"),
            ("child_event", "1"),
            ("event_to_child", "1"),
            ("copy", "payload-123"),
            ("copy_direct", "payload-123"),
            ("quota_refused", "1"),
            ("quota_rc", "rc=1"),
            ("child_no_parent_file", "rc=1"),
            ("child_no_parent_env", "xx"),
            ("child_no_host_grant", "rc=1"),
            ("bad_names_and_images", "2"),
            ("host_sees_parent", "3"),
            ("host_exec_child", "host-reach"),
            ("rm_one", "2"),
            ("rm_state_gone", "gone"),
            (
                "rust_sdk",
                "from-rust-42 code=0 file=rust-data listed=true removed=true",
            ),
            ("no_grant_refused", "1"),
            ("no_grant_rc", "rc=1"),
            ("outside_rc", "1"),
            ("outside_message", "1"),
            ("outside_fast", "yes"),
            ("children_after_kill", "0"),
            ("children_state_after_kill", "0"),
            ("q_rc", "0"),
            ("net_not_granted", "1"),
            ("secret_not_granted", "1"),
            ("child_granted_rule", "host-page"),
            ("child_secret_placeholder", "1"),
            ("child_secret_own", "yes"),
            ("grandchild", "1"),
            ("grandchild_on_host", "1"),
            ("grandchild_direct", "via-q"),
            ("child_without_secret", "x"),
            ("grandchild_listed", "1"),
            ("grandchild_rm_refused", "1"),
            ("depth_limited", "1"),
            ("detach_rc", "0"),
            ("detached_not_listed", "0"),
            ("detached_unreachable", "rc=1"),
            ("children_of_q", "1"),
            ("descendants_after_kill", "0"),
            ("detached_survives", "alive"),
            ("done", "yes"),
        ],
    );
}
