//! Builds the layer and config of the embedded default image (`msbvm-default:latest`) from
//! the distribution's static busybox: `/bin/busybox`, symlinks for common applets, a minimal
//! `/etc` and the usual empty directories. Entries are sorted and stamped with fixed owners
//! and mtimes so the layer's digest only changes when busybox does.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The host's static busybox (also the target's when not cross-compiling).
const BUSYBOX: &str = "/bin/busybox";
/// Names the target's static busybox when cross-compiling.
const BUSYBOX_ENV: &str = "MSBVM_DEFAULT_IMAGE_BUSYBOX";

/// The busybox to embed, and whether it runs on this (the build) machine.
fn busybox_source() -> (PathBuf, bool) {
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let native = target.is_empty() || target == std::env::consts::ARCH;
    match std::env::var_os(BUSYBOX_ENV).filter(|v| !v.is_empty()) {
        Some(path) => (PathBuf::from(path), native),
        None if native => (PathBuf::from(BUSYBOX), true),
        None => fail(&format!(
            "this build is for {target} and {BUSYBOX} is the host's; set {BUSYBOX_ENV} to a \
             static busybox for {target} (scripts/setup-arm64 does)"
        )),
    }
}

/// Applets linked into `/bin` (those this busybox lacks are left out).
const APPLETS: &[&str] = &[
    "[",
    "ash",
    "awk",
    "base64",
    "basename",
    "cat",
    "chgrp",
    "chmod",
    "chown",
    "clear",
    "cmp",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "diff",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "egrep",
    "env",
    "expr",
    "false",
    "fgrep",
    "find",
    "free",
    "grep",
    "gunzip",
    "gzip",
    "head",
    "hexdump",
    "hostname",
    "httpd",
    "id",
    "ifconfig",
    "ip",
    "kill",
    "killall",
    "less",
    "ln",
    "ls",
    "md5sum",
    "mkdir",
    "mknod",
    "mktemp",
    "more",
    "mount",
    "mv",
    "nc",
    "netstat",
    "nohup",
    "nproc",
    "nslookup",
    "od",
    "pgrep",
    "ping",
    "pkill",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "rev",
    "rm",
    "rmdir",
    "route",
    "sed",
    "seq",
    "sh",
    "sha1sum",
    "sha256sum",
    "sha512sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tac",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "traceroute",
    "true",
    "umount",
    "uname",
    "uniq",
    "unzip",
    "uptime",
    "vi",
    "watch",
    "wc",
    "wget",
    "which",
    "whoami",
    "xargs",
    "yes",
    "zcat",
];

enum Node {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(&'static str),
}

fn main() {
    println!("cargo:rerun-if-env-changed={BUSYBOX_ENV}");
    let (path, native) = busybox_source();
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rerun-if-changed=build.rs");
    let layer = layer_tar(&tree(read_busybox(&path, native), &path, native));
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer)
        .unwrap_or_else(|e| fail(&format!("compressing the default layer: {e}")));
    let compressed = gz
        .finish()
        .unwrap_or_else(|e| fail(&format!("compressing the default layer: {e}")));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let config = config(&diff_id);
    write(&out.join("default-layer.tar.gz"), &compressed);
    write(&out.join("default-config.json"), config.as_bytes());
    // Their digests, so a start does not hash the embedded megabyte again (a sandbox's
    // creator and its runtime each check the default image is installed).
    write(
        &out.join("default-digests.rs"),
        format!(
            "/// `sha256:` digest of the embedded layer.\n\
             const LAYER_DIGEST: &str = \"sha256:{:x}\";\n\
             /// `sha256:` digest of the embedded configuration.\n\
             const CONFIG_DIGEST: &str = \"sha256:{:x}\";\n",
            Sha256::digest(&compressed),
            Sha256::digest(config.as_bytes())
        )
        .as_bytes(),
    );
}

/// The static busybox at `path`, patched (see [`without_wget_timeout_crash`]).
fn read_busybox(path: &Path, native: bool) -> Vec<u8> {
    let busybox = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => fail(&format!("cannot read {} ({e})", path.display())),
    };
    let busybox = without_wget_timeout_crash(busybox, path, native);
    if !is_static_elf(&busybox) {
        fail(&format!(
            "{} is not a statically linked ELF executable",
            path.display()
        ));
    }
    busybox
}

/// The default image's tree: directories, busybox and the applets it has, a few `/etc`
/// files.
fn tree(busybox: Vec<u8>, path: &Path, native: bool) -> BTreeMap<String, Node> {
    // A foreign busybox cannot say which applets it has: link them all (the distribution's
    // builds for every architecture share one configuration).
    let available = native
        .then(|| Command::new(path).arg("--list").output().ok())
        .flatten()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        });

    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    // Every mount point the agent uses is here (`run` too): one it must create costs a
    // virtio-fs round trip on each boot.
    for dir in [
        "bin", "dev", "etc", "proc", "run", "sys", "usr", "usr/bin", "var",
    ] {
        tree.insert(format!("{dir}/"), Node::Dir(0o755));
    }
    tree.insert("root/".into(), Node::Dir(0o700));
    tree.insert("tmp/".into(), Node::Dir(0o1777));
    tree.insert("bin/busybox".into(), Node::File(0o755, busybox));
    for applet in APPLETS {
        if available
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == applet))
        {
            tree.insert(format!("bin/{applet}"), Node::Link("busybox"));
        }
    }
    tree.insert("usr/bin/env".into(), Node::Link("../../bin/busybox"));
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        (
            "etc/os-release",
            "NAME=\"msbvm default\"\nID=msbvm\nPRETTY_NAME=\"msbvm default image (busybox)\"\n",
        ),
    ];
    for (path, text) in files {
        tree.insert(path.into(), Node::File(0o644, text.as_bytes().to_vec()));
    }
    tree
}

