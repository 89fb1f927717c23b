//! `msbvm run`'s options for the sandbox's filesystems and network, turned
//! into the SDK's [`SandboxSpec`].

use std::path::PathBuf;

use clap::Args;
use msbvm_sdk::secrets::Secret;
use msbvm_sdk::spec::{
    CaScope, PortSpec, RootSpec, SandboxSpec, TlsSpec, TmpfsSpec, VolumeSpec, DEFAULT_IMAGE,
};
use msbvm_sdk::Error;

use crate::net_rule_opts::NetRuleArgs;

/// Filesystem and network options of `msbvm run`.
#[derive(Args, Debug, Clone, PartialEq, Default)]
pub struct SandboxArgs {
    /// Root filesystem image from the local store (`msbvm pull`); default: the embedded
    /// `msbvm-default` image (busybox).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Serve this host directory as the root filesystem instead of an image.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    pub rootfs: Option<PathBuf>,
    /// Mount a host directory (HOST_DIR:GUEST_PATH[:ro]) or a named volume
    /// (NAME:GUEST_PATH[:ro]); repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Size limit of the sandbox's writable layer over its image (e.g. 512M, 10G; default
    /// 10G); writes past it fail with "No space left on device" and `df /` shows it.
    #[arg(long = "disk", value_name = "SIZE")]
    pub disk: Option<String>,
    /// Let programs inside create peer sandboxes: at most N live sandboxes below this one,
    /// their CPUs and memory (MiB) together, images besides the default and this sandbox's
    /// own, network allow rules children may be given (net=RULE), this sandbox's secrets
    /// they may be given (secret=NAME, each child with a placeholder of its own), and
    /// depth=2 or more to let children be given grants of their own, carved out of this one.
    #[arg(
        long = "allow-spawn",
        value_name = "N[,cpus=C][,memory=MIB][,image=REF]...[,net=RULE]...[,secret=NAME]...[,depth=D]"
    )]
    pub allow_spawn: Option<String>,
    /// Mount a tmpfs (PATH[:SIZE], e.g. /scratch:64m); repeatable.
    #[arg(long = "tmpfs", value_name = "PATH[:SIZE]")]
    pub tmpfs: Vec<String>,
    /// Default user of commands: UID[:GID], or a user (and group) of the image by name.
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Publish a guest TCP port on the host: [ADDR:]HOST_PORT:GUEST_PORT (ADDR defaults to
    /// 127.0.0.1); repeatable.
    #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOST:GUEST")]
    pub publish: Vec<String>,
    /// Network rules and the default for what no rule matches.
    #[command(flatten)]
    pub net_rules: NetRuleArgs,
    /// No network interface at all.
    #[arg(long = "no-network", conflicts_with_all = ["publish", "net_allow", "net_deny", "net_default", "max_connections", "secrets", "secret_files", "tls_intercept"])]
    pub no_network: bool,
    /// MTU of the guest's interface (default 1500, at most 65520).
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u16>,
    /// Most TCP connections (and, separately, UDP flows) the guest may keep open (default 256).
    #[arg(long = "net-max-connections", value_name = "N")]
    pub max_connections: Option<u32>,
    /// DNS server the sandbox's allowed queries go to instead of the host's (ADDR[:PORT]);
    /// repeatable.
    #[arg(long = "dns", value_name = "ADDR[:PORT]")]
    pub dns: Vec<String>,
    /// Give the guest a secret it never sees: the value comes from this shell's environment
    /// variable NAME (never from the command line); the guest gets NAME=<random placeholder>
    /// and the host puts the value in place of the placeholder only in HTTPS requests to the
    /// HOSTs (`api.example.com` or `*.example.com`), which are intercepted. WHERE lists where
    /// to substitute: `headers` (the default), `query`, `body`, e.g.
    /// `--secret API_KEY@api.example.com:headers,query`. A request carrying the placeholder
    /// to any other host is blocked. Repeatable.
    #[arg(long = "secret", value_name = "NAME@HOST[,HOST...][:WHERE,...]")]
    pub secrets: Vec<String>,
    /// Like --secret, with the value read from the file PATH (one trailing newline removed).
    #[arg(
        long = "secret-file",
        value_name = "NAME=PATH@HOST[,HOST...][:WHERE,...]"
    )]
    pub secret_files: Vec<String>,
    /// Intercept TLS connections to HOST, `*.SUFFIX` or `all`: the host terminates them with
    /// a certificate from msbvm's CA (which the guest trusts), so HTTP rules apply inside
    /// them. Hosts of --secret are intercepted anyway. Repeatable.
    #[arg(long = "tls-intercept", value_name = "HOST|*.SUFFIX|all")]
    pub tls_intercept: Vec<String>,
    /// Never intercept HOST (`HOST` or `*.SUFFIX`; for certificate-pinning clients).
    /// Repeatable.
    #[arg(long = "tls-bypass", value_name = "HOST")]
    pub tls_bypass: Vec<String>,
    /// Also trust the CA certificates in this PEM file when verifying intercepted upstream
    /// servers (private CAs). Repeatable.
    #[arg(long = "tls-upstream-ca", value_name = "FILE")]
    pub tls_upstream_ca: Vec<PathBuf>,
    /// The CA the guest trusts: `user` (default; made once under the msbvm data directory,
    /// tls/ca.pem) or `per-sandbox` (made for this sandbox, kept in memory only).
    #[arg(long = "tls-ca", value_name = "user|per-sandbox", value_parser = ["user", "per-sandbox"])]
    pub tls_ca: Option<String>,
    /// Run a plugin: a shipped one by name (audit, rate-limit, net-monitor) or an executable
    /// by path (it speaks the protocol of plugins/PROTOCOL.md), with its configuration after
    /// `:`, e.g. `--plugin audit:path=/tmp/audit.jsonl --plugin ./guard.py`. Repeatable; they
    /// run in the order given, after those of ~/.config/msbvm/plugins.toml.
    #[arg(long = "plugin", value_name = "NAME_OR_PATH[:CONFIG]")]
    pub plugins: Vec<String>,
    /// Leave out the plugins of ~/.config/msbvm/plugins.toml.
    #[arg(long = "no-default-plugins")]
    pub no_default_plugins: bool,
}

