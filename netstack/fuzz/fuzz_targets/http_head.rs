//! Guest bytes on an inspected HTTP connection: the request-head parser, the request stream
//! (framing of keep-alive and pipelined requests, split at an arbitrary point), path
//! canonicalization and the policy decision on every head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::http::{parse_request_head, Piece, RequestStream};
use msbvm_netstack::policy::{path_views, FlowInfo, Policy, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let _ = parse_request_head(data);
    let policy = Policy::builder()
        .deny("http://example.com/admin/".parse().expect("a valid rule"))
        .allow("GET http://example.com/pub/".parse().expect("a valid rule"));
    let flow = FlowInfo {
        protocol: Protocol::Tcp,
        dst: "93.184.216.34:80".parse().expect("an address"),
        to_host_alias: false,
    };
    let at = usize::from(cut) * data.len() / 256;
    let mut stream = RequestStream::new(4096);
    let mut forwarded = 0;
    for piece in stream
        .feed(&data[..at])
        .into_iter()
        .chain(stream.feed(&data[at..]))
    {
        match piece {
            Piece::Head { info, bytes } => {
                forwarded += bytes.len();
                let views = path_views(&info.path);
                if let Some(views) = &views {
                    assert!(views.iter().all(|v| v.starts_with('/')), "{views:?}");
                    assert!(views.len() <= 16);
                }
                let _ = policy.check_http(&info, &flow);
            }
            Piece::Body(bytes) | Piece::Framing(bytes) => forwarded += bytes.len(),
            Piece::Invalid(_) => break,
        }
    }
    // Nothing is invented: what is forwarded is at most what came in.
    assert!(forwarded <= data.len());
});
