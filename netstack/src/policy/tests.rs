//! Policy evaluation: first match wins, built-in denials, defaults, pinned
//! names, HTTP and DNS decisions.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn rule(text: &str) -> Rule {
    Rule::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn policy(default: Action, rules: &[(&str, &str)]) -> Policy {
    let mut policy = Policy::new(default);
    for (action, text) in rules {
        policy.push(action.parse().unwrap(), rule(text));
    }
    policy
}

fn flow(protocol: Protocol, dst: &str) -> FlowInfo {
    FlowInfo {
        protocol,
        dst: dst.parse().unwrap(),
        to_host_alias: false,
    }
}

fn tcp(dst: &str) -> FlowInfo {
    flow(Protocol::Tcp, dst)
}

fn host_alias(port: u16) -> FlowInfo {
    FlowInfo {
        protocol: Protocol::Tcp,
        dst: SocketAddr::new(HOST_ALIAS_IP.into(), port),
        to_host_alias: true,
    }
}

fn allowed(p: &Policy, f: &FlowInfo) -> bool {
    p.check_flow(f, &PinTable::new()).is_allowed()
}

fn http(method: &str, host: &str, path: &str) -> HttpInfo {
    HttpInfo {
        method: method.into(),
        host: host.into(),
        path: path.into(),
    }
}

/// Whether `p` lets `method host path` through on flow `f`.
fn allows(p: &Policy, f: &FlowInfo, method: &str, host: &str, path: &str) -> bool {
    p.check_http(&http(method, host, path), f).is_allowed()
}

#[test]
fn builtin_policy_allows_public_and_denies_protected_groups() {
    let p = Policy::default();
    assert!(allowed(&p, &tcp("93.184.216.34:443")));
    assert!(allowed(&p, &flow(Protocol::Udp, "[2606:4700::1111]:443")));
    for dst in [
        "10.0.0.5:80",
        "192.168.1.1:22",
        "127.0.0.1:80",
        "0.0.0.0:80",
        "169.254.1.1:80",
        "169.254.169.254:80",
        "224.0.0.1:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let verdict = p.check_flow(&tcp(dst), &PinTable::new());
        let Verdict::Deny { rule, reason } = verdict else {
            panic!("{dst} allowed");
        };
        assert!(rule.unwrap().starts_with("builtin: deny"), "{dst}");
        assert!(reason.contains(dst), "{reason}");
    }
    assert!(!allowed(&p, &host_alias(8080)));
}

#[test]
fn user_rules_come_before_builtin_denials() {
    let p = Policy::default()
        .allow(rule("192.168.1.0/24"))
        .allow(rule("host:8080"));
    assert!(allowed(&p, &tcp("192.168.1.7:22")));
    assert!(!allowed(&p, &tcp("192.168.2.7:22")));
    assert!(allowed(&p, &host_alias(8080)));
    assert!(!allowed(&p, &host_alias(8081)));
}

#[test]
fn first_matching_rule_wins() {
    let p = policy(
        Action::Allow,
        &[("deny", "1.2.3.4"), ("allow", "1.2.3.0/24")],
    );
    assert!(!allowed(&p, &tcp("1.2.3.4:80")));
    assert!(allowed(&p, &tcp("1.2.3.5:80")));
    let p = policy(
        Action::Allow,
        &[("allow", "1.2.3.0/24"), ("deny", "1.2.3.4")],
    );
    assert!(allowed(&p, &tcp("1.2.3.4:80")));
    let Verdict::Allow { rule } = p.check_flow(&tcp("1.2.3.4:80"), &PinTable::new()) else {
        unreachable!()
    };
    assert_eq!(rule.as_deref(), Some("allow 1.2.3.0/24"));
}

