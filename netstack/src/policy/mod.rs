//! Network policy: which flows, DNS names and HTTP requests a sandbox may use.
//!
//! A [`Policy`] is a default action plus an ordered list of allow/deny rules,
//! evaluated on the host. For every decision:
//!
//! 1. the user's rules, in order; the first one that matches decides;
//! 2. the built-in denials: `private`, `loopback`, `link-local`, `metadata`,
//!    `multicast` and `host` destinations are denied;
//! 3. the default action (`allow` unless the user says otherwise).
//!
//! User rules come before the built-in denials so that `allow host` or
//! `allow 192.168.1.0/24` can open what the built-ins close. With no rules
//! at all, the public internet is reachable and nothing else is.
//!
//! DNS has one path: the sandbox's resolver at the gateway (answered by
//! [`crate::dns`], never asked here). Every other DNS transport — UDP and
//! TCP port 53 and DNS over TLS (TCP 853) to any address — is denied, and
//! only an allow rule that names the port (`udp:53`, `tcp:1.1.1.1:853`)
//! opens it; `allow any` does not.
//!
//! # Rule grammar
//!
//! ```text
//! rule      = flow-rule | http-rule
//! flow-rule = [proto ":"] target [":" ports]
//!           | proto [":" ports]            (any destination)
//! proto     = "tcp" | "udp" | "icmp"       (icmp takes no ports)
//! target    = "any" | group | ADDRESS | ADDRESS "/" LENGTH | DNS-NAME | "*." DNS-SUFFIX
//!             (an IPv6 address or block followed by ports is bracketed: [fd00::/8]:443)
//! group     = "public" | "private" | "loopback" | "link-local" | "metadata"
//!           | "multicast" | "host"
//! ports     = PORT | PORT "-" PORT         (1-65535, inclusive)
//! http-rule = [METHOD " "] "http://" host [":" ports] [PATH-PREFIX]
//! host      = DNS-NAME | "*." DNS-SUFFIX | ADDRESS
//! ```
//!
//! Examples: `10.0.0.0/8`, `1.2.3.4`, `private`, `metadata`, `host`,
//! `example.com`, `*.example.com`, `tcp:443`, `udp:53`, `icmp`,
//! `10.0.0.0/8:80-90`, `example.com:443`, `tcp:example.com:443`, `any:22`,
//! `http://api.example.com/v1/`, `GET http://example.com/public/`, `any`.
//! Keywords and names are case-insensitive; methods are upper-cased.
//!
//! # What a rule matches
//!
//! - Addresses and CIDR blocks match the destination address.
//! - A group matches destinations of that group (see [`Group`]; each address
//!   is in exactly one group, so `link-local` does not include `metadata`).
//! - `host` matches only flows to the host alias 10.0.2.254, and flows to the
//!   host alias match only `host` rules and rules naming
//!   `host.msbvm.internal`: `any`, CIDR blocks or `loopback` never open the
//!   host.
//! - `any` in a deny rule matches everything. In an allow rule it matches
//!   public destinations only: a protected group (private, loopback,
//!   link-local, metadata, multicast, host) is opened only by a rule that
//!   names it, by group, address, block or DNS name, so `allow tcp:443` does
//!   not open the LAN or the metadata service.
//! - A DNS name matches a destination address that our DNS server answered
//!   for that name (the [`PinTable`]); the guest cannot claim a name for an
//!   address by itself. `*.example.com` matches `a.example.com` and
//!   `a.b.example.com`, not `example.com`.
//! - A DNS-name allow rule (plain, wildcard, with ports, or an HTTP rule's
//!   host) opens **public** addresses only. Whoever runs a name's DNS decides
//!   where it points, so a name that resolves to a metadata, link-local,
//!   loopback, private or multicast address stays denied by the built-in
//!   denials unless an address, block or group rule allows that address
//!   (`--net-allow example.internal --net-allow 10.1.2.0/24`). The host alias
//!   is opened only by `host` or by the exact name `host.msbvm.internal`,
//!   never by a wildcard. A DNS-name *deny* rule covers every address of the
//!   name.
//! - HTTP rules apply to plain-HTTP requests on port 80, or on the ports
//!   they name. At flow level an HTTP allow rule lets the TCP connection
//!   open (the stack then inspects every request head on it, see
//!   [`Policy::wants_http_inspection`]); an HTTP deny rule never refuses a
//!   connection, only matching requests. Methods compare without case.
//!   Paths are compared as servers may read them ([`path_views`]: escapes
//!   of unreserved characters decoded, dot segments removed, and encoded
//!   `/` `\` `;`, backslashes, `;parameters` and repeated slashes read every
//!   way servers read them): an allow rule must cover every reading, a deny
//!   rule any one, ignoring case, so `/admin;x/`, `/%61dmin/`, `//admin/`
//!   and `/x/../admin/` all hit a deny rule for `/admin/`. A path with a
//!   broken `%` escape matches no allow rule and every deny rule whose host
//!   and method match.
//!
//! # DNS
//!
//! [`Policy::check_dns_name`] decides whether a name may be resolved: the
//! first rule about that name decides (a name or wildcard matching it, `any`
//! or `public` for every name, `host` for `host.msbvm.internal`); a deny
//! rule counts only without qualifiers (`deny tcp:25` does not stop name
//! resolution); otherwise the default action decides, except for
//! `host.msbvm.internal`, which needs an allow rule. Denied names get
//! NXDOMAIN.
//!
//! Rebinding protection: an answer address outside `public` is kept only
//! when a rule explicitly allows it (an allow rule naming its address,
//! block, group, or the queried name, before any unqualified deny of it); see
//! [`crate::dns`] for what the guest receives otherwise. A name rule lets
//! such an answer reach the guest (so `nslookup` shows what the name is),
//! but, as above, the guest can connect to that address only when an
//! address, block or group rule allows it.

