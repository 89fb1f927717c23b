//! The host's TLS interception CA in the guest, and the environment every exec gets for it
//! and for the sandbox's secrets.
//!
//! At boot the agent adds the CA certificate to the trust stores of the common distributions
//! (Debian/Ubuntu, Alpine, Red Hat) and picks one bundle file that holds it; every exec then
//! gets `SSL_CERT_FILE` and friends pointing at that bundle, unless the exec sets them, and
//! `NAME=<placeholder>` for every secret. An image with a read-only or unusual layout is
//! logged and booted anyway: interception then fails in the guest's TLS clients, visibly.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock};

use super::boot_files::{place, Placement};

/// The variables that point TLS clients (OpenSSL, Python, curl, Node, git) at the bundle.
pub const CA_ENV_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

/// Per-distribution anchor files: (directory that must exist, file written in it).
const ANCHORS: &[(&str, &str)] = &[
    // Debian/Ubuntu: `update-ca-certificates` picks it up if the guest runs it.
    (
        "usr/local/share/ca-certificates",
        "usr/local/share/ca-certificates/msbvm.crt",
    ),
    // Red Hat: `update-ca-trust` likewise.
    (
        "etc/pki/ca-trust/source/anchors",
        "etc/pki/ca-trust/source/anchors/msbvm.pem",
    ),
];

/// Bundle files, in the order the exec environment prefers them.
const BUNDLES: &[&str] = &[
    // Debian/Ubuntu and Alpine.
    "etc/ssl/certs/ca-certificates.crt",
    // Red Hat, Fedora.
    "etc/pki/tls/certs/ca-bundle.crt",
    // Alpine (often a link to the first), LibreSSL, macOS-style layouts.
    "etc/ssl/cert.pem",
];

/// Where a bundle is made when the image has none.
const NEW_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// Where a bundle goes when the root is read-only (the agent mounts a tmpfs on `/run`).
const FALLBACK_BUNDLE: &str = "run/msbvm/ca-certificates.crt";

/// Environment the agent adds to every exec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootEnv {
    /// Set unless the exec sets them (the CA bundle variables).
    pub defaults: Vec<(String, String)>,
    /// Always set (the secrets' placeholders: a placeholder is what the name means here).
    pub forced: Vec<(String, String)>,
}

/// Set at boot, and again when a restored guest takes a fork's identity.
static BOOT_ENV: RwLock<BootEnv> = RwLock::new(BootEnv {
    defaults: Vec::new(),
    forced: Vec::new(),
});
/// How boot files reach this guest's root, recorded at boot for a fork's CA.
static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Records what every later exec gets.
pub fn set_boot_env(env: BootEnv) {
    *BOOT_ENV.write().unwrap_or_else(PoisonError::into_inner) = env;
}

