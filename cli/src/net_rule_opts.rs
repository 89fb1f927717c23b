//! The `--net-allow`, `--net-deny` and `--net-default` options, shared by `msbvm run`,
//! `msbvm fork` and `msbvm net policy`.

use clap::Args;
use msbvm_sdk::spec::NetRule;

/// Network rules and what happens to traffic no rule matches.
#[derive(Args, Debug, Clone, PartialEq, Default)]
pub struct NetRuleArgs {
    /// Allow traffic matching RULE; rules apply in command-line order with --net-deny, first
    /// match wins; repeatable. RULE: `[tcp|udp|icmp:]TARGET[:PORT[-PORT]]` with TARGET an
    /// address, CIDR, DNS name, `*.suffix`, `any` or a group (public, private, loopback,
    /// link-local, metadata, multicast, host), or `[METHOD ]http://HOST[:PORT][/PATH]`. Rules given to a fork replace the snapshot's.
    #[arg(long = "net-allow", value_name = "RULE")]
    pub net_allow: Vec<String>,
    /// Deny traffic matching RULE; repeatable.
    #[arg(long = "net-deny", value_name = "RULE")]
    pub net_deny: Vec<String>,
    /// What happens to traffic no rule matches, after the built-in denials of private,
    /// loopback, link-local and metadata addresses and of the host (default: allow; for a
    /// fork, the snapshot's).
    #[arg(long = "net-default", value_name = "allow|deny", value_parser = ["allow", "deny"])]
    pub net_default: Option<String>,
}

impl NetRuleArgs {
    /// The rules in command-line order ([`rules_in_order`]); `raw_args` are the process's
    /// arguments.
    pub fn rules(&self, raw_args: &[String]) -> Vec<NetRule> {
        rules_in_order(raw_args, &self.net_allow, &self.net_deny)
    }

    /// `--net-default` as "allow unmatched traffic", when given.
    pub fn default_allow(&self) -> Option<bool> {
        self.net_default.as_deref().map(|d| d == "allow")
    }
}

/// The rules of `--net-allow` (`allow`) and `--net-deny` (`deny`) in command-line order,
/// read from the raw arguments, because clap keeps the two options in two lists and their
/// relative order decides which rule matches first. When that scan does not account for
/// every value clap saw (e.g. an option spelled another way), the allow rules come first,
/// then the deny rules.
fn rules_in_order(raw_args: &[String], allow: &[String], deny: &[String]) -> Vec<NetRule> {
    let scanned = ordered_rules(raw_args);
    if scanned.len() == allow.len() + deny.len() {
        return scanned;
    }
    let rule = |allow: bool| {
        move |r: &String| NetRule {
            allow,
            rule: r.clone(),
        }
    };
    allow
        .iter()
        .map(rule(true))
        .chain(deny.iter().map(rule(false)))
        .collect()
}

/// `--net-allow`/`--net-deny` values in the order given, up to a `--`.
fn ordered_rules(raw_args: &[String]) -> Vec<NetRule> {
    let mut out = Vec::new();
    let mut args = raw_args.iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        for (flag, allow) in [("--net-allow", true), ("--net-deny", false)] {
            if arg == flag {
                if let Some(v) = args.next() {
                    out.push(NetRule {
                        allow,
                        rule: v.clone(),
                    });
                }
            } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                out.push(NetRule {
                    allow,
                    rule: v.to_string(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rules_keep_command_line_order() {
        let raw = strings(&[
            "msbvm",
            "run",
            "--net-deny",
            "10.0.0.0/8",
            "--net-allow=host",
            "--net-allow",
            "example.com",
            "--",
            "--net-deny",
            "x",
        ]);
        let rules = ordered_rules(&raw);
        assert_eq!(
            rules,
            [
                NetRule {
                    allow: false,
                    rule: "10.0.0.0/8".into()
                },
                NetRule {
                    allow: true,
                    rule: "host".into()
                },
                NetRule {
                    allow: true,
                    rule: "example.com".into()
                },
            ]
        );
    }

    #[test]
    fn rules_clap_saw_but_the_scan_missed_keep_allow_then_deny() {
        let rules = rules_in_order(&[], &strings(&["a"]), &strings(&["d"]));
        assert_eq!(
            rules,
            [
                NetRule {
                    allow: true,
                    rule: "a".into()
                },
                NetRule {
                    allow: false,
                    rule: "d".into()
                },
            ]
        );
    }
}
