//! End-to-end filesystem hardening, through the real guest kernel inside L1:
//!
//! - a root guest's `chmod 4755`/`chmod 2755` of a copied busybox and `mknod b`/`mknod c`
//!   on a `-v` volume and on a `--rootfs` host directory: the guest sees the modes and
//!   device types it asked for, the L1 host sees neither the bits nor a device;
//! - `--disk 64M`: `df /` shows the limit, `dd` past it fails with "No space left", a
//!   flood of empty files ends with ENOSPC, exec and reads still work afterwards and the
//!   sandbox's directory on the host stays below the limit.

use std::time::Duration;

use msbvm_tests::e2e::{assert_checks, msbvm_l1, prelude, run_scenarios};

const L1_TIMEOUT: Duration = Duration::from_secs(1500);

/// The guest part of the set-id/device scenario, run in directory `$D` (busybox applets
/// named explicitly: a `--rootfs` directory has no applet links).
const GUEST_SETID: &str = "B=busybox; $B cp /bin/busybox $D/su4 && $B chmod 4755 $D/su4 && \
     $B cp /bin/busybox $D/sg2 && $B chmod 2755 $D/sg2 && $B mknod -m 640 $D/blk b 8 0 && \
     $B mknod -m 640 $D/chr c 1 3 && $B stat -c \"%a:%F\" $D/su4 $D/sg2 $D/blk $D/chr";

fn script() -> String {
    format!(
        r#"{prelude}
# What the L1 host sees in directory $1: set-id files and device nodes (none expected).
host_view() {{
  n=0
  for f in su4 sg2 blk chr; do
    [ -u "$1/$f" ] && n=$((n+1)); [ -g "$1/$f" ] && n=$((n+1))
    [ -b "$1/$f" ] && n=$((n+1)); [ -c "$1/$f" ] && n=$((n+1))
  done
  echo "$n $(stat -c %a $1/su4 $1/sg2 | tr '\n' ' ')"
}}
GUEST='{guest}'

# A -v volume.
mkdir -p /tmp/hv
out=$($M run -v /tmp/hv:/mnt/v -- sh -c "D=/mnt/v; $GUEST"); check vol_guest "$(echo $out)"
check vol_host "$(host_view /tmp/hv)"
out=$($M run -v /tmp/hv:/mnt/v -- sh -c 'busybox stat -c %a:%t:%T /mnt/v/blk /mnt/v/chr'); check vol_guest_again "$(echo $out)"

# A --rootfs host directory.
mkdir -p /tmp/hr/bin /tmp/hr/etc /tmp/hr/data; cp /bin/busybox /tmp/hr/bin/busybox; ln -s busybox /tmp/hr/bin/sh
out=$($M run --rootfs /tmp/hr -- /bin/sh -c "D=/data; $GUEST"); check rootfs_guest "$(echo $out)"
check rootfs_host "$(host_view /tmp/hr/data)"

# --disk 64M on the image root's writable layer.
$M run -d --name dk --disk 64M; check disk_rc $?
df_col() {{ $M exec dk -- df -Pk / | tail -1 | tr -s ' ' | cut -d' ' -f$1; }}
check disk_df_total "$(df_col 2)"
$M exec dk -- dd if=/dev/zero of=/big bs=1M count=100 conv=fsync >/tmp/dd.out 2>&1; check disk_dd $(nz $?)
check disk_dd_enospc $(grep -c 'No space left' /tmp/dd.out)
used=$(df_col 3)
check disk_df_used_near_full $([ "$used" -gt 60000 ] && [ "$used" -le 65536 ] && echo yes || echo "no:$used")
# Leave about 8 MiB (2000 names at 4 KiB each) for the flood of empty files.
$M exec dk -- sh -c 'rm /big && dd if=/dev/zero of=/big bs=1M count=56 2>/dev/null'; check disk_rm $?
out=$($M exec dk -- sh -c 'mkdir /fl; i=0; while echo -n > /fl/f$i; do i=$((i+1)); done 2>/dev/null; echo $i; (echo -n > /fl/last) 2>&1')
check flood_count $([ "$(echo "$out" | head -1)" -gt 1000 ] && echo yes || echo "no:$out")
check flood_enospc $(echo "$out" | grep -c 'No space left')
out=$($M exec dk -- sh -c 'cat /etc/os-release | grep -c ^NAME=; ls /fl | wc -l' | head -1); check disk_exec_after "$out"
kb=$(du -sk /tmp/msbvm/sandboxes/dk/upper | cut -f1)
check disk_host_below $([ "$kb" -le 65536 ] && echo yes || echo "no:$kb")
$M stop dk; $M rm dk
echo "CHECK done yes"
"#,
        prelude = prelude(),
        guest = GUEST_SETID,
    )
}

#[test]
fn hostile_modes_devices_and_disk_floods_stay_in_the_guest() {
    let vm = msbvm_l1().map(|vm| vm.memory_mib(3072).timeout(L1_TIMEOUT));
    let Some(out) = vm.and_then(|vm| run_scenarios(vm, &script())) else {
        return;
    };
    let guest = "4755:regular file 2755:regular file 640:block special file \
                 640:character special file";
    assert_checks(
        &out.console,
        &[
            ("done", "yes"),
            ("vol_guest", guest),
            ("vol_host", "0 755 755"),
            ("vol_guest_again", "640:8:0 640:1:3"),
            ("rootfs_guest", guest),
            ("rootfs_host", "0 755 755"),
            ("disk_rc", "0"),
            ("disk_df_total", "65536"),
            ("disk_dd", "failed"),
            ("disk_dd_enospc", "1"),
            ("disk_df_used_near_full", "yes"),
            ("disk_rm", "0"),
            ("flood_count", "yes"),
            ("flood_enospc", "1"),
            ("disk_exec_after", "1"),
            ("disk_host_below", "yes"),
        ],
    );
}
