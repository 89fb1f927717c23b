//! Arguments from Python, converted and checked before the SDK sees them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{config_error, to_py};

/// A duration given in seconds from Python, checked (a negative, NaN or huge value is a
/// configuration error, not a panic).
pub(crate) fn seconds(what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| config_error(format!("{what} must be a number of seconds >= 0, not {s}")))
    })
    .transpose()
}

/// An integer argument: a TypeError for a non-integer, a configuration error for one too
/// large for any setting (rather than Python's OverflowError from the conversion).
pub(crate) fn int_arg(what: &str, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.extract::<i64>() {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(value.py()) => {
            Err(config_error(format!("{what} is out of range: {value}")))
        }
        Err(e) => Err(e),
    }
}

/// The guest interface's MTU, checked by the SDK (`spec::MTU_RANGE`).
pub(crate) fn mtu_arg(value: Option<Bound<'_, PyAny>>) -> PyResult<Option<u16>> {
    let Some(mtu) = int_arg("mtu", value)? else {
        return Ok(None);
    };
    let range = sdk::spec::MTU_RANGE;
    let mtu = u16::try_from(mtu).map_err(|_| {
        config_error(format!(
            "MTU {mtu} is out of range: use {} to {}",
            range.start(),
            range.end()
        ))
    })?;
    sdk::spec::checked_mtu(mtu).map(Some).map_err(to_py)
}

/// Plugins in the CLI's form `NAME_OR_PATH[:CONFIG]`; executables' relative paths are taken
/// from the current directory.
pub(crate) fn plugin_specs(texts: Vec<String>) -> PyResult<Vec<sdk::plugins::PluginSpec>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| config_error(format!("plugins: no current directory: {e}")))?;
    texts.iter().map(|text| plugin_spec(text, &cwd)).collect()
}

fn plugin_spec(text: &str, cwd: &Path) -> PyResult<sdk::plugins::PluginSpec> {
    sdk::plugins::PluginSpec::parse(text, cwd)
        .map_err(|e| config_error(format!("plugin {text:?}: {e}")))
}

/// JSON text from the Python layer (`json.dumps`) as a value.
pub(crate) fn json_arg(what: &str, text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| config_error(format!("{what} is not JSON: {e}")))
}

/// A secret from Python: `(name, value, hosts, headers, query, body)` (see `msbvm.Secret`).
#[derive(FromPyObject)]
pub(crate) struct SecretArg(String, String, Vec<String>, bool, bool, bool);

impl SecretArg {
    /// The SDK's secret, checked (a bad name or host pattern is a configuration error).
    pub(crate) fn into_secret(self) -> PyResult<sdk::Secret> {
        let SecretArg(name, value, hosts, headers, query, body) = self;
        let mut secret = sdk::Secret::new(name, value)
            .inject_headers(headers)
            .inject_query(query)
            .inject_body(body);
        for host in hosts {
            secret = secret.allow_host(host);
        }
        secret.validate().map_err(to_py)?;
        Ok(secret)
    }
}

/// A spawn grant from Python: `(children, cpus, memory_mib, images, net_allow, depth,
/// secrets)` (see `msbvm.SpawnGrant`); `None` keeps the SDK's default for the children.
#[derive(FromPyObject)]
pub(crate) struct GrantArg(
    u32,
    Option<u32>,
    Option<u64>,
    Vec<String>,
    Vec<String>,
    u32,
    Vec<String>,
);

impl GrantArg {
    pub(crate) fn into_grant(self) -> sdk::spawn::SpawnGrant {
        let GrantArg(children, cpus, memory, images, net, depth, secrets) = self;
        let mut grant = sdk::spawn::SpawnGrant::children(children).depth(depth);
        if let Some(cpus) = cpus {
            grant = grant.cpus(cpus);
        }
        if let Some(memory) = memory {
            grant = grant.memory_mib(memory);
        }
        grant.images = images;
        for rule in net {
            grant = grant.net_allow(rule);
        }
        for secret in secrets {
            grant = grant.secret(secret);
        }
        grant
    }
}

/// How to run a process, from Python's keyword arguments.
pub(crate) fn exec_options(
    argv: Vec<String>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    tty: Option<(u16, u16)>,
    timeout: Option<f64>,
) -> PyResult<sdk::ExecOptions> {
    if argv.is_empty() {
        return Err(config_error("the command is empty".into()));
    }
    let mut opts = sdk::ExecOptions::new(argv);
    for (k, v) in env.unwrap_or_default() {
        opts = opts.env(k, v);
    }
    if let Some(cwd) = cwd {
        opts = opts.cwd(cwd);
    }
    if let Some(uid) = uid {
        opts = opts.uid(uid);
    }
    if let Some(gid) = gid {
        opts = opts.gid(gid);
    }
    if let Some((rows, cols)) = tty {
        opts = opts.tty(rows, cols);
    }
    if let Some(t) = seconds("timeout", timeout)? {
        opts = opts.timeout(t);
    }
    Ok(opts)
}

/// Bytes handed to Python as `bytes` (a `Vec<u8>` would become a list of ints).
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl<'py> IntoPyObject<'py> for Bytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}
