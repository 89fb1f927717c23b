//! The shell of the in-L1 TLS benchmark: [`l1_script`] runs in L1 (busybox `sh`),
//! [`GUEST_SCRIPT`] in each sandbox (the test image's `sh`, curl and awk).

use msbvm_tests::e2e::{net_host, prelude};
use msbvm_tests::test_image::IMAGE_REF;

use super::{L1Mode, L1Plan, L1_MODES, PREFIX};
use crate::tls_bench::UPSTREAM_NAME;

/// Where the upstream binary goes in L1.
pub const L1_UPSTREAM: &str = "/bin/msbvm-tls-l1-upstream";
/// The L1 directory with the upstream's CA, leaf and key and the guest script, mounted
/// read-only at the same path in each sandbox.
pub const L1_BENCH_DIR: &str = "/bench";
/// The upstream's CA certificate in L1 and in the guests.
pub const L1_CA: &str = "/bench/ca.pem";
/// The upstream's leaf certificate in L1.
pub const L1_LEAF: &str = "/bench/upstream.crt";
/// The upstream's key in L1.
pub const L1_KEY: &str = "/bench/upstream.key";
/// The guest script in L1 and in the guests.
pub const L1_GUEST_SCRIPT: &str = "/bench/measure.sh";
/// Where the test image's OCI layout goes in L1 (for `msbvm import`).
pub const L1_IMAGE: &str = "/bench-image";
/// Limit on one guest measurement (one mode, one run): only turns a hang into a failure.
pub const MEASURE_TIMEOUT_SECS: u64 = 1200;

/// The guest's measurements, in order, each printing one result line (see
/// [`super::RunSamples::absorb`]): a warm-up GET that also reports the certificate's issuer
/// (for an interceptor it puts the name's leaf into its cache), then the keep-alive GETs in one
/// curl (a globbed URL: curl reuses its connection; `num_connects` proves it), the new
/// connections each in a curl of its own (a new TCP connection and a full TLS handshake, no
/// session to resume; one curl with `Connection: close` would not do: the interceptor keeps
/// the guest's connection open after such a request, and curl then reuses it), and the bulk
/// download. Times are curl's `time_total` less its `time_namelookup` per transfer (process
/// start and name lookup left out); the keep-alive curl's wall clock (/proc/uptime, 10 ms
/// steps) shows what curl adds outside them.
///
/// Arguments: `URL REQUESTS HANDSHAKES BYTES [CAFILE]` (no CAFILE: the sandbox's default
/// trust, which holds the sandbox CA).
pub const GUEST_SCRIPT: &str = r#"u=$1; n=$2; h=$3; b=$4
ca=; [ -n "$5" ] && ca="--cacert $5"
t=${TMPDIR:-/tmp}
up() { cut -d' ' -f1 /proc/uptime; }
err() { echo "error $*"; }
W='%{stderr}%{http_code} %{time_total} %{num_connects} %{time_namelookup}\n'
# $1: what; reads "status total connects lookup" lines; prints "connects=N s=T1,T2,..."
tally() { awk -v what="$1" '$1 != 200 { bad++ } { c += $3; s = s sprintf("%.6f,", $2 - $4) }
  END { if (bad) print "error " what ": " bad " answers not 200"; printf "connects=%d s=%s\n", c, s }'; }
iss=$(curl -sv $ca -o /dev/null "$u/small" 2>&1 | sed -n 's/^\* *issuer: *//p' | head -n 1)
if [ -n "$iss" ]; then echo "issuer $iss"; else err "warm-up: no certificate seen"; fi
t0=$(up)
curl -s $ca -w "$W" "$u/small?k=[1-$n]" >/dev/null 2>$t/ka || err "keep-alive: curl exited $?"
t1=$(up)
echo "keepalive wall_s=$(awk "BEGIN { print $t1 - $t0 }") $(tally keep-alive < $t/ka)"
: > $t/cn; i=0
while [ $i -lt $h ]; do
  i=$((i + 1))
  curl -s $ca -w "$W" "$u/small?c=$i" >/dev/null 2>>$t/cn || { err "connections: curl exited $?"; break; }
done
echo "connections $(tally connections < $t/cn)"
curl -s $ca -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$u/bulk/$b" >$t/bk \
  || err "bulk: curl exited $?"
awk '$1 != 200 { print "error bulk: status " $1 } { print "bulk bytes=" $2 " s=" $3 }' $t/bk
"#;

/// `msbvm run` options of `mode`'s sandbox beyond the common ones.
fn mode_flags(mode: L1Mode) -> String {
    match mode {
        L1Mode::Direct => String::new(),
        L1Mode::Intercepted => {
            format!("--tls-intercept {UPSTREAM_NAME} --tls-upstream-ca {L1_CA}")
        }
    }
}

/// The CA file `mode`'s guest passes to curl (empty: the sandbox's default trust).
fn guest_ca(mode: L1Mode) -> &'static str {
    match mode {
        L1Mode::Direct => L1_CA,
        L1Mode::Intercepted => "",
    }
}

