//! The option objects JavaScript passes, and their conversion to the SDK's builders, checked
//! (a bad value is an `InvalidConfig` error, never a panic or a silent default).

use std::collections::HashMap;
use std::time::Duration;

use msbvm_sdk as sdk;
use napi_derive::napi;

use crate::{config_error, to_js};

/// Seconds from JavaScript as a duration (negative, NaN or infinite is refused).
pub(crate) fn seconds(what: &str, secs: Option<f64>) -> napi::Result<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| config_error(format!("{what} must be a number of seconds >= 0, not {s}")))
    })
    .transpose()
}

/// A whole JavaScript number (in `i64`'s range; the SDK checks the range that applies).
pub(crate) fn whole(what: &str, n: f64) -> napi::Result<i64> {
    // 2^63 is exactly representable, so this bound lets no float through that `as` would clamp.
    if n.fract() == 0.0 && n >= -(2f64.powi(63)) && n < 2f64.powi(63) {
        Ok(n as i64)
    } else {
        Err(config_error(format!(
            "{what} must be a whole number, not {n}"
        )))
    }
}

/// A secret the guest sees only as a placeholder (see the Rust SDK's `Secret`).
#[napi(object)]
pub struct SecretOptions {
    /// Its name (the placeholder is derived from it).
    pub name: String,
    /// Its value; never enters the guest.
    pub value: String,
    /// Hosts (or `*.domain` patterns) whose requests get the value.
    pub hosts: Option<Vec<String>>,
    /// Substitute in headers (default true).
    pub inject_headers: Option<bool>,
    /// Substitute in query strings.
    pub inject_query: Option<bool>,
    /// Substitute in bodies.
    pub inject_body: Option<bool>,
}

impl SecretOptions {
    pub(crate) fn into_secret(self) -> napi::Result<sdk::Secret> {
        let mut secret = sdk::Secret::new(self.name, self.value)
            .inject_headers(self.inject_headers.unwrap_or(true))
            .inject_query(self.inject_query.unwrap_or(false))
            .inject_body(self.inject_body.unwrap_or(false));
        for host in self.hosts.unwrap_or_default() {
            secret = secret.allow_host(host);
        }
        secret.validate().map_err(to_js)?;
        Ok(secret)
    }
}

/// What a sandbox may create from inside (see the Rust SDK's `SpawnGrant`).
#[napi(object)]
pub struct SpawnGrantOptions {
    /// Most children at once.
    pub children: u32,
    /// Their vCPUs together (default one a child).
    pub cpus: Option<u32>,
    /// Their memory together in MiB (default 512 a child).
    pub memory: Option<u32>,
    /// The images they may use (any when empty).
    pub images: Option<Vec<String>>,
    /// Network allow rules they may be given.
    pub net_allow: Option<Vec<String>>,
    /// Levels below this sandbox (default 1).
    pub depth: Option<u32>,
    /// This sandbox's secrets they may be given.
    pub secrets: Option<Vec<String>>,
}

impl SpawnGrantOptions {
    fn into_grant(self) -> sdk::spawn::SpawnGrant {
        let mut grant =
            sdk::spawn::SpawnGrant::children(self.children).depth(self.depth.unwrap_or(1));
        if let Some(cpus) = self.cpus {
            grant = grant.cpus(cpus);
        }
        if let Some(memory) = self.memory {
            grant = grant.memory_mib(u64::from(memory));
        }
        grant.images = self.images.unwrap_or_default();
        for rule in self.net_allow.unwrap_or_default() {
            grant = grant.net_allow(rule);
        }
        for secret in self.secrets.unwrap_or_default() {
            grant = grant.secret(secret);
        }
        grant
    }
}

