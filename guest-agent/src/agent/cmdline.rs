//! The kernel command line: the settings msbvm passes to the agent.
//!
//! Recognised: `msbvm.hostname=NAME` (default [`DEFAULT_HOSTNAME`]). Parsing
//! is pure so it is tested on the host.

pub use msbvm_protocol::boot::{is_valid_hostname, DEFAULT_HOSTNAME};

/// Reads `/proc/cmdline` (empty if it cannot be read).
pub fn read() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// The value of the last `key=value` word for `key`, quotes removed.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|word| {
            let word = word.trim_matches('"');
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v.trim_matches('"'))
        })
        .next_back()
}

/// The hostname the command line asks for, or [`DEFAULT_HOSTNAME`] when it
/// asks for none or for one that is not a valid hostname.
pub fn hostname(cmdline: &str) -> String {
    match value(cmdline, "msbvm.hostname") {
        Some(name) if is_valid_hostname(name) => name.to_string(),
        Some(name) => {
            agent_log!("ignoring invalid msbvm.hostname={name:?}; using {DEFAULT_HOSTNAME}");
            DEFAULT_HOSTNAME.to_string()
        }
        None => DEFAULT_HOSTNAME.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_from_cmdline() {
        assert_eq!(
            hostname("console=ttyS0 msbvm.hostname=box-1 quiet"),
            "box-1"
        );
        assert_eq!(hostname("console=ttyS0 quiet"), DEFAULT_HOSTNAME);
        assert_eq!(hostname(""), DEFAULT_HOSTNAME);
        // The last occurrence wins, as for kernel parameters.
        assert_eq!(hostname("msbvm.hostname=a msbvm.hostname=b\n"), "b");
        assert_eq!(hostname("\"msbvm.hostname=quoted\""), "quoted");
        assert_eq!(hostname("msbvm.hostname=\"q2\""), "q2");
    }

    #[test]
    fn invalid_hostnames_fall_back_to_default() {
        assert_eq!(hostname("msbvm.hostname="), DEFAULT_HOSTNAME);
        assert_eq!(hostname("msbvm.hostname=a/b"), DEFAULT_HOSTNAME);
        assert_eq!(hostname("msbvm.hostname=-x"), DEFAULT_HOSTNAME);
        assert_eq!(
            hostname(&format!("msbvm.hostname={}", "a".repeat(65))),
            DEFAULT_HOSTNAME
        );
        assert!(is_valid_hostname(&"a".repeat(64)));
    }

    #[test]
    fn similar_keys_do_not_match() {
        assert_eq!(value("xmsbvm.hostname=a", "msbvm.hostname"), None);
        assert_eq!(value("msbvm.hostnames=a", "msbvm.hostname"), None);
        assert_eq!(value("msbvm.hostname", "msbvm.hostname"), None);
    }
}
