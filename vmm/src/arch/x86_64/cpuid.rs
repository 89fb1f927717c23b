//! The CPUID the guest sees: what the hypervisor supports (KVM's
//! KVM_GET_SUPPORTED_CPUID), with the topology made to match the VM and
//! host-only features hidden. The table is in the neutral [`CpuidEntry`] form;
//! the backend converts from and to its own.
//!
//! What KVM reports as supported is the host's view, not a machine description:
//! its topology leaves describe the host (or nothing: KVM zeroes AMD's
//! 0x8000_001E, which Linux then reads as "every CPU has APIC ID 0"), and its
//! extended-state leaf 0xD may list state components whose sub-leaves are
//! missing or that need a permission msbvm does not request. Like Firecracker's
//! CPUID normalization, every vCPU gets a table that describes the VM: one
//! package of `count` single-thread cores with APIC IDs 0..count (the IDs the
//! MP table lists), and an XSAVE description that is consistent with itself.

/// One CPUID leaf (or sub-leaf) as the guest will read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidEntry {
    /// The leaf (EAX on input).
    pub function: u32,
    /// The sub-leaf (ECX on input).
    pub index: u32,
    /// Whether `index` selects a sub-leaf (otherwise it is ignored).
    pub significant_index: bool,
    /// EAX on output.
    pub eax: u32,
    /// EBX on output.
    pub ebx: u32,
    /// ECX on output.
    pub ecx: u32,
    /// EDX on output.
    pub edx: u32,
}

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 3: MONITOR/MWAIT, which a guest must not use to idle.
const ECX_MONITOR: u32 = 1 << 3;
/// CPUID.1:ECX bit 15: perfmon and debug capability (an MSR of the host's PMU).
const ECX_PDCM: u32 = 1 << 15;
/// CPUID.1:ECX bit 27: CR4.OSXSAVE mirrored. Off at reset; KVM sets it when
/// the guest enables XSAVE.
const ECX_OSXSAVE: u32 = 1 << 27;
/// XCR0 components that need an `arch_prctl` permission for the VMM process
/// (AMX tile config and data) before KVM may give them to a guest.
const XCR0_DYNAMIC: u64 = (1 << 17) | (1 << 18);
/// XCR0 components every XSAVE machine has: x87 and SSE, in the legacy area.
const XCR0_LEGACY: u64 = 0b11;
/// Size of the legacy area plus the XSAVE header.
const XSAVE_LEGACY_SIZE: u32 = 512 + 64;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX bit 24: the local APIC timer has TSC-deadline mode. KVM
/// emulates it but leaves the bit out of its supported table; without it the
/// kernel calibrates the APIC timer against the PIT, which under nested
/// virtualization can fail and leave the guest ticking on the PIT.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Host facts that change what the guest may be told.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostFeatures {
    /// The hypervisor emulates the TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER).
    pub tsc_deadline_timer: bool,
}

fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `entry` for vCPU `index` of `count` in place. Returns false if the
/// leaf should be dropped entirely.
pub fn filter_entry(entry: &mut CpuidEntry, index: u8, count: u8, host: HostFeatures) -> bool {
    let id = index as u32;
    let n = count as u32;
    match entry.function {
        0x1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | (n << 16);
            entry.ecx = (entry.ecx | ECX_HYPERVISOR) & !(ECX_MONITOR | ECX_PDCM | ECX_OSXSAVE);
            if host.tsc_deadline_timer {
                entry.ecx |= ECX_TSC_DEADLINE;
            }
            if n > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // Deterministic cache parameters: every vCPU is a core of one
            // package; level 1 and 2 caches belong to one core (one thread),
            // level 3 is shared by all.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((n - 1) << 26);
        }
        // Thermal/power management and performance monitoring belong to the host.
        0x6 | 0xa => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xb | 0x1f => {
            // Extended topology: level 0 is SMT (one thread per core), level 1
            // the cores of the single package.
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = ceil_log2(n);
                    entry.ebx = n;
                    entry.ecx = (2 << 8) | 1;
                }
                i => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = i;
                }
            }
        }
        0x8000_0008 => {
            // AMD: number of cores in the package, minus one, and how many
            // APIC ID bits number them.
            entry.ecx = (entry.ecx & !0xf0ff) | (ceil_log2(n) << 12) | (n - 1);
        }
        0x8000_001d => {
            // AMD cache topology: as leaf 4 (bits 25:14, sharing CPUs - 1).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            entry.eax = (entry.eax & !(0xfff << 14)) | (sharing << 14);
        }
        0x8000_001e => {
            // AMD extended APIC ID. KVM reports zeros, and Linux takes EAX as
            // the CPU's initial APIC ID: every CPU would claim ID 0.
            entry.eax = id;
            entry.ebx = id; // core id; one thread per core (bits 15:8 = 0)
            entry.ecx = 0; // one node, node 0
            entry.edx = 0;
        }
        _ => {}
    }
    true
}