/// The plugins of `--plugin` arguments; executables' paths are taken from the working
/// directory.
pub fn parse_plugins(texts: &[String]) -> Result<Vec<msbvm_sdk::plugins::PluginSpec>, Error> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Error::InvalidConfig(format!("--plugin: no working directory: {e}")))?;
    texts
        .iter()
        .map(|text| {
            msbvm_sdk::plugins::PluginSpec::parse(text, &cwd)
                .map_err(|e| Error::InvalidConfig(format!("--plugin {text}: {e}")))
        })
        .collect()
}

impl SandboxArgs {
    /// The spec these options describe. `raw_args` are the process's arguments, needed
    /// because clap keeps --net-allow and --net-deny in two lists and their relative order
    /// decides which rule matches first.
    pub fn spec(&self, raw_args: &[String]) -> Result<SandboxSpec, Error> {
        let mut spec = SandboxSpec::default();
        if let Some(dir) = &self.rootfs {
            let path = std::path::absolute(dir)
                .map_err(|e| Error::InvalidConfig(format!("--rootfs {}: {e}", dir.display())))?;
            spec.root = RootSpec::HostDir {
                path,
                read_only: false,
            };
        } else {
            spec.root = RootSpec::Image {
                reference: self.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into()),
            };
        }
        spec.volumes = self
            .volumes
            .iter()
            .map(|v| VolumeSpec::parse(v))
            .collect::<Result<_, _>>()?;
        spec.tmpfs = self
            .tmpfs
            .iter()
            .map(|t| TmpfsSpec::parse(t))
            .collect::<Result<_, _>>()?;
        spec.user = self.user.clone();
        spec.disk_size_bytes = self
            .disk
            .as_deref()
            .map(msbvm_sdk::spec::parse_disk_size)
            .transpose()?;
        spec.spawn = self
            .allow_spawn
            .as_deref()
            .map(msbvm_sdk::spawn::SpawnGrant::parse)
            .transpose()?;
        let net = &mut spec.network;
        net.enabled = !self.no_network;
        net.ports = self
            .publish
            .iter()
            .map(|p| PortSpec::parse(p))
            .collect::<Result<_, _>>()?;
        net.rules = self.net_rules.rules(raw_args);
        if let Some(allow) = self.net_rules.default_allow() {
            net.default_allow = allow;
        }
        if let Some(mtu) = self.mtu {
            net.mtu = msbvm_sdk::spec::checked_mtu(mtu)
                .map_err(|e| Error::InvalidConfig(format!("--mtu: {e}")))?;
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(Error::InvalidConfig(
                    "--net-max-connections must be at least 1".into(),
                ));
            }
            net.max_connections = Some(n);
        }
        net.dns_servers = self
            .dns
            .iter()
            .map(|d| msbvm_sdk::spec::parse_dns_server(d))
            .collect::<Result<_, _>>()?;
        net.tls = TlsSpec {
            intercept: lowercase(&self.tls_intercept),
            bypass: lowercase(&self.tls_bypass),
            upstream_cas: self.tls_upstream_ca.clone(),
            ca: self
                .tls_ca
                .as_deref()
                .map(CaScope::parse)
                .transpose()?
                .unwrap_or_default(),
        };
        net.tls.check()?;
        spec.plugins = self.plugin_specs()?;
        Ok(spec)
    }

    /// The plugins of the per-user defaults file (unless left out), then those of
    /// `--plugin`.
    fn plugin_specs(&self) -> Result<Vec<msbvm_sdk::plugins::PluginSpec>, Error> {
        use msbvm_sdk::plugins::spec;
        let mut out = Vec::new();
        if !self.no_default_plugins {
            if let Some(file) = spec::user_file() {
                out = spec::load_user_file(&file).map_err(Error::InvalidConfig)?;
            }
        }
        out.extend(parse_plugins(&self.plugins)?);
        Ok(out)
    }

    /// The secrets of `--secret` (values from this process's environment) and
    /// `--secret-file`.
    pub fn secrets(&self) -> Result<Vec<Secret>, Error> {
        let mut out = Vec::new();
        for text in &self.secrets {
            out.push(crate::secret_opts::parse_secret(text, Secret::from_env)?);
        }
        for text in &self.secret_files {
            out.push(crate::secret_opts::parse_secret_file(text)?);
        }
        msbvm_sdk::secrets::check_all(&out)?;
        Ok(out)
    }
}