mod group;
mod path;
mod rule;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use group::Group;
pub use path::{allow_covers, deny_covers, path_views};
pub use rule::{DomainError, DomainPattern, HttpMatch, PortRange, Rule, RuleError, Target};

use crate::http::HttpInfo;
use crate::pins::PinTable;

/// The guest-visible address of the host alias.
pub const HOST_ALIAS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);

/// The DNS name of the host alias.
pub const HOST_ALIAS_NAME: &str = "host.msbvm.internal";

/// The port `http://` rules without a port apply to.
const HTTP_PORT: PortRange = PortRange {
    first: 80,
    last: 80,
};

/// The port `https://` rules without a port apply to.
const HTTPS_PORT: PortRange = PortRange {
    first: 443,
    last: 443,
};

/// The ports an HTTP rule without a port applies to.
fn default_http_ports(http: &HttpMatch) -> PortRange {
    if http.https {
        HTTPS_PORT
    } else {
        HTTP_PORT
    }
}

/// The groups the built-in rules deny, in the order they are reported: every group but
/// `public`, which [`Group::ALL`] lists first (checked when this compiles).
const BUILTIN_DENIED: &[Group] = match Group::ALL.split_first() {
    Some((Group::Public, rest)) => rest,
    _ => panic!("Group::ALL starts with public"),
};

/// A transport protocol, as flows and rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP echo.
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

/// What a rule does when it matches, and what the default does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Refuse it.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

/// A word that is no [`Action`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither allow nor deny")]
pub struct ActionError(pub String);

impl FromStr for Action {
    type Err = ActionError;

    fn from_str(s: &str) -> Result<Action, ActionError> {
        match s.to_ascii_lowercase().as_str() {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(ActionError(s.to_owned())),
        }
    }
}

/// A flow the guest opens, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination address and port (port 0 for ICMP).
    pub dst: SocketAddr,
    /// Whether the guest addressed the host alias 10.0.2.254.
    pub to_host_alias: bool,
}

/// A policy decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow {
        /// The deciding rule as text (`allow RULE`, `builtin: ...`,
        /// `default: allow`).
        rule: Option<String>,
    },
    /// Refuse it.
    Deny {
        /// The deciding rule as text.
        rule: Option<String>,
        /// Why, in words, for events and logs.
        reason: String,
    },
}

impl Verdict {
    /// Whether this is an `Allow`.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// One entry of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicyRule {
    /// Allow or deny.
    pub action: Action,
    /// What it matches.
    pub rule: Rule,
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.rule)
    }
}

