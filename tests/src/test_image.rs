//! The guest image of the secrets suite, built from the distribution's packages: curl (OpenSSL,
//! HTTP/2 through nghttp2), python3 (`ssl`, `http.client`, `urllib`), `openssl`, OpenBSD `nc`,
//! `ca-certificates` (a Debian CA bundle for the agent to add the sandbox CA to) and busybox.
//!
//! Like the L1 kernel ([`crate::distro`]), the packages come from `apt-get download` and are
//! unpacked with `dpkg -x` (no maintainer scripts run, so the steps those would take, such as
//! building the CA bundle, are done here). The closure is `apt-cache depends --recurse` of
//! [`ROOTS`] less install-time machinery ([`SKIPPED`]). The result is checked on the host by
//! running the image's own curl and python through the image's own dynamic loader, then
//! written as an OCI image layout (one uncompressed layer, cheap to unpack under emulation)
//! that L1 imports with `msbvm import`. Everything is cached under [`cache_dir`], so a
//! machine builds it once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::distro::{cache_dir, have_program};
use crate::error::{Error, Result};

/// The reference the image is imported under in L1.
pub const IMAGE_REF: &str = "msbvm-e2e/secrets:1";
/// The packages the image is built around (their dependencies come along).
pub const ROOTS: [&str; 7] = [
    "curl",
    // `nc.openbsd -U`, for the events suite's shell client on the guest socket (busybox nc
    // has no -U, and busybox sh runs its own applet for a plain `nc`).
    "netcat-openbsd",
    "python3-minimal",
    "libpython3.11-stdlib",
    "ca-certificates",
    "openssl",
    "busybox-static",
];
/// Dependencies only package installation needs (maintainer scripts, debconf, perl).
pub const SKIPPED: [&str; 20] = [
    "debconf",
    "cdebconf",
    "dpkg",
    "install-info",
    "perl",
    "perl-base",
    "perl-modules-5.36",
    "libperl5.36",
    "libgdbm6",
    "libgdbm-compat4",
    "tar",
    "libacl1",
    "libselinux1",
    "libpcre2-8-0",
    "libdebian-installer4",
    "libnewt0.52",
    "libslang2",
    "libtextwrap1",
    "readline-common",
    "gcc-12-base",
];
/// Bumped whenever the recipe changes, so that a cached image from an older one is not used.
const RECIPE: u32 = 4;
/// Documentation and translations: nothing in the suite reads them.
const PRUNED: [&str; 6] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/lib/x86_64-linux-gnu/gconv",
];
/// Python modules compiled at build time, so the guest does not compile them on every run.
const PY_WARM: &str = "import ssl, http.client, urllib.request, urllib.parse, json, base64, socket, os, time, hashlib";

/// The built image.
#[derive(Debug, Clone)]
pub struct TestImage {
    /// The unpacked root filesystem (usable with `--rootfs` or `chroot`).
    pub rootfs: PathBuf,
    /// The OCI image layout holding it as [`IMAGE_REF`], for `msbvm import`.
    pub layout: PathBuf,
}

impl TestImage {
    /// The cached image, built on first use (a download of about 15 MB).
    pub fn prepare() -> Result<Self> {
        let dir = cache_dir().join(format!("secrets-image-v{RECIPE}"));
        // Tests and benchmarks running at once would build it over each other.
        let _lock = lock(&cache_dir().join(format!("secrets-image-v{RECIPE}.lock")))?;
        let image = TestImage {
            rootfs: dir.join("rootfs"),
            layout: dir.join("oci"),
        };
        if image.layout.join("index.json").is_file() {
            return Ok(image);
        }
        for (tool, install) in [("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg", "dpkg")] {
            if !have_program(tool) {
                return Err(Error::missing(tool, format!("apt-get install {install}")));
            }
        }
        eprintln!(
            "msbvm-tests: building the secrets test image in {}",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
        let work = dir.join("debs");
        mkdir(&work)?;
        let packages = closure()?;
        download(&packages, &work)?;
        unpack(&work, &image.rootfs)?;
        let _ = fs::remove_dir_all(&work);
        finish_rootfs(&image.rootfs)?;
        verify(&image.rootfs)?;
        let part = dir.join("oci.part");
        let _ = fs::remove_dir_all(&part);
        write_layout(&image.rootfs, &part)?;
        fs::rename(&part, &image.layout).map_err(Error::io("renaming the OCI layout"))?;
        Ok(image)
    }
}

/// An exclusive lock on `path` (created if missing), held until the file is dropped.
fn lock(path: &Path) -> Result<fs::File> {
    mkdir(path.parent().unwrap_or(Path::new("/")))?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("cannot open {}", path.display())))?;
    file.lock()
        .map_err(Error::io(format!("cannot lock {}", path.display())))?;
    Ok(file)
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(Error::io(format!("cannot create {}", dir.display())))
}

