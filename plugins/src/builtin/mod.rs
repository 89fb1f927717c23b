//! The plugins shipped with msbvm: [`audit`], [`rate_limit`] and [`net_monitor`], turned on
//! by name (`--plugin audit:path=/tmp/audit.jsonl`).

use std::path::PathBuf;
use std::sync::Arc;

use crate::plugin::Plugin;

pub mod audit;
pub mod net_monitor;
pub mod rate_limit;

/// The shipped plugins' names.
pub const NAMES: [&str; 3] = ["audit", "rate-limit", "net-monitor"];

/// Where a shipped plugin runs.
#[derive(Clone, Debug)]
pub struct Context {
    /// The sandbox's name.
    pub sandbox: String,
    /// The sandbox's state directory (default place for what a plugin writes).
    pub dir: PathBuf,
}

/// The settings of a plugin that writes one file: `path=FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPath {
    /// Where its output goes; `None` for its default.
    pub path: Option<PathBuf>,
}

impl OutputPath {
    /// Parses `path=FILE` for `plugin`.
    pub fn parse_for(plugin: &str, config: Option<&str>) -> Result<OutputPath, String> {
        let mut c = OutputPath { path: None };
        for (_, v) in pairs(plugin, config, &["path"])? {
            if v.is_empty() {
                return Err(format!("{plugin}: path is empty"));
            }
            c.path = Some(PathBuf::from(v));
        }
        Ok(c)
    }
}

/// Checks `config` for the shipped plugin `name` without starting it.
pub fn check(name: &str, config: Option<&str>) -> Result<(), String> {
    match name {
        "audit" | "net-monitor" => OutputPath::parse_for(name, config).map(|_| ()),
        "rate-limit" => rate_limit::Config::parse(config).map(|_| ()),
        other => Err(format!("no shipped plugin is called {other:?}")),
    }
}

/// Starts the shipped plugin `name`.
pub fn start(name: &str, config: Option<&str>, cx: &Context) -> Result<Arc<dyn Plugin>, String> {
    Ok(match name {
        "audit" => Arc::new(audit::Audit::open(
            OutputPath::parse_for(name, config)?,
            cx,
        )?),
        "rate-limit" => Arc::new(rate_limit::RateLimit::new(rate_limit::Config::parse(
            config,
        )?)),
        "net-monitor" => Arc::new(net_monitor::NetMonitor::new(
            OutputPath::parse_for(name, config)?,
            cx,
        )),
        other => return Err(format!("no shipped plugin is called {other:?}")),
    })
}

/// `key=value` pairs separated by commas; each key must be one of `known`.
pub(crate) fn pairs<'a>(
    plugin: &str,
    config: Option<&'a str>,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, String> {
    let Some(config) = config.filter(|c| !c.is_empty()) else {
        return Ok(Vec::new());
    };
    config
        .split(',')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{plugin}: {pair:?} is not key=value"))?;
            if known.contains(&k) {
                Ok((k, v))
            } else {
                Err(format!(
                    "{plugin}: unknown setting {k:?} (known: {})",
                    known.join(", ")
                ))
            }
        })
        .collect()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