/// What [`set_boot_env`] recorded (empty before boot set-up or without interception).
pub fn boot_env() -> BootEnv {
    BOOT_ENV
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// Trusts `ca_pem` under `root` (when given) and makes `secret_env` the `(NAME, placeholder)`
/// pairs every later exec gets, in place of any before. Without a new CA the bundle variables
/// stay what they were. At boot (`placement` given) and when a fork takes its identity
/// (`None`: the placement recorded at boot). Returns the problems met, to log: TLS clients
/// then refuse intercepted hosts, visibly, and everything else works.
pub fn take_interception(
    root: &Path,
    ca_pem: Option<&str>,
    secret_env: &[(String, String)],
    placement: Option<Placement>,
) -> Vec<String> {
    let placement = match placement {
        Some(p) => *PLACEMENT.get_or_init(|| p),
        None => PLACEMENT.get().copied().unwrap_or(Placement::InPlace),
    };
    let mut problems = Vec::new();
    let defaults = match ca_pem {
        Some(pem) => {
            let (bundle, found) = install_ca(root, pem, placement);
            problems.extend(found);
            if bundle.is_none() {
                problems.push(
                    "no bundle holds the CA; TLS clients will refuse intercepted hosts".into(),
                );
            }
            boot_env_for(bundle.as_deref(), &[]).defaults
        }
        None => boot_env().defaults,
    };
    set_boot_env(BootEnv {
        defaults,
        forced: secret_env.to_vec(),
    });
    problems
}

/// `env` with `boot`'s variables merged in: defaults where `env` has no such name, forced
/// ones replacing any of that name.
pub fn merge(env: &[(String, String)], boot: &BootEnv) -> Vec<(String, String)> {
    let forced = |k: &str| boot.forced.iter().any(|(f, _)| f == k);
    let mut out: Vec<(String, String)> = env.iter().filter(|(k, _)| !forced(k)).cloned().collect();
    for (k, v) in &boot.defaults {
        if !env.iter().any(|(e, _)| e == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out.extend(boot.forced.iter().cloned());
    out
}

/// Installs `ca_pem` under `root` (`/` in the guest) the way `placement` says; returns the
/// guest path of the bundle that holds it (`None` when none could be written) and the problems
/// met, to log.
pub fn install_ca(
    root: &Path,
    ca_pem: &str,
    placement: Placement,
) -> (Option<String>, Vec<String>) {
    let mut problems = Vec::new();
    let pem = normalized(ca_pem);
    // Anchors only matter to a later `update-ca-certificates`, which a root shared with the
    // host must not run against its files anyway: they are only written on the sandbox's own.
    if placement == Placement::InPlace {
        for (dir, file) in ANCHORS {
            if root.join(dir).is_dir() {
                if let Err(e) = std::fs::write(root.join(file), &pem) {
                    problems.push(format!("cannot write /{file}: {e}"));
                }
            }
        }
    }
    let mut seen = Vec::new();
    let mut chosen = None;
    for bundle in BUNDLES {
        let path = root.join(bundle);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        // A link to a bundle already handled (Alpine's cert.pem) is not appended twice.
        let id = (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let added = match placement {
            Placement::InPlace => append_once(&path, &pem),
            Placement::Shadowed => std::fs::read_to_string(&path).and_then(|current| {
                let contents = with_ca(&current, &pem);
                place(root, bundle, contents.as_bytes(), placement)
            }),
        };
        match added {
            Ok(()) => {
                chosen.get_or_insert_with(|| format!("/{bundle}"));
            }
            Err(e) => problems.push(format!("cannot add the CA to /{bundle}: {e}")),
        }
    }
    if chosen.is_none() {
        // A copy keeps the image's own roots, so connections that are not intercepted work.
        let system = BUNDLES
            .iter()
            .find_map(|b| std::fs::read_to_string(root.join(b)).ok())
            .map(|t| normalized(&t))
            .unwrap_or_default();
        let contents = format!("{system}{pem}");
        // A shared root gets no new file: the bundle lives on `/run` only.
        let targets: &[&str] = match placement {
            Placement::InPlace => &[NEW_BUNDLE, FALLBACK_BUNDLE],
            Placement::Shadowed => &[FALLBACK_BUNDLE],
        };
        for bundle in targets {
            match create_bundle(&root.join(bundle), &contents) {
                Ok(()) => {
                    chosen = Some(format!("/{bundle}"));
                    break;
                }
                Err(e) => problems.push(format!("cannot create /{bundle}: {e}")),
            }
        }
    }
    (chosen, problems)
}

/// `current` (a bundle's text) with `pem` appended unless it already holds it.
fn with_ca(current: &str, pem: &str) -> String {
    if current.contains(pem.trim_end()) {
        return current.to_owned();
    }
    let separator = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!("{current}{separator}{pem}")
}

/// The CA PEM ending in one newline, so appended bundles stay well-formed.
fn normalized(pem: &str) -> String {
    format!("{}\n", pem.trim_end())
}

fn append_once(path: &Path, pem: &str) -> io::Result<()> {
    let current = std::fs::read_to_string(path)?;
    if current.contains(pem.trim_end()) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    let separator = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    file.write_all(format!("{separator}{pem}").as_bytes())
}

fn create_bundle(path: &PathBuf, pem: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, pem)
}

/// The exec environment for a CA bundle at `bundle` and the secrets' `(NAME, placeholder)`.
pub fn boot_env_for(bundle: Option<&str>, secret_env: &[(String, String)]) -> BootEnv {
    BootEnv {
        defaults: bundle
            .map(|b| {
                CA_ENV_VARS
                    .iter()
                    .map(|k| (k.to_string(), b.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        forced: secret_env.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn merge_keeps_the_callers_ca_vars_and_forces_placeholders() {
        let boot = boot_env_for(
            Some("/etc/ssl/certs/ca-certificates.crt"),
            &pairs(&[("API_KEY", "msbvm_placeholder_ab")]),
        );
        let env = pairs(&[
            ("PATH", "/bin"),
            ("CURL_CA_BUNDLE", "/mine.pem"),
            ("API_KEY", "from-the-image"),
        ]);
        let merged = merge(&env, &boot);
        let get = |k: &str| {
            let found: Vec<_> = merged.iter().filter(|(n, _)| n == k).collect();
            assert_eq!(found.len(), 1, "{k} in {merged:?}");
            found[0].1.clone()
        };
        assert_eq!(get("PATH"), "/bin");
        assert_eq!(get("CURL_CA_BUNDLE"), "/mine.pem");
        assert_eq!(get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt");
        assert_eq!(
            get("NODE_EXTRA_CA_CERTS"),
            "/etc/ssl/certs/ca-certificates.crt"
        );
        assert_eq!(get("API_KEY"), "msbvm_placeholder_ab");
        assert_eq!(merge(&env, &BootEnv::default()), env);
    }

    #[test]
    fn debian_layout_gets_the_anchor_and_the_bundle_once() {
        let root = tempfile::TempDir::new().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/local/share/ca-certificates")).unwrap();
        std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        std::fs::write(r.join("etc/ssl/certs/ca-certificates.crt"), "SYSTEM ROOTS").unwrap();
        // Alpine-style link: must not get the CA twice.
        std::os::unix::fs::symlink("certs/ca-certificates.crt", r.join("etc/ssl/cert.pem"))
            .unwrap();
        let (bundle, problems) = install_ca(r, CA, Placement::InPlace);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            bundle.as_deref(),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let text = std::fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert!(text.starts_with("SYSTEM ROOTS\n-----BEGIN"), "{text}");
        assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 1);
        let anchor =
            std::fs::read_to_string(r.join("usr/local/share/ca-certificates/msbvm.crt")).unwrap();
        assert_eq!(anchor, format!("{CA}\n"));
        // Idempotent: a second boot on the same root adds nothing.
        install_ca(r, CA, Placement::InPlace);
        let again = std::fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn red_hat_layout_uses_its_bundle() {
        let root = tempfile::TempDir::new().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/pki/ca-trust/source/anchors")).unwrap();
        std::fs::create_dir_all(r.join("etc/pki/tls/certs")).unwrap();
        std::fs::write(r.join("etc/pki/tls/certs/ca-bundle.crt"), "ROOTS\n").unwrap();
        let (bundle, problems) = install_ca(r, CA, Placement::InPlace);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(bundle.as_deref(), Some("/etc/pki/tls/certs/ca-bundle.crt"));
        assert!(r
            .join("etc/pki/ca-trust/source/anchors/msbvm.pem")
            .is_file());
        assert!(!r.join("usr/local/share/ca-certificates/msbvm.crt").exists());
    }

    #[test]
    fn an_image_without_a_bundle_gets_one() {
        let root = tempfile::TempDir::new().unwrap();
        let (bundle, problems) = install_ca(root.path(), CA, Placement::InPlace);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            bundle.as_deref(),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let text =
            std::fs::read_to_string(root.path().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(text, format!("{CA}\n"));
    }

    #[test]
    fn a_read_only_bundle_is_reported_not_fatal() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return; // root writes through modes
        }
        let root = tempfile::TempDir::new().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        let bundle = r.join("etc/ssl/certs/ca-certificates.crt");
        std::fs::write(&bundle, "ROOTS\n").unwrap();
        std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o444)).unwrap();
        let (chosen, problems) = install_ca(r, CA, Placement::InPlace);
        assert!(!problems.is_empty());
        // The existing file cannot be replaced either: the fallback in /run holds the CA.
        assert_eq!(chosen.as_deref(), Some("/run/msbvm/ca-certificates.crt"));
        let copy = std::fs::read_to_string(r.join("run/msbvm/ca-certificates.crt")).unwrap();
        assert_eq!(copy, format!("ROOTS\n{CA}\n"));
    }

    /// A fork takes its own placeholders in place of its snapshot's, keeps the bundle
    /// variables without a CA of its own, and trusts its own CA beside the snapshot's.
    #[test]
    fn a_fork_replaces_the_placeholders_and_adds_its_ca() {
        const FORK_CA: &str = "-----BEGIN CERTIFICATE-----\nFORK\n-----END CERTIFICATE-----";
        let root = tempfile::TempDir::new().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/ssl/certs")).unwrap();
        std::fs::write(r.join("etc/ssl/certs/ca-certificates.crt"), "ROOTS\n").unwrap();
        let boot = take_interception(
            r,
            Some(CA),
            &pairs(&[("API_KEY", "ph-source"), ("OTHER", "ph-other")]),
            Some(Placement::InPlace),
        );
        assert!(boot.is_empty(), "{boot:?}");
        let bundle_var = (
            "SSL_CERT_FILE".to_string(),
            "/etc/ssl/certs/ca-certificates.crt".to_string(),
        );
        assert!(boot_env().defaults.contains(&bundle_var));
        // A fork without a CA of its own, with one secret.
        take_interception(r, None, &pairs(&[("API_KEY", "ph-fork")]), None);
        let env = boot_env();
        assert_eq!(env.forced, pairs(&[("API_KEY", "ph-fork")]));
        assert!(env.defaults.contains(&bundle_var));
        // A fork with its own CA: both are trusted, each once.
        take_interception(r, Some(FORK_CA), &[], None);
        take_interception(r, Some(FORK_CA), &[], None);
        let bundle = std::fs::read_to_string(r.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
        assert_eq!(bundle, format!("ROOTS\n{CA}\n{FORK_CA}\n"));
        assert!(boot_env().forced.is_empty());
    }
}