fn image_err(what: impl Into<String>) -> Error {
    Error::Harness(format!("building the secrets test image: {}", what.into()))
}

/// Runs `cmd`, failing with its stderr; returns its stdout.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("cannot run {what}")))?;
    if !out.status.success() {
        return Err(image_err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package names of the image: [`ROOTS`] and their recursive dependencies, less
/// [`SKIPPED`] and virtual packages.
pub fn closure() -> Result<Vec<String>> {
    let text = run(
        Command::new("apt-cache")
            .args(["depends", "--recurse", "--no-recommends", "--no-suggests"])
            .args([
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
            ])
            .args(ROOTS),
        "apt-cache depends",
    )?;
    Ok(parse_closure(&text))
}

fn parse_closure(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.trim().is_empty())
        // On a multiarch host (`scripts/setup-arm64` adds arm64) the closure also lists the
        // foreign architectures' builds (`openssl:arm64`); unpacked over the native ones they
        // leave an image whose programs cannot run here.
        .filter(|l| !l.contains(':'))
        .map(|l| l.trim().to_string())
        .filter(|n| !SKIPPED.contains(&n.as_str()))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn download(packages: &[String], work: &Path) -> Result<()> {
    run(
        Command::new("apt-get")
            .args(["download", "-q"])
            .args(packages)
            .current_dir(work),
        "apt-get download (run `apt-get update` if packages are not found)",
    )
    .map(drop)
}

fn unpack(work: &Path, root: &Path) -> Result<()> {
    mkdir(root)?;
    let mut debs: Vec<PathBuf> = fs::read_dir(work)
        .map_err(Error::io("listing the downloaded packages"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort();
    for deb in &debs {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(root), "dpkg -x")?;
    }
    Ok(())
}

/// What maintainer scripts and a base system would have provided.
fn finish_rootfs(root: &Path) -> Result<()> {
    for p in PRUNED {
        let _ = fs::remove_dir_all(root.join(p));
    }
    for (d, mode) in [
        ("tmp", 0o1777),
        ("root", 0o700),
        ("proc", 0o555),
        ("sys", 0o555),
    ] {
        mkdir(&root.join(d))?;
        set_mode(&root.join(d), mode)?;
    }
    for d in ["dev", "run", "etc/ssl/certs", "usr/lib/ssl", "e2e"] {
        mkdir(&root.join(d))?;
    }
    let files = [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        (
            "etc/os-release",
            "PRETTY_NAME=\"msbvm e2e image (Debian 12 packages)\"\nID=debian\nVERSION_ID=\"12\"\n",
        ),
    ];
    for (path, text) in files {
        write(&root.join(path), text.as_bytes())?;
    }
    write(
        &root.join("etc/ssl/certs/ca-certificates.crt"),
        &ca_bundle(root)?,
    )?;
    let cert_pem = root.join("usr/lib/ssl/cert.pem");
    if fs::symlink_metadata(&cert_pem).is_err() {
        std::os::unix::fs::symlink("/etc/ssl/certs/ca-certificates.crt", &cert_pem)
            .map_err(Error::io("linking cert.pem"))?;
    }
    busybox_links(root)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).map_err(Error::io(format!("cannot write {}", path.display())))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("cannot chmod {}", path.display())))
}

