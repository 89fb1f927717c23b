//! The Python SDK end to end (issue 17 §4), in one L1 boot: the conformance scenario
//! (`tests/l1-tools/sdk_conformance.py`) runs on the host's Python in L1 against real
//! sandboxes: create with env and a network policy, exec (output, exit code, timeout), a
//! 10 MiB stream, stdin, a signal, a cancelled exec that leaves nothing running, files (write,
//! read, list, stat, mkdir, remove, a guest file error's kind, copy in and out), a snapshot
//! and a fork of it, a published port, a network policy change seen by the guest, events both ways, the error classes, attaching by name,
//! removal, and the synchronous twin called from inside a running event loop. Then the README's
//! Python quick-start program runs as written.
//!
//! The package under test is the one `scripts/build-python` built and installed into
//! `target/python/venv` (CI builds it before the tests); without it, or without
//! `/usr/bin/python3`, the test says so and is skipped.
//!
//! `scripts/build-python --dev && cargo test -p msbvm-tests --test python_sdk_nested -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, net_host, net_l1, prelude, run_scenarios};
use msbvm_tests::python_l1::add_python;

const L1_TIMEOUT: Duration = Duration::from_secs(900);
const SCENARIO: &str = include_str!("../l1-tools/sdk_conformance.py");
/// The README, whose Python quick-start program runs as written.
const README: &str = include_str!("../../README.md");
/// Where the package goes in L1 (on `PYTHONPATH`).
const L1_SITE: &str = "/sdk";

const SCRIPT: &str = r#"@PRELUDE@
@HOST@
cd /tmp
PYTHONPATH=@SITE@ @PYTHON@ /e2e/sdk_conformance.py > /tmp/py.out 2>&1; rc=$?
cat /tmp/py.out
check py_rc $rc
PYTHONPATH=@SITE@ @PYTHON@ /e2e/quickstart.py > /tmp/qs.out 2>&1; rc=$?
cat /tmp/qs.out
check quickstart_rc $rc
check quickstart_out "$(grep -c '^hello from py-demo 0$' /tmp/qs.out),$(grep -c "^b'hi'$" /tmp/qs.out),$(grep -c '^exited 0$' /tmp/qs.out)"
check left $($M ls 2>/dev/null | grep -c 'py-')
$M snapshot rm py-snap >/dev/null 2>&1
"#;

/// The README's Python quick-start program (the first `python` block after "## Python SDK").
fn quickstart() -> &'static str {
    let section = &README[README
        .find("## Python SDK")
        .expect("the README's Python section")..];
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let len = section[start..].find("```").expect("the block's end");
    &section[start..start + len]
}

/// The installed `msbvm` package that scripts/build-python made, if any.
fn built_package() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/venv/lib");
    std::fs::read_dir(venv)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/msbvm"))
        .find(|p| p.join("__init__.py").is_file())
}

/// The package's files as (host path, L1 path); the native module stripped of its debug
/// information into `scratch` (it is most of the L1 image otherwise).
fn package_files(pkg: &Path, scratch: &Path) -> Vec<(PathBuf, String, bool)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(pkg).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let l1 = format!("{L1_SITE}/msbvm/{name}");
        if name.ends_with(".so") {
            let stripped = scratch.join(&name);
            let ok = Command::new("strip")
                .args(["--strip-debug", "-o"])
                .arg(&stripped)
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            files.push((if ok { stripped } else { path }, l1, true));
        } else if path.is_file()
            && (name.ends_with(".py") || name.ends_with(".pyi") || name == "py.typed")
        {
            files.push((path, l1, false));
        }
    }
    files
}

#[test]
fn python_sdk_conformance_scenario() {
    let Some(pkg) = built_package() else {
        eprintln!("skipped: the Python SDK is not built (scripts/build-python --dev builds it)");
        return;
    };
    let Some(vm) = net_l1(L1_TIMEOUT) else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let Some(py) = add_python(vm, dir.path()) else {
        return;
    };
    let python = py.command(false, "");
    let mut vm = py
        .vm
        .add_bytes("/e2e/sdk_conformance.py", SCENARIO, 0o644)
        .add_bytes("/e2e/quickstart.py", quickstart(), 0o644);
    for (host, l1, native) in package_files(&pkg, dir.path()) {
        vm = if native {
            vm.add_program(&host, &l1)
        } else {
            vm.add_file(&host, &l1)
        };
    }
    let script = SCRIPT
        .replace("@PRELUDE@", &prelude())
        .replace(
            "@HOST@",
            &net_host("mkdir -p /www && echo host-page > /www/index.html", ""),
        )
        .replace("@SITE@", L1_SITE)
        .replace("@PYTHON@", python.trim_end());
    let Some(out) = run_scenarios(vm, &script) else {
        return;
    };
    assert_checks(
        &out.console,
        &[
            ("created", "py-conf"),
            ("exec", r"b'hi\n',b'err\n',3"),
            ("exec_timeout", "True,124"),
            ("stream", "10485760,0,True"),
            ("stdin", "ping pong,0"),
            ("signal", "143"),
            ("cancelled", "nothing-left"),
            ("files", "data,True,file:4,not_found,from-host"),
            ("fork", "py-conf,1,kept,forked"),
            ("publish", "127.0.0.1,True,1"),
            ("policy", "0,denied,0"),
            ("events_in", "py.step,1,True"),
            ("events_out", "0,1"),
            ("errors", "py-conf,notfound"),
            ("get", "attached"),
            ("removed", "True"),
            ("sync", "sync,started,exited,x"),
            ("sync_removed", "True"),
            ("scenario", "done"),
            ("py_rc", "0"),
            ("quickstart_rc", "0"),
            ("quickstart_out", "1,1,1"),
            ("left", "0"),
        ],
    );
}
