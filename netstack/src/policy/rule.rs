//! One policy rule: its parts, its text form (parsing and `Display`), its
//! typed constructors. The grammar is documented in the [module
//! doc](super); what a rule matches is decided in `super::eval`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Group, Protocol};

/// A rule's text could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad network rule {rule:?}: {reason} (at {token:?})")]
pub struct RuleError {
    /// The whole rule as given.
    pub rule: String,
    /// The part of the rule that is wrong.
    pub token: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What destination a rule is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every destination. In an allow rule it opens only what the built-in
    /// denials leave open (see the module doc); in a deny rule, everything.
    Any,
    /// An address or a CIDR block (host bits cleared).
    Net(IpNet),
    /// An address group.
    Group(Group),
    /// A DNS name or `*.suffix`, matched against the names the guest
    /// resolved through our DNS server.
    Domain(DomainPattern),
}

/// A DNS name (`example.com`) or a wildcard (`*.example.com`).
///
/// The wildcard matches any name with at least one more label in front of
/// the suffix (`a.example.com`, `a.b.example.com`) but not `example.com`
/// itself, as in TLS certificates; allow both to get both.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DomainPattern {
    /// Lowercase name without trailing dot; for a wildcard, the suffix.
    name: String,
    wildcard: bool,
}

/// Why a text is no DNS name pattern ([`DomainPattern::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty, or longer than 253 characters.
    #[error("a DNS name has 1 to 253 characters")]
    Length,
    /// A label is empty, longer than 63 characters or has other characters than letters,
    /// digits, `-` and `_`.
    #[error("{0:?} is not a DNS label")]
    Label(String),
    /// The last label is numeric (a malformed address, most likely).
    #[error("neither an IP address nor a DNS name")]
    NumericTld,
    /// A single label without a wildcard: neither a name nor a keyword.
    #[error(
        "unknown keyword; DNS names need a dot, and the keywords are any, tcp, udp, icmp, {}",
        Group::ALL.map(Group::keyword).join(", ")
    )]
    UnknownKeyword,
}

impl DomainPattern {
    /// Parses `name` or `*.suffix`; the error says why it is no DNS name.
    pub fn parse(text: &str) -> Result<DomainPattern, DomainError> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(suffix) => (true, suffix.to_owned()),
            None => (false, lower),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(DomainError::Length);
        }
        for label in name.split('.') {
            let ok_chars = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if label.is_empty() || label.len() > 63 || !ok_chars {
                return Err(DomainError::Label(label.to_owned()));
            }
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(DomainError::NumericTld);
        }
        if !wildcard && !name.contains('.') {
            return Err(DomainError::UnknownKeyword);
        }
        Ok(DomainPattern { name, wildcard })
    }

    /// Whether this is exactly `name` (no wildcard).
    pub fn is_exactly(&self, name: &str) -> bool {
        !self.wildcard && self.matches(name)
    }

    /// Whether `name` (any case, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        name.len() > self.name.len() + 1
            && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
            && name[name.len() - self.name.len()..].eq_ignore_ascii_case(&self.name)
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

/// An inclusive range of destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port, at least 1.
    pub first: u16,
    /// Last port, at least `first`.
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The HTTP part of an HTTP rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    /// Upper-case method; `None` matches every method.
    pub method: Option<String>,
    /// An `https://` rule: it applies to requests inside intercepted TLS connections (port
    /// 443 by default), and its host is intercepted wherever TLS interception is configured.
    pub https: bool,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
}

/// One rule: a target plus optional protocol, ports and HTTP qualifiers.
///
/// Its text form is its `Display`, which [`Rule::parse`] reads back; serde
/// uses the same text, so a policy travels as readable strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Protocol qualifier; `None` is every protocol. HTTP rules are TCP.
    pub protocol: Option<Protocol>,
    /// The destination.
    pub target: Target,
    /// Port qualifier; `None` is every port (port 80 for `http://` rules, 443 for `https://`).
    pub ports: Option<PortRange>,
    /// Present for HTTP rules, which apply to plain-HTTP requests.
    pub http: Option<HttpMatch>,
}

impl Rule {
    fn with_target(target: Target) -> Rule {
        Rule {
            protocol: None,
            target,
            ports: None,
            http: None,
        }
    }

    /// Every destination (see [`Target::Any`]).
    pub fn any() -> Rule {
        Rule::with_target(Target::Any)
    }

