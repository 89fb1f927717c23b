//! The Rust, Python and Node.js SDKs end to end (issue 17 §3, §4), in one L1 boot: the same
//! conformance scenario in each language (`tests/src/bin/msbvm-e2e-sdk-conformance.rs`,
//! `tests/l1-tools/sdk_conformance.py` and `.js`: the same steps and expected values) runs
//! against real sandboxes, the Rust one as a static binary, the others on the host's Python
//! and Node brought into L1: create with env and a network policy, exec (output, exit code, timeout), a
//! 10 MiB stream, stdin, a signal, a cancelled exec that leaves nothing running (task
//! cancellation in Python, an `AbortSignal` in JavaScript), files (write, read, list, stat,
//! mkdir, remove, a guest file error's kind, copy in and out), a snapshot and a fork of it, a
//! published port, a network policy change seen by the guest, the network decisions it left
//! (the record, a polled stream, the counters), a secret the guest sees only as a placeholder
//! (which the guest's RAM, dumped, holds and the value never), a tmpfs mount, the shipped
//! `audit` plugin recording an exec, a host request a guest shell answers (and one nobody
//! answers: `AgentTimeout`), an answer to a guest's request, events both ways, the error
//! classes, attaching by name and removal; then Python's synchronous twin from inside a
//! running event loop and a JavaScript create aborted during the boot, which leaves no
//! sandbox; then the Python and JavaScript peer APIs inside a sandbox with a spawn grant (the
//! interpreters, their libraries and the packages reach it through read-only volumes): each
//! creates a child, runs a command in it with stdin, writes and reads its file, lists and
//! removes it. Each README quick-start also runs as written (Rust's from its binary, whose
//! source the README quotes; a unit test here keeps the two the same).
//!
//! The packages under test are the ones `scripts/build-python` and `scripts/build-typescript`
//! built (CI builds them before the tests). A language whose package is not built, or whose
//! interpreter (`/usr/bin/python3`, `/usr/bin/node`) is missing, is skipped with one line;
//! Rust always runs.
//!
//! `scripts/build-python --dev && scripts/build-typescript --dev &&
//! cargo test -p msbvm-tests --test sdk_nested -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use msbvm_tests::artifacts::build_static_bins;
use msbvm_tests::e2e::{assert_checks, net_host, net_l1, prelude, run_scenarios};
use msbvm_tests::python_l1::{add_python, PYTHON_HOME};
use msbvm_tests::NestedVmBuilder;

const L1_TIMEOUT: Duration = Duration::from_secs(900);
const PY_SCENARIO: &str = include_str!("../l1-tools/sdk_conformance.py");
const JS_SCENARIO: &str = include_str!("../l1-tools/sdk_conformance.js");
const PY_PEER: &str = include_str!("../l1-tools/sdk_peer.py");
const JS_PEER: &str = include_str!("../l1-tools/sdk_peer.js");
/// The README, whose quick-start programs run as written.
const README: &str = include_str!("../../README.md");
/// The Rust quick-start as the L1 run builds it.
const RS_QUICKSTART: &str = include_str!("../src/bin/msbvm-e2e-rust-quickstart.rs");
const NODE: &str = "/usr/bin/node";
/// Where the Python package goes in L1 (on `PYTHONPATH`).
const L1_PY_SITE: &str = "/sdk";
/// Where the Node package goes in L1.
const L1_JS_PACKAGE: &str = "/sdkjs/msbvm";

const PY_PART: &str = r#"
PYTHONPATH=@SITE@ @PYTHON@ /e2e/sdk_conformance.py > /tmp/py.out 2>&1; rc=$?
cat /tmp/py.out
check py_rc $rc
PYTHONPATH=@SITE@ @PYTHON@ /e2e/quickstart.py > /tmp/pyqs.out 2>&1; rc=$?
cat /tmp/pyqs.out
check py_quickstart_rc $rc
check py_quickstart_out "$(grep -c '^hello from py-demo 0$' /tmp/pyqs.out),$(grep -c "^b'hi'$" /tmp/pyqs.out),$(grep -c '^exited 0$' /tmp/pyqs.out)"
$M snapshot rm py-snap >/dev/null 2>&1
"#;