/// A sandbox's network policy; see the [module doc](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    default: Action,
    rules: Vec<PolicyRule>,
}

impl Policy {
    /// A policy without user rules and the given default.
    pub fn new(default: Action) -> Policy {
        Policy {
            default,
            rules: Vec::new(),
        }
    }

    /// The built-in policy: public internet allowed, everything else
    /// denied. Same as `Policy::default()`; add rules with
    /// [`allow`](Self::allow) and [`deny`](Self::deny).
    pub fn builder() -> Policy {
        Policy::default()
    }

    /// Appends an allow rule (evaluated after the ones already there).
    pub fn allow(mut self, rule: Rule) -> Policy {
        self.push(Action::Allow, rule);
        self
    }

    /// Appends a deny rule (evaluated after the ones already there).
    pub fn deny(mut self, rule: Rule) -> Policy {
        self.push(Action::Deny, rule);
        self
    }

    /// Sets the default action.
    pub fn default_action(mut self, default: Action) -> Policy {
        self.default = default;
        self
    }

    /// Appends a rule in place.
    pub fn push(&mut self, action: Action, rule: Rule) {
        self.rules.push(PolicyRule { action, rule });
    }

    /// The default action.
    pub fn default_is(&self) -> Action {
        self.default
    }

    /// The user rules, in evaluation order.
    pub fn rules(&self) -> &[PolicyRule] {
        &self.rules
    }

    /// Decides whether the guest may open `flow`. `dns` tells which names
    /// the guest resolved to the destination address.
    pub fn check_flow(&self, flow: &FlowInfo, dns: &PinTable) -> Verdict {
        self.check_flow_named(flow, || dns.names(flow.dst.ip()))
    }

    /// [`check_flow`](Self::check_flow) with the DNS names of the
    /// destination given by `names` (asked only when a rule needs them).
    pub fn check_flow_named(
        &self,
        flow: &FlowInfo,
        names: impl FnOnce() -> Vec<String>,
    ) -> Verdict {
        let mut names_of = Some(names);
        let mut names = None;
        let dns_transport = is_dns_transport(flow);
        for entry in &self.rules {
            let rule = &entry.rule;
            // Other DNS transports are closed unless an allow rule names
            // their port: a broad `allow any` must not reopen them.
            if dns_transport
                && entry.action == Action::Allow
                && !rule.ports.is_some_and(|p| p.contains(flow.dst.port()))
            {
                continue;
            }
            // An HTTP deny rule refuses requests, never whole connections.
            if rule.http.is_some() && entry.action == Action::Deny {
                continue;
            }
            if !flow_qualifiers_match(rule, flow) {
                continue;
            }
            let names =
                names.get_or_insert_with(|| names_of.take().map(|f| f()).unwrap_or_default());
            if target_matches(entry, flow, names) {
                return verdict(entry, || {
                    format!("{} to {} denied by rule", flow.protocol, flow.dst)
                });
            }
        }
        if dns_transport {
            return Verdict::Deny {
                rule: None,
                reason: format!(
                    "DNS to {} is blocked: the sandbox resolves names through its own resolver \
                     (allow the port explicitly, e.g. `udp:{}`, to open it)",
                    flow.dst,
                    flow.dst.port()
                ),
            };
        }
        self.fallback(flow)
    }

    /// Whether the stack must parse request heads on TCP flows to
    /// `dst_port` before forwarding them: when an HTTP rule applies to that
    /// port (port 80 for rules naming none).
    pub fn wants_http_inspection(&self, dst_port: u16) -> bool {
        // `https://` rules are enforced inside intercepted TLS, never by reading TLS as HTTP.
        self.rules.iter().any(|e| {
            e.rule.http.as_ref().is_some_and(|h| !h.https)
                && e.rule.ports.unwrap_or(HTTP_PORT).contains(dst_port)
        })
    }

    /// Whether an `https://` rule names `host` (so its TLS must be intercepted for the rule
    /// to be enforced).
    pub fn has_https_rule_for(&self, host: &str) -> bool {
        self.https_rules()
            .any(|rule| matches!(&rule.target, Target::Domain(p) if p.matches(host)))
    }