#[test]
fn default_deny_denies_what_no_rule_allows() {
    let p = policy(Action::Deny, &[("allow", "tcp:443")]);
    assert!(allowed(&p, &tcp("8.8.8.8:443")));
    assert!(!allowed(&p, &tcp("8.8.8.8:80")));
    assert!(!allowed(&p, &flow(Protocol::Udp, "8.8.8.8:443")));
    let Verdict::Deny { rule, .. } = p.check_flow(&tcp("8.8.8.8:80"), &PinTable::new()) else {
        unreachable!()
    };
    assert_eq!(rule.as_deref(), Some("default: deny"));
}

#[test]
fn allow_any_opens_no_protected_group_but_deny_any_closes_everything() {
    let p = policy(Action::Deny, &[("allow", "any"), ("allow", "tcp:443")]);
    assert!(allowed(&p, &tcp("8.8.8.8:80")));
    assert!(!allowed(&p, &tcp("10.0.0.1:443")));
    assert!(!allowed(&p, &tcp("169.254.169.254:443")));
    assert!(!allowed(&p, &host_alias(443)));
    let p = policy(Action::Allow, &[("allow", "10.0.0.0/8"), ("deny", "any")]);
    assert!(allowed(&p, &tcp("10.1.1.1:80")));
    assert!(!allowed(&p, &tcp("8.8.8.8:80")));
}

#[test]
fn host_alias_is_opened_only_by_rules_naming_it() {
    for text in [
        "10.0.0.0/8",
        "10.0.2.254",
        "loopback",
        "127.0.0.1",
        "any",
        "private",
    ] {
        let p = Policy::default().allow(rule(text));
        assert!(!allowed(&p, &host_alias(80)), "{text}");
    }
    let p = Policy::default().allow(rule("host.msbvm.internal:80"));
    assert!(allowed(&p, &host_alias(80)));
}

#[test]
fn ports_protocols_and_icmp_qualifiers() {
    let p = policy(
        Action::Deny,
        &[
            ("allow", "10.0.0.0/8:80-90"),
            ("allow", "udp:53"),
            ("allow", "icmp"),
        ],
    );
    assert!(allowed(&p, &tcp("10.2.3.4:85")));
    assert!(!allowed(&p, &tcp("10.2.3.4:91")));
    assert!(allowed(&p, &flow(Protocol::Udp, "8.8.8.8:53")));
    assert!(!allowed(&p, &tcp("8.8.8.8:53")));
    assert!(allowed(&p, &flow(Protocol::Icmp, "8.8.8.8:0")));
    // A ported rule never matches ICMP.
    let p = policy(Action::Deny, &[("allow", "any:1-65535")]);
    assert!(!allowed(&p, &flow(Protocol::Icmp, "8.8.8.8:0")));
}

#[test]
fn dns_name_rules_match_only_pinned_addresses() {
    let pins = PinTable::new();
    let ip: IpAddr = "93.184.216.34".parse().unwrap();
    let p = policy(Action::Deny, &[("allow", "*.example.com:443")]);
    let f = tcp("93.184.216.34:443");
    assert!(
        !p.check_flow(&f, &pins).is_allowed(),
        "nothing resolved yet"
    );
    pins.pin(ip, "example.com", Duration::from_secs(60));
    assert!(
        !p.check_flow(&f, &pins).is_allowed(),
        "wildcard excludes the apex"
    );
    pins.pin(ip, "www.example.com", Duration::from_secs(60));
    assert!(p.check_flow(&f, &pins).is_allowed());
    assert!(!p.check_flow(&tcp("93.184.216.34:80"), &pins).is_allowed());
    assert!(!p.check_flow(&tcp("93.184.216.35:443"), &pins).is_allowed());

    let p = Policy::default().deny(rule("example.com"));
    assert!(!p.check_flow(&f, &pins).is_allowed());
}

