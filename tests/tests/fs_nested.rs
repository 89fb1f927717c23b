//! End-to-end filesystems and images: the embedded default image, `msbvm pull` from a real
//! registry, image roots over virtio-fs (layers shared, writes copy-on-write per sandbox),
//! volumes (read-write, read-only, named), tmpfs, `msbvm cp`, and a workload of thousands
//! of small files — all through the real guest kernel's virtiofs driver, inside L1.

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, l1_ready, prelude, run_scenarios, with_msbvm};
use msbvm_tests::registry::{self, L1_REGISTRY, TEST_IMAGE};
use msbvm_tests::NestedVm;

const L1_TIMEOUT: Duration = Duration::from_secs(1200);
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn script() -> String {
    let image = format!("{L1_REGISTRY}/{TEST_IMAGE}");
    let registry_config =
        registry::config_yaml(&registry::l1_storage_dir().join("data"), L1_REGISTRY);
    format!(
        r#"{prelude}
# The embedded default image, offline.
out=$($M run -- cat /etc/os-release | grep -c '^NAME="msbvm default"'); check default_image "$out"
out=$($M run -- stat -c %u:%g /etc/passwd); check default_owner "$out"

# A real registry in L1 serving the test image pushed on the host.
cat > /tmp/registry.yml <<'EOF'
{registry_config}EOF
/usr/bin/docker-registry serve /tmp/registry.yml >/tmp/registry.log 2>&1 &
n=0; while [ $n -lt 200 ] && ! printf 'GET /v2/ HTTP/1.0\r\n\r\n' | nc 127.0.0.1 5000 2>/dev/null | grep -q ' 200'; do sleep 0.1; n=$((n+1)); done
$M pull --plain-http {image} >/tmp/pull.out 2>&1; check pull_rc $?
check images_lists $($M images --json | grep -c '"{image}"')
export MSBVM_PLAIN_HTTP_REGISTRIES={L1_REGISTRY}

layers_sum() {{ find /tmp/msbvm/images/layers -type f -exec md5sum {{}} + | sort | md5sum | cut -d' ' -f1; }}
before=$(layers_sum)

out=$($M run --image {image} -- cat /etc/os-release | grep -c '^ID=msbvm-test'); check image_os_release "$out"
out=$($M run --image {image}); check image_default_cmd "$out"
out=$($M run --image {image} -- sh -c 'echo $FROM_IMAGE $(pwd)'); check image_env_cwd "$out"
$M run --image {image} -- cat /etc/motd >/dev/null 2>&1; check whiteout_hides $(nz $?)
out=$($M run --image {image} -- stat -c %u:%a /srv/hello); check layer_meta "$out"

# Copy-on-write: two sandboxes of one image do not see each other's writes.
$M run -d --name a --image {image}; check a_rc $?
$M run -d --name b --image {image}; check b_rc $?
$M exec a -- sh -c 'echo A > /etc/marker && rm /srv/hello'; check a_write $?
$M exec b -- cat /etc/marker >/dev/null 2>&1; check b_isolated $(nz $?)
out=$($M exec b -- cat /srv/hello); check b_keeps_file "$out"
out=$($M exec a -- cat /etc/marker); check a_reads_own "$out"

# Thousands of small files: create, archive, unpack, count, remove.
out=$($M exec a -- sh -c 'mkdir -p /w/src && cd /w/src && i=0; while [ $i -lt 3000 ]; do echo $i > f$i; i=$((i+1)); done; cd /w && tar czf /w/t.tgz src && mkdir x && cd x && tar xzf /w/t.tgz && ls src | wc -l && cat src/f2999'); check small_files "$(echo $out)"
out=$($M exec a -- sh -c 'rm -rf /w && ls / | grep -c "^w$"'); check small_files_removed "$out"

# msbvm cp both ways, byte for byte.
head -c 3000000 /dev/urandom > /tmp/blob
$M cp /tmp/blob a:/root/blob; check cp_in_rc $?
$M cp a:/root/blob /tmp/blob.back; check cp_out_rc $?
check cp_same $([ "$(md5sum < /tmp/blob)" = "$(md5sum < /tmp/blob.back)" ] && echo yes || echo no)
mkdir -p /tmp/t/sub && echo a > /tmp/t/sub/a && ln -s sub/a /tmp/t/l
$M exec a -- mkdir -p /opt; $M cp /tmp/t a:/opt/; check cp_tree_rc $?
check cp_tree_link "$($M exec a -- readlink /opt/t/l) $($M exec a -- cat /opt/t/l)"
mkdir -p /tmp/out && $M cp a:/opt/t /tmp/out; check cp_tree_out "$(cat /tmp/out/t/sub/a) $(readlink /tmp/out/t/l)"
$M exec a -- mkdir /srv2 && tar -C /tmp -cf - t | $M cp - a:/srv2; check cp_tar_in "$($M exec a -- cat /srv2/t/sub/a)"
$M cp - a:/srv2 < /evil.tar 2>/dev/null; check cp_hostile_tar $?
$M exec a -- test -e /evil; check cp_hostile_nothing $(nz $?)
$M cp a:/nonexistent /tmp/x 2>/dev/null; check cp_missing $?
# All of the above ran under the runtime's confinement: no call outside the lists; the fs
# threads kept only CAP_DAC_READ_SEARCH (the layers are root's) and CAP_SYS_ADMIN (the upper
# layer is on tmpfs without user xattrs): 0x200004.
check fs_no_sigsys $(cat /tmp/msbvm/sandboxes/a/runtime.log /tmp/msbvm/sandboxes/b/runtime.log | grep -c 'forbidden system call')
check fs_caps_image "$(grep -o 'fs_capabilities="[^"]*"' /tmp/msbvm/sandboxes/a/runtime.log)"
$M stop a; $M rm a; $M stop b; $M rm b
check upper_removed $([ -e /tmp/msbvm/sandboxes/a ] && echo no || echo yes)
after=$(layers_sum)
check layers_unchanged $([ "$before" = "$after" ] && echo yes || echo "no:$before:$after")

# Volumes: read-write lands on the host, read-only refuses writes.
mkdir -p /tmp/rw /tmp/ro; echo host-file > /tmp/ro/f
$M run -v /tmp/rw:/mnt/rw -v /tmp/ro:/mnt/ro:ro -- sh -c 'echo from-guest > /mnt/rw/new; cat /mnt/ro/f'; check volumes_rc $?
check rw_landed "$(cat /tmp/rw/new)"
check rw_owner "$(stat -c %u:%g /tmp/rw/new)"
$M run -v /tmp/ro:/mnt/ro:ro -- sh -c 'echo x > /mnt/ro/y' 2>/dev/null; check ro_refused $(nz $?)
check ro_untouched $([ -e /tmp/ro/y ] && echo no || echo yes)
$M volume create data1 >/dev/null; check volume_create $?
$M run -v data1:/d -- sh -c 'echo kept > /d/f'; check named_write $?
out=$($M run -v data1:/d -- cat /d/f); check named_persists "$out"
$M volume rm data1 >/dev/null; check volume_rm $?

# tmpfs with a size limit.
$M run --tmpfs /scratch:1m -- sh -c 'dd if=/dev/zero of=/scratch/big bs=1024 count=2048' >/dev/null 2>&1; check tmpfs_limit $(nz $?)
out=$($M run --tmpfs /scratch -- sh -c 'echo t > /scratch/x && cat /scratch/x'); check tmpfs_rw "$out"

# Host directory as the root, read-write.
mkdir -p /tmp/rootdir/bin /tmp/rootdir/etc; cp /bin/busybox /tmp/rootdir/bin/busybox; ln -s busybox /tmp/rootdir/bin/sh
$M run --rootfs /tmp/rootdir -- /bin/sh -c 'echo made > /etc/made'; check rootfs_rc $?
check rootfs_write "$(cat /tmp/rootdir/etc/made)"
# What the agent sets up at boot shadows the shared root's files (bind mounts from /run): the
# guest sees the CA and its resolver, the host directory keeps its own files.
mkdir -p /tmp/rootdir/etc/ssl/certs; echo '# host bundle' > /tmp/rootdir/etc/ssl/certs/ca-certificates.crt
echo '127.0.0.1 hostfile' > /tmp/rootdir/etc/hosts
yn() {{ if "$@"; then echo y; else echo n; fi; }}
out=$($M run --rootfs /tmp/rootdir --tls-intercept example.test -- /bin/sh -c '
  b=/etc/ssl/certs/ca-certificates.crt
  for t in "grep -q BEGIN.CERTIFICATE $b" "grep -q host.bundle $b" "grep -q nameserver /etc/resolv.conf" "grep -q hostfile /etc/hosts" "test $SSL_CERT_FILE = $b"; do
    if $t; then printf y; else printf n; fi
  done')
check rootfs_shadow_guest "$out"
check rootfs_host_bundle "$(cat /tmp/rootdir/etc/ssl/certs/ca-certificates.crt)"
check rootfs_host_hosts "$(cat /tmp/rootdir/etc/hosts)"
check rootfs_host_resolv_empty $(yn test ! -s /tmp/rootdir/etc/resolv.conf)
check rootfs_host_no_anchor $(yn test ! -e /tmp/rootdir/run/msbvm)
echo "CHECK done yes"
"#,
        prelude = prelude(),
    )
}

/// A tar whose one entry climbs out of the destination (`../../evil`).
fn hostile_tar() -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    let name = b"../../evil";
    header.as_gnu_mut().expect("gnu header").name[..name.len()].copy_from_slice(name);
    header.set_size(2);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    let mut data = b"x\n".to_vec();
    data.resize(512, 0);
    out.extend_from_slice(&data);
    out.extend_from_slice(&[0; 1024]);
    out
}

#[test]
fn images_volumes_and_files_end_to_end() {
    if !l1_ready() {
        return;
    }
    if !registry::available() {
        eprintln!("skipped: docker-registry not installed (apt-get install docker-registry)");
        return;
    }
    let storage = tempfile::tempdir().expect("tempdir");
    registry::fill_storage(storage.path(), std::path::Path::new("/bin/busybox"))
        .expect("pushing the test image to a local registry");
    // Like any machine msbvm runs on, L1 has the system's CA certificates (the registry
    // client sets up TLS even for plain-HTTP registries).
    let mut builder = NestedVm::builder();
    let ca = std::path::Path::new(CA_BUNDLE);
    if ca.exists() {
        builder = builder.add_file(ca, CA_BUNDLE);
    }
    let vm = with_msbvm(builder)
        .memory_mib(3072)
        .add_program(registry::REGISTRY_BIN, registry::REGISTRY_BIN)
        .add_file(storage.path().join("data"), "/registry/data")
        .add_bytes("/evil.tar", hostile_tar(), 0o644)
        .timeout(L1_TIMEOUT);
    let Some(out) = run_scenarios(vm, &script()) else {
        return;
    };
    assert_checks(
        &out.console,
        &[
            ("done", "yes"),
            ("default_image", "1"),
            ("default_owner", "0:0"),
            ("pull_rc", "0"),
            ("images_lists", "1"),
            ("image_os_release", "1"),
            ("image_default_cmd", "hello from a layer"),
            ("image_env_cwd", "yes /srv"),
            ("whiteout_hides", "failed"),
            ("layer_meta", "1000:640"),
            ("a_rc", "0"),
            ("b_rc", "0"),
            ("a_write", "0"),
            ("b_isolated", "failed"),
            ("b_keeps_file", "hello from a layer"),
            ("a_reads_own", "A"),
            ("small_files", "3000 2999"),
            ("small_files_removed", "0"),
            ("cp_in_rc", "0"),
            ("cp_out_rc", "0"),
            ("cp_same", "yes"),
            ("cp_tree_rc", "0"),
            ("cp_tree_link", "sub/a a"),
            ("cp_tree_out", "a sub/a"),
            ("cp_tar_in", "a"),
            ("cp_hostile_tar", "125"),
            ("cp_hostile_nothing", "failed"),
            ("cp_missing", "125"),
            ("upper_removed", "yes"),
            ("layers_unchanged", "yes"),
            ("rw_owner", "0:0"),
            ("fs_no_sigsys", "0"),
            ("fs_caps_image", "fs_capabilities=\"0x200004\""),
            ("volumes_rc", "0"),
            ("rw_landed", "from-guest"),
            ("ro_refused", "failed"),
            ("ro_untouched", "yes"),
            ("volume_create", "0"),
            ("named_write", "0"),
            ("named_persists", "kept"),
            ("volume_rm", "0"),
            ("tmpfs_limit", "failed"),
            ("tmpfs_rw", "t"),
            ("rootfs_rc", "0"),
            ("rootfs_write", "made"),
            ("rootfs_shadow_guest", "yyyyy"),
            ("rootfs_host_bundle", "# host bundle"),
            ("rootfs_host_hosts", "127.0.0.1 hostfile"),
            ("rootfs_host_resolv_empty", "y"),
            ("rootfs_host_no_anchor", "y"),
        ],
    );
}
