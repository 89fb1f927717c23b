//! How a VM ended.

use std::fmt;

/// The way a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked to power off through msbvm's platform port, with an exit code.
    PowerOff {
        /// The code the guest wrote (0 means success).
        code: u32,
    },
    /// The guest restarted itself (i8042 reset line). msbvm does not reboot guests.
    Reboot,
    /// The guest kernel panicked (and restarted itself, flagged as a panic).
    Panic,
    /// Every vCPU halted with interrupts disabled: the guest stopped for good
    /// without a power-off method (for example `poweroff` on a kernel without
    /// ACPI when no msbvm-aware init is running).
    Halted,
    /// The host asked the VM to stop (its [`crate::config::StopHandle`]).
    Stopped,
    /// A vCPU hit a condition the hypervisor could not handle.
    Fault(VcpuFault),
}

impl VmExit {
    /// A short word for the exit, used in machine-readable reports.
    pub fn reason(&self) -> &'static str {
        match self {
            VmExit::PowerOff { .. } => "poweroff",
            VmExit::Reboot => "reboot",
            VmExit::Panic => "panic",
            VmExit::Halted => "halted",
            VmExit::Stopped => "stopped",
            VmExit::Fault(_) => "fault",
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff { code: 0 } => write!(f, "the guest powered off"),
            VmExit::PowerOff { code } => write!(f, "the guest powered off with code {code}"),
            VmExit::Reboot => write!(f, "the guest rebooted (msbvm stops a guest that reboots)"),
            VmExit::Panic => write!(f, "the guest kernel panicked (see the console output above)"),
            VmExit::Halted => write!(
                f,
                "the guest halted all vCPUs with interrupts off (a poweroff without a power-off method)"
            ),
            VmExit::Stopped => write!(f, "the VM was stopped by the host"),
            VmExit::Fault(fault) => write!(f, "{fault}"),
        }
    }
}

/// What kind of failure stopped a vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// KVM_EXIT_INTERNAL_ERROR with suberror 1: KVM's instruction emulator
    /// could not handle the instruction at RIP.
    EmulationFailure,
    /// KVM_EXIT_INTERNAL_ERROR with another suberror.
    InternalError {
        /// The KVM_INTERNAL_ERROR_* suberror.
        suberror: u32,
        /// The extra words KVM supplied.
        data: Vec<u64>,
    },
    /// KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest.
    FailEntry {
        /// The hardware's entry failure reason.
        reason: u64,
    },
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// An exit msbvm does not handle.
    Unexpected(String),
    /// A host-side error while running the vCPU.
    Host(String),
}

/// A vCPU failure with the state needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuFault {
    /// Index of the vCPU that failed.
    pub vcpu: u8,
    /// What went wrong.
    pub kind: FaultKind,
    /// The guest instruction pointer at the failure (0 if it could not be read).
    pub rip: u64,
    /// Up to 15 bytes of guest code at RIP (empty if they could not be read).
    pub insn_bytes: Vec<u8>,
    /// The vCPU's control state at the failure, if it could be read.
    pub regs: Option<FaultRegs>,
}

/// The registers that say where a vCPU was and in what mode: the
/// architecture's own (see [`crate::arch`]).
pub use crate::arch::FaultRegs;

impl FaultKind {
    /// The KVM exit name, as in the KVM API documentation.
    pub fn exit_name(&self) -> &'static str {
        match self {
            FaultKind::EmulationFailure | FaultKind::InternalError { .. } => {
                "KVM_EXIT_INTERNAL_ERROR"
            }
            FaultKind::FailEntry { .. } => "KVM_EXIT_FAIL_ENTRY",
            FaultKind::TripleFault => "KVM_EXIT_SHUTDOWN",
            FaultKind::Unexpected(_) => "unexpected exit",
            FaultKind::Host(_) => "host error",
        }
    }
}

