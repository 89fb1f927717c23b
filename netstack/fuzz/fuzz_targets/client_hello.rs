//! The guest's first bytes on a TLS port: the ClientHello reader that decides intercept,
//! splice or refuse, on the whole input and on every prefix (the stack calls it as bytes
//! arrive).
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::tls::client_hello::{peek, Peeked, MAX_PEEK};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_PEEK)];
    let whole = peek(data);
    if let Peeked::Hello(info) = &whole {
        if let Some(sni) = &info.sni {
            assert!(!sni.is_empty() && sni.len() <= 253);
            assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
        }
    }
    // A prefix never decides differently from the whole, except by asking for more.
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        match peek(&data[..cut]) {
            Peeked::Incomplete => {}
            early => assert_eq!(early, whole, "prefix of {cut} bytes"),
        }
    }
});
