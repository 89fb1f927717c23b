//! The CPUID the guest sees: what KVM supports, with the topology made to match
//! the VM and host-only features hidden.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 3: MONITOR/MWAIT, which a guest must not use to idle.
const ECX_MONITOR: u32 = 1 << 3;
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
    /// KVM_CAP_TSC_DEADLINE_TIMER.
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
pub fn filter_entry(
    entry: &mut kvm_cpuid_entry2,
    index: u8,
    count: u8,
    host: HostFeatures,
) -> bool {
    let id = index as u32;
    let n = count as u32;
    match entry.function {
        0x1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (id << 24) | (n << 16);
            entry.ecx = (entry.ecx | ECX_HYPERVISOR) & !ECX_MONITOR;
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
            // package, and no cache is shared between "threads".
            entry.eax = (entry.eax & 0x3fff) | ((n - 1) << 26);
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
            // AMD: number of cores in the package, minus one.
            entry.ecx = (entry.ecx & !0xff) | (n - 1);
        }
        _ => {}
    }
    true
}

/// The CPUID table for vCPU `index` of `count`, from KVM's supported table.
pub fn for_vcpu(supported: &CpuId, index: u8, count: u8, host: HostFeatures) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        filter_entry(entry, index, count, host);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
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
}
