//! A KVM VM's and vCPU's state, saved for a snapshot and loaded into a fresh
//! VM to restore it.
//!
//! The state is KVM's own structures (serialized byte for byte through
//! kvm-bindings' serde support) inside msbvm structs encoded with postcard;
//! the snapshot format version covers both. What is saved, and the order it
//! is loaded back in, follows what KVM documents and what Firecracker and
//! cloud-hypervisor learned: the CPUID first (it decides what the rest may
//! contain), the MP state, the registers, the special registers before the
//! local APIC (the APIC base lives in them), the MSRs after the APIC (the TSC
//! deadline is only meaningful once the timer mode is set), and the pending
//! events last.
//!
//! Before saving, a vCPU that left `KVM_RUN` for a device access must finish
//! that access inside KVM (an MMIO read's value is written to the register on
//! the next `KVM_RUN`): [`save_vcpu`] runs it once with `immediate_exit` set,
//! which completes the access and returns at once.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::{failed, Error};
use crate::hypervisor;

/// `MSR_IA32_TSC`.
const MSR_TSC: u32 = 0x10;
/// `MSR_IA32_TSC_DEADLINE`.
const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The size of `struct kvm_xsave`; a host whose guest XSAVE area is larger
/// (AMX permitted) needs KVM_GET_XSAVE2, which msbvm does not use yet.
const XSAVE_LEGACY_BYTES: i32 = 4096;

/// The CPUID leaves whose feature bits must all be present on the restoring
/// host: (leaf, sub-leaf, which registers).
const FEATURE_LEAVES: &[(u32, u32, &str)] = &[
    (0x1, 0, "ecx edx"),
    (0x7, 0, "ebx ecx edx"),
    (0x7, 1, "eax"),
    (0xd, 1, "eax"),
    (0x8000_0001, 0, "ecx edx"),
];

/// One vCPU's saved state.
#[derive(Serialize, Deserialize)]
struct VcpuState {
    cpuid: Vec<kvm_cpuid_entry2>,
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<(u32, u64)>,
    events: kvm_vcpu_events,
    tsc_khz: Option<u32>,
}

/// The VM-wide state: the in-kernel interrupt controllers, the PIT and the clock.
#[derive(Serialize, Deserialize)]
struct VmState {
    pic_master: kvm_irqchip,
    pic_slave: kvm_irqchip,
    ioapic: kvm_irqchip,
    pit: Option<kvm_pit_state2>,
    clock: kvm_clock_data,
}

/// A state blob that does not decode: a corrupt or foreign snapshot.
#[derive(Debug, thiserror::Error)]
#[error("the saved {what} state does not decode: {source}")]
struct Undecodable {
    what: &'static str,
    source: postcard::Error,
}

/// The restoring host lacks something the saved guest uses.
#[derive(Debug, thiserror::Error)]
pub enum Incompatible {
    /// A CPU feature the guest was given is missing here.
    #[error("the snapshot's guest CPU uses features this host's KVM does not offer (CPUID leaf {leaf:#x}.{subleaf} {register} bits {missing:#010x}); restore it on a host with the same CPU model")]
    CpuFeatures {
        /// Leaf.
        leaf: u32,
        /// Sub-leaf.
        subleaf: u32,
        /// Which output register.
        register: &'static str,
        /// The missing bits.
        missing: u32,
    },
    /// The CPU vendor differs.
    #[error("the snapshot was taken on a {saved} CPU; this host's is {here}")]
    Vendor {
        /// The vendor in the snapshot.
        saved: String,
        /// This host's vendor.
        here: String,
    },
    /// This host's XSAVE area does not fit the state msbvm saves.
    #[error("this host gives guests an XSAVE area of {0} bytes (AMX); msbvm snapshots hold 4096")]
    XsaveSize(i32),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, hypervisor::Error> {
    postcard::to_allocvec(value).map_err(|e| hypervisor::Error::Failed(Box::new(e)))
}

fn decode<'a, T: Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, hypervisor::Error> {
    postcard::from_bytes(bytes)
        .map_err(|source| hypervisor::Error::Failed(Box::new(Undecodable { what, source })))
}

fn incompatible(e: Incompatible) -> hypervisor::Error {
    hypervisor::Error::Failed(Box::new(e))
}

/// The size of the XSAVE area KVM gives this VM's guests.
pub(super) fn xsave_size(vm: &VmFd) -> i32 {
    vm.check_extension_int(Cap::Xsave2)
}

