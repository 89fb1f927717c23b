//! TLS interception end to end: a rustls client in the smoltcp fake guest, the stack, and a
//! real rustls server on the host's loopback (reached through the host alias), with its own
//! test CA given to the stack as a private upstream CA. The server's ephemeral port is made an
//! interception port besides 443 (`fuzzing::set_test_tls_port`).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{host_allowed, rule, test_config, Harness, HOST_ALIAS};
use msbvm_netstack::policy::Policy;
use msbvm_netstack::tls::{generate_ca, CertAuthority, LeafResolver, TlsConfig};
use msbvm_netstack::{NetEvent, Transport};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{IpEndpoint, IpProtocol, Ipv4Packet};

/// What the upstream server sends after its handshake.
const GREETING: &[u8] = b"hello from upstream\n";
/// The name whose upstream presents a certificate from a CA nobody trusts.
const UNTRUSTED: &str = "untrusted.test";

/// The upstream's leaves: from the trusted upstream CA, except for [`UNTRUSTED`].
#[derive(Debug)]
struct TwoCas {
    trusted: LeafResolver,
    untrusted: LeafResolver,
}

impl ResolvesServerCert for TwoCas {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let from = if name == UNTRUSTED {
            &self.untrusted
        } else {
            &self.trusted
        };
        from.leaf(name).ok()
    }
}

fn resolver(name: &str) -> (LeafResolver, String) {
    let (cert, key) = generate_ca(name).unwrap();
    let ca = CertAuthority::from_pem(&cert, &key).unwrap();
    (LeafResolver::new(ca, 16), cert)
}

/// Starts the upstream server once; returns its CA PEM and port (an interception port).
fn upstream() -> (&'static str, u16) {
    static UPSTREAM: OnceLock<(String, u16)> = OnceLock::new();
    let (ca, port) = UPSTREAM.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        msbvm_netstack::fuzzing::set_test_tls_port(port);
        let (trusted, ca) = resolver("upstream test CA");
        let (untrusted, _) = resolver("nobody's CA");
        let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(TwoCas { trusted, untrusted }));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server = Arc::new(server);
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let server = server.clone();
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(server) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    if tls.write_all(GREETING).is_ok() {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        (ca, port)
    });
    (ca, *port)
}

/// A stack intercepting `intercept` (bypassing `bypass`) with a fresh sandbox CA; returns the
/// harness and the sandbox CA's PEM.
fn stack(
    upstream_ca: &str,
    intercept: &[&str],
    bypass: &[&str],
    policy: Policy,
) -> (Harness, String) {
    let (cert, key) = generate_ca("sandbox CA").unwrap();
    let mut config = test_config();
    config.tls = Some(TlsConfig {
        ca_cert_pem: cert.clone(),
        ca_key_pem: key,
        intercept: intercept.iter().map(|s| s.to_string()).collect(),
        bypass: bypass.iter().map(|s| s.to_string()).collect(),
        upstream_ca_pems: vec![upstream_ca.to_owned()],
    });
    (Harness::start(config, policy), cert)
}

/// A guest-side TLS client trusting only `ca_pem`, offering h2 and http/1.1.
fn client(ca_pem: &str, name: ServerName<'static>) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    ClientConnection::new(Arc::new(config), name).unwrap()
}

fn rustls_pki_types_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How a guest TLS connection went.
struct Outcome {
    /// The handshake completed.
    handshaken: bool,
    /// The TLS error or the way the connection ended before the handshake.
    error: Option<String>,
    /// The plaintext received.
    plain: Vec<u8>,
    /// The ALPN protocol negotiated with the guest.
    alpn: Option<Vec<u8>>,
}

/// Runs `conn` over a guest TCP connection to the host alias's `port` until it ends.
fn run_tls(h: &mut Harness, port: u16, conn: ClientConnection) -> Outcome {
    run_tls_in_pieces(h, port, conn, usize::MAX, false)
}

/// [`run_tls`] up to the end of the handshake only: an intercepted connection then waits for
/// requests (the HTTP engine serves it), so it does not end by itself.
fn handshake(h: &mut Harness, port: u16, conn: ClientConnection) -> Outcome {
    run_tls_in_pieces(h, port, conn, usize::MAX, true)
}

