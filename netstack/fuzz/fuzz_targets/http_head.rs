//! Guest bytes on an inspected HTTP connection as the engine sees them after hyper parsed the
//! head: the request's method, target and Host go through `request_info` (authority and path
//! normalization) and the policy's path canonicalization and decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::http::request_info;
use msbvm_netstack::policy::{path_views, FlowInfo, Policy, Protocol};

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return;
    };
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let Some(info) = request_info(method, target, host) else {
        return;
    };
    assert!(info.path.starts_with('/'), "{info:?}");
    assert!(!info.host.is_empty());
    if let Some(views) = path_views(&info.path) {
        assert!(views.iter().all(|v| v.starts_with('/')), "{views:?}");
        assert!(views.len() <= 16);
    }
    let policy = Policy::builder()
        .deny("http://example.com/admin/".parse().expect("a valid rule"))
        .allow("GET http://example.com/pub/".parse().expect("a valid rule"));
    let flow = FlowInfo {
        protocol: Protocol::Tcp,
        dst: "93.184.216.34:80".parse().expect("an address"),
        to_host_alias: false,
    };
    let _ = policy.check_http(&info, &flow);
});