#[test]
fn http_rules_open_connections_and_filter_requests() {
    let pins = PinTable::new();
    pins.pin(
        "93.184.216.34".parse().unwrap(),
        "api.example.com",
        Duration::from_secs(60),
    );
    let p = policy(
        Action::Deny,
        &[
            ("deny", "http://api.example.com/v1/admin/"),
            ("allow", "GET http://api.example.com/v1/"),
        ],
    );
    let f = tcp("93.184.216.34:80");
    assert!(p.check_flow(&f, &pins).is_allowed());
    assert!(!p.check_flow(&tcp("93.184.216.34:443"), &pins).is_allowed());
    assert!(
        !p.check_flow(&tcp("93.184.216.99:80"), &pins).is_allowed(),
        "not pinned"
    );
    assert!(p.wants_http_inspection(80));
    assert!(!p.wants_http_inspection(443));

    assert!(allows(&p, &f, "GET", "api.example.com", "/v1/items"));
    assert!(!allows(&p, &f, "POST", "api.example.com", "/v1/items"));
    assert!(!allows(&p, &f, "GET", "api.example.com", "/v2/"));
    assert!(!allows(&p, &f, "GET", "api.example.com", "/v1/admin/x"));
    assert!(!allows(&p, &f, "GET", "other.example.com", "/v1/"));
    // Paths are compared as the server will resolve them.
    assert!(!allows(&p, &f, "GET", "api.example.com", "/v1/../v2/"));
    assert!(!allows(&p, &f, "GET", "api.example.com", "/v1/%61dmin/"));
    assert!(!allows(&p, &f, "GET", "api.example.com", "/v1%2fx"));
    assert!(allows(&p, &f, "GET", "api.example.com", "/v2/../v1/%7Eme"));
}

#[test]
fn http_deny_rules_never_refuse_connections_and_named_ports_are_inspected() {
    let p = Policy::default().deny(rule("http://example.com:8080/admin/"));
    assert!(p.wants_http_inspection(8080));
    assert!(!p.wants_http_inspection(80));
    let f = tcp("93.184.216.34:8080");
    assert!(allowed(&p, &f));
    assert!(!allows(&p, &f, "GET", "example.com", "/admin/"));
    assert!(allows(&p, &f, "GET", "example.com", "/"));
    assert!(!Policy::default().wants_http_inspection(80));
}

#[test]
fn dns_names_follow_name_rules_and_the_default() {
    let p = policy(
        Action::Allow,
        &[("deny", "*.evil.test"), ("deny", "tcp:25")],
    );
    assert!(p.check_dns_name("example.com").is_allowed());
    assert!(!p.check_dns_name("x.evil.test.").is_allowed());
    let p = policy(
        Action::Deny,
        &[
            ("allow", "example.com:443"),
            ("allow", "http://api.test.dev/"),
        ],
    );
    assert!(p.check_dns_name("EXAMPLE.com").is_allowed());
    assert!(p.check_dns_name("api.test.dev").is_allowed());
    assert!(!p.check_dns_name("other.com").is_allowed());
    let p = policy(Action::Deny, &[("allow", "tcp:443")]);
    assert!(
        p.check_dns_name("other.com").is_allowed(),
        "any-target allows open all names"
    );
}

#[test]
fn host_alias_name_needs_a_host_rule() {
    assert!(!Policy::default()
        .check_dns_name(HOST_ALIAS_NAME)
        .is_allowed());
    assert!(!Policy::default()
        .allow(rule("any"))
        .check_dns_name(HOST_ALIAS_NAME)
        .is_allowed());
    assert!(Policy::default()
        .allow(rule("host"))
        .check_dns_name(HOST_ALIAS_NAME)
        .is_allowed());
}