    /// Whether any `https://` rule exists (interception must then be configured).
    pub fn has_https_rules(&self) -> bool {
        self.https_rules().next().is_some()
    }

    fn https_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules
            .iter()
            .map(|e| &e.rule)
            .filter(|rule| rule.http.as_ref().is_some_and(|h| h.https))
    }

    /// Decides whether one HTTP request on an already allowed flow may pass.
    ///
    /// Rules are evaluated again, in order: HTTP rules match host, method,
    /// path prefix and port; other rules match the flow as in
    /// [`check_flow`](Self::check_flow), except that a DNS-name rule
    /// matches the request's host (the connection's address was already
    /// checked against the names our DNS answered).
    pub fn check_http(&self, req: &HttpInfo, flow: &FlowInfo) -> Verdict {
        let names = [req.host.clone()];
        let views = path_views(&req.path);
        for entry in &self.rules {
            let rule = &entry.rule;
            // Name rules do not reach the host alias (a name must not open the host), but an
            // HTTP deny rule naming the request's host still covers it there: denying more is
            // always safe, and the host alias is where local upstreams (and the tests) live.
            let named_deny = flow.to_host_alias
                && entry.action == Action::Deny
                && rule.http.is_some()
                && matches!(&rule.target, Target::Domain(p) if p.matches(&req.host));
            if !flow_qualifiers_match(rule, flow)
                || !(named_deny || target_matches(entry, flow, &names))
            {
                continue;
            }
            if let Some(http) = &rule.http {
                // Methods are case-sensitive in HTTP, but servers differ: a
                // deny rule for GET must also catch `get`.
                if http
                    .method
                    .as_ref()
                    .is_some_and(|m| !m.eq_ignore_ascii_case(&req.method))
                {
                    continue;
                }
                let covered = match entry.action {
                    Action::Allow => allow_covers(views.as_deref(), &http.path_prefix),
                    Action::Deny => deny_covers(views.as_deref(), &http.path_prefix),
                };
                if !covered {
                    continue;
                }
            }
            return verdict(entry, || {
                format!(
                    "HTTP {} {}{} denied by rule",
                    req.method, req.host, req.path
                )
            });
        }
        self.fallback(flow)
    }

    /// Decides whether the guest may resolve `name` (see the module doc).
    pub fn check_dns_name(&self, name: &str) -> Verdict {
        let name = name.trim_end_matches('.');
        let is_host = name.eq_ignore_ascii_case(HOST_ALIAS_NAME);
        for entry in &self.rules {
            let about_name = match &entry.rule.target {
                Target::Domain(pattern) if is_host => pattern.is_exactly(HOST_ALIAS_NAME),
                Target::Domain(pattern) => pattern.matches(name),
                Target::Group(Group::Host) => is_host,
                Target::Any | Target::Group(Group::Public) => !is_host,
                Target::Net(_) | Target::Group(_) => false,
            };
            if !about_name || (entry.action == Action::Deny && !entry.rule.is_unqualified()) {
                continue;
            }
            return verdict(entry, || format!("resolving {name} denied by rule"));
        }
        if is_host {
            return Verdict::Deny {
                rule: Some("builtin: deny host".into()),
                reason: format!("{HOST_ALIAS_NAME} needs a rule allowing host"),
            };
        }
        self.default_verdict(|| format!("resolving {name} denied by default"))
    }

    /// Whether a DNS answer `ip` for `name` may reach the guest: public
    /// addresses always, others only when a rule explicitly allows them
    /// (rebinding protection).
    pub fn allows_dns_answer(&self, name: &str, ip: IpAddr) -> bool {
        let group = Group::of(ip);
        if group == Group::Public {
            return true;
        }
        for entry in &self.rules {
            let about_ip = match &entry.rule.target {
                Target::Net(net) => net_contains(net, ip),
                Target::Group(g) => *g == group,
                Target::Domain(pattern) => pattern.matches(name),
                // `any` opens no protected group, and denies only what
                // earlier rules left alone.
                Target::Any => entry.action == Action::Deny,
            };
            if !about_ip || (entry.action == Action::Deny && !entry.rule.is_unqualified()) {
                continue;
            }
            return entry.action == Action::Allow;
        }
        false
    }

    /// Built-in denials, then the default.
    fn fallback(&self, flow: &FlowInfo) -> Verdict {
        let group = if flow.to_host_alias {
            Group::Host
        } else {
            Group::of(flow.dst.ip())
        };
        if BUILTIN_DENIED.contains(&group) {
            let hint = if group == Group::Host {
                "add a rule allowing host".to_owned()
            } else {
                format!("add a rule allowing {group} or this address")
            };
            return Verdict::Deny {
                rule: Some(format!("builtin: deny {group}")),
                reason: format!(
                    "{} to {} ({group}) denied by default; {hint}",
                    flow.protocol, flow.dst
                ),
            };
        }
        self.default_verdict(|| format!("{} to {} denied by default", flow.protocol, flow.dst))
    }

    fn default_verdict(&self, reason: impl FnOnce() -> String) -> Verdict {
        let rule = Some(format!("default: {}", self.default));
        match self.default {
            Action::Allow => Verdict::Allow { rule },
            Action::Deny => Verdict::Deny {
                rule,
                reason: reason(),
            },
        }
    }
}