/// `update-ca-certificates`' bundle: every certificate the package ships, in name order.
fn ca_bundle(root: &Path) -> Result<Vec<u8>> {
    let dir = root.join("usr/share/ca-certificates/mozilla");
    let mut certs: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(Error::io(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    certs.sort();
    if certs.len() < 100 {
        return Err(image_err(format!("only {} CA certificates", certs.len())));
    }
    let mut bundle = Vec::new();
    for c in certs {
        let mut pem = fs::read(&c).map_err(Error::io(format!("cannot read {}", c.display())))?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        bundle.extend_from_slice(&pem);
    }
    Ok(bundle)
}

/// A `/bin` link to busybox for each applet no package provides as a real program.
fn busybox_links(root: &Path) -> Result<()> {
    let busybox = root.join("bin/busybox");
    let list = run(Command::new(&busybox).arg("--list"), "busybox --list")?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let taken = ["bin", "usr/bin", "sbin", "usr/sbin"]
            .iter()
            .any(|d| fs::symlink_metadata(root.join(d).join(applet)).is_ok());
        if !taken {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
                .map_err(Error::io(format!("linking {applet}")))?;
        }
    }
    Ok(())
}

/// Runs a program of the image on the host through the image's own loader and libraries
/// (host and image are the same distribution release), with a clean environment.
fn run_in_image(root: &Path, argv: &[&str], what: &str) -> Result<String> {
    let loader = root.join("lib64/ld-linux-x86-64.so.2");
    let libs = format!(
        "{0}/lib/x86_64-linux-gnu:{0}/usr/lib/x86_64-linux-gnu",
        root.display()
    );
    run(
        Command::new(loader)
            .arg("--library-path")
            .arg(libs)
            .arg(root.join(argv[0].trim_start_matches('/')))
            .args(&argv[1..])
            .env_clear()
            .env("LC_ALL", "C"),
        what,
    )
}

/// The image's curl and python work (and python's modules are compiled, in passing).
fn verify(root: &Path) -> Result<()> {
    let version = run_in_image(root, &["/usr/bin/curl", "--version"], "the image's curl")?;
    for feature in ["OpenSSL", "HTTP2", "nghttp2"] {
        if !version.contains(feature) {
            return Err(image_err(format!("curl lacks {feature}: {version}")));
        }
    }
    let out = run_in_image(
        root,
        &[
            "/usr/bin/python3.11",
            "-c",
            &format!("{PY_WARM}; print('py-ok')"),
        ],
        "the image's python3",
    )?;
    if out.trim() != "py-ok" {
        return Err(image_err(format!("python3 printed {out:?}")));
    }
    run_in_image(root, &["/bin/nc.openbsd", "-h"], "the image's nc.openbsd").or_else(|e| {
        // OpenBSD nc prints its usage and exits 1 on -h; only a missing -U is fatal.
        if e.to_string().contains("-U") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    run_in_image(
        root,
        &["/usr/bin/openssl", "version"],
        "the image's openssl",
    )
    .map(drop)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `root` as an OCI image layout at `out` (one plain tar layer) named [`IMAGE_REF`].
fn write_layout(root: &Path, out: &Path) -> Result<()> {
    let blobs = out.join("blobs/sha256");
    mkdir(&blobs)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", root)
        .map_err(Error::io("building the image layer"))?;
    let layer = tar
        .into_inner()
        .map_err(Error::io("building the image layer"))?;
    let layer_digest = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
            "WorkingDir": "/root",
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let config = serde_json::to_vec(&config).map_err(|e| image_err(e.to_string()))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| image_err(e.to_string()))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{}", sha256_hex(&manifest)),
                       "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": IMAGE_REF}}],
    });
    for blob in [&layer, &config, &manifest] {
        write(&blobs.join(sha256_hex(blob)), blob)?;
    }
    write(
        &out.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let index = serde_json::to_vec(&index).map_err(|e| image_err(e.to_string()))?;
    write(&out.join("index.json"), &index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_drops_virtual_and_skipped_packages() {
        let text = "curl\n  Depends: libc6\nlibc6\n<debconf-2.0>\ndebconf\nperl-base\ncurl\n";
        assert_eq!(parse_closure(text), ["curl", "libc6"]);
    }

    #[test]
    fn closure_keeps_the_native_architecture_only() {
        let text = "openssl
  Depends: libssl3
libssl3
openssl:arm64
  Depends: libc6:arm64
libc6:arm64
";
        assert_eq!(parse_closure(text), ["libssl3", "openssl"]);
    }
}
