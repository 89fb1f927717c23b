//! Which TLS connections are intercepted, spliced untouched, or refused.
//!
//! A connection is intercepted when its SNI matches an `intercept` pattern or a secret's host,
//! unless a `bypass` pattern matches it (certificate-pinning clients; a secret bound to a
//! bypassed host is then never substituted). A connection that would be intercepted but
//! carries no SNI, or an SNI the network policy denies for this flow, is refused: the stack
//! cannot tell what the guest talks to, and must not mint a certificate for a denied name.

use crate::policy::{FlowInfo, Policy, Verdict, HOST_ALIAS_NAME};
use crate::secrets::{host_matches, Secret};

use super::TlsConfig;

/// A host pattern: `all`, or `HOST` / `*.SUFFIX` matched as secrets' hosts are
/// ([`host_matches`]: `*.SUFFIX` is a strict subdomain).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    All,
    Host(String),
}

impl Pattern {
    fn parse(text: &str) -> Pattern {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if text == "all" || text == "*" {
            return Pattern::All;
        }
        Pattern::Host(text)
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Host(pattern) => host_matches(pattern, name),
        }
    }
}

/// What to do with one TLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Terminate TLS with a minted leaf and hand the requests to the HTTP engine.
    Intercept {
        /// The SNI (lower-case).
        sni: String,
        /// The sandbox's DNS resolved `sni` to this destination address.
        pinned: bool,
    },
    /// Splice the bytes untouched.
    Bypass,
    /// Refuse the connection (the guest gets a reset) and report why.
    Refuse(String),
}

/// The interception rules of a sandbox, compiled once.
#[derive(Clone, Debug)]
pub struct TlsPolicy {
    intercept: Vec<Pattern>,
    bypass: Vec<Pattern>,
}

impl TlsPolicy {
    /// The rules of `config`, with every secret's hosts intercepted.
    pub fn new(config: &TlsConfig, secrets: &[Secret]) -> TlsPolicy {
        let intercept = config
            .intercept
            .iter()
            .chain(secrets.iter().flat_map(|s| s.hosts.iter()))
            .map(|p| Pattern::parse(p))
            .collect();
        TlsPolicy {
            intercept,
            bypass: config.bypass.iter().map(|p| Pattern::parse(p)).collect(),
        }
    }

    /// Whether a connection to `name` is intercepted (bypass wins).
    pub fn intercepts(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.intercept.iter().any(|p| p.matches(&name))
            && !self.bypass.iter().any(|p| p.matches(&name))
    }

    /// Whether a connection to an address `names` were resolved to would be intercepted when
    /// its SNI is unknown: `all`, or one of the names is intercepted.
    pub fn intercepts_any(&self, names: &[String]) -> bool {
        self.intercept.contains(&Pattern::All) || names.iter().any(|n| self.intercepts(n))
    }

    /// Decides about a connection with `sni` (lower-case, from the ClientHello) on `flow`,
    /// whose destination address the sandbox's DNS resolved from `names`.
    pub fn decide(
        &self,
        sni: Option<&str>,
        names: &[String],
        flow: &FlowInfo,
        policy: &Policy,
    ) -> Decision {
        let Some(sni) = sni else {
            return if self.intercepts_any(names) {
                Decision::Refuse(format!(
                    "TLS without a server name (SNI) to {}, an intercepted destination",
                    flow.dst
                ))
            } else {
                Decision::Bypass
            };
        };
        // An `https://` rule for the name can only be enforced inside the connection.
        let by_rule = policy.has_https_rule_for(sni)
            && !self
                .bypass
                .iter()
                .any(|p| p.matches(&sni.to_ascii_lowercase()));
        if !self.intercepts(sni) && !by_rule {
            return Decision::Bypass;
        }
        if let Some(reason) = denied_name(policy, flow, sni) {
            return Decision::Refuse(format!("TLS server name {sni} denied: {reason}"));
        }
        Decision::Intercept {
            sni: sni.to_owned(),
            // The host alias's own name is answered by the stack itself, never pinned.
            pinned: names.iter().any(|n| n.eq_ignore_ascii_case(sni))
                || (flow.to_host_alias && sni == HOST_ALIAS_NAME),
        }
    }
}