/// The L1 script: dnsmasq answering the upstream's name with the host alias, the upstream on
/// 127.0.0.1:443, the image imported, one sandbox per mode (all created before any run, so
/// each run measures sandboxes in the same state), then `plan.runs` rounds of the modes in
/// turn, each guest line printed as `tls-l1: mode=M run=N ...`.
pub fn l1_script(plan: &L1Plan) -> String {
    let mut s = prelude();
    s.push_str(&net_host(
        "mkdir -p /www",
        &format!("{UPSTREAM_NAME}=10.0.2.254"),
    ));
    s.push_str(&format!(
        "{L1_UPSTREAM} {L1_LEAF} {L1_KEY} 127.0.0.1:443 >/tmp/upstream.log 2>&1 &\n\
         n=0; while [ $n -lt 100 ] && ! netstat -ltn | grep -q '127.0.0.1:443 '; do sleep 0.2; n=$((n+1)); done\n\
         s=$(date +%s); $M import {L1_IMAGE} >/dev/null || echo 'tls-l1-setup: import failed'\n\
         echo \"tls-l1-setup: import $(( $(date +%s) - s )) s\"\n\
         COMMON=\"--image {IMAGE_REF} --dns 127.0.0.1:5353 --net-allow host --net-allow {UPSTREAM_NAME} -v {L1_BENCH_DIR}:{L1_BENCH_DIR}:ro\"\n"
    ));
    for mode in L1_MODES {
        let name = mode.name();
        s.push_str(&format!(
            "s=$(date +%s); $M run -d --name {name} $COMMON {flags} >/dev/null\n\
             echo \"tls-l1-setup: boot {name} rc=$? $(( $(date +%s) - s )) s\"\n",
            flags = mode_flags(mode),
        ));
    }
    s.push_str(&format!(
        "measure() {{ $M exec --timeout {MEASURE_TIMEOUT_SECS} $1 -- sh {L1_GUEST_SCRIPT} https://{UPSTREAM_NAME} {req} {hs} {bytes} $3 2>&1 | sed \"s/^/{PREFIX} mode=$1 run=$2 /\"; }}\n\
         for r in $(seq 1 {runs}); do\n",
        req = plan.requests,
        hs = plan.handshakes,
        bytes = plan.bulk_bytes,
        runs = plan.runs,
    ));
    for mode in L1_MODES {
        s.push_str(&format!(
            "  echo \"tls-l1-setup: {name} run $r\"; measure {name} $r {ca}\n",
            name = mode.name(),
            ca = guest_ca(mode),
        ));
    }
    s.push_str("done\n");
    for mode in L1_MODES {
        s.push_str(&format!("$M stop {} >/dev/null\n", mode.name()));
    }
    s.push_str("echo 'tls-l1-setup: upstream log:'; tail -n 5 /tmp/upstream.log\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_script_interleaves_modes_and_configures_interception() {
        let plan = L1Plan {
            runs: 3,
            requests: 10,
            handshakes: 4,
            bulk_bytes: 1024,
        };
        let s = l1_script(&plan);
        assert!(s.contains("--name intercepted $COMMON --tls-intercept upstream.tls-bench.test --tls-upstream-ca /bench/ca.pem"), "{s}");
        assert!(
            s.contains("--name direct $COMMON  >"),
            "direct has no TLS flags: {s}"
        );
        let direct = s.find("measure direct $r /bench/ca.pem").unwrap();
        let intercepted = s.find("measure intercepted $r \n").unwrap();
        assert!(direct < intercepted);
        assert!(s.contains("$(seq 1 3)"));
        assert!(s.contains("https://upstream.tls-bench.test 10 4 1024 $3"));
        assert!(
            s.contains("upstream.tls-bench.test/10.0.2.254"),
            "dnsmasq answer: {s}"
        );
    }

    /// The guest script, run by the host's sh, curl and awk (the same curl release as the
    /// test image's) against the bench's upstream on loopback: every phase reports, the
    /// keep-alive requests share one connection, each new connection is its own, and a
    /// client that trusts another CA reports an error instead of numbers.
    #[test]
    fn guest_script_measures_an_upstream() {
        use crate::tls_bench::pki::Authority;
        use crate::tls_bench::upstream::HostSide;
        use crate::tls_l1::RunSamples;
        use std::net::Ipv4Addr;
        use std::process::Command;

        if !crate::image_bench::on_path("curl") {
            eprintln!("skipped: guest_script_measures_an_upstream needs curl on PATH");
            return;
        }
        let ca = Authority::new("script test CA").unwrap();
        let other = Authority::new("script other CA").unwrap();
        let leaf = ca.issue(&["127.0.0.1"]).unwrap();
        let host = HostSide::start(leaf, 0, "unused.test", Ipv4Addr::LOCALHOST).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        let other_file = dir.path().join("other.pem");
        std::fs::write(&other_file, &other.cert_pem).unwrap();
        let url = format!("https://127.0.0.1:{}", host.https.port());
        let run = |ca: &std::path::Path| {
            let out = Command::new("sh")
                .args(["-c", GUEST_SCRIPT, "sh", &url, "20", "3", "1048583"])
                .arg(ca)
                .env("TMPDIR", dir.path())
                .output()
                .unwrap();
            let mut r = RunSamples::default();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                r.absorb(line);
            }
            r
        };
        let plan = L1Plan {
            runs: 1,
            requests: 20,
            handshakes: 3,
            bulk_bytes: 1048583,
        };
        let r = run(&ca_file);
        assert!(r.complete(&plan), "{r:?}");
        assert_eq!(r.issuer.as_deref(), Some("CN=script test CA"));
        assert!(r.requests_per_s().unwrap() > 0.0 && r.bulk_mib_s().unwrap() > 0.0);
        assert!(r.curl_gap_ms().is_some());
        let stranger = run(&other_file);
        assert!(!stranger.complete(&plan), "{stranger:?}");
        assert!(!stranger.errors.is_empty());
    }
}
