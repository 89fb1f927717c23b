//! PSCI 1.0 (Arm DEN 0022) over the SMC Calling Convention, as the VMM must
//! answer it under Hypervisor.framework.
//!
//! KVM implements PSCI in the kernel; Hypervisor.framework hands every HVC
//! and SMC to the VMM. A Linux guest uses PSCI to start secondary vCPUs
//! (CPU_ON), to idle and take them down (CPU_SUSPEND, CPU_OFF) and to power
//! off or reboot (SYSTEM_OFF, SYSTEM_RESET). [`handle`] is pure: it reads the
//! call's registers and the vCPUs' power states and says what x0 becomes and
//! what the VMM must do; the VMM applies the action while holding the lock
//! over the power states it passed in, so two CPU_ON calls for one vCPU
//! cannot both succeed.

use crate::regs::index_of_mpidr;

/// PSCI return codes (PSCI 1.0 §5.2.2), as the signed value in x0.
pub mod ret {
    /// The call succeeded.
    pub const SUCCESS: i64 = 0;
    /// The function is not implemented (also SMCCC's "unknown function").
    pub const NOT_SUPPORTED: i64 = -1;
    /// An argument is invalid (for example an MPIDR that names no vCPU).
    pub const INVALID_PARAMETERS: i64 = -2;
    /// The call is not allowed in the current state.
    pub const DENIED: i64 = -3;
    /// CPU_ON for a vCPU that is already on.
    pub const ALREADY_ON: i64 = -4;
    /// CPU_ON for a vCPU that another CPU_ON is already starting.
    pub const ON_PENDING: i64 = -5;
    /// The firmware failed.
    pub const INTERNAL_FAILURE: i64 = -6;
    /// The target is not present.
    pub const NOT_PRESENT: i64 = -7;
    /// The target is disabled.
    pub const DISABLED: i64 = -8;
    /// An address argument is invalid.
    pub const INVALID_ADDRESS: i64 = -9;
}

/// Function identifiers (PSCI 1.0 §5.1), in their SMC32 form; the SMC64 form
/// of a function that takes addresses or MPIDRs has bit 30 set as well.
pub mod fid {
    /// PSCI_VERSION.
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND.
    pub const CPU_SUSPEND: u32 = 0x8400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON.
    pub const CPU_ON: u32 = 0x8400_0003;
    /// AFFINITY_INFO.
    pub const AFFINITY_INFO: u32 = 0x8400_0004;
    /// MIGRATE.
    pub const MIGRATE: u32 = 0x8400_0005;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// MIGRATE_INFO_UP_CPU.
    pub const MIGRATE_INFO_UP_CPU: u32 = 0x8400_0007;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES (PSCI 1.0).
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    /// SYSTEM_RESET2 (PSCI 1.1), in both SMC32 and SMC64 forms.
    pub const SYSTEM_RESET2: u32 = 0x8400_0012;
    /// The SMC64 bit of a function identifier (SMCCC §2.5).
    pub const SMC64: u32 = 0x4000_0000;
    /// SMCCC_VERSION (SMCCC 1.1): an Arm architecture service call.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES (SMCCC 1.1).
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
}

/// The PSCI version this VMM implements: 1.0 (major in bits 31:16).
pub const VERSION_1_0: i64 = 0x0001_0000;

/// AFFINITY_INFO's answers (PSCI 1.0 §5.8.2).
pub mod affinity {
    /// At least one core of the node is on.
    pub const ON: i64 = 0;
    /// Every core of the node is off.
    pub const OFF: i64 = 1;
    /// A core of the node is being turned on.
    pub const ON_PENDING: i64 = 2;
}

/// SYSTEM_RESET2's reset types (PSCI 1.1 §5.12.1), in the low 32 bits of x1.
pub mod reset2 {
    /// SYSTEM_WARM_RESET, the one architectural type.
    pub const WARM: u32 = 0;
    /// Bit 31: a vendor-specific type (none is implemented).
    pub const VENDOR: u32 = 1 << 31;
}

/// MIGRATE_INFO_TYPE's answer: no Trusted OS that needs migrating
/// (so MIGRATE and MIGRATE_INFO_UP_CPU are not supported).
pub const MIGRATE_TYPE_NOT_PRESENT: i64 = 2;

/// Where a vCPU stands in PSCI's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// Running (or suspended, which PSCI also counts as on).
    On,
    /// Off: never started, or after CPU_OFF.
    Off,
    /// Started by CPU_ON but not yet running.
    OnPending,
}

