//! Image pulls with progress through the Python and Node.js SDKs, on the host (no VM): a real
//! registry (the distribution's `docker-registry`) holds the test image, and each SDK pulls
//! it into an empty msbvm home with a progress callback, which must see both layers download
//! and unpack.
//!
//! Needs the packages scripts/build-python and scripts/build-typescript built (CI builds them
//! first); a missing one, or a missing registry or busybox, is skipped with one line.
//!
//! `cargo test -p msbvm-tests --test sdk_pull_host -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;

use msbvm_tests::registry::{self, LocalRegistry, TEST_IMAGE};

const BUSYBOX: &str = "/bin/busybox";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args` with `MSBVM_HOME` set to a fresh directory; its stdout, trimmed.
fn run(program: &Path, args: &[&str], home: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .env("MSBVM_HOME", home)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} failed: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const PYTHON_PULL: &str = r#"
import asyncio, sys, msbvm
ref, host = sys.argv[1], sys.argv[2]
events = []
info = asyncio.run(msbvm.pull(ref, progress=events.append, plain_http=[host]))
kinds = [e.kind for e in events]
print(kinds.count("download_finished"), kinds.count("unpack_finished"), info.layers, info.digest[:7])
"#;

const NODE_PULL: &str = r#"
const msbvm = require(process.argv[1]);
const [ref, host] = [process.argv[2], process.argv[3]];
const events = [];
msbvm.pull(ref, { plainHttp: [host], onProgress: (e) => events.push(e) }).then((info) => {
  // The progress calls are queued on the event loop before the pull's result.
  setImmediate(() => {
    const count = (k) => events.filter((e) => e.kind === k).length;
    console.log(count('download_finished'), count('unpack_finished'), info.layers, info.digest.slice(0, 7));
  });
}, (e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn pulls_report_progress_in_python_and_javascript() {
    if !registry::available() || !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: no docker-registry or {BUSYBOX} on this host");
        return;
    }
    let python = workspace().join("target/python/venv/bin/python");
    let node_pkg = workspace().join("sdk/typescript");
    let python_ok = python.exists()
        && Command::new(&python)
            .args(["-c", "import msbvm"])
            .status()
            .is_ok_and(|s| s.success());
    let node_ok = node_pkg.join("msbvm.node").is_file() && Path::new("/usr/bin/node").exists();
    if !python_ok {
        eprintln!("skipped (Python): the package is not built (scripts/build-python --dev)");
    }
    if !node_ok {
        eprintln!("skipped (Node.js): the package is not built (scripts/build-typescript --dev)");
    }
    if !python_ok && !node_ok {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let storage = dir.path().join("registry");
    registry::fill_storage(&storage, Path::new(BUSYBOX)).expect("pushing the test image");
    let served = LocalRegistry::start(&storage).expect("serving the test image");
    let reference = format!("{}/{TEST_IMAGE}", served.host);
    // Two layers, each downloaded and unpacked once (the config blob is not reported).
    let expected_prefix = "2 2 2 sha256:";
    if python_ok {
        let home = dir.path().join("py-home");
        let out = run(
            &python,
            &["-c", PYTHON_PULL, &reference, &served.host],
            &home,
        );
        assert!(out.starts_with(expected_prefix), "Python: {out}");
    }
    if node_ok {
        let home = dir.path().join("js-home");
        let pkg = node_pkg.display().to_string();
        let out = run(
            Path::new("/usr/bin/node"),
            &["-e", NODE_PULL, &pkg, &reference, &served.host],
            &home,
        );
        assert!(out.starts_with(expected_prefix), "Node.js: {out}");
    }
}