/// DNS over UDP/TCP 53 and DNS over TLS (TCP 853) to anywhere: the guest's
/// own resolver at the gateway is the one DNS path (the stack routes it to
/// the DNS server before policy is asked).
fn is_dns_transport(flow: &FlowInfo) -> bool {
    match flow.protocol {
        Protocol::Udp => flow.dst.port() == 53,
        Protocol::Tcp => matches!(flow.dst.port(), 53 | 853),
        Protocol::Icmp => false,
    }
}

fn verdict(entry: &PolicyRule, reason: impl FnOnce() -> String) -> Verdict {
    let rule = Some(entry.to_string());
    match entry.action {
        Action::Allow => Verdict::Allow { rule },
        Action::Deny => Verdict::Deny {
            rule,
            reason: reason(),
        },
    }
}

/// Protocol and port qualifiers; HTTP rules are TCP to port 80 by default.
fn flow_qualifiers_match(rule: &Rule, flow: &FlowInfo) -> bool {
    if rule.protocol.is_some_and(|p| p != flow.protocol) {
        return false;
    }
    let ports = match (rule.ports, &rule.http) {
        (None, Some(http)) => Some(default_http_ports(http)),
        (ports, _) => ports,
    };
    match ports {
        None => true,
        Some(_) if flow.protocol == Protocol::Icmp => false,
        Some(ports) => ports.contains(flow.dst.port()),
    }
}

/// Whether the rule's target covers the flow's destination, `names` being
/// the DNS names known for it.
fn target_matches(entry: &PolicyRule, flow: &FlowInfo, names: &[String]) -> bool {
    let ip = flow.dst.ip();
    match &entry.rule.target {
        _ if flow.to_host_alias => match &entry.rule.target {
            Target::Group(group) => *group == Group::Host,
            // The host's own name stands for the `host` group; a wildcard
            // (`*.internal`) is not a rule about the host.
            Target::Domain(pattern) => pattern.is_exactly(HOST_ALIAS_NAME),
            _ => false,
        },
        Target::Any => entry.action == Action::Deny || Group::of(ip) == Group::Public,
        Target::Net(net) => net_contains(net, ip),
        Target::Group(group) => *group == Group::of(ip),
        // A name rule allows public addresses only: what a name resolves to
        // is up to whoever runs its DNS, so `allow example.com` must not open
        // 169.254.169.254 or the LAN when the name points there. Deny rules
        // cover every address of the name.
        Target::Domain(pattern) => {
            (entry.action == Action::Deny || Group::of(ip) == Group::Public)
                && names.iter().any(|n| pattern.matches(n))
        }
    }
}

/// CIDR containment that sees through IPv4-mapped IPv6 addresses, which
/// reach the same host.
fn net_contains(net: &ipnet::IpNet, ip: IpAddr) -> bool {
    let unmapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    net.contains(&ip) || unmapped.is_some_and(|v4| net.contains(&v4))
}

#[cfg(test)]
mod tests;
