//! How a user names the plugins of a sandbox: `--plugin NAME_OR_PATH[:CONFIG]`, the SDK's
//! `.plugin(..)`, and the per-user defaults file (`~/.config/msbvm/plugins.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::builtin;
use crate::plugin::FailurePolicy;

/// One configured plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSpec {
    /// What runs.
    pub source: Source,
    /// Its configuration: the text after `:` (a shipped plugin parses it; an executable gets it
    /// in the hello).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Longest a decision may take, in milliseconds (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// What a decision is when the plugin fails (default: closed, i.e. deny).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailurePolicy>,
}

/// What a plugin is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A plugin shipped with msbvm, by name ([`builtin::NAMES`]).
    Builtin(String),
    /// An executable speaking the protocol of `PROTOCOL.md` (an absolute path).
    Program(PathBuf),
}

/// The longest decision timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

impl PluginSpec {
    /// Parses `NAME_OR_PATH[:CONFIG]`. A word without `/` names a shipped plugin; anything
    /// with a `/` is an executable, made absolute against `cwd`. The configuration starts at
    /// the first `:` (so an executable's path cannot hold one; the configuration may).
    pub fn parse(text: &str, cwd: &Path) -> Result<PluginSpec, String> {
        let (what, config) = match text.split_once(':') {
            Some((what, config)) => (what, Some(config.to_string())),
            None => (text, None),
        };
        if what.is_empty() {
            return Err(format!("plugin {text:?}: name a plugin or an executable"));
        }
        let source = if what.contains('/') {
            Source::Program(cwd.join(what))
        } else if builtin::NAMES.contains(&what) {
            Source::Builtin(what.to_string())
        } else {
            return Err(format!(
                "no shipped plugin is called {what:?} (shipped: {}); name an executable with a path, e.g. ./{what}",
                builtin::NAMES.join(", ")
            ));
        };
        let spec = PluginSpec {
            source,
            config,
            timeout_ms: None,
            on_failure: None,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks what was configured: a shipped plugin's configuration parses, an executable's
    /// path is absolute, the timeout is within [`MAX_TIMEOUT`].
    pub fn check(&self) -> Result<(), String> {
        match &self.source {
            Source::Builtin(name) => builtin::check(name, self.config.as_deref())?,
            Source::Program(path) if !path.is_absolute() => {
                return Err(format!(
                    "plugin {}: the path must be absolute",
                    path.display()
                ))
            }
            Source::Program(_) => {}
        }
        if self.timeout_ms == Some(0) || self.timeout() > MAX_TIMEOUT {
            return Err(format!(
                "plugin {}: timeout_ms must be 1 to {}",
                self.label(),
                MAX_TIMEOUT.as_millis()
            ));
        }
        Ok(())
    }

    /// The decision timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(1000))
    }

    /// The failure policy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.on_failure.unwrap_or_default()
    }

    /// The name or path, for messages.
    pub fn label(&self) -> String {
        match &self.source {
            Source::Builtin(n) => n.clone(),
            Source::Program(p) => p.display().to_string(),
        }
    }
}

/// The per-user defaults file: plugins every sandbox the `msbvm` command creates gets (before
/// those given with `--plugin`).
///
/// ```toml
/// [[plugin]]
/// use = "audit"                 # a shipped plugin, or a path to an executable
/// config = "path=/tmp/audit.jsonl"
///
/// [[plugin]]
/// use = "/usr/local/bin/guard"
/// timeout_ms = 500
/// on_failure = "open"           # or "closed" (the default)
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    plugin: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    #[serde(rename = "use")]
    what: String,
    config: Option<String>,
    timeout_ms: Option<u64>,
    on_failure: Option<FailurePolicy>,
}

/// Where the per-user defaults file is: `$XDG_CONFIG_HOME/msbvm/plugins.toml`, else
/// `$HOME/.config/msbvm/plugins.toml`.
pub fn user_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("msbvm").join("plugins.toml"))
}

