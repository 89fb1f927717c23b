//! The host's Python interpreter in L1: the distribution's `/usr/bin/python3` (with the
//! shared libraries it needs), its pure-Python standard library as one zip, and the few
//! standard extension modules asyncio needs, under `PYTHONHOME=/py`.
//!
//! The interpreter comes from the host rather than a download so that the suites stay
//! offline; a host without it skips the suites that need it, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::NestedVmBuilder;

/// The interpreter brought into L1 (at the same path).
pub const PYTHON: &str = "/usr/bin/python3";

/// `PYTHONHOME` in L1.
pub const PYTHON_HOME: &str = "/py";

/// The standard library's extension modules (from `lib-dynload`) that asyncio and the
/// packages the suites use import; the rest of the library is pure Python or built in.
const DYNLOAD: &[&str] = &["_contextvars", "_asyncio", "_queue", "_json"];

/// Makes the standard library zip and lists the extension modules; prints
/// `ZIP <name>` then `SO <path>` lines.
const PREPARE: &str = r#"
import glob, importlib.machinery, os, sys, sysconfig, zipfile
root = sysconfig.get_paths()["stdlib"]
name = "python%d%d.zip" % sys.version_info[:2]
skip = {"test", "idlelib", "tkinter", "lib2to3", "ensurepip", "distutils", "pydoc_data",
        "turtledemo", "lib-dynload", "dist-packages", "site-packages", "__pycache__",
        "sqlite3", "venv", "curses", "dbm", "xmlrpc", "ctypes", "multiprocessing",
        "idle_test", "tests"}
with zipfile.ZipFile(os.path.join(sys.argv[1], name), "w", zipfile.ZIP_DEFLATED) as z:
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in skip and not x.startswith("config-")]
        for f in files:
            if f.endswith(".py"):
                p = os.path.join(d, f)
                z.write(p, os.path.relpath(p, root))
print("ZIP", name)
dynload = os.path.join(root, "lib-dynload")
for mod in sys.argv[2:]:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = os.path.join(dynload, mod + suffix)
        if os.path.exists(p):
            print("SO", p)
            break
"#;

/// What [`add_python`] put in L1.
#[derive(Debug)]
pub struct PythonInL1 {
    /// The interpreter's real path (in L1 too).
    pub python: PathBuf,
    /// The L1 machine with it added.
    pub vm: NestedVmBuilder,
}

impl PythonInL1 {
    /// A shell command running the interpreter on `args` under its `PYTHONHOME`; with
    /// `exec`, the shell is replaced by it (for wrappers whose process must be Python's).
    pub fn command(&self, exec: bool, args: &str) -> String {
        format!(
            "PYTHONHOME={PYTHON_HOME} {}{} {args}",
            if exec { "exec " } else { "" },
            self.python.display()
        )
    }
}

/// Adds the host's Python to `vm`, staging files in `scratch` (which must outlive the run);
/// `None`, with the reason printed, where this host cannot provide it.
pub fn add_python(vm: NestedVmBuilder, scratch: &Path) -> Option<PythonInL1> {
    if !Path::new(PYTHON).exists() {
        eprintln!("skipped: no {PYTHON} to bring into L1");
        return None;
    }
    let python = std::fs::canonicalize(PYTHON).ok()?;
    let output = Command::new(&python)
        .args(["-I", "-c", PREPARE])
        .arg(scratch)
        .args(DYNLOAD)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(output) = output else {
        eprintln!("skipped: {PYTHON} could not zip its standard library");
        return None;
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut vm = vm.add_program(&python, &python.display().to_string());
    // `PYTHONHOME/lib/python3.X/lib-dynload` is on the interpreter's default path.
    let version = python
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for line in text.lines() {
        if let Some(zip) = line.strip_prefix("ZIP ") {
            vm = vm.add_file(scratch.join(zip), &format!("{PYTHON_HOME}/lib/{zip}"));
        } else if let Some(so) = line.strip_prefix("SO ") {
            let name = Path::new(so).file_name()?.to_string_lossy().into_owned();
            vm = vm.add_program(
                so,
                &format!("{PYTHON_HOME}/lib/{version}/lib-dynload/{name}"),
            );
        }
    }
    Some(PythonInL1 { python, vm })
}
