//! Shared pieces of the end-to-end suites that drive the `msbvm` CLI in L1 with a shell
//! script of scenarios: each scenario prints `CHECK <name> <value>` and the test compares
//! them all at once, so one failure still shows every other result.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use crate::artifacts::{GuestArtifacts, Progress, StaticBuild, L1_KERNEL, L1_MSBVM};
use crate::{nested, or_skip, L1Arch, NestedOutput, NestedVm, NestedVmBuilder, Stream};

/// Where the guest agent goes in L1 (beside `msbvm`, where the runtime looks for it).
pub const L1_AGENT: &str = "/bin/msbvm-agent";

/// The static binaries, guest kernel and initramfs, built once per test process.
pub fn artifacts() -> &'static GuestArtifacts {
    artifacts_for(L1Arch::X86_64)
}

/// [`artifacts`] for an L1 of architecture `arch` (cross-built for a foreign one).
pub fn artifacts_for(arch: L1Arch) -> &'static GuestArtifacts {
    static X86_64: OnceLock<Result<GuestArtifacts, String>> = OnceLock::new();
    static AARCH64: OnceLock<Result<GuestArtifacts, String>> = OnceLock::new();
    let cell = match arch {
        L1Arch::X86_64 => &X86_64,
        L1Arch::Aarch64 => &AARCH64,
    };
    cell.get_or_init(|| {
        GuestArtifacts::prepare(
            &StaticBuild::new()
                .arch(arch)
                .bin("msbvm-guest-agent", "msbvm-agent"),
            Progress::Lines,
        )
        .map_err(|e| e.to_string())
    })
    .as_ref()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `builder` with msbvm, the agent and the guest kernel in place.
pub fn with_msbvm(builder: NestedVmBuilder) -> NestedVmBuilder {
    with_msbvm_for(builder, L1Arch::X86_64)
}

/// [`with_msbvm`] for an L1 of architecture `arch` (set on `builder` already).
pub fn with_msbvm_for(builder: NestedVmBuilder, arch: L1Arch) -> NestedVmBuilder {
    let artifacts = artifacts_for(arch);
    let agent = artifacts
        .binaries
        .extra
        .get("msbvm-agent")
        .expect("msbvm-agent was built")
        .clone();
    artifacts.add_to(builder).add_file(agent, L1_AGENT)
}

/// Where dnsmasq, the network suites' upstream resolver, is on the host (and in L1).
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// The check values the scenario scripts compute, defined once for all of them: `nz RC`
/// (failed/succeeded), `some N` (at least one), `fast SECS` (under 8 s), `atmost N MAX`.
const CHECK_HELPERS: &str = r#"nz() { [ "$1" -ne 0 ] && echo failed || echo succeeded; }
some() { [ "$1" -ge 1 ] && echo yes || echo "no:$1"; }
fast() { [ "$1" -lt 8 ] && echo yes || echo "no:$1"; }
atmost() { [ "$1" -le "$2" ] && echo yes || echo "no:$1>$2"; }
"#;

/// The start of every scenario script: environment, `$M`, `check` and the check helpers.
///
/// The SDK's agent reply timeout is raised from 30 s to 120 s: L1 is software-emulated on a
/// shared host, and a CI run saw 20 concurrent execs, then the next exec, all fail on the
/// 30 s wait for the agent's hello while a Ctrl-C step that takes 6 s took 91 s (the whole
/// L1 was slow, not the agent). No scenario relies on that timeout firing; the run's
/// heartbeat gap ([`run_scenarios`]) shows such stalls.
pub fn prelude() -> String {
    format!(
        "export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL={L1_KERNEL} HOME=/root\n\
         export MSBVM_AGENT_REPLY_TIMEOUT_SECS=120\n\
         mkdir -p /root\n\
         M={L1_MSBVM}\n\
         check() {{ echo \"CHECK $1 $2\"; }}\n\
         {CHECK_HELPERS}"
    )
}