/// The plugins of the defaults file at `path` (none if it does not exist). Relative
/// executable paths are taken from the file's directory.
pub fn load_user_file(path: &Path) -> Result<Vec<PluginSpec>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    parse_user_file(&text, path.parent().unwrap_or(Path::new("/")))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The plugins of a defaults file's `text`; relative executable paths are taken from `dir`.
pub fn parse_user_file(text: &str, dir: &Path) -> Result<Vec<PluginSpec>, String> {
    let file: UserFile = toml::from_str(text).map_err(|e| e.to_string())?;
    file.plugin
        .into_iter()
        .map(|entry| {
            if entry.what.contains(':') && !entry.what.contains('/') {
                return Err(format!(
                    "use = {:?}: put the configuration in config = \"...\"",
                    entry.what
                ));
            }
            let mut spec = PluginSpec::parse(&entry.what, dir)?;
            spec.config = entry.config;
            spec.timeout_ms = entry.timeout_ms;
            spec.on_failure = entry.on_failure;
            spec.check()?;
            Ok(spec)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_and_configurations() {
        let cwd = Path::new("/work");
        let audit = PluginSpec::parse("audit", cwd).unwrap();
        assert_eq!(audit.source, Source::Builtin("audit".into()));
        assert_eq!(audit.config, None);
        let limited = PluginSpec::parse("rate-limit:execs=10", cwd).unwrap();
        assert_eq!(limited.config.as_deref(), Some("execs=10"));
        let guard = PluginSpec::parse("./bin/guard.py:a:b", cwd).unwrap();
        // (the configuration is everything after the first colon)
        assert_eq!(guard.source, Source::Program("/work/./bin/guard.py".into()));
        assert_eq!(guard.config.as_deref(), Some("a:b"));
        let abs = PluginSpec::parse("/opt/p", cwd).unwrap();
        assert_eq!(
            (abs.source, abs.config),
            (Source::Program("/opt/p".into()), None)
        );
        let slashes = PluginSpec::parse("audit:path=/tmp/a.jsonl", cwd).unwrap();
        assert_eq!(slashes.source, Source::Builtin("audit".into()));
        assert_eq!(slashes.config.as_deref(), Some("path=/tmp/a.jsonl"));
        let both = PluginSpec::parse("/opt/p:out=/var/x:y", cwd).unwrap();
        assert_eq!(both.source, Source::Program("/opt/p".into()));
        assert_eq!(both.config.as_deref(), Some("out=/var/x:y"));
    }

    #[test]
    fn mistakes_are_clear() {
        let cwd = Path::new("/");
        let e = PluginSpec::parse("guard", cwd).unwrap_err();
        assert!(e.contains("./guard") && e.contains("audit"), "{e}");
        assert!(PluginSpec::parse("", cwd).is_err());
        assert!(PluginSpec::parse(":x", cwd).is_err());
        let e = PluginSpec::parse("rate-limit:bytes=5", cwd).unwrap_err();
        assert!(e.contains("bytes"), "{e}");
        let mut s = PluginSpec::parse("audit", cwd).unwrap();
        s.timeout_ms = Some(0);
        assert!(s.check().is_err());
        s.timeout_ms = Some(61_000);
        assert!(s.check().is_err());
    }

    #[test]
    fn the_user_file_lists_plugins_in_order() {
        let text = r#"
[[plugin]]
use = "audit"
config = "path=/tmp/a.jsonl"

[[plugin]]
use = "bin/guard"
timeout_ms = 500
on_failure = "open"
"#;
        let specs = parse_user_file(text, Path::new("/etc/me")).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].config.as_deref(), Some("path=/tmp/a.jsonl"));
        assert_eq!(specs[1].source, Source::Program("/etc/me/bin/guard".into()));
        assert_eq!(specs[1].timeout(), Duration::from_millis(500));
        assert_eq!(specs[1].failure_policy(), FailurePolicy::Open);
        assert!(
            parse_user_file("[[plugin]]\nuse = \"audit\"\nbogus = 1\n", Path::new("/"))
                .unwrap_err()
                .contains("bogus")
        );
        assert!(parse_user_file("[[plugin]]\nuse = \"audit:x\"\n", Path::new("/")).is_err());
        assert!(load_user_file(Path::new("/nonexistent/plugins.toml"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn specs_round_trip_as_json() {
        let s = PluginSpec::parse("/p:cfg", Path::new("/")).unwrap();
        let back: PluginSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