/// How to create a sandbox; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct CreateOptions {
    /// An OCI image reference (default: the embedded minimal image).
    pub image: Option<String>,
    /// vCPUs.
    pub cpus: Option<f64>,
    /// Memory in MiB.
    pub memory: Option<f64>,
    /// Environment every process gets.
    pub env: Option<HashMap<String, String>>,
    /// Volumes as "HOST:GUEST[:ro]" or "NAME:GUEST[:ro]".
    pub volumes: Option<Vec<String>>,
    /// Give the guest a network at all (default true).
    pub network: Option<bool>,
    /// Network allow rules.
    pub net_allow: Option<Vec<String>>,
    /// Network deny rules.
    pub net_deny: Option<Vec<String>>,
    /// What no rule matches gets.
    pub net_default_allow: Option<bool>,
    /// Default working directory.
    pub workdir: Option<String>,
    /// Default user.
    pub user: Option<String>,
    /// Seconds to wait for the boot.
    pub ready_timeout: Option<f64>,
    /// Keep running after this process exits.
    pub detached: Option<bool>,
    /// Secrets (the guest sees placeholders).
    pub secrets: Option<Vec<SecretOptions>>,
    /// Spawning from inside.
    pub allow_spawn: Option<SpawnGrantOptions>,
    /// Published ports, "[ADDR:]HOST_PORT:GUEST_PORT".
    pub publish: Option<Vec<String>>,
    /// tmpfs mounts, "GUEST_PATH[:SIZE]" (SIZE in bytes or with a k, m or g suffix).
    pub tmpfs: Option<Vec<String>>,
    /// Plugins in the CLI's form, "NAME_OR_PATH[:CONFIG]" (a shipped plugin by name, or an
    /// executable by path); they run in this order.
    pub plugins: Option<Vec<String>>,
    /// Hosts whose TLS the network stack intercepts ("HOST", "*.SUFFIX" or "all").
    pub tls_intercept: Option<Vec<String>>,
    /// Hosts never intercepted (certificate-pinning clients).
    pub tls_bypass: Option<Vec<String>>,
    /// PEM files of extra trust roots for upstream servers.
    pub tls_upstream_ca: Option<Vec<String>>,
    /// The CA the guest trusts: "user" (default) or "sandbox" (made for this sandbox alone).
    pub tls_ca: Option<String>,
    /// The guest interface's MTU (576 to 65520; default 1500).
    pub mtu: Option<f64>,
    /// DNS servers ("ADDR" or "ADDR:PORT") the guest's allowed queries go to.
    pub dns_servers: Option<Vec<String>>,
}

impl CreateOptions {
    /// The SDK builder for a sandbox called `name` with these options.
    pub(crate) fn builder(self, name: String) -> napi::Result<sdk::SandboxBuilder> {
        sdk::validate_name(&name).map_err(to_js)?;
        let mut b = sdk::Sandbox::builder(name)
            .network(self.network.unwrap_or(true))
            .detached(self.detached.unwrap_or(false));
        if let Some(cpus) = self.cpus {
            b = b.cpus(sdk::checked_cpus(whole("cpus", cpus)?).map_err(to_js)?);
        }
        if let Some(memory) = self.memory {
            b = b.memory_mib(sdk::checked_memory_mib(whole("memory", memory)?).map_err(to_js)?);
        }
        if let Some(image) = self.image {
            b = b.image(image);
        }
        let mut env: Vec<_> = self.env.unwrap_or_default().into_iter().collect();
        env.sort();
        for (k, v) in env {
            b = b.env(k, v);
        }
        for v in self.volumes.unwrap_or_default() {
            b = b.volume(sdk::spec::VolumeSpec::parse(&v).map_err(to_js)?);
        }
        for rule in self.net_allow.unwrap_or_default() {
            b = b.net_allow(rule);
        }
        for rule in self.net_deny.unwrap_or_default() {
            b = b.net_deny(rule);
        }
        if let Some(allow) = self.net_default_allow {
            b = b.net_default_allow(allow);
        }
        if let Some(dir) = self.workdir {
            b = b.workdir(dir);
        }
        if let Some(user) = self.user {
            b = b.user(user);
        }
        if let Some(t) = seconds("readyTimeout", self.ready_timeout)? {
            b = b.ready_timeout(t);
        }
        for secret in self.secrets.unwrap_or_default() {
            b = b.secret(secret.into_secret()?);
        }
        if let Some(grant) = self.allow_spawn {
            b = b.allow_spawn(grant.into_grant());
        }
        for port in self.publish.unwrap_or_default() {
            b = b.publish(sdk::spec::PortSpec::parse(&port).map_err(to_js)?);
        }
        for t in self.tmpfs.unwrap_or_default() {
            b = b.tmpfs(sdk::spec::TmpfsSpec::parse(&t).map_err(to_js)?);
        }
        let plugins = self.plugins.unwrap_or_default();
        if !plugins.is_empty() {
            let cwd = std::env::current_dir()
                .map_err(|e| config_error(format!("cannot resolve plugin paths: {e}")))?;
            for p in plugins {
                let spec = sdk::plugins::PluginSpec::parse(&p, &cwd)
                    .map_err(|e| config_error(format!("plugin {p:?}: {e}")))?;
                b = b.plugin(spec);
            }
        }
        for host in self.tls_intercept.unwrap_or_default() {
            b = b.tls_intercept(host);
        }
        for host in self.tls_bypass.unwrap_or_default() {
            b = b.tls_bypass(host);
        }
        for path in self.tls_upstream_ca.unwrap_or_default() {
            b = b.tls_upstream_ca(path);
        }
        if let Some(ca) = self.tls_ca {
            b = b.tls_ca(sdk::spec::CaScope::parse(&ca).map_err(to_js)?);
        }
        if let Some(mtu) = self.mtu {
            let mtu = u16::try_from(whole("mtu", mtu)?).unwrap_or(0);
            b = b.mtu(sdk::spec::checked_mtu(mtu).map_err(to_js)?);
        }
        let dns = self.dns_servers.unwrap_or_default();
        if !dns.is_empty() {
            let servers = dns.iter().map(|d| sdk::spec::parse_dns_server(d));
            b = b.dns_servers(servers.collect::<Result<_, _>>().map_err(to_js)?);
        }
        Ok(b)
    }
}

