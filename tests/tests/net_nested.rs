//! End-to-end networking: the guest's virtio-net interface into the host-side netstack,
//! with policy at IP, DNS and HTTP level, inside L1. A web server on L1's loopback stands
//! for "the host"; dnsmasq on L1's loopback is the upstream resolver (answering a public
//! name, a name that rebinds to a private address, and a name policy denies).

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, net_host, net_l1, prelude, run_scenarios};

const L1_TIMEOUT: Duration = Duration::from_secs(1200);

/// What "the host" serves (the shell line filling `/www`).
const WWW: &str =
    "mkdir -p /www/secret && echo host-page > /www/index.html && echo secret > /www/secret/x";
/// What dnsmasq, the upstream resolver, answers (`name=address`).
const DNS_ANSWERS: &str =
    "public.test=93.184.216.34 rebind.test=192.168.1.10 blocked.test=93.184.216.35";

fn script() -> String {
    format!(
        r#"{prelude}
# HTTP GET with nc, so that these checks see the raw response (status line and 403s).
# (wget works too: net_hardening_nested fetches by name with it.)
G='get() {{ printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" | nc -w 10 "$1" "$2"; }};'
eval "$G"
{host}
# The host is reachable only when a rule allows it.
out=$($M run --net-allow host -- sh -c "$G get host.msbvm.internal 8000 / | tail -1"); check host_allowed "$out"
s=$(date +%s); $M run -- sh -c "$G get host.msbvm.internal 8000 /" >/dev/null 2>&1; rc=$?
check host_denied $(nz $rc); check host_denied_fast $(fast $(( $(date +%s) - s )))

# First match wins: the HTTP rule goes before the rule that opens the host.
$M run -d --name n --dns 127.0.0.1:5353 --net-deny 10.0.0.0/8 --net-deny blocked.test \
  --net-deny 'http://host.msbvm.internal:8000/secret/' --net-allow host --net-max-connections 40; check n_rc $?
# A denied CIDR and the cloud metadata address fail fast, and say why in the events.
s=$(date +%s); $M exec n -- sh -c "$G get 10.1.2.3 80 /" >/dev/null 2>&1; rc=$?
check cidr_denied $(nz $rc); check cidr_fast $(fast $(( $(date +%s) - s )))
check cidr_event $(some $(events n | grep flow_denied | grep -c '10.1.2.3:80'))
s=$(date +%s); $M exec n -- sh -c "$G get 169.254.169.254 80 /latest/" >/dev/null 2>&1; rc=$?
check metadata_denied $(nz $rc); check metadata_fast $(fast $(( $(date +%s) - s )))
check metadata_event $(some $(events n | grep flow_denied | grep -c '169.254.169.254:80'))

# DNS through the sandbox's resolver: allowed, denied (NXDOMAIN), rebinding refused.
check dns_allowed $(some $($M exec n -- nslookup public.test 2>&1 | grep -c 93.184.216.34))
$M exec n -- nslookup blocked.test >/tmp/blocked.out 2>&1; rc=$?
check dns_denied $(nz $rc); check dns_denied_no_addr $(grep -c 93.184.216.35 /tmp/blocked.out)
check dns_rebind_refused $($M exec n -- nslookup rebind.test 2>&1 | grep -c 192.168.1.10)
check dns_events $(some $(events n | grep dns_query | grep -c blocked.test))
check log_has_decisions $(some $(grep -c 'DnsQuery.*blocked.test' /tmp/msbvm/sandboxes/n/runtime.log))
$M exec n -- nslookup public.test 1.1.1.1 >/dev/null 2>&1; check other_dns_blocked $(nz $?)
check other_dns_event $(some $(events n | grep flow_denied | grep -c '1.1.1.1:53'))
out=$(some $($M run --dns 127.0.0.1:5353 --net-allow rebind.test -- nslookup rebind.test 2>&1 | grep -c 192.168.1.10))
check dns_rebind_allowed_by_rule "$out"

# HTTP policy on plain HTTP: a denied path gets 403 from the netstack, others pass.
check http_allowed "$($M exec n -- sh -c "$G get host.msbvm.internal 8000 /index.html | tail -1")"
check http_denied $(some $($M exec n -- sh -c "$G get host.msbvm.internal 8000 /secret/x" 2>&1 | head -1 | grep -c ' 403'))
check http_event $(some $(events n | grep http_request | grep -c '/secret/x'))

# 100 concurrent connections to the host (in a sandbox with the default cap).
$M run -d --name c --net-allow host; check c_rc $?
out=$($M exec c -- sh -c "$G"' i=0; while [ $i -lt 100 ]; do (get host.msbvm.internal 8000 / > /tmp/o$i 2>&1) & i=$((i+1)); done; wait; cat /tmp/o* | grep -c host-page')
check concurrent_100 "$out"
$M stop c >/dev/null; $M rm c >/dev/null

# The policy changes on the running sandbox.
$M net policy n --net-deny host; check policy_set $?
$M exec n -- sh -c "$G get host.msbvm.internal 8000 /" >/dev/null 2>&1; check policy_now_denies $(nz $?)
$M net policy n --net-allow host; check policy_reset $?
check policy_allows_again "$($M exec n -- sh -c "$G get host.msbvm.internal 8000 / | tail -1")"

# A guest flooding connections hits its cap (40 here); the host side keeps serving.
$M exec n -- sh -c 'i=0; while [ $i -lt 60 ]; do (sleep 60 | nc host.msbvm.internal 8000 >/dev/null 2>&1 &) ; i=$((i+1)); done; sleep 20' >/dev/null 2>&1
check cap_event $(some $(events n | grep -c connection_cap_reached))
check host_still_serves "$(get 127.0.0.1 8000 / | tail -1)"
check exec_still_works "$($M exec n -- echo alive)"
$M exec n -- sh -c 'killall nc sleep' >/dev/null 2>&1; sleep 3
check after_flood "$($M exec n -- sh -c "$G get host.msbvm.internal 8000 / | tail -1")"
$M stop n >/dev/null; $M rm n >/dev/null

# A bulk download from the host arrives intact, and in frames larger than the MTU: the
# netstack merges a flow's segments and the device hands them to the guest whole (GSO), so
# eth0 counts fewer frames than half the 2897 segments of 1448 bytes that 4 MiB make.
dd if=/dev/urandom of=/www/big bs=1M count=4 2>/dev/null
want=$(sha256sum /www/big | cut -d' ' -f1)
out=$($M run --net-allow host -- sh -c 'n=/sys/class/net/eth0/statistics/rx_packets; p=$(cat $n)
  s=$(wget -q -O - http://host.msbvm.internal:8000/big | sha256sum | cut -d" " -f1); echo "$s $(( $(cat $n) - p ))"')
check bulk_intact $([ "${{out%% *}}" = "$want" ] && echo yes || echo "no:$out")
echo "bulk download: ${{out##* }} frames for 4 MiB"
check bulk_merged $([ "${{out##* }}" -lt 1450 ] 2>/dev/null && echo yes || echo "no:${{out##* }}")
# And an upload through the same path (HOST_TSO4 negotiated: the guest may send TCP frames of
# up to 64 KiB, which go to the netstack whole). busybox nc writes 1 KiB at a time, so in this
# slow L1 the guest's TCP rarely builds large frames; the frame count is printed, not checked.
# (The listener's stdin is a FIFO this shell holds open until the upload is done: at EOF busybox
# nc would close the connection.)
mkfifo /tmp/hold; nc -l -p 9000 < /tmp/hold > /tmp/up.bin 2>/dev/null & ncpid=$!
exec 7>/tmp/hold
sleep 1
out=$($M run --net-allow host -- sh -c 'n=/sys/class/net/eth0/statistics/tx_packets
  head -c 2097152 /dev/urandom > /tmp/u; s=$(sha256sum /tmp/u | cut -d" " -f1); p=$(cat $n)
  nc -w 3 host.msbvm.internal 9000 < /tmp/u; echo "$s $(( $(cat $n) - p ))"')
wait $ncpid; exec 7>&-
check upload_intact $([ "${{out%% *}}" = "$(sha256sum /tmp/up.bin | cut -d' ' -f1)" ] && echo yes || echo "no:${{out%% *}}")
echo "bulk upload: ${{out##* }} frames for 2 MiB"

# Published ports reach a server in the guest.
$M run -d --name web -p 8080:80; check web_rc $?
$M exec web -- sh -c 'mkdir -p /w && echo guest-page > /w/index.html && httpd -p 80 -h /w'
check published "$(get 127.0.0.1 8080 / | tail -1)"
$M net publish web 127.0.0.1:8081:80 >/dev/null; check publish_live_rc $?
check published_live "$(get 127.0.0.1 8081 / | tail -1)"
$M stop web >/dev/null; $M rm web >/dev/null
get 127.0.0.1 8080 / >/dev/null 2>&1; check port_closed_after_rm $(nz $?)
echo "CHECK done yes"
"#,
        prelude = prelude(),
        host = net_host(WWW, DNS_ANSWERS),
    )
}

#[test]
fn network_policy_dns_and_ports_end_to_end() {
    let Some(out) = net_l1(L1_TIMEOUT).and_then(|vm| run_scenarios(vm, &script())) else {
        return;
    };
    assert_checks(
        &out.console,
        &[
            ("done", "yes"),
            ("host_allowed", "host-page"),
            ("host_denied", "failed"),
            ("host_denied_fast", "yes"),
            ("n_rc", "0"),
            ("cidr_denied", "failed"),
            ("cidr_fast", "yes"),
            ("cidr_event", "yes"),
            ("metadata_denied", "failed"),
            ("metadata_fast", "yes"),
            ("metadata_event", "yes"),
            ("dns_allowed", "yes"),
            ("dns_denied", "failed"),
            ("dns_denied_no_addr", "0"),
            ("dns_rebind_refused", "0"),
            ("dns_events", "yes"),
            ("log_has_decisions", "yes"),
            ("other_dns_blocked", "failed"),
            ("other_dns_event", "yes"),
            ("dns_rebind_allowed_by_rule", "yes"),
            ("http_allowed", "host-page"),
            ("http_denied", "yes"),
            ("http_event", "yes"),
            ("c_rc", "0"),
            ("concurrent_100", "100"),
            ("policy_set", "0"),
            ("policy_now_denies", "failed"),
            ("policy_reset", "0"),
            ("policy_allows_again", "host-page"),
            ("cap_event", "yes"),
            ("host_still_serves", "host-page"),
            ("exec_still_works", "alive"),
            ("after_flood", "host-page"),
            ("bulk_intact", "yes"),
            ("bulk_merged", "yes"),
            ("upload_intact", "yes"),
            ("web_rc", "0"),
            ("published", "guest-page"),
            ("publish_live_rc", "0"),
            ("published_live", "guest-page"),
            ("port_closed_after_rm", "failed"),
        ],
    );
}