    /// One address.
    pub fn ip(ip: IpAddr) -> Rule {
        Rule::with_target(Target::Net(IpNet::from(ip)))
    }

    /// A CIDR block; host bits are cleared.
    pub fn cidr(net: IpNet) -> Rule {
        Rule::with_target(Target::Net(net.trunc()))
    }

    /// An address group.
    pub fn group(group: Group) -> Rule {
        Rule::with_target(Target::Group(group))
    }

    /// A DNS name or `*.suffix`.
    pub fn domain(pattern: &str) -> Result<Rule, RuleError> {
        let pattern =
            DomainPattern::parse(pattern).map_err(|r| error(pattern, pattern, r.to_string()))?;
        Ok(Rule::with_target(Target::Domain(pattern)))
    }

    /// An HTTP rule for requests to `host` (DNS name, `*.suffix` or
    /// address) whose path starts with `path_prefix`.
    pub fn http(host: &str, path_prefix: &str) -> Result<Rule, RuleError> {
        let whole = format!("http://{host}{path_prefix}");
        let target = parse_http_host(&whole, host)?;
        let path_prefix = parse_path(&whole, path_prefix)?;
        Ok(Rule {
            protocol: Some(Protocol::Tcp),
            target,
            ports: None,
            http: Some(HttpMatch {
                method: None,
                https: false,
                path_prefix,
            }),
        })
    }

    /// Restricts the rule to one protocol.
    pub fn protocol(mut self, protocol: Protocol) -> Rule {
        self.protocol = Some(protocol);
        self
    }

    /// Restricts the rule to one destination port.
    pub fn port(self, port: u16) -> Rule {
        self.ports(port, port)
    }

    /// Restricts the rule to the ports `first..=last` (swapped if
    /// reversed; port 0, which no flow uses, counts as 1).
    pub fn ports(mut self, first: u16, last: u16) -> Rule {
        let (first, last) = (first.max(1), last.max(1));
        self.ports = Some(PortRange {
            first: first.min(last),
            last: first.max(last),
        });
        self
    }

    /// Restricts an HTTP rule to one method; no effect on other rules.
    pub fn method(mut self, method: &str) -> Rule {
        if let Some(http) = &mut self.http {
            http.method = Some(method.to_ascii_uppercase());
        }
        self
    }

    /// Whether the rule has no protocol, port or HTTP qualifier, i.e. it
    /// covers every flow to its target.
    pub fn is_unqualified(&self) -> bool {
        self.protocol.is_none() && self.ports.is_none() && self.http.is_none()
    }

    /// Parses the text form documented in the [module doc](super).
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let rule = text.trim();
        if rule.is_empty() {
            return Err(error(text, "", "empty rule"));
        }
        if rule.to_ascii_lowercase().contains("://") {
            return parse_http_rule(rule);
        }
        if rule.contains(char::is_whitespace) {
            return Err(error(
                rule,
                rule,
                "spaces are allowed only after an HTTP method",
            ));
        }

        let (protocol, rest) = split_protocol(rule);
        if protocol.is_some() && rest.is_empty() {
            return Ok(Rule::any().protocol_opt(protocol));
        }
        let (target, ports) = if is_port_spec(rest) {
            if protocol.is_none() {
                return Err(error(
                    rule,
                    rest,
                    "a bare port needs a protocol or target: write tcp:PORT, udp:PORT or any:PORT",
                ));
            }
            (Target::Any, Some(parse_ports(rule, rest)?))
        } else {
            let (target_text, ports_text) = split_ports(rule, rest)?;
            let ports = ports_text.map(|p| parse_ports(rule, p)).transpose()?;
            (parse_target(rule, target_text)?, ports)
        };
        if protocol == Some(Protocol::Icmp) && ports.is_some() {
            return Err(error(rule, rule, "icmp has no ports"));
        }
        Ok(Rule {
            protocol,
            target,
            ports,
            http: None,
        })
    }

    fn protocol_opt(mut self, protocol: Option<Protocol>) -> Rule {
        self.protocol = protocol;
        self
    }
}