const RS_PART: &str = r#"
/e2e/rs-conformance > /tmp/rs.out 2>&1; rc=$?
cat /tmp/rs.out
check rs_rc $rc
/e2e/rs-quickstart > /tmp/rsqs.out 2>&1; rc=$?
cat /tmp/rsqs.out
check rs_quickstart_rc $rc
check rs_quickstart_out "$(grep -c '^hello from rs-demo 0$' /tmp/rsqs.out),$(grep -c '^hi$' /tmp/rsqs.out),$(grep -c '^exited Code(0)$' /tmp/rsqs.out)"
$M snapshot rm rs-snap >/dev/null 2>&1
"#;

const JS_PART: &str = r#"
MSBVM_JS_PACKAGE=@PKG@ @NODE@ /e2e/sdk_conformance.js > /tmp/js.out 2>&1; rc=$?
cat /tmp/js.out
check js_rc $rc
mkdir -p /tmp/qs/node_modules && ln -s @PKG@ /tmp/qs/node_modules/msbvm
cp /e2e/quickstart.mjs /tmp/qs/ && (cd /tmp/qs && @NODE@ quickstart.mjs > /tmp/jsqs.out 2>&1); rc=$?
cat /tmp/jsqs.out
check js_quickstart_rc $rc
check js_quickstart_out "$(grep -c '^hello from ts-demo 0$' /tmp/jsqs.out),$(grep -c '^hi$' /tmp/jsqs.out),$(grep -c '^exited 0$' /tmp/jsqs.out)"
$M snapshot rm js-snap >/dev/null 2>&1
"#;

/// The peer APIs inside a sandbox: a parent with a spawn grant that sees L1's interpreters,
/// the libraries they load and the packages through read-only volumes (at their L1 paths, so
/// the same commands run there), then each language's peer script in it (`@RUNS@`).
const PEER_PART: &str = r#"
$M run -d --name sdk-parent --memory 512 --allow-spawn 1,memory=256 --no-network \
  -v /lib:/lib:ro -v /lib64:/lib64:ro -v /usr/bin:/usr/bin:ro -v /e2e:/e2e:ro @VOLUMES@
check peer_parent_rc $?
@RUNS@
$M rm sdk-parent >/dev/null; check peer_parent_removed $?
"#;

/// What each peer script prints (`tests/l1-tools/sdk_peer.py` and `.js`).
const PEER_CHECK: &str = "inside,4,in-from-child,data,listed,gone,refused";

/// The steps every scenario checks (`py.exec`, `js.exec`, `rs.exec`, ...), with the values
/// each prints: JavaScript and Rust print `true` / `false` where Python prints `True` /
/// `False` in a few, and quote strings their own way.
fn scenario_checks(prefix: &str) -> Vec<(String, String)> {
    // Rust prints booleans and quotes strings as JavaScript does.
    let js = prefix != "py";
    let b = |v: bool| match (js, v) {
        (true, true) => "true",
        (true, false) => "false",
        (false, true) => "True",
        (false, false) => "False",
    };
    let name = format!("{prefix}-conf");
    [
        ("created", name.clone()),
        (
            "exec",
            if js {
                r#""hi\n","err\n",3"#.to_string()
            } else {
                r"b'hi\n',b'err\n',3".to_string()
            },
        ),
        ("exec_timeout", format!("{},124", b(true))),
        ("stream", format!("10485760,0,{}", b(true))),
        ("stdin", "ping pong,0".into()),
        ("signal", "143".into()),
        ("cancelled", "nothing-left".into()),
        (
            "files",
            format!("data,{},file:4,not_found,from-host", b(true)),
        ),
        ("fork", format!("{name},1,kept,forked")),
        ("publish", "127.0.0.1,True,1".into()),
        ("policy", "0,denied,0".into()),
        ("netlog", "denied-logged,denied-polled,counted".into()),
        ("secret", "placeholder,256,present,absent".into()),
        ("tmpfs", "1,8192".into()),
        ("plugin", "audited".into()),
        ("reply", "0,1".into()),
        ("request", format!("{prefix}.answer,3,AgentTimeout")),
        ("events_in", format!("{prefix}.step,1,True")),
        ("events_out", "0,1".into()),
        ("errors", format!("{name},notfound")),
        ("get", "attached".into()),
        ("removed", "True".into()),
        ("scenario", "done".into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{prefix}.{k}"), v))
    .collect()
}

/// The README's quick-start program in `lang`: the first ```lang block after `heading`.
fn quickstart(heading: &str, lang: &str) -> &'static str {
    let section = &README[README.find(heading).expect("the README's SDK section")..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).expect("a code block") + fence.len();
    let len = section[start..].find("```").expect("the block's end");
    &section[start..start + len]
}

/// A copy of the ELF `path` without debug information in `scratch` (the debug builds of the
/// native modules are most of the L1 image otherwise), or `path` where strip fails.
fn stripped(path: &Path, scratch: &Path) -> PathBuf {
    let out = scratch.join(path.file_name().expect("a file name"));
    let ok = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&out)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        out
    } else {
        path.to_path_buf()
    }
}