fn checked_xsave_size(size: i32) -> Result<(), hypervisor::Error> {
    if size > XSAVE_LEGACY_BYTES {
        return Err(incompatible(Incompatible::XsaveSize(size)));
    }
    Ok(())
}

/// Saves the interrupt controllers, the PIT (when KVM emulates one) and the clock.
pub(super) fn save_vm(vm: &VmFd, has_pit2: bool) -> Result<Vec<u8>, hypervisor::Error> {
    let chip = |id| -> Result<kvm_irqchip, hypervisor::Error> {
        let mut chip = kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)
            .map_err(failed("KVM_GET_IRQCHIP"))?;
        Ok(chip)
    };
    let state = VmState {
        pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        pit: if has_pit2 {
            Some(vm.get_pit2().map_err(failed("KVM_GET_PIT2"))?)
        } else {
            None
        },
        clock: vm.get_clock().map_err(failed("KVM_GET_CLOCK"))?,
    };
    encode(&state)
}

/// Loads what [`save_vm`] saved into a VM whose irqchip (and PIT) exist.
pub(super) fn restore_vm(vm: &VmFd, has_pit2: bool, bytes: &[u8]) -> Result<(), hypervisor::Error> {
    let state: VmState = decode("VM", bytes)?;
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip).map_err(failed("KVM_SET_IRQCHIP"))?;
    }
    match (&state.pit, has_pit2) {
        (Some(pit), true) => vm.set_pit2(pit).map_err(failed("KVM_SET_PIT2"))?,
        (Some(_), false) => {
            return Err(failed("KVM_SET_PIT2")(kvm_ioctls::Error::new(
                libc::ENOTSUP,
            )))
        }
        (None, _) => {}
    }
    // The guest's clock continues from the instant of the snapshot (its wall
    // clock is corrected from inside, by the agent). No flags: with
    // KVM_CLOCK_REALTIME KVM would add the real time since `realtime` (so a
    // zero there jumps the guest clock by the age of the epoch), and
    // KVM_CLOCK_TSC_STABLE is refused.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        flags: 0,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(failed("KVM_SET_CLOCK"))
}

/// The MSRs of `wanted` that `vcpu` lets us read, with their values. KVM's
/// list names MSRs this CPU model may lack; KVM_GET_MSRS stops at the first
/// it refuses, which is then left out.
fn readable_msrs(vcpu: &VcpuFd, wanted: &[u32]) -> Result<Vec<(u32, u64)>, hypervisor::Error> {
    let mut indices: Vec<u32> = wanted.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| hypervisor::Error::Failed(format!("MSR list: {e:?}").into()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(failed("KVM_GET_MSRS"))?;
        if read == indices.len() {
            return Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect());
        }
        indices.remove(read);
    }
}

/// The vendor string of a CPUID table (leaf 0).
fn vendor(entries: &[kvm_cpuid_entry2]) -> String {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return "unknown".into();
    };
    let bytes: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks that every feature bit the saved guest CPUID has is one this host
/// gives its guests (`supported`: the table of a fresh vCPU here).
fn check_cpuid(saved: &[kvm_cpuid_entry2], supported: &CpuId) -> Result<(), Incompatible> {
    let supported = supported.as_slice();
    let (saved_vendor, here) = (vendor(saved), vendor(supported));
    if saved_vendor != here {
        return Err(Incompatible::Vendor {
            saved: saved_vendor,
            here,
        });
    }
    let find = |table: &[kvm_cpuid_entry2], leaf: u32, sub: u32| {
        table
            .iter()
            .find(|e| e.function == leaf && e.index == sub)
            .copied()
            .unwrap_or_default()
    };
    for &(leaf, subleaf, registers) in FEATURE_LEAVES {
        let (s, h) = (find(saved, leaf, subleaf), find(supported, leaf, subleaf));
        for register in registers.split(' ') {
            let (saved_bits, host_bits) = match register {
                "eax" => (s.eax, h.eax),
                "ebx" => (s.ebx, h.ebx),
                "ecx" => (s.ecx, h.ecx),
                _ => (s.edx, h.edx),
            };
            // Not host features: the bits msbvm sets whatever the host
            // says (hypervisor, TSC deadline, HTT) and the ones KVM mirrors
            // from the guest's own control registers (OSXSAVE from
            // CR4.OSXSAVE, OSPKE from CR4.PKE), which a fresh vCPU lacks.
            let own = match (leaf, register) {
                (1, "ecx") => (1 << 31) | (1 << 24) | (1 << 27),
                (1, "edx") => 1 << 28,
                (7, "ecx") => 1 << 4,
                _ => 0,
            };
            let missing = saved_bits & !host_bits & !own;
            if missing != 0 {
                return Err(Incompatible::CpuFeatures {
                    leaf,
                    subleaf,
                    register,
                    missing,
                });
            }
        }
    }
    Ok(())
}