impl FromStr for Rule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Rule, RuleError> {
        Rule::parse(s)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(http) = &self.http {
            if let Some(method) = &http.method {
                write!(f, "{method} ")?;
            }
            f.write_str(if http.https { "https://" } else { "http://" })?;
            match &self.target {
                Target::Net(net) if net.addr().is_ipv6() => write!(f, "[{}]", net.addr())?,
                Target::Net(net) => write!(f, "{}", net.addr())?,
                target => write_target(f, target)?,
            }
            if let Some(ports) = self.ports {
                write!(f, ":{ports}")?;
            }
            return f.write_str(&http.path_prefix);
        }
        if let Some(protocol) = self.protocol {
            write!(f, "{protocol}")?;
            if self.target == Target::Any {
                return match self.ports {
                    Some(ports) => write!(f, ":{ports}"),
                    None => Ok(()),
                };
            }
            f.write_str(":")?;
        }
        match (&self.target, self.ports) {
            (Target::Net(net), Some(_)) if net.addr().is_ipv6() => {
                f.write_str("[")?;
                write_target(f, &self.target)?;
                f.write_str("]")?;
            }
            (target, _) => write_target(f, target)?,
        }
        match self.ports {
            Some(ports) => write!(f, ":{ports}"),
            None => Ok(()),
        }
    }
}

fn write_target(f: &mut fmt::Formatter<'_>, target: &Target) -> fmt::Result {
    match target {
        Target::Any => f.write_str("any"),
        Target::Net(net) if net.prefix_len() == net.max_prefix_len() => write!(f, "{}", net.addr()),
        Target::Net(net) => write!(f, "{net}"),
        Target::Group(group) => write!(f, "{group}"),
        Target::Domain(domain) => write!(f, "{domain}"),
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rule, D::Error> {
        let text = String::deserialize(deserializer)?;
        Rule::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn error(rule: &str, token: &str, reason: impl Into<String>) -> RuleError {
    RuleError {
        rule: rule.to_owned(),
        token: token.to_owned(),
        reason: reason.into(),
    }
}

fn split_protocol(rule: &str) -> (Option<Protocol>, &str) {
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
        let keyword = protocol.to_string();
        let Some(head) = rule.get(..keyword.len()) else {
            continue;
        };
        if !head.eq_ignore_ascii_case(&keyword) {
            continue;
        }
        let tail = &rule[keyword.len()..];
        if tail.is_empty() {
            return (Some(protocol), "");
        }
        if let Some(rest) = tail.strip_prefix(':') {
            return (Some(protocol), rest);
        }
    }
    (None, rule)
}

fn is_port_spec(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

fn parse_ports(rule: &str, text: &str) -> Result<PortRange, RuleError> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(error(rule, text, format!("{p:?} is not a port (1-65535)"))),
        Ok(port) => Ok(port),
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => (port(text)?, port(text)?),
    };
    if first > last {
        return Err(error(rule, text, "port range ends before it starts"));
    }
    Ok(PortRange { first, last })
}

/// Splits `target[:ports]`, where an IPv6 target with ports is bracketed
/// and a bare IPv6 target (several colons) has no ports.
fn split_ports<'a>(rule: &str, text: &'a str) -> Result<(&'a str, Option<&'a str>), RuleError> {
    if let Some(inner) = text.strip_prefix('[') {
        let Some((target, after)) = inner.split_once(']') else {
            return Err(error(rule, text, "missing ']'"));
        };
        return match after {
            "" => Ok((target, None)),
            _ => match after.strip_prefix(':') {
                Some(ports) => Ok((target, Some(ports))),
                None => Err(error(rule, after, "expected ':PORT' after ']'")),
            },
        };
    }
    if text.matches(':').count() > 1 {
        return Ok((text, None));
    }
    Ok(match text.split_once(':') {
        Some((target, ports)) => (target, Some(ports)),
        None => (text, None),
    })
}

fn parse_target(rule: &str, text: &str) -> Result<Target, RuleError> {
    if text.eq_ignore_ascii_case("any") {
        return Ok(Target::Any);
    }
    if let Ok(group) = text.parse::<Group>() {
        return Ok(Target::Group(group));
    }
    if text.contains('/') {
        return text
            .parse::<IpNet>()
            .map(|net| Target::Net(net.trunc()))
            .map_err(|_| error(rule, text, "not a CIDR block (ADDRESS/LENGTH)"));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Net(IpNet::from(ip)));
    }
    if text.contains(':') {
        return Err(error(rule, text, "not an IPv6 address"));
    }
    DomainPattern::parse(text)
        .map(Target::Domain)
        .map_err(|reason| error(rule, text, reason.to_string()))
}