/// [`run_tls`], the guest sending at most `piece` bytes at a time with pauses in between (so
/// the stack sees its ClientHello arrive in parts), returning once the handshake is done when
/// `handshake_only`.
fn run_tls_in_pieces(
    h: &mut Harness,
    port: u16,
    mut conn: ClientConnection,
    piece: usize,
    handshake_only: bool,
) -> Outcome {
    let s = h
        .guest
        .tcp_connect(SocketAddrV4::new(HOST_ALIAS, port), 40000 + fastrand());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut plain = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut error = None;
    loop {
        assert!(Instant::now() < deadline, "the TLS connection did not end");
        h.guest.pump();
        if handshake_only && !conn.is_handshaking() {
            break;
        }
        if h.guest.tcp(s).may_send() {
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            for part in out.chunks(piece) {
                h.guest.tcp_send_all(s, part);
                if piece != usize::MAX {
                    h.guest.run_for(Duration::from_millis(5));
                }
            }
        }
        let sock = h.guest.tcp(s);
        if sock.can_recv() {
            let n = sock.recv_slice(&mut buf).unwrap();
            let mut rd = &buf[..n];
            while !rd.is_empty() {
                conn.read_tls(&mut rd).unwrap();
            }
            if let Err(e) = conn.process_new_packets() {
                error = Some(e.to_string());
                break;
            }
            let _ = conn.reader().read_to_end(&mut plain);
            continue;
        }
        if sock.state() == State::Closed || (!sock.may_recv() && sock.state() != State::SynSent) {
            if conn.is_handshaking() {
                error = Some(format!(
                    "connection ended in the handshake ({})",
                    sock.state()
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    Outcome {
        handshaken: !conn.is_handshaking(),
        error,
        plain,
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
    }
}

/// A local port per connection, so tests in parallel do not collide.
fn fastrand() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn name(text: &str) -> ServerName<'static> {
    ServerName::try_from(text.to_owned()).unwrap()
}

/// Waits (pumping) until an event matching `f` was reported.
fn wait_event(h: &mut Harness, what: &str, f: impl Fn(&NetEvent) -> bool) -> NetEvent {
    let events = h.events.clone();
    h.guest.run_until(10, what, |_| {
        events.lock().unwrap().iter().find(|e| f(e)).cloned()
    })
}

#[test]
fn an_intercepted_connection_gets_a_leaf_from_the_sandbox_ca() {
    let (upstream_ca, port) = upstream();
    let (mut h, sandbox_ca) = stack(upstream_ca, &["*.test"], &[], host_allowed());
    h.handle
        .pins()
        .pin(HOST_ALIAS.into(), "api.test", Duration::from_secs(60));
    // The guest trusts only the sandbox CA: the handshake completing proves the leaf is minted.
    let out = handshake(&mut h, port, client(&sandbox_ca, name("api.test")));
    assert!(out.handshaken, "{:?} {:?}", out.error, h.events());
    assert_eq!(out.alpn.as_deref(), Some(&b"h2"[..]));
    let event = wait_event(&mut h, "tls_intercepted", |e| {
        matches!(e, NetEvent::TlsIntercepted { .. })
    });
    let NetEvent::TlsIntercepted { sni, pinned, .. } = event else {
        unreachable!()
    };
    assert_eq!(sni, "api.test");
    assert!(pinned, "the name was pinned to the address");
    // A name the sandbox's DNS never gave for this address is intercepted, but not pinned.
    let out = handshake(&mut h, port, client(&sandbox_ca, name("other.test")));
    assert!(out.handshaken, "{:?} {:?}", out.error, h.events());
    let unpinned = h.events().into_iter().any(
        |e| matches!(e, NetEvent::TlsIntercepted { sni, pinned: false, .. } if sni == "other.test"),
    );
    assert!(unpinned, "{:?}", h.events());
}

#[test]
fn a_bypassed_host_gets_the_upstream_certificate_and_bytes() {
    let (upstream_ca, port) = upstream();
    let (mut h, _) = stack(upstream_ca, &["all"], &["pinned.test"], host_allowed());
    // The guest trusts only the upstream's CA: the stack's leaf would fail.
    let out = run_tls(&mut h, port, client(upstream_ca, name("pinned.test")));
    assert!(out.handshaken, "{:?} {:?}", out.error, h.events());
    assert_eq!(out.plain, GREETING);
    assert_eq!(
        out.alpn.as_deref(),
        Some(&b"http/1.1"[..]),
        "the upstream's own choice"
    );
    wait_event(
        &mut h,
        "tls_bypassed",
        |e| matches!(e, NetEvent::TlsBypassed { sni: Some(s), .. } if s == "pinned.test"),
    );
}

#[test]
fn an_upstream_failing_verification_is_refused() {
    let (upstream_ca, port) = upstream();
    let (mut h, sandbox_ca) = stack(upstream_ca, &["all"], &[], host_allowed());
    let out = run_tls(&mut h, port, client(&sandbox_ca, name(UNTRUSTED)));
    assert!(!out.handshaken, "the guest must get no certificate for it");
    let event = wait_event(&mut h, "tls_upstream_rejected", |e| {
        matches!(e, NetEvent::TlsUpstreamRejected { .. })
    });
    let NetEvent::TlsUpstreamRejected { sni, reason, .. } = event else {
        unreachable!()
    };
    assert_eq!(sni, UNTRUSTED);
    assert!(reason.contains("certificate"), "{reason}");
}

#[test]
fn no_sni_or_a_denied_sni_is_refused_with_an_event() {
    let (upstream_ca, port) = upstream();
    let policy = Policy::builder()
        .deny(rule("evil.test"))
        .allow(rule("host"));
    let (mut h, sandbox_ca) = stack(upstream_ca, &["all"], &[], policy);
    // rustls sends no SNI to an IP address.
    let ip = ServerName::IpAddress(std::net::IpAddr::V4(HOST_ALIAS).into());
    let out = run_tls(&mut h, port, client(&sandbox_ca, ip));
    assert!(!out.handshaken);
    wait_event(
        &mut h,
        "tls_refused without SNI",
        |e| matches!(e, NetEvent::TlsRefused { sni: None, reason, .. } if reason.contains("SNI")),
    );
    let out = run_tls(&mut h, port, client(&sandbox_ca, name("evil.test")));
    assert!(!out.handshaken);
    wait_event(
        &mut h,
        "tls_refused for a denied name",
        |e| matches!(e, NetEvent::TlsRefused { sni: Some(s), .. } if s == "evil.test"),
    );
}

#[test]
fn quic_to_an_intercepted_host_gets_port_unreachable() {
    let (upstream_ca, port) = upstream();
    let (mut h, _) = stack(upstream_ca, &["api.test"], &[], host_allowed());
    h.handle
        .pins()
        .pin(HOST_ALIAS.into(), "api.test", Duration::from_secs(60));
    let u = h.guest.udp_bind(4433);
    let dst = IpEndpoint::new(HOST_ALIAS.into(), port);
    h.guest.udp(u).send_slice(b"quic initial", dst).unwrap();
    h.guest.run_until(5, "udp sent", |g| {
        g.udp(u).send_queue().eq(&0).then_some(())
    });
    h.guest.capture = true;
    let frame = h.guest.run_until(5, "icmp", |g| g.captured.pop());
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    assert_eq!(ip.payload()[..2], [3, 3], "port unreachable");
    h.guest.capture = false;
    wait_event(&mut h, "flow_denied for QUIC", |e| {
        matches!(e, NetEvent::FlowDenied { transport: Transport::Udp, rule: Some(r), .. }
            if r.contains("QUIC"))
    });
}

#[test]
fn a_bad_sandbox_ca_fails_the_start_with_a_clear_error() {
    let (_, key) = generate_ca("sandbox CA").unwrap();
    let mut config = test_config();
    config.tls = Some(TlsConfig {
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ca_key_pem: key,
        intercept: vec!["all".into()],
        bypass: vec![],
        upstream_ca_pems: vec![],
    });
    let (_device, stack) = msbvm_netstack::frame_socketpair().unwrap();
    let sink: msbvm_netstack::EventSink = Arc::new(|_| {});
    let err = msbvm_netstack::NetStack::start(config, stack, Policy::default(), sink)
        .err()
        .expect("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

#[test]
fn a_client_hello_arriving_in_pieces_is_replayed_intact() {
    let (upstream_ca, port) = upstream();
    let (mut h, sandbox_ca) = stack(upstream_ca, &["api.test"], &[], host_allowed());
    let out = run_tls_in_pieces(&mut h, port, client(&sandbox_ca, name("api.test")), 7, true);
    assert!(
        out.handshaken,
        "intercepted: {:?} {:?}",
        out.error,
        h.events()
    );
    let out = run_tls_in_pieces(
        &mut h,
        port,
        client(upstream_ca, name("else.test")),
        7,
        false,
    );
    assert!(out.handshaken, "bypassed: {:?} {:?}", out.error, h.events());
    assert_eq!(out.plain, GREETING);
}