/// What the VMM must do after the call, beyond writing x0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: resume the caller.
    None,
    /// Resume the caller once an interrupt is pending for it (CPU_SUSPEND is
    /// served as a standby state, which PSCI allows for any power state).
    WaitForInterrupt,
    /// Take the calling vCPU off until a CPU_ON names it (x0 is not written:
    /// a successful CPU_OFF does not return).
    CpuOff,
    /// Start vCPU `index` at `entry` with x0 = `context` (see
    /// [`crate::regs::cpu_on_entry`]), marking it [`PowerState::OnPending`]
    /// until it runs.
    StartCpu {
        /// The vCPU to start.
        index: u8,
        /// Its entry point (a guest physical address; the MMU is off).
        entry: u64,
        /// The value its x0 starts with.
        context: u64,
    },
    /// Power the VM off.
    SystemOff,
    /// Reset the VM (msbvm stops a guest that resets, as on x86).
    SystemReset,
    /// A warm reset (SYSTEM_RESET2's architectural SYSTEM_WARM_RESET): what Linux asks for
    /// after a panic under msbvm's `reboot=panic_w`, so the VMM reports a panic, as the KVM
    /// backend does for the same call.
    SystemWarmReset,
}

/// The result of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The value for x0 (the SMCCC result register), already widened to 64
    /// bits; `None` when x0 must not change.
    pub x0: Option<u64>,
    /// What the VMM does next.
    pub action: Action,
}

impl Outcome {
    fn ret(value: i64) -> Outcome {
        Outcome {
            // Sign-extended, so an SMC32 caller reading w0 and an SMC64 caller
            // reading x0 both see the negative code.
            x0: Some(value as u64),
            action: Action::None,
        }
    }

    fn act(value: i64, action: Action) -> Outcome {
        Outcome {
            x0: Some(value as u64),
            action,
        }
    }
}

/// Answers the call in x0..x3 made by the vCPU whose power states are
/// `cpus` (indexed by vCPU number; vCPU `n` has MPIDR
/// [`crate::regs::mpidr_for`]`(n)`).
pub fn handle(x: [u64; 4], cpus: &[PowerState]) -> Outcome {
    // SMCCC: the function identifier is w0; the upper half is ignored.
    let function = x[0] as u32;
    let smc64 = function & fid::SMC64 != 0;
    // SMC32 arguments are the low halves of x1..x3.
    let arg = |i: usize| if smc64 { x[i] } else { x[i] & 0xffff_ffff };
    match function & !fid::SMC64 {
        fid::PSCI_VERSION if !smc64 => Outcome::ret(VERSION_1_0),
        fid::CPU_SUSPEND => Outcome::act(ret::SUCCESS, Action::WaitForInterrupt),
        fid::CPU_OFF if !smc64 => Outcome {
            x0: None,
            action: Action::CpuOff,
        },
        fid::CPU_ON => {
            let Some(index) = index_of_mpidr(arg(1), cpus.len()) else {
                return Outcome::ret(ret::INVALID_PARAMETERS);
            };
            match cpus[usize::from(index)] {
                PowerState::On => Outcome::ret(ret::ALREADY_ON),
                PowerState::OnPending => Outcome::ret(ret::ON_PENDING),
                PowerState::Off => Outcome::act(
                    ret::SUCCESS,
                    Action::StartCpu {
                        index,
                        entry: arg(2),
                        context: arg(3),
                    },
                ),
            }
        }
        fid::AFFINITY_INFO => {
            // Only level 0 (one core) is meaningful with one core per cluster node.
            if arg(2) != 0 {
                return Outcome::ret(ret::INVALID_PARAMETERS);
            }
            match index_of_mpidr(arg(1), cpus.len()) {
                None => Outcome::ret(ret::INVALID_PARAMETERS),
                Some(i) => Outcome::ret(match cpus[usize::from(i)] {
                    PowerState::On => affinity::ON,
                    PowerState::Off => affinity::OFF,
                    PowerState::OnPending => affinity::ON_PENDING,
                }),
            }
        }
        fid::MIGRATE_INFO_TYPE if !smc64 => Outcome::ret(MIGRATE_TYPE_NOT_PRESENT),
        fid::SYSTEM_OFF if !smc64 => Outcome::act(ret::SUCCESS, Action::SystemOff),
        fid::SYSTEM_RESET if !smc64 => Outcome::act(ret::SUCCESS, Action::SystemReset),
        fid::PSCI_FEATURES if !smc64 => Outcome::ret(features(arg(1) as u32)),
        fid::SYSTEM_RESET2 => match arg(1) as u32 {
            reset2::WARM => Outcome::act(ret::SUCCESS, Action::SystemWarmReset),
            t if t & reset2::VENDOR != 0 => Outcome::ret(ret::NOT_SUPPORTED),
            _ => Outcome::ret(ret::INVALID_PARAMETERS),
        },
        // MIGRATE and MIGRATE_INFO_UP_CPU (no Trusted OS), CPU_FREEZE and the
        // other optional 1.0 functions, SMCCC_VERSION and SMCCC_ARCH_FEATURES
        // (so the guest assumes SMCCC 1.0 and no firmware workarounds), and
        // every unknown identifier: SMCCC's "unknown function" is -1 in x0.
        _ => Outcome::ret(ret::NOT_SUPPORTED),
    }
}