/// The installed Python package scripts/build-python made, if any.
fn python_package() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/python/venv/lib");
    std::fs::read_dir(venv)
        .ok()?
        .flatten()
        .map(|d| d.path().join("site-packages/msbvm"))
        .find(|p| p.join("__init__.py").is_file())
}

/// The Node package scripts/build-typescript made, if any.
fn node_package() -> Option<PathBuf> {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/typescript");
    pkg.join("msbvm.node").is_file().then_some(pkg)
}

/// Adds the Python interpreter and package; the script part and its checks, or `None` (with
/// the reason printed) where Python cannot run.
/// What a language adds to the peer part: its volumes and the command that runs its script.
struct PeerRun {
    volumes: String,
    run: String,
}

fn with_python(
    vm: NestedVmBuilder,
    scratch: &Path,
) -> (NestedVmBuilder, Option<(String, PeerRun)>) {
    let Some(pkg) = python_package() else {
        eprintln!(
            "skipped (Python): the package is not built (scripts/build-python --dev builds it)"
        );
        return (vm, None);
    };
    let keep = vm.clone();
    let Some(py) = add_python(vm, scratch) else {
        return (keep, None);
    };
    let python = py.command(false, "");
    let mut vm = py
        .vm
        .add_bytes("/e2e/sdk_conformance.py", PY_SCENARIO, 0o644)
        .add_bytes("/e2e/sdk_peer.py", PY_PEER, 0o644)
        .add_bytes(
            "/e2e/quickstart.py",
            quickstart("## Python SDK", "python"),
            0o644,
        );
    for entry in std::fs::read_dir(&pkg).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let l1 = format!("{L1_PY_SITE}/msbvm/{name}");
        if name.ends_with(".so") {
            vm = vm.add_program(stripped(&path, scratch), &l1);
        } else if path.is_file()
            && (name.ends_with(".py") || name.ends_with(".pyi") || name == "py.typed")
        {
            vm = vm.add_file(&path, &l1);
        }
    }
    let part = PY_PART
        .replace("@SITE@", L1_PY_SITE)
        .replace("@PYTHON@", python.trim_end());
    let peer = PeerRun {
        volumes: format!("-v {PYTHON_HOME}:{PYTHON_HOME}:ro -v {L1_PY_SITE}:{L1_PY_SITE}:ro"),
        run: format!(
            "$M exec sdk-parent -- env PYTHONPATH={L1_PY_SITE} {} /e2e/sdk_peer.py",
            python.trim_end()
        ),
    };
    (vm, Some((part, peer)))
}

/// Adds Node and the package; the script part, or `None` (with the reason printed).
fn with_node(vm: NestedVmBuilder, scratch: &Path) -> (NestedVmBuilder, Option<(String, PeerRun)>) {
    let Some(pkg) = node_package() else {
        eprintln!("skipped (Node.js): the package is not built (scripts/build-typescript --dev builds it)");
        return (vm, None);
    };
    if !Path::new(NODE).exists() {
        eprintln!("skipped (Node.js): no {NODE} to bring into L1");
        return (vm, None);
    }
    let node = std::fs::canonicalize(NODE).expect("node's real path");
    let mut vm = vm
        .add_program(&node, NODE)
        .add_program(
            stripped(&pkg.join("msbvm.node"), scratch),
            &format!("{L1_JS_PACKAGE}/msbvm.node"),
        )
        .add_bytes("/e2e/sdk_conformance.js", JS_SCENARIO, 0o644)
        .add_bytes("/e2e/sdk_peer.js", JS_PEER, 0o644)
        .add_bytes(
            "/e2e/quickstart.mjs",
            quickstart("## TypeScript SDK", "js"),
            0o644,
        );
    for file in ["index.js", "index.d.ts", "native.d.ts", "package.json"] {
        vm = vm.add_file(pkg.join(file), &format!("{L1_JS_PACKAGE}/{file}"));
    }
    let part = JS_PART
        .replace("@PKG@", L1_JS_PACKAGE)
        .replace("@NODE@", NODE);
    let site = Path::new(L1_JS_PACKAGE)
        .parent()
        .expect("the package's directory")
        .display()
        .to_string();
    let peer = PeerRun {
        volumes: format!("-v {site}:{site}:ro"),
        run: format!(
            "$M exec sdk-parent -- env MSBVM_JS_PACKAGE={L1_JS_PACKAGE} {NODE} /e2e/sdk_peer.js"
        ),
    };
    (vm, Some((part, peer)))
}