/// How to run a process; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct ExecOptions {
    /// Environment added to the sandbox's.
    pub env: Option<HashMap<String, String>>,
    /// Working directory.
    pub cwd: Option<String>,
    /// User id.
    pub uid: Option<u32>,
    /// Group id.
    pub gid: Option<u32>,
    /// Run on a terminal of `[rows, cols]`.
    pub tty: Option<Vec<u32>>,
    /// Seconds after which the process is killed.
    pub timeout: Option<f64>,
}

impl ExecOptions {
    /// The SDK's options to run `argv` with these.
    pub(crate) fn for_argv(self, argv: Vec<String>) -> napi::Result<sdk::ExecOptions> {
        if argv.is_empty() {
            return Err(config_error("the command is empty".into()));
        }
        let mut opts = sdk::ExecOptions::new(argv);
        let mut env: Vec<_> = self.env.unwrap_or_default().into_iter().collect();
        env.sort();
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        if let Some(cwd) = self.cwd {
            opts = opts.cwd(cwd);
        }
        if let Some(uid) = self.uid {
            opts = opts.uid(uid);
        }
        if let Some(gid) = self.gid {
            opts = opts.gid(gid);
        }
        if let Some(tty) = self.tty {
            let [rows, cols] = tty[..] else {
                return Err(config_error("tty must be [rows, cols]".into()));
            };
            let size = |n: u32| {
                u16::try_from(n).map_err(|_| config_error(format!("tty size {n} is too large")))
            };
            opts = opts.tty(size(rows)?, size(cols)?);
        }
        if let Some(t) = seconds("timeout", self.timeout)? {
            opts = opts.timeout(t);
        }
        Ok(opts)
    }
}

/// A network rule: allow or deny what `rule` matches.
#[napi(object)]
pub struct NetRule {
    /// Allow (true) or deny.
    pub allow: bool,
    /// The rule text (host names, CIDRs, `host:port`, URLs).
    pub rule: String,
}

/// How to start sandboxes from a snapshot; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct ForkOptions {
    /// How many (default 1).
    pub count: Option<u32>,
    /// Their name (suffixed when several).
    pub name: Option<String>,
    /// Environment added for new processes.
    pub env: Option<HashMap<String, String>>,
    /// vCPUs.
    pub cpus: Option<f64>,
    /// Memory in MiB.
    pub memory: Option<f64>,
    /// Keep running after this process exits.
    pub detached: Option<bool>,
    /// Seconds to wait for each to be ready.
    pub ready_timeout: Option<f64>,
    /// Network rules replacing the source's.
    pub net_rules: Option<Vec<NetRule>>,
    /// What no rule matches gets.
    pub net_default_allow: Option<bool>,
    /// Secrets.
    pub secrets: Option<Vec<SecretOptions>>,
}

impl ForkOptions {
    /// The SDK's fork builder for `snapshot` with these options.
    pub(crate) fn builder(self, snapshot: &str) -> napi::Result<sdk::ForkBuilder> {
        let mut f = sdk::Sandbox::fork(snapshot)
            .count(self.count.unwrap_or(1))
            .detached(self.detached.unwrap_or(false));
        if let Some(name) = self.name {
            f = f.name(name);
        }
        let mut env: Vec<_> = self.env.unwrap_or_default().into_iter().collect();
        env.sort();
        for (k, v) in env {
            f = f.env(k, v);
        }
        if let Some(cpus) = self.cpus {
            f = f.cpus(sdk::checked_cpus(whole("cpus", cpus)?).map_err(to_js)?);
        }
        if let Some(memory) = self.memory {
            f = f.memory_mib(sdk::checked_memory_mib(whole("memory", memory)?).map_err(to_js)?);
        }
        if let Some(t) = seconds("readyTimeout", self.ready_timeout)? {
            f = f.ready_timeout(t);
        }
        if let Some(rules) = self.net_rules {
            f = f.net_rules(
                rules
                    .into_iter()
                    .map(|r| sdk::spec::NetRule {
                        allow: r.allow,
                        rule: r.rule,
                    })
                    .collect(),
            );
        }
        if let Some(allow) = self.net_default_allow {
            f = f.net_default_allow(allow);
        }
        for secret in self.secrets.unwrap_or_default() {
            f = f.secret(secret.into_secret()?);
        }
        Ok(f)
    }
}