fn parse_http_rule(rule: &str) -> Result<Rule, RuleError> {
    let mut words = rule.split_whitespace();
    let (method, url) = match (words.next(), words.next(), words.next()) {
        (Some(url), None, _) => (None, url),
        (Some(method), Some(url), None) => {
            if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(error(rule, method, "not an HTTP method"));
            }
            (Some(method.to_ascii_uppercase()), url)
        }
        _ => {
            return Err(error(
                rule,
                rule,
                "expected [METHOD] http[s]://HOST[:PORT][/PATH]",
            ))
        }
    };
    let scheme_is = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    };
    let (https, rest) = if scheme_is("http://") {
        (false, &url[7..])
    } else if scheme_is("https://") {
        (true, &url[8..])
    } else {
        return Err(error(rule, url, "expected an http:// or https:// URL"));
    };
    let split = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let (host, ports) = split_ports(rule, authority)?;
    let target = parse_http_host(rule, host)?;
    let ports = ports.map(|p| parse_ports(rule, p)).transpose()?;
    let path_prefix = parse_path(rule, if path.is_empty() { "/" } else { path })?;
    Ok(Rule {
        protocol: Some(Protocol::Tcp),
        target,
        ports,
        http: Some(HttpMatch {
            method,
            https,
            path_prefix,
        }),
    })
}

fn parse_http_host(rule: &str, host: &str) -> Result<Target, RuleError> {
    match parse_target(rule, host)? {
        target @ (Target::Net(_) | Target::Domain(_)) => match target {
            Target::Net(net) if net.prefix_len() != net.max_prefix_len() => Err(error(
                rule,
                host,
                "an HTTP rule names one host, not a CIDR block",
            )),
            target => Ok(target),
        },
        _ => Err(error(
            rule,
            host,
            "an HTTP rule needs a DNS name or an address",
        )),
    }
}