impl fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {} stopped: {} (", self.vcpu, self.kind.exit_name())?;
        match &self.kind {
            FaultKind::EmulationFailure => write!(
                f,
                "emulation failure: the hypervisor cannot emulate this instruction"
            )?,
            FaultKind::InternalError { suberror, data } => {
                write!(f, "internal error, suberror {suberror}, data {data:x?}")?
            }
            FaultKind::FailEntry { reason } => {
                write!(f, "VM entry failed, hardware reason {reason:#x}")?
            }
            FaultKind::TripleFault => write!(f, "triple fault")?,
            FaultKind::Unexpected(what) => write!(f, "{what}")?,
            FaultKind::Host(what) => write!(f, "{what}")?,
        }
        write!(f, ") ")?;
        Position {
            ip: self.rip,
            code: &self.insn_bytes,
            regs: self.regs.as_ref(),
        }
        .fmt(f)
    }
}

/// Where a vCPU was, in the words both fault reports and described stops use:
/// "at RIP 0x…, instruction bytes 0f 0b; CR0 …" (the architecture's names).
pub(crate) struct Position<'a> {
    /// The instruction pointer.
    pub ip: u64,
    /// The code bytes there (empty when they could not be read).
    pub code: &'a [u8],
    /// The control registers, when they could be read.
    pub regs: Option<&'a FaultRegs>,
}

impl fmt::Display for Position<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {} {:#x}", crate::arch::IP_NAME, self.ip)?;
        if self.code.is_empty() {
            write!(f, ", instruction bytes unavailable")?;
        } else {
            write!(f, ", instruction bytes")?;
            for b in self.code {
                write!(f, " {b:02x}")?;
            }
        }
        match self.regs {
            Some(r) => write!(f, "; {r}"),
            None => write!(f, "; registers unavailable"),
        }
    }
}

// The expected messages name x86 registers.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// A fault of vCPU 0 with `regs` (and RIP taken from them), no code bytes.
    fn fault_at(kind: FaultKind, regs: FaultRegs) -> VcpuFault {
        VcpuFault {
            vcpu: 0,
            kind,
            rip: regs.rip,
            insn_bytes: Vec::new(),
            regs: Some(regs),
        }
    }

    #[test]
    fn fault_message_names_exit_vcpu_rip_and_bytes() {
        let mut fault = fault_at(
            FaultKind::EmulationFailure,
            FaultRegs {
                rip: 0x10_0010,
                rsp: 0x8ff0,
                cr0: 0x8000_0011,
                efer: 0x500,
                ..Default::default()
            },
        );
        fault.vcpu = 1;
        fault.insn_bytes = vec![0x66, 0x0f, 0x74, 0xc0];
        let text = fault.to_string();
        assert!(text.contains("vCPU 1"), "{text}");
        assert!(text.contains("KVM_EXIT_INTERNAL_ERROR"), "{text}");
        assert!(text.contains("0x100010"), "{text}");
        assert!(text.contains("66 0f 74 c0"), "{text}");
        assert!(text.contains("RSP 0x8ff0"), "{text}");
        assert!(text.contains("CR0 0x80000011"), "{text}");
        assert!(text.contains("EFER 0x500"), "{text}");
        assert!(!text.contains("power-on state"), "{text}");
    }

    #[test]
    fn registers_reset_by_the_hypervisor_are_called_so() {
        let fault = fault_at(
            FaultKind::TripleFault,
            FaultRegs {
                rip: 0xfff0,
                cs_base: 0xffff_0000,
                cr0: 0x6000_0010,
                ..Default::default()
            },
        );
        let text = fault.to_string();
        assert!(text.contains("KVM_EXIT_SHUTDOWN"), "{text}");
        assert!(text.contains("power-on state"), "{text}");
    }

    #[test]
    fn reasons_are_stable_words() {
        assert_eq!(VmExit::PowerOff { code: 0 }.reason(), "poweroff");
        assert_eq!(VmExit::Panic.reason(), "panic");
        assert_eq!(VmExit::Halted.reason(), "halted");
    }
}