/// The network suites' "host" in L1: busybox httpd on 127.0.0.1:8000 serving `/www` (which
/// the shell line `www` fills), dnsmasq on 127.0.0.1:5353 answering each `name=address` of
/// `dns_answers` (separated by spaces), and `events NAME` printing a sandbox's network events.
pub fn net_host(www: &str, dns_answers: &str) -> String {
    let answers: Vec<String> = dns_answers
        .split_whitespace()
        .filter_map(|answer| answer.split_once('='))
        .map(|(name, ip)| format!("--address=/{name}/{ip}"))
        .collect();
    format!(
        r#"[ -e /etc/passwd ] || echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd
[ -e /etc/group ] || echo 'root:x:0:' > /etc/group
{www}
httpd -f -p 127.0.0.1:8000 -h /www &
{DNSMASQ} --no-daemon --no-resolv --no-hosts --port=5353 --listen-address=127.0.0.1 \
  --bind-interfaces -C /dev/null --user=root --group=root --pid-file= \
  {answers} >/tmp/dnsmasq.log 2>&1 &
sleep 1
events() {{ $M net events $1; }}
"#,
        answers = answers.join(" "),
    )
}

/// Whether dnsmasq is installed (the network suites skip without it, saying so).
pub fn dnsmasq_present() -> bool {
    let present = std::path::Path::new(DNSMASQ).exists();
    if !present {
        eprintln!("skipped: dnsmasq not installed (apt-get install dnsmasq-base)");
    }
    present
}

/// Whether this host can run L1 ([`nested::preflight`]): `false` where the test is to be
/// skipped ([`or_skip`]); a host that cannot, without a skip asked for, fails the test here.
pub fn l1_ready() -> bool {
    or_skip(nested::preflight()).is_some()
}

/// An L1 machine with msbvm in place ([`with_msbvm`]), once [`l1_ready`] says it can run.
pub fn msbvm_l1() -> Option<NestedVmBuilder> {
    l1_ready().then(|| with_msbvm(NestedVm::builder()))
}

/// The L1 machine of the network suites: [`msbvm_l1`] with 3 GiB and dnsmasq, and `timeout`;
/// `None` where the test is to be skipped (no L1, or no dnsmasq).
pub fn net_l1(timeout: Duration) -> Option<NestedVmBuilder> {
    if !l1_ready() || !dnsmasq_present() {
        return None;
    }
    let vm = with_msbvm(NestedVm::builder())
        .memory_mib(3072)
        .add_program(DNSMASQ, DNSMASQ)
        .timeout(timeout);
    Some(vm)
}

/// Runs the scenario `script` in the L1 `vm` with its console on stderr, and says how long it
/// took; `None` where the test is to be skipped.
pub fn run_scenarios(vm: NestedVmBuilder, script: &str) -> Option<NestedOutput> {
    let out = or_skip(vm.stream(Stream::Stderr).run_script(script))?;
    // The longest heartbeat gap tells an L1 that stalled (the emulator starved of CPU, so
    // every guest deadline inside it shrank) from a fault in msbvm.
    let gap = out
        .longest_heartbeat_gap
        .map_or_else(|| "unknown".to_string(), |g| format!("{} s", g.as_secs()));
    eprintln!(
        "L1 run took {:.1} s (longest L1 heartbeat gap {gap}, beats every {} s)",
        out.elapsed.as_secs_f64(),
        crate::liveness::BEAT_EVERY_SECS
    );
    Some(out)
}

/// The `CHECK` lines of a console.
pub fn checks(console: &str) -> BTreeMap<String, String> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("CHECK "))
        .filter_map(|l| l.split_once(' ').or(Some((l, ""))))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Asserts every `(name, value)` in `expected`, reporting all mismatches with the console.
pub fn assert_checks(console: &str, expected: &[(&str, &str)]) {
    let c = checks(console);
    let failures: Vec<String> = expected
        .iter()
        .filter(|(k, v)| c.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, v)| format!("{k}: expected {v:?}, got {:?}", c.get(*k)))
        .collect();
    assert!(
        failures.is_empty(),
        "{}\nconsole:\n{console}",
        failures.join("\n")
    );
}
