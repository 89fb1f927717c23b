//! Loading x86 register state into a KVM vCPU: the entry state
//! ([`crate::arch::x86_64::regs::EntryState`]), the boot MSRs, the FPU reset
//! values and the in-kernel local APIC's legacy interrupt pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::arch::x86_64::gdt::Segment;
use crate::arch::x86_64::regs::{EntryState, BOOT_MSRS, FPU_CONTROL_WORD, MXCSR_RESET};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn kvm_segment(s: Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present as u8,
        dpl: s.dpl,
        db: s.db as u8,
        s: s.s as u8,
        l: s.l as u8,
        g: s.g as u8,
        avl: 0,
        unusable: (!s.present) as u8,
        padding: 0,
    }
}

/// Loads `state` into the boot vCPU (the other special registers keep their
/// reset values).
pub fn set_entry_state(vcpu: &VcpuFd, state: &EntryState) -> Result<(), kvm_ioctls::Error> {
    let mut sregs: kvm_sregs = vcpu.get_sregs()?;
    (sregs.gdt.base, sregs.gdt.limit) = state.gdt;
    (sregs.idt.base, sregs.idt.limit) = state.idt;
    let data = kvm_segment(state.data);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment(state.tr);
    sregs.cs = kvm_segment(state.cs);
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
    let regs = kvm_regs {
        rip: state.rip,
        rsp: state.rsp,
        rbp: state.rbp,
        rbx: state.rbx,
        rsi: state.rsi,
        rflags: state.rflags,
        ..Default::default()
    };
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)
}

/// Sets the MSRs every vCPU starts with. Returns how many KVM accepted; the
/// list is small and every entry is architectural, so a short count means the
/// host's KVM refused one, which is logged by the caller.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(usize, usize), kvm_ioctls::Error> {
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("the boot MSR list is far below KVM's limit");
    Ok((vcpu.set_msrs(&msrs)?, entries.len()))
}

/// Sets the x87/SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_RESET,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
}

fn set_apic_delivery_mode(regs: &mut [std::os::raw::c_char], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Wires the local APIC's LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI,
/// as PC firmware does; the MP table tells the kernel the same.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_apic_delivery_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::gdt;

    #[test]
    fn delivery_mode_is_replaced_in_place() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0xff_u8 as std::os::raw::c_char;
        regs[APIC_LVT0 + 1] = 0x07;
        set_apic_delivery_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0xff);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x04);
    }

    #[test]
    fn segments_convert_with_flags() {
        let cs = kvm_segment(gdt::segment(gdt::CODE64_SELECTOR));
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        let tr = kvm_segment(gdt::segment(gdt::TSS_SELECTOR));
        assert_eq!((tr.s, tr.type_), (0, 0xb));
    }
}
