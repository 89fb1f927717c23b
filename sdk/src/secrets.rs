//! Secrets the guest never holds, and how they travel to the runtime.
//!
//! A [`Secret`] is a name, a value and the hosts the value may be sent to. The guest sees only
//! `NAME=<placeholder>` (a random string the runtime draws per sandbox); the host-side network
//! stack swaps the placeholder for the value inside intercepted requests to a bound host and
//! blocks requests that carry it anywhere else.
//!
//! The value never goes on the runtime's command line, into the sandbox's spec, its
//! `state.json`, its logs or its events: the SDK writes the secrets to an anonymous memory file
//! ([`encode`]) that the runtime inherits and reads once at start ([`decode`]).
//!
//! ```no_run
//! # async fn demo() -> msbvm_sdk::Result<()> {
//! use msbvm_sdk::{Sandbox, Secret};
//! let sandbox = Sandbox::builder("agent")
//!     .secret(Secret::from_env("OPENAI_API_KEY")?.allow_host("api.openai.com"))
//!     .secret(
//!         Secret::new("HOOK_TOKEN", "t0ken")
//!             .allow_host("*.hooks.example.com")
//!             .inject_query(true),
//!     )
//!     .tls_intercept("api.github.com")
//!     .tls_bypass("pinned.example.com")
//!     .create()
//!     .await?;
//! // In the guest, $OPENAI_API_KEY is `msbvm_placeholder_<32 hex digits>`.
//! sandbox.exec("sh", ["-c", "echo $OPENAI_API_KEY"]).await?;
//! # Ok(()) }
//! ```

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most bytes of encoded secrets the runtime reads.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The most secrets one sandbox may have.
pub const MAX_SECRETS: usize = 64;
/// The longest secret value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// Parts of a request where the placeholder is replaced by the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inject {
    /// Header values, `Authorization: Basic` decoded and re-encoded included (default on).
    pub headers: bool,
    /// The query string of the request target (default off).
    pub query: bool,
    /// The request body (default off).
    pub body: bool,
}

impl Default for Inject {
    fn default() -> Self {
        Inject {
            headers: true,
            query: false,
            body: false,
        }
    }
}

/// A secret bound to hosts. Its `Debug` form never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    name: String,
    value: String,
    hosts: Vec<String>,
    inject: Inject,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// A secret named `name` (the guest's environment variable) with `value`; bind it to hosts
    /// with [`Secret::allow_host`].
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Secret {
        Secret {
            name: name.into(),
            value: value.into(),
            hosts: Vec::new(),
            inject: Inject::default(),
        }
    }

    /// A secret whose value is this process's environment variable `name`.
    pub fn from_env(name: &str) -> Result<Secret> {
        validate_name(name)?;
        match std::env::var(name) {
            Ok(value) => Ok(Secret::new(name, value)),
            Err(std::env::VarError::NotPresent) => Err(Error::InvalidConfig(format!(
                "secret {name}: the environment variable {name} is not set"
            ))),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::InvalidConfig(format!(
                "secret {name}: the environment variable {name} is not UTF-8"
            ))),
        }
    }

    /// Lets the value go to `host` (`api.example.com`) or to every subdomain of a suffix
    /// (`*.example.com`). At least one host is required.
    pub fn allow_host(mut self, host: impl Into<String>) -> Secret {
        self.hosts.push(host.into().to_ascii_lowercase());
        self
    }

    /// Substitutes in header values (default on).
    pub fn inject_headers(mut self, on: bool) -> Secret {
        self.inject.headers = on;
        self
    }

    /// Substitutes in the request target's query string (default off).
    pub fn inject_query(mut self, on: bool) -> Secret {
        self.inject.query = on;
        self
    }

    /// Substitutes in request bodies (default off).
    pub fn inject_body(mut self, on: bool) -> Secret {
        self.inject.body = on;
        self
    }

    /// The name: the guest's environment variable holding the placeholder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hosts the value may be sent to.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Where substitution happens.
    pub fn inject(&self) -> Inject {
        self.inject
    }

    /// The real value, for the runtime that hands it to the network stack. Never log it.
    pub fn expose_value(&self) -> &str {
        &self.value
    }

    /// Checks the name, the hosts and the value's size (errors never quote the value).
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let bad = |why: String| Error::InvalidConfig(format!("secret {}: {why}", self.name));
        if self.hosts.is_empty() {
            return Err(bad(
                "no host: bind it to at least one host (HOST or *.SUFFIX)".into(),
            ));
        }
        for host in &self.hosts {
            validate_host_pattern(host).map_err(|why| bad(format!("host {host:?}: {why}")))?;
        }
        if self.value.is_empty() {
            return Err(bad("the value is empty".into()));
        }
        if self.value.len() > MAX_VALUE_BYTES {
            return Err(bad(format!(
                "the value is longer than {MAX_VALUE_BYTES} bytes"
            )));
        }
        if self.value.contains('\0') {
            return Err(bad("the value contains a NUL byte".into()));
        }
        Ok(())
    }
}