/// Adds the Rust scenario and quick-start, built static; the script part.
fn with_rust(vm: NestedVmBuilder) -> (NestedVmBuilder, String) {
    let built = build_static_bins(&[
        ("msbvm-tests", "msbvm-e2e-sdk-conformance"),
        ("msbvm-tests", "msbvm-e2e-rust-quickstart"),
    ])
    .expect("the static build of the Rust scenario");
    let vm = vm
        .add_program(&built["msbvm-e2e-sdk-conformance"], "/e2e/rs-conformance")
        .add_program(&built["msbvm-e2e-rust-quickstart"], "/e2e/rs-quickstart");
    (vm, RS_PART.to_string())
}

#[test]
fn the_readme_quick_starts_are_the_programs_the_suite_runs() {
    // Python's and JavaScript's are taken from the README itself; Rust's must be compiled, so
    // the README's copy must be the binary's source.
    assert!(
        RS_QUICKSTART.contains(quickstart("## Rust SDK", "rust")),
        "the README's Rust quick-start differs from tests/src/bin/msbvm-e2e-rust-quickstart.rs"
    );
    assert!(quickstart("## Python SDK", "python").contains("asyncio.run(main())"));
    assert!(quickstart("## TypeScript SDK", "js").contains("msbvm.Sandbox.create"));
}

#[test]
fn sdk_conformance_in_rust_python_and_javascript() {
    let Some(vm) = net_l1(L1_TIMEOUT) else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (vm, rs_part) = with_rust(vm);
    let (vm, py_part) = with_python(vm, dir.path());
    let (vm, js_part) = with_node(vm, dir.path());
    let mut script = prelude();
    script.push_str(&net_host(
        "mkdir -p /www && echo host-page > /www/index.html",
        "",
    ));
    script.push_str("cd /tmp\n");
    script.push_str(&rs_part);
    let mut expected = scenario_checks("rs");
    for (k, v) in [
        ("rs_rc", "0"),
        ("rs_quickstart_rc", "0"),
        ("rs_quickstart_out", "1,1,1"),
    ] {
        expected.push((k.to_string(), v.to_string()));
    }
    let mut peers = Vec::new();
    if let Some((part, peer)) = py_part {
        script.push_str(&part);
        peers.push(peer);
        expected.push(("py.peer".into(), PEER_CHECK.to_string()));
        expected.extend(scenario_checks("py"));
        for (k, v) in [
            ("py.sync", "sync,started,exited,x"),
            ("py.sync_removed", "True"),
            ("py_rc", "0"),
            ("py_quickstart_rc", "0"),
            ("py_quickstart_out", "1,1,1"),
        ] {
            expected.push((k.to_string(), v.to_string()));
        }
    }
    if let Some((part, peer)) = js_part {
        script.push_str(&part);
        peers.push(peer);
        expected.push(("js.peer".into(), PEER_CHECK.to_string()));
        expected.extend(scenario_checks("js"));
        for (k, v) in [
            ("js.aborted_create", "AbortError,gone"),
            ("js_rc", "0"),
            ("js_quickstart_rc", "0"),
            ("js_quickstart_out", "1,1,1"),
        ] {
            expected.push((k.to_string(), v.to_string()));
        }
    }
    if !peers.is_empty() {
        let volumes: Vec<&str> = peers.iter().map(|p| p.volumes.as_str()).collect();
        let runs: Vec<&str> = peers.iter().map(|p| p.run.as_str()).collect();
        script.push_str(
            &PEER_PART
                .replace("@VOLUMES@", &volumes.join(" "))
                .replace("@RUNS@", &runs.join("\n")),
        );
        expected.push(("peer_parent_rc".into(), "0".into()));
        expected.push(("peer_parent_removed".into(), "0".into()));
    }
    script.push_str(
        "check left $($M ls 2>/dev/null | grep -c -e 'py-' -e 'js-' -e 'ts-' -e 'rs-')\n",
    );
    expected.push(("left".into(), "0".into()));
    let Some(out) = run_scenarios(vm, &script) else {
        return;
    };
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_checks(&out.console, &expected);
}