/// The CPUID table for vCPU `index` of `count`, from the hypervisor's
/// supported table. It gains at most three entries.
pub fn for_vcpu(
    supported: &[CpuidEntry],
    index: u8,
    count: u8,
    host: HostFeatures,
) -> Vec<CpuidEntry> {
    let mut entries = supported.to_vec();
    add_missing_topology(&mut entries);
    for entry in &mut entries {
        filter_entry(entry, index, count, host);
    }
    normalize_xsave(&mut entries);
    entries
}

/// Adds the sub-leaves 0 (SMT), 1 (core) and 2 (end) of the extended topology
/// leaf 0xB where the table has the leaf's range but not those sub-leaves (KVM
/// on AMD often has none), so that Linux reads the VM's topology from it.
fn add_missing_topology(entries: &mut Vec<CpuidEntry>) {
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    if max_basic < 0xb {
        return;
    }
    for index in 0..3 {
        if !entries
            .iter()
            .any(|e| e.function == 0xb && e.index == index)
        {
            entries.push(CpuidEntry {
                function: 0xb,
                index,
                significant_index: true,
                ..Default::default()
            });
        }
    }
}

/// Makes leaf 0xD describe only state components the guest can really use,
/// consistently: sub-leaf 0 lists user components (XCR0) that have a sub-leaf
/// with a size (plus x87/SSE), never the AMX ones that need a permission msbvm
/// does not ask for; sub-leaf 1 lists no supervisor components (IA32_XSS), so
/// XSAVES only ever saves user state; every other sub-leaf describes a listed
/// component or is zero; the maximum sizes follow from the listed components.
/// A guest kernel cross-checks all of these and disables XSAVE (or worse,
/// sizes its buffers wrongly) when they disagree.
pub fn normalize_xsave(entries: &mut [CpuidEntry]) {
    let sized = |entries: &[CpuidEntry], bit: u32| {
        entries
            .iter()
            .any(|e| e.function == 0xd && e.index == bit && e.eax != 0)
    };
    let Some(leaf0) = entries.iter().find(|e| e.function == 0xd && e.index == 0) else {
        return;
    };
    let reported = (u64::from(leaf0.edx) << 32 | u64::from(leaf0.eax)) & !XCR0_DYNAMIC;
    let user = (2..64)
        .filter(|bit| reported & (1 << bit) != 0 && sized(entries, *bit))
        .fold(reported & XCR0_LEGACY, |m, bit| m | 1 << bit);
    let max_size = entries
        .iter()
        .filter(|e| e.function == 0xd && e.index >= 2 && e.index < 64 && user & (1 << e.index) != 0)
        .map(|e| e.ebx.saturating_add(e.eax))
        .fold(XSAVE_LEGACY_SIZE, u32::max);
    for e in entries.iter_mut().filter(|e| e.function == 0xd) {
        match e.index {
            0 => {
                e.eax = user as u32;
                e.edx = (user >> 32) as u32;
                // Size for XCR0 as it is at reset (x87 only); KVM updates it
                // as the guest enables components.
                e.ebx = XSAVE_LEGACY_SIZE;
                e.ecx = max_size;
            }
            1 => {
                // Compacted size for XCR0 | IA32_XSS at reset; KVM updates it.
                e.ebx = XSAVE_LEGACY_SIZE;
                e.ecx = 0;
                e.edx = 0;
            }
            i if i < 64 && user & (1 << i) != 0 => {
                // A user component: never flagged as supervisor (ECX bit 0).
                e.ecx &= !1;
            }
            _ => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = leaf(1, 0);
        filter_entry(
            &mut e,
            3,
            4,
            HostFeatures {
                tsc_deadline_timer: true,
            },
        );
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e.ecx & ECX_MONITOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let mut single = leaf(1, 0);
        filter_entry(&mut single, 0, 1, HostFeatures::default());
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_reports_cores() {
        let mut e = leaf(0xb, 1);
        filter_entry(&mut e, 1, 3, HostFeatures::default());
        assert_eq!((e.eax, e.ebx, e.edx), (2, 3, 1));
        let mut smt = leaf(0xb, 0);
        filter_entry(&mut smt, 1, 3, HostFeatures::default());
        assert_eq!(smt.ebx, 1);
    }

    #[test]
    fn host_only_leaves_are_hidden() {
        let mut pmu = leaf(0xa, 0);
        filter_entry(&mut pmu, 0, 1, HostFeatures::default());
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
    }

    #[test]
    fn ceil_log2_values() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(ceil_log2), [0, 1, 2, 2, 3, 8]);
    }

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            significant_index: true,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
        }
    }

    /// What KVM on an AMD host (as in the nested L1) may report: no 0xB
    /// sub-leaf 1, a zeroed 0x8000_001E, and a leaf 0xD listing AMX (needs a
    /// permission), AVX-512 opmask without a sub-leaf, and CET supervisor states.
    fn amd_like_table() -> Vec<CpuidEntry> {
        let xcr0: u32 = 0b11 | 1 << 2 | 1 << 5 | 1 << 9 | 1 << 17 | 1 << 18;
        vec![
            entry(0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(
                1,
                0,
                [
                    0x00a0_0f11,
                    0x0001_0800,
                    0xfed8_3203 | ECX_OSXSAVE | ECX_PDCM,
                    0x178b_fbff,
                ],
            ),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0xd, 0, [xcr0, 11008, 11008, 0]),
            entry(0xd, 1, [0xf, 11008, 1 << 11 | 1 << 12, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
            entry(0xd, 9, [8, 2688, 0, 0]),
            entry(0xd, 11, [16, 0, 1, 0]),
            entry(0xd, 12, [24, 0, 1, 0]),
            entry(0xd, 17, [64, 2752, 0, 0]),
            entry(0xd, 18, [8192, 2816, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_001f, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0000_7003, 0]),
            entry(0x8000_001e, 0, [0, 0, 0, 0]),
        ]
    }

    fn find(cpuid: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
        *cpuid
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    #[test]
    fn xsave_leaf_lists_only_usable_user_components_consistently() {
        let cpuid = for_vcpu(&amd_like_table(), 0, 2, HostFeatures::default());
        let leaf0 = find(&cpuid, 0xd, 0);
        // x87, SSE, AVX, PKRU; not opmask (no sub-leaf), not AMX (needs permission).
        assert_eq!((leaf0.eax, leaf0.edx), (0b11 | 1 << 2 | 1 << 9, 0));
        assert_eq!(leaf0.ebx, 576, "size for XCR0 at reset (x87)");
        assert_eq!(
            leaf0.ecx,
            2688 + 8,
            "end of the last listed component (PKRU)"
        );
        let leaf1 = find(&cpuid, 0xd, 1);
        assert_eq!((leaf1.ecx, leaf1.edx), (0, 0), "no supervisor states");
        assert_eq!(leaf1.eax, 0xf, "XSAVEOPT/XSAVEC/XGETBV1/XSAVES kept");
        for dropped in [11, 12, 17, 18] {
            let e = find(&cpuid, 0xd, dropped);
            assert_eq!(
                (e.eax, e.ebx, e.ecx, e.edx),
                (0, 0, 0, 0),
                "sub-leaf {dropped}"
            );
        }
        assert_eq!(find(&cpuid, 0xd, 2).eax, 256);
        assert_eq!(find(&cpuid, 0xd, 9).ebx, 2688);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ecx & (ECX_OSXSAVE | ECX_PDCM), 0);
    }

    #[test]
    fn amd_topology_gives_each_vcpu_its_own_apic_id() {
        for index in 0..3u8 {
            let cpuid = for_vcpu(&amd_like_table(), index, 3, HostFeatures::default());
            let id = index as u32;
            let ext = find(&cpuid, 0x8000_001e, 0);
            assert_eq!(
                (ext.eax, ext.ebx & 0xff, (ext.ebx >> 8) & 0xff),
                (id, id, 0)
            );
            assert_eq!(find(&cpuid, 1, 0).ebx >> 24, id);
            let smt = find(&cpuid, 0xb, 0);
            let core = find(&cpuid, 0xb, 1);
            let end = find(&cpuid, 0xb, 2);
            assert_eq!((smt.ebx, (smt.ecx >> 8) & 0xff, smt.edx), (1, 1, id));
            assert_eq!(
                (core.eax, core.ebx, (core.ecx >> 8) & 0xff, core.edx),
                (2, 3, 2, id)
            );
            assert_eq!((end.ecx >> 8) & 0xff, 0, "level type 0 ends the list");
            let sizes = find(&cpuid, 0x8000_0008, 0);
            assert_eq!((sizes.ecx & 0xff, (sizes.ecx >> 12) & 0xf), (2, 2));
        }
    }

    #[test]
    fn cache_leaves_share_only_the_last_level() {
        // Leaf 4 sub-leaf for an L1 data cache and an L3, both claiming 64 sharers.
        let mut l1 = leaf(4, 0);
        l1.eax = 1 << 5 | 1 | 63 << 14;
        let mut l3 = leaf(4, 3);
        l3.eax = 3 << 5 | 3 | 63 << 14;
        filter_entry(&mut l1, 0, 4, HostFeatures::default());
        filter_entry(&mut l3, 0, 4, HostFeatures::default());
        assert_eq!(((l1.eax >> 14) & 0xfff, l1.eax >> 26), (0, 3));
        assert_eq!(((l3.eax >> 14) & 0xfff, l3.eax >> 26), (3, 3));
        let mut amd_l3 = leaf(0x8000_001d, 3);
        amd_l3.eax = 3 << 5 | 3 | 63 << 14;
        filter_entry(&mut amd_l3, 1, 2, HostFeatures::default());
        assert_eq!((amd_l3.eax >> 14) & 0xfff, 1);
    }
}