/// Saves one vCPU, which must be out of `KVM_RUN` on the calling thread.
pub(super) fn save_vcpu(
    vcpu: &mut VcpuFd,
    xsave_size: i32,
    msr_list: &[u32],
) -> Result<Vec<u8>, hypervisor::Error> {
    checked_xsave_size(xsave_size)?;
    // Finish a device access KVM has not yet written back (see the module doc).
    vcpu.set_kvm_immediate_exit(1);
    let completed = vcpu.run().map(|_| ()).map_err(|e| e.errno());
    vcpu.set_kvm_immediate_exit(0);
    if let Err(errno) = completed {
        if errno != libc::EINTR {
            return Err(failed("KVM_RUN (completing a pending access)")(
                kvm_ioctls::Error::new(errno),
            ));
        }
    }
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(failed("KVM_GET_CPUID2"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let state = VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        mp_state: vcpu.get_mp_state().map_err(failed("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(failed("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(failed("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(failed("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(failed("KVM_GET_XCRS"))?,
        debugregs: vcpu.get_debug_regs().map_err(failed("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(failed("KVM_GET_LAPIC"))?,
        msrs: readable_msrs(vcpu, msr_list)?,
        events: vcpu
            .get_vcpu_events()
            .map_err(failed("KVM_GET_VCPU_EVENTS"))?,
        tsc_khz,
    };
    encode(&state)
}

/// Loads what [`save_vcpu`] saved into a vCPU that has not run yet.
pub(super) fn restore_vcpu(
    vcpu: &VcpuFd,
    xsave_size: i32,
    bytes: &[u8],
) -> Result<(), hypervisor::Error> {
    let state: VcpuState = decode("vCPU", bytes)?;
    // What msbvm gives a new vCPU on this host is what it can run; the
    // hypervisor's "supported" table is not (some KVMs fill features in
    // when the table is set).
    let here = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(failed("KVM_GET_CPUID2"))?;
    check_cpuid(&state.cpuid, &here).map_err(incompatible)?;
    checked_xsave_size(xsave_size)?;
    let cpuid = CpuId::from_entries(&state.cpuid)
        .map_err(|e| hypervisor::Error::Failed(format!("saved CPUID: {e:?}").into()))?;
    vcpu.set_cpuid2(&cpuid).map_err(failed("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            // Without TSC scaling the guest's clock runs at this host's rate;
            // kvmclock keeps its time right, only raw TSC readers notice.
            if let Err(e) = vcpu.set_tsc_khz(khz) {
                tracing::warn!("cannot scale the guest TSC to the snapshot's {khz} kHz: {e}");
            }
        }
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(failed("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(failed("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(failed("KVM_SET_SREGS"))?;
    // SAFETY: `checked_xsave_size` made sure this VM's XSAVE area is at most
    // the 4096 bytes of `struct kvm_xsave`, so KVM reads only within `xsave`.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(failed("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(failed("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(failed("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(failed("KVM_SET_LAPIC"))?;
    set_msrs(vcpu, &state.msrs)?;
    vcpu.set_vcpu_events(&state.events)
        .map_err(failed("KVM_SET_VCPU_EVENTS"))
}

/// Writes the saved MSRs, the TSC before the TSC deadline. A deadline of 0
/// means "disarmed or already fired"; KVM reports 0 for a deadline that fired
/// while saving, and a guest whose timer never fires again stops ticking, so
/// it is set to the TSC value, which fires at once (as Firecracker does).
fn set_msrs(vcpu: &VcpuFd, saved: &[(u32, u64)]) -> Result<(), hypervisor::Error> {
    let tsc = saved.iter().find(|(i, _)| *i == MSR_TSC).map(|(_, v)| *v);
    let mut entries: Vec<kvm_msr_entry> = saved
        .iter()
        .filter(|(index, _)| *index != MSR_TSC_DEADLINE)
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    if let Some(&(index, data)) = saved.iter().find(|(i, _)| *i == MSR_TSC_DEADLINE) {
        let data = if data == 0 { tsc.unwrap_or(0) } else { data };
        entries.push(kvm_msr_entry {
            index,
            data,
            ..Default::default()
        });
    }
    let mut refused = Vec::new();
    let mut rest = entries.as_slice();
    while !rest.is_empty() {
        let msrs = Msrs::from_entries(rest)
            .map_err(|e| hypervisor::Error::Failed(format!("MSR list: {e:?}").into()))?;
        let written = vcpu.set_msrs(&msrs).map_err(failed("KVM_SET_MSRS"))?;
        if written < rest.len() {
            refused.push(rest[written].index);
            rest = &rest[written + 1..];
        } else {
            break;
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            "KVM refused {} saved MSRs on restore: {:x?}",
            refused.len(),
            refused
        );
    }
    Ok(())
}

/// The MSRs worth saving on this host: every one KVM lists.
pub(super) fn msr_list(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, Error> {
    kvm.get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(|source| Error::Ioctl {
            what: "KVM_GET_MSR_INDEX_LIST",
            source,
        })
}

/// "vendor family F model M", for snapshot headers and error messages.
pub(super) fn describe_cpu(supported: &CpuId) -> String {
    let entries = supported.as_slice();
    let leaf1 = entries
        .iter()
        .find(|e| e.function == 1)
        .copied()
        .unwrap_or_default();
    let base_family = (leaf1.eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((leaf1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = ((leaf1.eax >> 4) & 0xf) | (((leaf1.eax >> 16) & 0xf) << 4);
    format!("{} family {family} model {model}", vendor(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn intel(mut entries: Vec<kvm_cpuid_entry2>) -> Vec<kvm_cpuid_entry2> {
        // "GenuineIntel" in ebx, edx, ecx.
        entries.push(kvm_cpuid_entry2 {
            function: 0,
            ebx: u32::from_le_bytes(*b"Genu"),
            edx: u32::from_le_bytes(*b"ineI"),
            ecx: u32::from_le_bytes(*b"ntel"),
            ..Default::default()
        });
        entries
    }

    #[test]
    fn a_missing_feature_bit_is_named() {
        let host = CpuId::from_entries(&intel(vec![entry(1, 0, 0b0110, 0)])).unwrap();
        let same = intel(vec![entry(1, 0, 0b0110, 0)]);
        assert!(check_cpuid(&same, &host).is_ok());
        // msbvm's own bits (hypervisor, TSC deadline) and the ones mirrored
        // from the guest's CR4 (OSXSAVE, OSPKE) are not asked of the host.
        let own = intel(vec![
            entry(1, 0, 0b0110 | (1 << 31) | (1 << 24) | (1 << 27), 0),
            entry(7, 0, 1 << 4, 0),
        ]);
        assert!(check_cpuid(&own, &host).is_ok());
        let more = intel(vec![entry(1, 0, 0b1110, 0)]);
        let err = check_cpuid(&more, &host).unwrap_err().to_string();
        assert!(err.contains("leaf 0x1.0 ecx bits 0x00000008"), "{err}");
    }

    #[test]
    fn another_vendor_is_refused() {
        let host = CpuId::from_entries(&intel(vec![])).unwrap();
        let amd = vec![kvm_cpuid_entry2 {
            function: 0,
            ebx: u32::from_le_bytes(*b"Auth"),
            edx: u32::from_le_bytes(*b"enti"),
            ecx: u32::from_le_bytes(*b"cAMD"),
            ..Default::default()
        }];
        let err = check_cpuid(&amd, &host).unwrap_err().to_string();
        assert!(err.contains("AuthenticAMD"), "{err}");
    }

    #[test]
    fn garbage_state_is_an_error_not_a_panic() {
        assert!(decode::<VcpuState>("vCPU", &[0xff; 7]).is_err());
        assert!(decode::<VmState>("VM", &[]).is_err());
    }

    #[test]
    fn cpu_description_decodes_family_and_model() {
        let mut entries = intel(vec![]);
        // Family 6, model 0x55 (extended model 5, model 5).
        entries.push(kvm_cpuid_entry2 {
            function: 1,
            eax: (5 << 16) | (6 << 8) | (5 << 4),
            ..Default::default()
        });
        let cpuid = CpuId::from_entries(&entries).unwrap();
        assert_eq!(describe_cpu(&cpuid), "GenuineIntel family 6 model 85");
    }
}
