//! The runtime's command line (`msbvm __runtime ...`), written by the SDK and parsed by the
//! runtime. It is an internal interface between one msbvm build and itself, so it is plain
//! `--flag value` pairs without a parser dependency.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::spec::SandboxSpec;

/// Everything the runtime needs to start a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeArgs {
    /// Sandbox name.
    pub name: String,
    /// The msbvm data directory (the parent's, resolved, so both agree).
    pub home: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Environment for every exec.
    pub env: Vec<(String, String)>,
    /// Outlive the creator.
    pub detached: bool,
    /// Inherited pipe for [`crate::report::Report`] lines.
    pub ready_fd: Option<RawFd>,
    /// Inherited pipe whose end-of-file means the creator is gone (attached sandboxes).
    pub lifeline_fd: Option<RawFd>,
    /// The creator's pid, to tell its death from other signals (attached sandboxes).
    pub parent_pid: Option<u32>,
    /// Filesystems and network.
    pub spec: SandboxSpec,
    /// Secrets: never on the command line. The SDK fills this and [`crate::launch`] hands it
    /// over in an inherited memory file named by `--secrets-fd`; the runtime reads that once
    /// ([`RuntimeArgs::read_secrets`]).
    pub secrets: Vec<crate::secrets::Secret>,
    /// Inherited descriptor holding the encoded secrets ([`crate::secrets::encode`]).
    pub secrets_fd: Option<RawFd>,
}

impl RuntimeArgs {
    /// The arguments after `__runtime`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = vec![
            "--name".into(),
            self.name.clone().into(),
            "--home".into(),
            self.home.clone().into(),
            "--cpus".into(),
            self.cpus.to_string().into(),
            "--memory".into(),
            self.memory_mib.to_string().into(),
        ];
        for (k, v) in &self.env {
            out.push("--env".into());
            out.push(format!("{k}={v}").into());
        }
        if self.detached {
            out.push("--detached".into());
        }
        let mut num = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(flag.into());
                out.push(v.into());
            }
        };
        num("--ready-fd", self.ready_fd.map(|f| f.to_string()));
        num("--lifeline-fd", self.lifeline_fd.map(|f| f.to_string()));
        num("--parent-pid", self.parent_pid.map(|p| p.to_string()));
        num("--secrets-fd", self.secrets_fd.map(|f| f.to_string()));
        if self.spec != SandboxSpec::default() {
            // The spec is plain data of this same build: JSON cannot fail on it.
            let json = serde_json::to_string(&self.spec).unwrap_or_default();
            num("--spec", Some(json));
        }
        out
    }

    /// Parses the arguments after `__runtime`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<RuntimeArgs, ArgsError> {
        let mut name = None;
        let mut home = None;
        let mut parsed = RuntimeArgs {
            name: String::new(),
            home: PathBuf::new(),
            cpus: 1,
            memory_mib: 256,
            env: Vec::new(),
            detached: false,
            ready_fd: None,
            lifeline_fd: None,
            parent_pid: None,
            spec: SandboxSpec::default(),
            secrets: Vec::new(),
            secrets_fd: None,
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let flag = flag.into_string().map_err(ArgsError::NotUtf8)?;
            if flag == "--detached" {
                parsed.detached = true;
                continue;
            }
            let value = args
                .next()
                .ok_or_else(|| ArgsError::NeedsValue(flag.clone()))?;
            if flag == "--home" {
                home = Some(PathBuf::from(value));
                continue;
            }
            let value = value
                .into_string()
                .map_err(|value| ArgsError::ValueNotUtf8 {
                    flag: flag.clone(),
                    value,
                })?;
            let number = |v: &str| {
                v.parse::<u64>().map_err(|_| ArgsError::NotANumber {
                    flag: flag.clone(),
                    value: v.to_string(),
                })
            };
            match flag.as_str() {
                "--name" => name = Some(value),
                "--cpus" => {
                    parsed.cpus = u8::try_from(number(&value)?)
                        .map_err(|_| ArgsError::TooManyCpus(value.clone()))?
                }
                "--memory" => parsed.memory_mib = number(&value)?,
                "--env" => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| ArgsError::BadEnv(value.clone()))?;
                    parsed.env.push((k.to_string(), v.to_string()));
                }
                "--ready-fd" => parsed.ready_fd = Some(fd(&flag, number(&value)?)?),
                "--lifeline-fd" => parsed.lifeline_fd = Some(fd(&flag, number(&value)?)?),
                "--secrets-fd" => parsed.secrets_fd = Some(fd(&flag, number(&value)?)?),
                "--parent-pid" => {
                    parsed.parent_pid = Some(
                        u32::try_from(number(&value)?)
                            .map_err(|_| ArgsError::OutOfRange(flag.clone()))?,
                    )
                }
                "--spec" => {
                    parsed.spec = serde_json::from_str(&value).map_err(ArgsError::BadSpec)?
                }
                _ => return Err(ArgsError::Unknown(flag)),
            }
        }
        parsed.name = name.ok_or(ArgsError::Required("--name"))?;
        parsed.home = home.ok_or(ArgsError::Required("--home"))?;
        Ok(parsed)
    }
}