fn lowercase(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_from_options() {
        let args = SandboxArgs {
            image: Some("reg:5000/alpine:3".into()),
            volumes: vec!["/srv:/srv:ro".into()],
            tmpfs: vec!["/scratch:1m".into()],
            disk: Some("64M".into()),
            allow_spawn: Some("2,memory=512".into()),
            publish: vec!["8080:80".into()],
            net_rules: NetRuleArgs {
                net_default: Some("deny".into()),
                ..NetRuleArgs::default()
            },
            dns: vec!["127.0.0.1:5353".into(), "10.1.1.1".into()],
            ..SandboxArgs::default()
        };
        let spec = args.spec(&[]).unwrap();
        assert_eq!(
            spec.root,
            RootSpec::Image {
                reference: "reg:5000/alpine:3".into()
            }
        );
        assert!(spec.volumes[0].read_only);
        assert_eq!(spec.tmpfs[0].size_bytes, Some(1 << 20));
        assert_eq!(spec.disk_size_bytes, Some(64 << 20));
        let grant = spec.spawn.as_ref().unwrap();
        assert_eq!((grant.max_children, grant.max_memory_mib), (2, 512));
        assert_eq!(spec.network.ports[0].guest_port, 80);
        assert!(!spec.network.default_allow);
        assert_eq!(spec.network.dns_servers[1], "10.1.1.1:53".parse().unwrap());
        let bad = SandboxArgs {
            mtu: Some(100),
            ..SandboxArgs::default()
        };
        assert!(bad.spec(&[]).is_err());
    }

    #[test]
    fn tls_and_secret_options_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sandbox: SandboxArgs,
        }
        let tmp = tempfile::TempDir::new().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let key = tmp.path().join("key");
        std::fs::write(&key, "v\n").unwrap();
        let cli = Cli::try_parse_from([
            "msbvm".to_string(),
            "--tls-intercept".into(),
            "API.example.com".into(),
            "--tls-intercept=all".into(),
            "--tls-bypass".into(),
            "*.pinned.example".into(),
            "--tls-upstream-ca".into(),
            ca.display().to_string(),
            "--tls-ca".into(),
            "per-sandbox".into(),
            "--secret-file".into(),
            format!("KEY={}@api.example.com:query", key.display()),
        ])
        .unwrap();
        let spec = cli.sandbox.spec(&[]).unwrap();
        assert_eq!(spec.network.tls.intercept, ["api.example.com", "all"]);
        assert_eq!(spec.network.tls.bypass, ["*.pinned.example"]);
        assert_eq!(spec.network.tls.upstream_cas, [ca]);
        assert_eq!(spec.network.tls.ca, CaScope::Sandbox);
        let secrets = cli.sandbox.secrets().unwrap();
        assert_eq!(secrets[0].expose_value(), "v");
        assert!(secrets[0].inject().query && !secrets[0].inject().headers);
        for bad in [
            vec!["--tls-intercept", "bad host"],
            vec!["--tls-upstream-ca", "/nonexistent/ca.pem"],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("msbvm").chain(bad.clone())).unwrap();
            assert!(cli.sandbox.spec(&[]).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["msbvm", "--tls-ca", "other"]).is_err());
        assert!(Cli::try_parse_from(["msbvm", "--no-network", "--secret", "A@b.com"]).is_err());
    }
}
