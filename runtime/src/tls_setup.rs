//! TLS interception and secrets, from the sandbox's spec to the network stack and the guest:
//! the certificate authority (the user's, made once under the data directory, or one per
//! sandbox kept in memory), the upstream trust roots, and the secrets' random placeholders.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use msbvm_netstack::secrets::{Inject, Secret as NetSecret};
use msbvm_netstack::tls::TlsConfig;
use msbvm_protocol::boot::GuestTls;
use msbvm_sdk::secrets::Secret;
use msbvm_sdk::spec::{CaScope, TlsSpec};
use msbvm_sdk::{Error, Result};

/// Directory of the user's CA, under the msbvm data directory.
pub const CA_DIR: &str = "tls";
/// The user's CA certificate (PEM).
pub const CA_CERT_FILE: &str = "ca.pem";
/// The user's CA private key (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// Prefix of every placeholder, so a leaked one is recognisable.
pub const PLACEHOLDER_PREFIX: &str = "msbvm_placeholder_";

/// What interception gives the network stack and the guest.
pub struct Interception {
    /// The stack's TLS settings.
    pub tls: TlsConfig,
    /// The stack's secrets, with their placeholders.
    pub secrets: Vec<NetSecret>,
    /// The CA the guest trusts.
    pub guest: GuestTls,
    /// `(NAME, placeholder)` for every exec's environment.
    pub secret_env: Vec<(String, String)>,
}

/// Interception for `spec`, `secrets` and the policy's `https://` rules (`https_rules`):
/// `None` when none asks for it.
pub fn prepare(
    spec: &TlsSpec,
    secrets: &[Secret],
    https_rules: bool,
    home: &Path,
) -> Result<Option<Interception>> {
    if !spec.is_requested() && secrets.is_empty() && !https_rules {
        return Ok(None);
    }
    let (ca_cert_pem, ca_key_pem) = match spec.ca {
        CaScope::User => user_ca(&home.join(CA_DIR))?,
        CaScope::Sandbox => generate_ca("msbvm sandbox CA")?,
    };
    let mut upstream_ca_pems = Vec::new();
    for path in &spec.upstream_cas {
        upstream_ca_pems.push(read_pem_certificates(path)?);
    }
    let mut net_secrets = Vec::new();
    let mut secret_env = Vec::new();
    for secret in secrets {
        let placeholder = placeholder()?;
        secret_env.push((secret.name().to_string(), placeholder.clone()));
        let inject = secret.inject();
        net_secrets.push(NetSecret {
            name: secret.name().to_string(),
            value: secret.expose_value().to_string(),
            placeholder,
            hosts: secret.hosts().to_vec(),
            inject: Inject {
                headers: inject.headers,
                query: inject.query,
                body: inject.body,
            },
        });
    }
    Ok(Some(Interception {
        guest: GuestTls {
            ca_cert_pem: ca_cert_pem.clone(),
        },
        tls: TlsConfig {
            ca_cert_pem,
            ca_key_pem,
            intercept: spec.intercept.clone(),
            bypass: spec.bypass.clone(),
            upstream_ca_pems,
        },
        secrets: net_secrets,
        secret_env,
    }))
}

/// A random placeholder: 128 bits from the OS's random source, hex, never derived from the
/// value it stands for.
pub fn placeholder() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Runtime {
        message: format!("drawing a secret placeholder: {e}"),
        log_tail: String::new(),
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{PLACEHOLDER_PREFIX}{hex}"))
}

/// A new certificate authority: the network stack's own (ECDSA P-256, CA:true, keyCertSign),
/// `(certificate PEM, PKCS#8 key PEM)`.
pub fn generate_ca(common_name: &str) -> Result<(String, String)> {
    msbvm_netstack::tls::generate_ca(common_name).map_err(|e| Error::Runtime {
        message: format!("creating the TLS interception CA: {e}"),
        log_tail: String::new(),
    })
}