/// Checks a secret's name: environment-variable syntax (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 128 {
        return Err(Error::InvalidConfig(format!(
            "secret name {name:?} is not an environment variable name \
             (letters, digits and `_`, not starting with a digit)"
        )));
    }
    Ok(())
}

/// Checks `HOST` or `*.SUFFIX`: a DNS name of letters, digits, `-` and `.`, no IP address.
pub fn validate_host_pattern(pattern: &str) -> std::result::Result<(), String> {
    let host = pattern.strip_prefix("*.").unwrap_or(pattern);
    if host.is_empty() || host.len() > 253 {
        return Err("expected HOST or *.SUFFIX".into());
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address has no TLS server name; use a DNS name".into());
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(format!(
                "{label:?} is not a DNS label; expected HOST or *.SUFFIX"
            ));
        }
    }
    Ok(())
}

/// The wire form: the runtime reads exactly this from its inherited descriptor.
#[derive(Serialize, Deserialize)]
struct Payload {
    secrets: Vec<Secret>,
}

/// Encodes `secrets` for the runtime.
pub fn encode(secrets: &[Secret]) -> Result<Vec<u8>> {
    if secrets.len() > MAX_SECRETS {
        return Err(Error::InvalidConfig(format!(
            "{} secrets: at most {MAX_SECRETS}",
            secrets.len()
        )));
    }
    let bytes = serde_json::to_vec(&Payload {
        secrets: secrets.to_vec(),
    })
    .map_err(|_| Error::InvalidConfig("cannot encode the secrets".into()))?;
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidConfig(format!(
            "the secrets take more than {MAX_PAYLOAD_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Decodes what [`encode`] wrote and validates every secret. The error never quotes the
/// input (serde's messages may carry a piece of it).
pub fn decode(bytes: &[u8]) -> Result<Vec<Secret>> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidConfig(
            "the secrets payload is too large".into(),
        ));
    }
    let payload: Payload = serde_json::from_slice(bytes)
        .map_err(|_| Error::InvalidConfig("the secrets payload does not parse".into()))?;
    if payload.secrets.len() > MAX_SECRETS {
        return Err(Error::InvalidConfig("too many secrets".into()));
    }
    check_all(&payload.secrets)?;
    Ok(payload.secrets)
}

/// Writes the encoded `secrets` to an anonymous memory file (on no filesystem), sealed
/// against changes, for a runtime (or a sandbox's spawn service) to inherit and read with
/// [`read_from_fd`]. Close-on-exec: the launcher clears it for that one program.
pub fn to_memfd(secrets: &[Secret]) -> Result<OwnedFd> {
    let bytes = encode(secrets)?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"msbvm-secrets".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(Error::io("creating the secrets memory file")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(&bytes)
        .map_err(Error::io("writing the secrets memory file"))?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our own memfd.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(Error::io("sealing the secrets memory file")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(file))
}

/// Reads the secrets from the inherited descriptor `fd` (see [`to_memfd`]) and closes it.
/// Called once, by the runtime at start.
pub fn read_from_fd(fd: RawFd) -> Result<Vec<Secret>> {
    // SAFETY: F_GETFD only inspects the descriptor: it tells whether it is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(Error::InvalidConfig(format!(
            "--secrets-fd {fd} is not an open descriptor"
        )));
    }
    // SAFETY: the creator handed this descriptor to us alone; taking ownership closes it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let len = file
        .metadata()
        .map_err(Error::io("reading the secrets"))?
        .len();
    if len > MAX_PAYLOAD_BYTES as u64 {
        return Err(Error::InvalidConfig(
            "the secrets payload is too large".into(),
        ));
    }
    let mut bytes = vec![0; len as usize];
    // Positioned read: the creator's writes left the shared offset at the end.
    file.read_exact_at(&mut bytes, 0)
        .map_err(Error::io("reading the secrets"))?;
    let secrets = decode(&bytes);
    bytes.fill(0);
    secrets
}

