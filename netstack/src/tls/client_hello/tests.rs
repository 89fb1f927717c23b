use std::sync::Arc;

use proptest::prelude::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

/// The first bytes a real rustls client sends.
fn rustls_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server = ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = ClientConnection::new(Arc::new(config), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write");
    }
    out
}

/// A ClientHello made by hand, `ext` being its raw extensions.
fn hello_with(ext: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(ext);
    let mut msg = vec![1, 0];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&body);
    record(&msg)
}

fn record(fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![22, 3, 1];
    out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(fragment);
    out
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    ext
}

fn alpn_ext(protocols: &[Vec<u8>]) -> Vec<u8> {
    let list: Vec<u8> = protocols
        .iter()
        .flat_map(|p| std::iter::once(p.len() as u8).chain(p.iter().copied()))
        .collect();
    let mut ext = vec![0, 16];
    ext.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    ext
}

#[test]
fn a_real_client_hello_gives_sni_and_alpn() {
    let bytes = rustls_hello("API.Example.com", &[b"h2", b"http/1.1"]);
    let Peeked::Hello(info) = peek(&bytes) else {
        panic!("not parsed: {:?}", peek(&bytes));
    };
    assert_eq!(info.sni.as_deref(), Some("api.example.com"));
    assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    // Every strict prefix asks for more.
    for cut in 0..bytes.len() {
        assert_eq!(peek(&bytes[..cut]), Peeked::Incomplete, "cut at {cut}");
    }
}

#[test]
fn a_hello_split_over_records_is_joined() {
    let whole = hello_with(&sni_ext(b"a.example"));
    let msg = &whole[RECORD_HEADER..];
    let mut split = record(&msg[..10]);
    split.extend(record(&msg[10..]));
    let Peeked::Hello(info) = peek(&split) else {
        panic!("not parsed");
    };
    assert_eq!(info.sni.as_deref(), Some("a.example"));
}

#[test]
fn no_sni_and_not_tls() {
    assert_eq!(peek(&hello_with(&[])), Peeked::Hello(HelloInfo::default()));
    assert_eq!(peek(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
    assert_eq!(peek(b"\x16\x01"), Peeked::NotTls);
    assert_eq!(peek(&[22, 3, 1, 0x40, 0x01]), Peeked::NotTls);
    assert!(matches!(
        peek(&sni_hello(b"bad name")),
        Peeked::Malformed(_)
    ));
    assert!(matches!(peek(&sni_hello(b"a..b")), Peeked::Malformed(_)));
    // A server hello (type 2) is no client start.
    assert!(matches!(
        peek(&record(&[2, 0, 0, 1, 0])),
        Peeked::Malformed(_)
    ));
    // An oversized hello is refused as soon as its header is in.
    assert!(matches!(
        peek(&[22, 3, 1, 0, 4, 1, 1, 0, 0]),
        Peeked::Malformed("ClientHello too large")
    ));
}

fn sni_hello(name: &[u8]) -> Vec<u8> {
    hello_with(&sni_ext(name))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = peek(&data);
        let mut tls = vec![22, 3, 1];
        tls.extend_from_slice(&data);
        let _ = peek(&tls);
    }

    #[test]
    fn generated_hellos_round_trip(
        labels in proptest::collection::vec("[a-z0-9][a-z0-9-]{0,20}", 1..5),
        protocols in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..20), 0..4),
        cut in any::<proptest::sample::Index>(),
        junk_ext in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let name = labels.join(".");
        let mut ext = vec![0xfe, 0x0d];
        ext.extend_from_slice(&(junk_ext.len() as u16).to_be_bytes());
        ext.extend_from_slice(&junk_ext);
        ext.extend(sni_ext(name.as_bytes()));
        if !protocols.is_empty() {
            ext.extend(alpn_ext(&protocols));
        }
        let bytes = hello_with(&ext);
        let expected = HelloInfo { sni: Some(name), alpn: protocols };
        prop_assert_eq!(peek(&bytes), Peeked::Hello(expected.clone()));
        prop_assert_eq!(peek(&bytes[..cut.index(bytes.len())]), Peeked::Incomplete);
        // Trailing application data after the hello changes nothing.
        let mut more = bytes.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        prop_assert_eq!(peek(&more), Peeked::Hello(expected));
    }
}