/// The user's CA in `dir`, made (key 0600, directory 0700) the first time. A lock file
/// keeps two runtimes starting at once from making two.
pub fn user_ca(dir: &Path) -> Result<(String, String)> {
    let io = |what: &str, path: &Path| Error::io(format!("{what} {}", path.display()));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    let lock_path = dir.join(".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("locking", &lock_path)(std::io::Error::last_os_error()));
    }
    let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    if cert_path.exists() && key_path.exists() {
        return load_user_ca(&cert_path, &key_path);
    }
    let (cert, key) = generate_ca("msbvm user CA")?;
    // The key first: a certificate is never in place without its key.
    write_atomically(&key_path, key.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "created the user's TLS interception CA");
    drop(lock);
    Ok((cert, key))
}

fn load_user_ca(cert_path: &Path, key_path: &Path) -> Result<(String, String)> {
    let mode = std::fs::metadata(key_path)
        .map_err(Error::io(format!("reading {}", key_path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::InvalidConfig(format!(
            "{} is readable by other users (mode {:o}): `chmod 600` it",
            key_path.display(),
            mode & 0o777
        )));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))
    };
    let (cert, key) = (read(cert_path)?, read(key_path)?);
    rcgen::KeyPair::from_pem(&key).map_err(|e| {
        Error::InvalidConfig(format!(
            "{} is not a private key: {e}; remove {} and {} to make a new CA",
            key_path.display(),
            key_path.display(),
            cert_path.display()
        ))
    })?;
    if !cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::InvalidConfig(format!(
            "{} is not a PEM certificate",
            cert_path.display()
        )));
    }
    Ok((cert, key))
}

/// Writes `bytes` to a temporary file created with `mode`, syncs it and renames it to
/// `path`: a reader sees the old file or the whole new one, and the key is never readable
/// by others, not even for a moment.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let io = |what: &str| Error::io(format!("{what} {}", tmp.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating"))?;
    file.write_all(bytes).map_err(io("writing"))?;
    file.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("renaming to {}", path.display())))
}

/// The PEM certificates in `path` (at most 1 MiB), refused if it holds none.
fn read_pem_certificates(path: &Path) -> Result<String> {
    let bad =
        |why: String| Error::InvalidConfig(format!("--tls-upstream-ca {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if meta.len() > 1 << 20 {
        return Err(bad("larger than 1 MiB".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn placeholders_are_random_and_long() {
        let (a, b) = (placeholder().unwrap(), placeholder().unwrap());
        assert_ne!(a, b);
        let hex = a.strip_prefix(PLACEHOLDER_PREFIX).unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_user_ca_is_made_once_with_private_modes() {
        let tmp = tempfile::TempDir::new().unwrap();
        let dir = tmp.path().join("tls");
        let (cert, key) = user_ca(&dir).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(user_ca(&dir).unwrap(), (cert, key));
        std::fs::set_permissions(
            dir.join(CA_KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = user_ca(&dir).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn prepare_fills_the_stack_and_the_guest() {
        let tmp = tempfile::TempDir::new().unwrap();
        let ca = tmp.path().join("up.pem");
        std::fs::write(&ca, generate_ca("upstream").unwrap().0).unwrap();
        let spec = TlsSpec {
            intercept: vec!["*.example.org".into()],
            bypass: vec!["pinned.example.org".into()],
            upstream_cas: vec![ca],
            ca: CaScope::Sandbox,
        };
        let secrets = [Secret::new("API_KEY", "v4lue-x")
            .allow_host("api.example.com")
            .inject_query(true)];
        let got = prepare(&spec, &secrets, false, tmp.path())
            .unwrap()
            .unwrap();
        // A per-sandbox CA touches no file.
        assert!(!tmp.path().join(CA_DIR).exists());
        assert_eq!(got.tls.upstream_ca_pems.len(), 1);
        assert_eq!(got.guest.ca_cert_pem, got.tls.ca_cert_pem);
        let s = &got.secrets[0];
        assert_eq!((s.value.as_str(), s.hosts.len()), ("v4lue-x", 1));
        assert!(s.inject.query && s.inject.headers && !s.inject.body);
        assert_eq!(got.secret_env, [("API_KEY".into(), s.placeholder.clone())]);
        assert!(prepare(&TlsSpec::default(), &[], false, tmp.path())
            .unwrap()
            .is_none());
        let bad = TlsSpec {
            upstream_cas: vec![tmp.path().join("missing.pem")],
            intercept: vec!["all".into()],
            ..TlsSpec::default()
        };
        assert!(prepare(&bad, &[], false, tmp.path()).is_err());
    }
}