/// Validates every secret and refuses two with the same name.
pub fn check_all(secrets: &[Secret]) -> Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for secret in secrets {
        secret.validate()?;
        if !names.insert(secret.name.as_str()) {
            return Err(Error::InvalidConfig(format!(
                "secret {} is given twice",
                secret.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "sk-test-VALUE-5a1f";

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("API_KEY", VALUE).allow_host("api.example.com");
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains(VALUE), "{shown}");
        assert!(shown.contains("API_KEY"));
        let builder = crate::Sandbox::builder("box").secret(s);
        let shown = format!("{builder:?}");
        assert!(
            !shown.contains(VALUE) && shown.contains("API_KEY"),
            "{shown}"
        );
    }

    #[test]
    fn names_and_hosts_are_checked() {
        for bad in ["", "1A", "A-B", "A B", "A=B"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        validate_name("_Api_KEY2").unwrap();
        for bad in [
            "", "*.", "1.2.3.4", "::1", "a..b", "-a.com", "a_b.com", "*x.com",
        ] {
            assert!(validate_host_pattern(bad).is_err(), "{bad}");
        }
        validate_host_pattern("api.example.com").unwrap();
        validate_host_pattern("*.example.com").unwrap();
        let e = Secret::new("K", VALUE).validate().unwrap_err().to_string();
        assert!(e.contains("at least one host") && !e.contains(VALUE), "{e}");
        let e = Secret::new("K", VALUE)
            .allow_host("bad host")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(!e.contains(VALUE), "{e}");
    }

    #[test]
    fn payload_round_trips_and_refuses_duplicates() {
        let secrets = vec![
            Secret::new("A", VALUE).allow_host("A.example.com"),
            Secret::new("B", "x")
                .allow_host("*.example.org")
                .inject_headers(false)
                .inject_query(true)
                .inject_body(true),
        ];
        let bytes = encode(&secrets).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back, secrets);
        assert_eq!(back[0].hosts(), ["a.example.com"]);
        assert!(back[1].inject().body && !back[1].inject().headers);
        let twice = vec![secrets[0].clone(), secrets[0].clone()];
        assert!(decode(&encode(&twice).unwrap()).is_err());
    }

    #[test]
    fn decode_errors_never_quote_the_input() {
        let broken = format!(r#"{{"secrets":[{{"name":"A","value":"{VALUE}","hosts":7}}]}}"#);
        let e = decode(broken.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains(VALUE), "{e}");
    }

    #[test]
    fn memfd_carries_the_secrets_once() {
        use std::os::fd::IntoRawFd;
        let secrets = vec![Secret::new("A", VALUE).allow_host("a.example.com")];
        let fd = to_memfd(&secrets).unwrap().into_raw_fd();
        assert_eq!(read_from_fd(fd).unwrap(), secrets);
        // Closed after the read.
        assert!(read_from_fd(fd).is_err());
    }

    #[test]
    fn from_env_reads_the_variable() {
        let _env = crate::test_support::EnvGuard::set(&[("MSBVM_TEST_SECRET_X", Some(VALUE))]);
        let s = Secret::from_env("MSBVM_TEST_SECRET_X").unwrap();
        assert_eq!(s.expose_value(), VALUE);
        let e = Secret::from_env("MSBVM_TEST_SECRET_UNSET_Y").unwrap_err();
        assert!(e.to_string().contains("not set"), "{e}");
    }
}