#[test]
fn rebinding_answers_need_an_explicit_rule() {
    let private: IpAddr = "192.168.1.10".parse().unwrap();
    let public: IpAddr = "93.184.216.34".parse().unwrap();
    let p = Policy::default();
    assert!(p.allows_dns_answer("rebind.test", public));
    assert!(!p.allows_dns_answer("rebind.test", private));
    assert!(!Policy::default()
        .allow(rule("any"))
        .allows_dns_answer("rebind.test", private));
    for text in [
        "192.168.0.0/16",
        "private",
        "rebind.test",
        "tcp:192.168.1.10:22",
    ] {
        assert!(
            Policy::default()
                .allow(rule(text))
                .allows_dns_answer("rebind.test", private),
            "{text}"
        );
    }
    let p = Policy::default()
        .deny(rule("rebind.test"))
        .allow(rule("private"));
    assert!(!p.allows_dns_answer("rebind.test", private));
}

#[test]
fn policy_travels_through_serde() {
    let p = policy(
        Action::Deny,
        &[("allow", "GET http://a.com/x/"), ("deny", "metadata")],
    );
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    assert!(json.contains("\"GET http://a.com/x/\""), "{json}");
}

proptest! {
    #[test]
    fn cidr_rules_match_exactly_their_block(addr in any::<u32>(), len in 0u8..=32, probe in any::<u32>()) {
        let net = ipnet::Ipv4Net::new(addr.into(), len).unwrap().trunc();
        let p = Policy::new(Action::Deny).allow(Rule::cidr(net.into()));
        let ip = std::net::Ipv4Addr::from(probe);
        let f = tcp(&format!("{ip}:80"));
        prop_assert_eq!(allowed(&p, &f), net.contains(&ip));
    }

    #[test]
    fn group_rules_match_exactly_their_group(probe in any::<[u8; 16]>(), v4 in any::<u32>(), pick in 0usize..6) {
        let group = Group::ALL[pick];
        let p = Policy::new(Action::Deny).allow(Rule::group(group));
        for ip in [IpAddr::from(probe), IpAddr::from(std::net::Ipv4Addr::from(v4))] {
            let f = FlowInfo { protocol: Protocol::Tcp, dst: SocketAddr::new(ip, 80), to_host_alias: false };
            prop_assert_eq!(allowed(&p, &f), Group::of(ip) == group, "{}", ip);
        }
    }

    #[test]
    fn name_rules_never_open_protected_addresses(
        rules in proptest::collection::vec(name_or_public_rule(), 1..5),
        protected in protected_ip(),
        port in 1u16..,
        udp in any::<bool>(),
    ) {
        let pins = PinTable::new();
        for name in ["rebind.test", "a.rebind.test", "api.example.com"] {
            pins.pin(protected, name, Duration::from_secs(60));
        }
        let mut p = Policy::new(Action::Allow);
        for text in &rules {
            p.push(Action::Allow, rule(text));
        }
        let f = FlowInfo {
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            dst: SocketAddr::new(protected, port),
            to_host_alias: false,
        };
        prop_assert!(!p.check_flow(&f, &pins).is_allowed(), "{:?} opened {}", rules, f.dst);
    }
}

#[test]
fn other_dns_transports_are_blocked_unless_their_port_is_allowed() {
    let p = policy(Action::Allow, &[("allow", "any")]);
    for f in [
        flow(Protocol::Udp, "8.8.8.8:53"),
        tcp("8.8.8.8:53"),
        tcp("1.1.1.1:853"),
    ] {
        assert!(!allowed(&p, &f), "{f:?}");
    }
    assert!(allowed(&p, &tcp("8.8.8.8:443")));
    let opened = policy(Action::Deny, &[("allow", "udp:53")]);
    assert!(allowed(&opened, &flow(Protocol::Udp, "8.8.8.8:53")));
    assert!(!allowed(&opened, &tcp("8.8.8.8:853")));
}