/// Why policy denies `sni` on `flow`, if it does: the flow checked as if the guest had
/// resolved `sni` to its address, or a user rule denying the name outright (name rules do not
/// apply to addresses like the host alias, but a denied name must still get no leaf). A name
/// merely not allowed by default is left to the flow's own verdict (an address rule may allow
/// it).
fn denied_name(policy: &Policy, flow: &FlowInfo, sni: &str) -> Option<String> {
    if let Verdict::Deny { reason, .. } = policy.check_flow_named(flow, || vec![sni.to_owned()]) {
        return Some(reason);
    }
    match policy.check_dns_name(sni) {
        Verdict::Deny {
            rule: Some(rule),
            reason,
        } if !rule.starts_with("default:") && !rule.starts_with("builtin:") => Some(reason),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Protocol, Rule};
    use crate::secrets::Inject;

    fn config(intercept: &[&str], bypass: &[&str]) -> TlsConfig {
        TlsConfig {
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            intercept: intercept.iter().map(|s| s.to_string()).collect(),
            bypass: bypass.iter().map(|s| s.to_string()).collect(),
            upstream_ca_pems: Vec::new(),
        }
    }

    fn secret(host: &str) -> Secret {
        Secret {
            name: "TOKEN".into(),
            value: "v".into(),
            placeholder: "p".into(),
            hosts: vec![host.into()],
            inject: Inject::default(),
        }
    }

    fn flow() -> FlowInfo {
        FlowInfo {
            protocol: Protocol::Tcp,
            dst: "93.184.216.34:443".parse().expect("addr"),
            to_host_alias: false,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns_secrets_and_bypass() {
        let p = TlsPolicy::new(
            &config(&["api.example.com", "*.corp.test"], &["pinned.corp.test"]),
            &[secret("secret.example.org"), secret("pinned.corp.test")],
        );
        let policy = Policy::default();
        let decide = |sni| p.decide(Some(sni), &names(&["api.example.com"]), &flow(), &policy);
        assert_eq!(
            decide("api.example.com"),
            Decision::Intercept {
                sni: "api.example.com".into(),
                pinned: true
            }
        );
        assert_eq!(
            decide("x.corp.test"),
            Decision::Intercept {
                sni: "x.corp.test".into(),
                pinned: false
            }
        );
        assert!(matches!(
            decide("secret.example.org"),
            Decision::Intercept { .. }
        ));
        // `*.corp.test` is no match for corp.test itself; bypass beats a secret's host.
        assert_eq!(decide("corp.test"), Decision::Bypass);
        assert_eq!(decide("pinned.corp.test"), Decision::Bypass);
        assert_eq!(decide("elsewhere.example.net"), Decision::Bypass);
    }

    #[test]
    fn no_sni_is_refused_where_interception_would_apply() {
        let p = TlsPolicy::new(&config(&["api.example.com"], &[]), &[]);
        let policy = Policy::default();
        let to_api = p.decide(None, &names(&["api.example.com"]), &flow(), &policy);
        assert!(matches!(to_api, Decision::Refuse(_)), "{to_api:?}");
        assert_eq!(
            p.decide(None, &names(&["other.example"]), &flow(), &policy),
            Decision::Bypass
        );
        let all = TlsPolicy::new(&config(&["all"], &[]), &[]);
        assert!(matches!(
            all.decide(None, &[], &flow(), &policy),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn an_https_rule_intercepts_its_host_unless_bypassed() {
        let p = TlsPolicy::new(&config(&[], &["pinned.test"]), &[]);
        let policy = Policy::new(Action::Allow)
            .deny(Rule::parse("https://api.test/admin/").expect("rule"))
            .deny(Rule::parse("https://pinned.test/admin/").expect("rule"));
        let api = p.decide(Some("api.test"), &names(&["api.test"]), &flow(), &policy);
        assert!(matches!(api, Decision::Intercept { .. }), "{api:?}");
        let pinned = p.decide(Some("pinned.test"), &[], &flow(), &policy);
        assert_eq!(pinned, Decision::Bypass);
        let other = p.decide(Some("other.test"), &[], &flow(), &policy);
        assert_eq!(other, Decision::Bypass);
    }

    #[test]
    fn a_denied_server_name_is_refused() {
        let p = TlsPolicy::new(&config(&["all"], &[]), &[]);
        let policy = Policy::new(Action::Allow).deny(Rule::domain("evil.example").expect("rule"));
        let refused = p.decide(Some("evil.example"), &[], &flow(), &policy);
        assert!(
            matches!(refused, Decision::Refuse(ref r) if r.contains("evil.example")),
            "{refused:?}"
        );
        let fine = p.decide(Some("good.example"), &[], &flow(), &policy);
        assert!(matches!(fine, Decision::Intercept { .. }));
    }
}