fn fd(flag: &str, n: u64) -> Result<RawFd, ArgsError> {
    RawFd::try_from(n).map_err(|_| ArgsError::OutOfRange(flag.to_string()))
}

/// What is wrong with the runtime's command line.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// A flag is not UTF-8.
    #[error("bad argument {0:?}")]
    NotUtf8(OsString),
    /// A flag came without its value.
    #[error("{0} needs a value")]
    NeedsValue(String),
    /// A value is not UTF-8.
    #[error("{flag}: value {value:?} is not UTF-8")]
    ValueNotUtf8 {
        /// The flag.
        flag: String,
        /// Its value.
        value: OsString,
    },
    /// A number is not one.
    #[error("{flag}: {value:?} is not a number")]
    NotANumber {
        /// The flag.
        flag: String,
        /// Its value.
        value: String,
    },
    /// More vCPUs than a `u8` holds.
    #[error("--cpus {0} is too large")]
    TooManyCpus(String),
    /// An `--env` value without `=`.
    #[error("--env {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// A descriptor or pid out of range.
    #[error("bad {0}")]
    OutOfRange(String),
    /// The `--spec` JSON does not parse.
    #[error("--spec is not a sandbox spec: {0}")]
    BadSpec(#[source] serde_json::Error),
    /// A flag this runtime does not know.
    #[error("unknown runtime argument {0}")]
    Unknown(String),
    /// A required flag is missing.
    #[error("{0} is required")]
    Required(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RuntimeArgs {
        RuntimeArgs {
            name: "box".into(),
            home: "/h o m e".into(),
            cpus: 2,
            memory_mib: 512,
            env: vec![("A".into(), "b=c d".into()), ("E".into(), String::new())],
            detached: false,
            ready_fd: Some(7),
            lifeline_fd: Some(8),
            parent_pid: Some(99),
            secrets: Vec::new(),
            secrets_fd: Some(10),
            spec: SandboxSpec {
                volumes: vec![crate::spec::VolumeSpec::parse("data:/data:ro").unwrap()],
                ..SandboxSpec::default()
            },
        }
    }

    #[test]
    fn roundtrips() {
        let a = sample();
        assert_eq!(RuntimeArgs::parse(a.to_args()).unwrap(), a);
        let d = RuntimeArgs {
            detached: true,
            lifeline_fd: None,
            parent_pid: None,
            ..sample()
        };
        assert_eq!(RuntimeArgs::parse(d.to_args()).unwrap(), d);
    }

    #[test]
    fn secrets_never_reach_the_command_line() {
        const VALUE: &str = "sk-live-NEVER-ON-ARGV-91c3";
        let mut a = sample();
        a.secrets =
            vec![crate::secrets::Secret::new("API_KEY", VALUE).allow_host("api.example.com")];
        a.spec.network.tls.intercept.push("all".into());
        let argv: Vec<String> = a
            .to_args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = argv.join(" ");
        assert!(!joined.contains(VALUE), "{joined}");
        assert!(joined.contains("--secrets-fd 10"), "{joined}");
        let spec = serde_json::to_string(&a.spec).unwrap();
        assert!(!spec.contains(VALUE) && !spec.contains("API_KEY"), "{spec}");
        assert!(!format!("{a:?}").contains(VALUE));
        // Parsed back, the secrets are still to be read from the descriptor.
        let parsed = RuntimeArgs::parse(a.to_args()).unwrap();
        assert!(parsed.secrets.is_empty());
        assert_eq!(parsed.secrets_fd, Some(10));
    }

    #[test]
    fn errors_name_the_flag() {
        let error = |v: &[&str]| {
            RuntimeArgs::parse(v.iter().map(OsString::from))
                .unwrap_err()
                .to_string()
        };
        assert!(error(&["--home", "/h"]).contains("--name"));
        assert!(error(&["--name", "a"]).contains("--home"));
        assert!(error(&["--cpus", "300"]).contains("--cpus"));
        assert!(error(&["--env", "novalue"]).contains("KEY=VALUE"));
        assert!(error(&["--bogus", "1"]).contains("--bogus"));
        assert!(error(&["--name"]).contains("needs a value"));
    }
}