/// Allow rules that name no protected address or group: DNS names (plain,
/// wildcard, with qualifiers, HTTP) and the broad public ones.
fn name_or_public_rule() -> impl Strategy<Value = String> {
    let names = proptest::sample::select(vec![
        "rebind.test",
        "*.rebind.test",
        "*.test",
        "api.example.com",
        "*.example.com",
        "host.msbvm.internal",
        "*.msbvm.internal",
    ]);
    let forms = proptest::sample::select(vec![
        "{}",
        "{}:80",
        "{}:1-65535",
        "tcp:{}",
        "udp:{}:53",
        "http://{}/",
        "GET http://{}/x/",
    ]);
    prop_oneof![
        (names, forms).prop_map(|(n, f)| f.replace("{}", n)),
        proptest::sample::select(vec![
            "any",
            "public",
            "tcp:443",
            "udp:1-65535",
            "any:1-65535"
        ])
        .prop_map(str::to_owned),
    ]
}

/// Addresses of every protected group (the host alias is tested apart).
fn protected_ip() -> impl Strategy<Value = IpAddr> {
    proptest::sample::select(vec![
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "127.0.0.1",
        "0.0.0.0",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.10",
        "100.64.0.1",
        "fd00::1",
        "fe80::1",
        "169.254.1.1",
        "224.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ])
    .prop_map(|ip| ip.parse().unwrap())
}

#[test]
fn a_name_pinned_to_a_protected_address_stays_denied() {
    let pins = PinTable::new();
    let targets = [
        "169.254.169.254",
        "127.0.0.1",
        "10.1.2.3",
        "fd00::1",
        "192.168.1.10",
    ];
    for ip in targets {
        pins.pin(ip.parse().unwrap(), "rebind.test", Duration::from_secs(60));
    }
    for text in [
        "rebind.test",
        "*.test",
        "rebind.test:80",
        "tcp:rebind.test:80",
        "http://rebind.test/",
    ] {
        let p = Policy::new(Action::Deny).allow(rule(text));
        for ip in targets {
            let f = FlowInfo {
                protocol: Protocol::Tcp,
                dst: SocketAddr::new(ip.parse().unwrap(), 80),
                to_host_alias: false,
            };
            let verdict = p.check_flow(&f, &pins);
            assert!(!verdict.is_allowed(), "{text} opened {ip}: {verdict:?}");
            // The same name rule still lets the DNS answer through (see the module doc).
            assert!(
                p.allows_dns_answer("rebind.test", ip.parse().unwrap()),
                "{text} {ip}"
            );
        }
    }
    // An address, block or group rule opens it; a name deny still closes it.
    let f = tcp("10.1.2.3:80");
    for text in ["10.1.2.3", "10.0.0.0/8", "private"] {
        let p = Policy::new(Action::Deny)
            .allow(rule("rebind.test"))
            .allow(rule(text));
        assert!(p.check_flow(&f, &pins).is_allowed(), "{text}");
    }
    let p = Policy::default()
        .deny(rule("rebind.test"))
        .allow(rule("private"));
    assert!(!p.check_flow(&f, &pins).is_allowed());
    // Public answers of the same name are opened by the name rule.
    pins.pin(
        "93.184.216.34".parse().unwrap(),
        "rebind.test",
        Duration::from_secs(60),
    );
    let p = Policy::new(Action::Deny).allow(rule("rebind.test"));
    assert!(p.check_flow(&tcp("93.184.216.34:80"), &pins).is_allowed());
}

#[test]
fn an_http_allow_rule_for_a_name_does_not_open_a_private_address() {
    let f = tcp("10.1.2.3:80");
    let p = Policy::new(Action::Deny).allow(rule("http://intranet.example/"));
    assert!(!allows(&p, &f, "GET", "intranet.example", "/"));
    let p = Policy::new(Action::Deny).allow(rule("http://10.1.2.3/"));
    assert!(allows(&p, &f, "GET", "intranet.example", "/"));
}

#[test]
fn only_the_exact_host_name_opens_the_host() {
    for text in ["*.msbvm.internal", "*.internal"] {
        let p = Policy::default().allow(rule(text));
        assert!(!allowed(&p, &host_alias(80)), "{text}");
        assert!(!p.check_dns_name(HOST_ALIAS_NAME).is_allowed(), "{text}");
    }
    let p = Policy::default().allow(rule("host.msbvm.internal"));
    assert!(allowed(&p, &host_alias(80)));
    assert!(p.check_dns_name(HOST_ALIAS_NAME).is_allowed());
}

#[test]
fn http_methods_compare_without_case() {
    let f = tcp("93.184.216.34:80");
    let p = Policy::default().deny(rule("POST http://example.com/"));
    for method in ["POST", "post", "PoSt"] {
        assert!(
            !p.check_http(&http(method, "example.com", "/x"), &f)
                .is_allowed(),
            "{method}"
        );
    }
    let p = Policy::new(Action::Deny).allow(rule("GET http://example.com/"));
    assert!(allows(&p, &f, "get", "example.com", "/x"));
    assert!(!allows(&p, &f, "PUT", "example.com", "/x"));
}

#[test]
fn disguised_paths_hit_a_deny_rule() {
    let f = tcp("93.184.216.34:80");
    let p = Policy::default().deny(rule("http://example.com/admin/"));
    for path in [
        "/admin/",
        "/admin;x/",
        "/%61dmin/",
        "//admin/",
        "/x/../admin/",
        "/./admin/x",
        "/admin;jsessionid=1/users",
        "/%2e/admin/",
        "/ADMIN/",
        "/pub%2f..%2fadmin/",
        "/admin%zz",
    ] {
        assert!(
            !p.check_http(&http("GET", "example.com", path), &f)
                .is_allowed(),
            "{path}"
        );
    }
    assert!(allows(&p, &f, "GET", "example.com", "/administrator"));
    assert!(allows(&p, &f, "GET", "example.com", "/pub/admin/"));
}

#[test]
fn https_rules_apply_inside_intercepted_tls_on_443_and_never_to_plain_http() {
    let p = policy(
        Action::Allow,
        &[
            ("deny", "https://api.test/admin/"),
            ("deny", "POST http://api.test/"),
        ],
    );
    assert_eq!(
        rule("HTTPS://api.test/admin/").to_string(),
        "https://api.test/admin/"
    );
    assert_eq!(
        rule("GET https://api.test:8443/x").to_string(),
        "GET https://api.test:8443/x"
    );
    let tls = tcp("93.184.216.34:443");
    let plain = tcp("93.184.216.34:80");
    assert!(!allows(&p, &tls, "GET", "api.test", "/admin/x"));
    assert!(allows(&p, &tls, "GET", "api.test", "/public"));
    assert!(
        allows(&p, &plain, "GET", "api.test", "/admin/x"),
        "an https rule is port 443"
    );
    assert!(
        allows(&p, &tls, "POST", "api.test", "/x"),
        "an http rule is port 80"
    );
    // TLS is never read as plain HTTP: port 443 is inspected by interception, not here.
    assert!(!p.wants_http_inspection(443));
    assert!(p.wants_http_inspection(80));
    assert!(p.has_https_rule_for("api.test"));
    assert!(p.has_https_rules());
    assert!(!policy(Action::Allow, &[("deny", "http://api.test/")]).has_https_rules());
    assert!(!p.has_https_rule_for("other.test"));
    assert!(Rule::parse("ftp://api.test/").is_err());
}

#[test]
fn an_http_deny_rule_naming_the_request_host_covers_the_host_alias_too() {
    let p = policy(
        Action::Deny,
        &[
            ("deny", "https://api.test/deny/"),
            ("allow", "http://web.test/"),
            ("allow", "host"),
        ],
    );
    let alias = host_alias(443);
    assert!(!allows(&p, &alias, "GET", "api.test", "/deny/x"));
    assert!(allows(&p, &alias, "GET", "api.test", "/ka/1"));
    // A name allow rule still opens nothing on the host alias by itself.
    let closed = policy(Action::Deny, &[("allow", "http://web.test:8000/")]);
    assert!(!allows(&closed, &host_alias(8000), "GET", "web.test", "/"));
}