/// `tree` as a reproducible tar archive (owner root, time 0).
fn layer_tar(tree: &BTreeMap<String, Node>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, node) in tree {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let result = match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                builder.append_data(&mut h, path, std::io::empty())
            }
            Node::File(mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                builder.append_data(&mut h, path, data.as_slice())
            }
            Node::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                builder.append_link(&mut h, path, target)
            }
        };
        result.unwrap_or_else(|e| fail(&format!("building the default layer: {e}")));
    }
    builder
        .into_inner()
        .unwrap_or_else(|e| fail(&format!("building the default layer: {e}")))
}

/// The image config of the one layer `diff_id` for the target architecture.
fn config(diff_id: &str) -> String {
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "amd64",
        Ok("aarch64") => "arm64",
        Ok(other) => other.to_string().leak(),
        Err(_) => "amd64",
    };
    format!(
        concat!(
            "{{\"architecture\":\"{}\",\"os\":\"linux\",",
            "\"config\":{{\"Env\":[\"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"],",
            "\"Cmd\":[\"/bin/sh\"],\"WorkingDir\":\"/\"}},",
            "\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{}\"]}}}}"
        ),
        arch, diff_id
    )
}

/// The option string of busybox's `wget` (1.30 to 1.36): `-T` takes an
/// integer (`T:+`), and the string after the NUL is getopt32's
/// "complementary" rules.
const WGET_OPTIONS: &[u8] = b"^cqSO:o:P:Y:U:T:+";

/// Debian builds busybox before 1.36.1-5 without `FEATURE_WGET_TIMEOUT`, yet
/// `wget` still parses `-T SEC` as an integer and stores it through a NULL
/// pointer: `wget -T 10 URL` dies with SIGSEGV before doing anything (busybox
/// issue 124; this, not name lookup, is why `wget` "crashed"). When this
/// busybox has that bug, patch the option string to `T:` (a string option,
/// which getopt32 drops when it has no destination, as the upstream fix
/// does), so `-T` is accepted and ignored. The `+` is removed by shifting
/// the rest of the option string and its complementary rules left by one;
/// nothing points into them but the start. The patched binary is run once
/// to prove it.
fn without_wget_timeout_crash(busybox: Vec<u8>, path: &Path, native: bool) -> Vec<u8> {
    let dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bb");
    // A foreign busybox is patched whenever its option string has the bug's form: it cannot
    // be run here to find out.
    if native && !wget_timeout_crashes(path) {
        return busybox;
    }
    let starts: Vec<usize> = busybox
        .windows(WGET_OPTIONS.len())
        .enumerate()
        .filter(|(_, w)| *w == WGET_OPTIONS)
        .map(|(i, _)| i)
        .collect();
    let [start] = starts[..] else {
        println!("cargo:warning=busybox wget crashes on -T and its option string was not found once; left as is");
        return busybox;
    };
    let plus = start + WGET_OPTIONS.len() - 1;
    let Some(end) = busybox[plus..]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .nth(1)
        .map(|(i, _)| plus + i)
    else {
        return busybox;
    };
    let mut patched = busybox.clone();
    patched.copy_within(plus + 1..=end, plus);
    patched[end] = 0;
    if !native {
        return patched;
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| fail(&format!("creating {}: {e}", dir.display())));
    let copy = dir.join("busybox");
    write(&copy, &patched);
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| fail(&format!("chmod {}: {e}", copy.display())));
    if wget_timeout_crashes(&copy) {
        println!("cargo:warning=patching busybox wget's -T crash did not help; left as is");
        return busybox;
    }
    patched
}

/// Whether `busybox wget -T 1` to a closed local port dies of a signal.
fn wget_timeout_crashes(busybox: &Path) -> bool {
    use std::os::unix::process::ExitStatusExt;
    Command::new(busybox)
        .args([
            "wget",
            "-q",
            "-T",
            "1",
            "-O",
            "/dev/null",
            "http://127.0.0.1:9/",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.signal().is_some())
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", path.display())));
}

/// A 64-bit little-endian ELF without a `PT_INTERP` program header (no dynamic loader).
fn is_static_elf(b: &[u8]) -> bool {
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as usize)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
    };
    if !b.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != 3)
    })
}

fn fail(reason: &str) -> ! {
    panic!(
        "msbvm-image embeds a default image built from the distribution's static busybox, but {reason}. \
         Install it with `apt-get install busybox-static`."
    );
}
