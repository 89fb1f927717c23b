//! The guest CPUID in KVM's form: KVM's supported table converted to the
//! neutral [`CpuidEntry`] for the x86 normalisation (`arch::x86_64::cpuid`),
//! and back.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::arch::x86_64::cpuid::{self, CpuidEntry, HostFeatures};

fn from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        significant_index: e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

fn to_kvm(e: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        // KVM_GET_SUPPORTED_CPUID sets no other flag since stateful leaves went (Linux 5.7).
        flags: if e.significant_index {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
        ..Default::default()
    }
}

/// The CPUID table for vCPU `index` of `count`, from KVM's supported table.
pub fn for_vcpu(supported: &CpuId, index: u8, count: u8, host: HostFeatures) -> CpuId {
    let neutral: Vec<CpuidEntry> = supported.as_slice().iter().map(from_kvm).collect();
    let entries: Vec<kvm_cpuid_entry2> = cpuid::for_vcpu(&neutral, index, count, host)
        .iter()
        .map(to_kvm)
        .collect();
    // The table gained at most three entries, well within
    // KVM_MAX_CPUID_ENTRIES; on the impossible failure keep KVM's own table.
    CpuId::from_entries(&entries).unwrap_or_else(|_| supported.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_the_index_flag() {
        let e = CpuidEntry {
            function: 0xd,
            index: 2,
            significant_index: true,
            eax: 1,
            ebx: 2,
            ecx: 3,
            edx: 4,
        };
        assert_eq!(from_kvm(&to_kvm(&e)), e);
        let plain = CpuidEntry {
            significant_index: false,
            ..e
        };
        assert_eq!(to_kvm(&plain).flags, 0);
    }
}