/// PSCI_FEATURES for `function`: 0 for what [`handle`] implements (for
/// CPU_SUSPEND, 0 also says "original power_state format, no OS-initiated
/// mode"), NOT_SUPPORTED otherwise.
fn features(function: u32) -> i64 {
    let supported_both = [
        fid::CPU_SUSPEND,
        fid::CPU_ON,
        fid::AFFINITY_INFO,
        fid::SYSTEM_RESET2,
    ];
    let supported_32 = [
        fid::PSCI_VERSION,
        fid::CPU_OFF,
        fid::MIGRATE_INFO_TYPE,
        fid::SYSTEM_OFF,
        fid::SYSTEM_RESET,
        fid::PSCI_FEATURES,
    ];
    if supported_32.contains(&function)
        || supported_both.contains(&function)
        || supported_both.contains(&(function & !fid::SMC64))
    {
        ret::SUCCESS
    } else {
        ret::NOT_SUPPORTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::mpidr_for;
    use PowerState::{Off, On, OnPending};

    fn call(f: u32, a: u64, b: u64, c: u64, cpus: &[PowerState]) -> Outcome {
        handle([u64::from(f), a, b, c], cpus)
    }

    fn x0(o: Outcome) -> i64 {
        o.x0.expect("x0 written") as i64
    }

    #[test]
    fn version_is_1_0() {
        assert_eq!(x0(call(fid::PSCI_VERSION, 0, 0, 0, &[On])), 0x1_0000);
        // The upper half of x0 is not part of the function identifier.
        let o = handle([0xdead_beef_8400_0000, 0, 0, 0], &[On]);
        assert_eq!(x0(o), 0x1_0000);
    }

    #[test]
    fn cpu_on_starts_an_off_vcpu_in_both_conventions() {
        let cpus = [On, Off, Off];
        for f in [fid::CPU_ON, fid::CPU_ON | fid::SMC64] {
            let o = call(f, mpidr_for(2), 0x4021_0000, 0x77, &cpus);
            assert_eq!(x0(o), ret::SUCCESS);
            assert_eq!(
                o.action,
                Action::StartCpu {
                    index: 2,
                    entry: 0x4021_0000,
                    context: 0x77
                }
            );
        }
        // The guest may pass the MPIDR without bit 31, as in the device tree.
        let o = call(fid::CPU_ON | fid::SMC64, 1, 0x1000, 0, &cpus);
        assert!(matches!(o.action, Action::StartCpu { index: 1, .. }));
    }

    #[test]
    fn cpu_on_smc32_takes_32_bit_arguments() {
        let o = call(
            fid::CPU_ON,
            0xffff_ffff_0000_0001,
            0x1_4021_0000,
            0x1_0000_0005,
            &[On, Off],
        );
        assert_eq!(
            o.action,
            Action::StartCpu {
                index: 1,
                entry: 0x4021_0000,
                context: 5
            }
        );
    }

    #[test]
    fn cpu_on_errors() {
        let cpus = [On, OnPending];
        let f = fid::CPU_ON | fid::SMC64;
        assert_eq!(x0(call(f, mpidr_for(0), 0, 0, &cpus)), ret::ALREADY_ON);
        assert_eq!(x0(call(f, mpidr_for(1), 0, 0, &cpus)), ret::ON_PENDING);
        let o = call(f, mpidr_for(2), 0, 0, &cpus);
        assert_eq!(x0(o), ret::INVALID_PARAMETERS);
        assert_eq!(o.action, Action::None);
        assert_eq!(x0(o), -2);
        assert_eq!(o.x0, Some(0xffff_ffff_ffff_fffe));
    }

    #[test]
    fn affinity_info_reports_each_state() {
        let cpus = [On, Off, OnPending];
        let f = fid::AFFINITY_INFO | fid::SMC64;
        assert_eq!(x0(call(f, mpidr_for(0), 0, 0, &cpus)), 0);
        assert_eq!(x0(call(f, mpidr_for(1), 0, 0, &cpus)), 1);
        assert_eq!(x0(call(f, mpidr_for(2), 0, 0, &cpus)), 2);
        assert_eq!(x0(call(f, mpidr_for(3), 0, 0, &cpus)), -2);
        // Levels above 0 are not supported.
        assert_eq!(x0(call(f, mpidr_for(0), 1, 0, &cpus)), -2);
    }

    #[test]
    fn suspend_off_and_system_calls_name_their_action() {
        let o = call(fid::CPU_SUSPEND | fid::SMC64, 0, 0x4000_0000, 0, &[On]);
        assert_eq!((x0(o), o.action), (0, Action::WaitForInterrupt));
        let o = call(fid::CPU_OFF, 0, 0, 0, &[On]);
        assert_eq!((o.x0, o.action), (None, Action::CpuOff));
        assert_eq!(
            call(fid::SYSTEM_OFF, 0, 0, 0, &[On]).action,
            Action::SystemOff
        );
        assert_eq!(
            call(fid::SYSTEM_RESET, 0, 0, 0, &[On]).action,
            Action::SystemReset
        );
    }

    #[test]
    fn system_reset2_serves_the_warm_reset_only() {
        for f in [fid::SYSTEM_RESET2, fid::SYSTEM_RESET2 | fid::SMC64] {
            let o = call(f, u64::from(reset2::WARM), 0, 0, &[On]);
            assert_eq!((x0(o), o.action), (0, Action::SystemWarmReset), "{f:#x}");
            let o = call(f, u64::from(reset2::VENDOR | 1), 0, 0, &[On]);
            assert_eq!((x0(o), o.action), (-1, Action::None));
            let o = call(f, 1, 0, 0, &[On]);
            assert_eq!((x0(o), o.action), (-2, Action::None));
        }
        // An SMC32 caller's upper half of x1 is ignored.
        let o = call(fid::SYSTEM_RESET2, 0xffff_ffff_0000_0000, 0, 0, &[On]);
        assert_eq!(o.action, Action::SystemWarmReset);
    }

    #[test]
    fn migration_is_not_needed() {
        assert_eq!(x0(call(fid::MIGRATE_INFO_TYPE, 0, 0, 0, &[On])), 2);
        assert_eq!(x0(call(fid::MIGRATE | fid::SMC64, 0, 0, 0, &[On])), -1);
        assert_eq!(x0(call(fid::MIGRATE_INFO_UP_CPU, 0, 0, 0, &[On])), -1);
    }

    #[test]
    fn features_lists_exactly_what_is_implemented() {
        let f = |id: u32| x0(call(fid::PSCI_FEATURES, u64::from(id), 0, 0, &[On]));
        for id in [
            fid::PSCI_VERSION,
            fid::CPU_SUSPEND,
            fid::CPU_SUSPEND | fid::SMC64,
            fid::CPU_OFF,
            fid::CPU_ON,
            fid::CPU_ON | fid::SMC64,
            fid::AFFINITY_INFO | fid::SMC64,
            fid::MIGRATE_INFO_TYPE,
            fid::SYSTEM_OFF,
            fid::SYSTEM_RESET,
            fid::SYSTEM_RESET2,
            fid::SYSTEM_RESET2 | fid::SMC64,
            fid::PSCI_FEATURES,
        ] {
            assert_eq!(f(id), 0, "{id:#x}");
        }
        for id in [
            fid::MIGRATE,
            fid::SYSTEM_OFF | fid::SMC64,
            fid::SMCCC_VERSION,
            fid::SMCCC_ARCH_FEATURES,
            0x8400_0013, // MEM_PROTECT (PSCI 1.1)
            0,
        ] {
            assert_eq!(f(id), -1, "{id:#x}");
        }
    }

    #[test]
    fn smccc_and_unknown_functions_are_not_supported() {
        for f in [
            fid::SMCCC_VERSION,
            fid::SMCCC_ARCH_FEATURES,
            0xc200_0000,
            0x8400_00ff,
            fid::PSCI_VERSION | fid::SMC64,
            fid::SYSTEM_OFF | fid::SMC64,
        ] {
            let o = call(f, 0, 0, 0, &[On]);
            assert_eq!((x0(o), o.action), (-1, Action::None), "{f:#x}");
        }
    }
}
