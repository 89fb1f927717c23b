//! Guest DNS query bytes through the sandbox's DNS server up to the policy decision (and the
//! server's own answer for host.msbvm.internal), over UDP and TCP. The policy denies by default,
//! so nothing goes upstream.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use msbvm_netstack::dns::{DnsServer, PinTable, Upstream};
use msbvm_netstack::policy::{Action, Policy};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    server: DnsServer,
    policy: Policy,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rule = |text: &str| text.parse().expect("a valid rule");
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
            // Never reached: the policy below allows no name that goes upstream.
            server: DnsServer::new(
                Upstream::Servers(vec!["127.0.0.1:9".parse().expect("an address")]),
                PinTable::new(),
            )
            .expect("a server"),
            policy: Policy::new(Action::Deny)
                .allow(rule("host"))
                .deny(rule("*.blocked.test")),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let events = |_| {};
    let (udp, tcp) = f.runtime.block_on(async {
        (
            f.server.handle(data, &f.policy, &events).await,
            f.server.handle_tcp(data, &f.policy, &events).await,
        )
    });
    // An answer is at most what a DNS message can be.
    for answer in [udp, tcp].into_iter().flatten() {
        assert!(answer.len() <= 65535);
    }
});
