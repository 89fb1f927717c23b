//! Shared pieces of the end-to-end suites that drive the `msbvm` CLI in L1 with a shell
//! script of scenarios: each scenario prints `CHECK <name> <value>` and the test compares
//! them all at once, so one failure still shows every other result.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::artifacts::{GuestArtifacts, Progress, StaticBuild, L1_KERNEL, L1_MSBVM};
use crate::NestedVmBuilder;

/// Where the guest agent goes in L1 (beside `msbvm`, where the runtime looks for it).
pub const L1_AGENT: &str = "/bin/msbvm-agent";

/// The static binaries, guest kernel and initramfs, built once per test process.
pub fn artifacts() -> &'static GuestArtifacts {
    static ARTIFACTS: OnceLock<Result<GuestArtifacts, String>> = OnceLock::new();
    ARTIFACTS
        .get_or_init(|| {
            GuestArtifacts::prepare(
                &StaticBuild::new().bin("msbvm-guest-agent", "msbvm-agent"),
                Progress::Lines,
            )
            .map_err(|e| e.to_string())
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `builder` with msbvm, the agent and the guest kernel in place.
pub fn with_msbvm(builder: NestedVmBuilder) -> NestedVmBuilder {
    let agent = artifacts()
        .binaries
        .extra
        .get("msbvm-agent")
        .expect("msbvm-agent was built")
        .clone();
    artifacts().add_to(builder).add_file(agent, L1_AGENT)
}

/// The start of every scenario script: environment, `$M` and `check`.
pub fn prelude() -> String {
    format!(
        "export MSBVM_HOME=/tmp/msbvm MSBVM_KERNEL={L1_KERNEL} HOME=/root\n\
         mkdir -p /root\n\
         M={L1_MSBVM}\n\
         check() {{ echo \"CHECK $1 $2\"; }}\n"
    )
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