fn parse_path(rule: &str, path: &str) -> Result<String, RuleError> {
    let ok = path.starts_with('/')
        && !path.contains(['?', '#', '%', '\\'])
        && !path.split('/').any(|seg| seg == "." || seg == "..")
        && path.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(error(
            rule,
            path,
            "a path prefix starts with '/' and has no query, '%', '\\' or dot segments",
        ));
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Rule {
        Rule::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> RuleError {
        Rule::parse(text).expect_err(text)
    }

    #[test]
    fn documented_examples_parse_to_the_expected_rules() {
        assert_eq!(
            parse("10.0.0.0/8"),
            Rule::cidr("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse("1.2.3.4"), Rule::ip("1.2.3.4".parse().unwrap()));
        assert_eq!(parse("private"), Rule::group(Group::Private));
        assert_eq!(parse("metadata"), Rule::group(Group::Metadata));
        assert_eq!(parse("host"), Rule::group(Group::Host));
        assert_eq!(parse("example.com"), Rule::domain("example.com").unwrap());
        assert_eq!(
            parse("*.Example.COM."),
            Rule::domain("*.example.com").unwrap()
        );
        assert_eq!(
            parse("tcp:443"),
            Rule::any().protocol(Protocol::Tcp).port(443)
        );
        assert_eq!(
            parse("udp:53"),
            Rule::any().protocol(Protocol::Udp).port(53)
        );
        assert_eq!(parse("icmp"), Rule::any().protocol(Protocol::Icmp));
        assert_eq!(
            parse("10.0.0.0/8:80-90"),
            Rule::cidr("10.0.0.0/8".parse().unwrap()).ports(80, 90)
        );
        assert_eq!(
            parse("example.com:443"),
            Rule::domain("example.com").unwrap().port(443)
        );
        assert_eq!(
            parse("tcp:example.com:443"),
            Rule::domain("example.com")
                .unwrap()
                .port(443)
                .protocol(Protocol::Tcp)
        );
        assert_eq!(
            parse("http://api.example.com/v1/"),
            Rule::http("api.example.com", "/v1/").unwrap()
        );
        assert_eq!(
            parse("get http://example.com/public/"),
            Rule::http("example.com", "/public/").unwrap().method("GET")
        );
        assert_eq!(
            parse("http://example.com"),
            Rule::http("example.com", "/").unwrap()
        );
        assert_eq!(parse("any"), Rule::any());
        assert_eq!(parse("any:22"), Rule::any().port(22));
        assert_eq!(parse("fd00::/8"), Rule::cidr("fd00::/8".parse().unwrap()));
        assert_eq!(
            parse("[::1]:8080"),
            Rule::ip("::1".parse().unwrap()).port(8080)
        );
    }

    #[test]
    fn cidr_host_bits_are_cleared() {
        assert_eq!(parse("10.1.2.3/8").to_string(), "10.0.0.0/8");
    }

    #[test]
    fn errors_name_the_bad_token() {
        let cases = [
            ("", ""),
            ("lan", "lan"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("tcp:0", "0"),
            ("tcp:90-80", "90-80"),
            ("example.com:http", "http"),
            ("443", "443"),
            ("icmp:1", "icmp:1"),
            ("1.2.3", "1.2.3"),
            ("ex ample.com", "ex ample.com"),
            ("ftp://example.com/", "ftp://example.com/"),
            ("G3T http://a.com/", "G3T"),
            ("http://a.com/../x", "/../x"),
            ("http://private/", "private"),
            ("[::1", "[::1"),
            ("bad_label!.com", "bad_label!.com"),
        ];
        for (text, token) in cases {
            let err = parse_err(text);
            assert_eq!(err.token, token, "{text}: {err}");
            assert!(err.to_string().contains(&format!("{token:?}")), "{err}");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = DomainPattern::parse("*.example.com").unwrap();
        assert!(p.matches("a.example.com"));
        assert!(p.matches("A.B.Example.com."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches("example.com.evil"));
        let exact = DomainPattern::parse("example.com").unwrap();
        assert!(exact.matches("EXAMPLE.com."));
        assert!(!exact.matches("a.example.com"));
    }

    #[test]
    fn rules_travel_through_serde_as_text() {
        let rule = parse("GET http://[::1]:8080/x/");
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(json, "\"GET http://[::1]:8080/x/\"");
        assert_eq!(serde_json::from_str::<Rule>(&json).unwrap(), rule);
        assert!(serde_json::from_str::<Rule>("\"lan\"").is_err());
    }

    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(a.into(), l).unwrap()),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(a.into(), l).unwrap()),
        ]
    }

    fn arb_domain() -> impl Strategy<Value = String> {
        (
            "[a-z0-9_][a-z0-9-]{0,10}",
            "[a-z][a-z0-9-]{0,5}",
            any::<bool>(),
        )
            .prop_map(|(a, tld, wild)| {
                if wild {
                    format!("*.{a}.{tld}")
                } else {
                    format!("{a}.{tld}")
                }
            })
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::Any),
            arb_net().prop_map(|n| Target::Net(n.trunc())),
            proptest::sample::select(Group::ALL.to_vec()).prop_map(Target::Group),
            arb_domain().prop_map(|d| Target::Domain(DomainPattern::parse(&d).unwrap())),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let flow = (
            arb_target(),
            proptest::option::of(proptest::sample::select(vec![
                Protocol::Tcp,
                Protocol::Udp,
                Protocol::Icmp,
            ])),
            proptest::option::of((any::<u16>(), any::<u16>())),
        )
            .prop_map(|(target, protocol, ports)| {
                let mut rule = Rule::with_target(target).protocol_opt(protocol);
                if let (Some((a, b)), false) = (ports, protocol == Some(Protocol::Icmp)) {
                    rule = rule.ports(a, b);
                }
                rule
            });
        let http = (
            prop_oneof![
                arb_domain(),
                any::<[u8; 4]>().prop_map(|a| IpAddr::from(a).to_string()),
                any::<[u8; 16]>().prop_map(|a| format!("[{}]", IpAddr::from(a))),
            ],
            "(/[a-z0-9._~-]{0,6}){1,3}/?",
            proptest::option::of("[A-Z]{3,7}"),
            proptest::option::of(1u16..),
        )
            .prop_filter("no dot segments", |(_, path, _, _)| {
                !path.split('/').any(|s| s == "." || s == "..")
            })
            .prop_map(|(host, path, method, port)| {
                let host = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let mut rule = Rule::http(&host, &path).unwrap();
                if let Some(m) = method {
                    rule = rule.method(&m);
                }
                if let Some(p) = port {
                    rule.ports = Some(PortRange { first: p, last: p });
                }
                rule
            });
        prop_oneof![flow, http]
    }

    proptest! {
        #[test]
        fn display_round_trips_through_parse(rule in arb_rule()) {
            let text = rule.to_string();
            prop_assert_eq!(Rule::parse(&text), Ok(rule), "text {:?}", text);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,40}") {
            if let Ok(rule) = Rule::parse(&text) {
                // Whatever parses must print back to something that parses alike.
                prop_assert_eq!(Rule::parse(&rule.to_string()), Ok(rule));
            }
        }
    }
}
