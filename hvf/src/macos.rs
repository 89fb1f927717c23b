//! The thin layer over the `applevisor` crate (Hypervisor.framework): the
//! VM with the framework's GICv3, vCPUs, [`VcpuOps`] and [`Framework`] over
//! them, and `msbvm_vmm::hypervisor`'s traits ([`Hvf`], [`HvfMachine`],
//! [`HvfVcpuSlot`]). Everything that is not a framework call lives in the
//! platform-neutral modules ([`crate::run`] and [`crate::cpus`] drive a run).
//!
//! NEVER RUN: this project builds on Linux only. `scripts/check-macos`
//! type-checks it for `aarch64-apple-darwin` where that target's standard
//! library is installed (no Mac or SDK needed, nothing is linked), else for
//! the host with the `typecheck-macos` feature, where the trait impls (whose
//! register types are the host architecture's) are left out. Written against
//! applevisor 1.0's documented API.
//!
//! The GIC, by the `framework-gic` feature (on by default):
//! - on: the framework's own, from `hv_gic_create`, which exists from macOS 15;
//!   the binary links that symbol strongly and does not start on macOS 11-14.
//!   The virtual timer is wired to it directly, so `VTIMER_ACTIVATED` exits are
//!   not expected.
//! - off: msbvm's GICv3 in user space ([`crate::gic`]): the VM is made without
//!   a GIC (macOS 11 and later), the guest's GIC registers and `ICC_*` system
//!   register traps are served by the exit handling, each vCPU's IRQ line is set
//!   with `hv_vcpu_set_pending_interrupt` before it runs, the timer's PPI is
//!   raised on `VTIMER_ACTIVATED` exits, and the GIC makes a vCPU whose line it
//!   raised leave the guest (`hv_vcpus_exit`) or wake from a halt.
//!
//! A framework vCPU belongs to the thread that created it, while the core
//! creates vCPUs on its main thread and moves each to its own thread: the
//! [`HvfVcpuSlot`] the core holds creates its framework vCPU on its first
//! run, on the running thread, and keeps it in that thread's local storage.

use applevisor::prelude as hv;

use crate::exit::{HvExit, VcpuOps};
use crate::regs::{self, Reg, SysReg};
use crate::run::Framework;

// The neutral register numbers must be the framework's.
const _: () = {
    assert!(hv::Reg::X0 as u32 == 0);
    assert!(hv::Reg::X30 as u32 == 30);
    assert!(hv::Reg::PC as u32 == regs::HV_REG_PC);
    assert!(hv::Reg::FPCR as u32 == regs::HV_REG_PC + 1);
    assert!(hv::Reg::FPSR as u32 == regs::HV_REG_PC + 2);
    assert!(hv::Reg::CPSR as u32 == regs::HV_REG_CPSR);
    let mut i = 0;
    while i < SYS_REGS.len() {
        assert!(SYS_REGS[i].0 as u32 == SYS_REGS[i].1.raw() as u32);
        i += 1;
    }
};

/// The system registers this layer can name, with their neutral twins.
const SYS_REGS: [(hv::SysReg, SysReg); 6] = [
    (hv::SysReg::SCTLR_EL1, SysReg::SCTLR_EL1),
    (hv::SysReg::MPIDR_EL1, SysReg::MPIDR_EL1),
    (hv::SysReg::CNTV_CTL_EL0, SysReg::CNTV_CTL_EL0),
    (hv::SysReg::CNTV_CVAL_EL0, SysReg::CNTV_CVAL_EL0),
    (hv::SysReg::SP_EL1, SysReg::SP_EL1),
    (hv::SysReg::VBAR_EL1, SysReg::VBAR_EL1),
];

/// X0..X30 in the framework's enum.
const X_REGS: [hv::Reg; 31] = [
    hv::Reg::X0,
    hv::Reg::X1,
    hv::Reg::X2,
    hv::Reg::X3,
    hv::Reg::X4,
    hv::Reg::X5,
    hv::Reg::X6,
    hv::Reg::X7,
    hv::Reg::X8,
    hv::Reg::X9,
    hv::Reg::X10,
    hv::Reg::X11,
    hv::Reg::X12,
    hv::Reg::X13,
    hv::Reg::X14,
    hv::Reg::X15,
    hv::Reg::X16,
    hv::Reg::X17,
    hv::Reg::X18,
    hv::Reg::X19,
    hv::Reg::X20,
    hv::Reg::X21,
    hv::Reg::X22,
    hv::Reg::X23,
    hv::Reg::X24,
    hv::Reg::X25,
    hv::Reg::X26,
    hv::Reg::X27,
    hv::Reg::X28,
    hv::Reg::X29,
    hv::Reg::X30,
];

/// Failures of the framework layer, naming the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `hv_vm_create` failed.
    #[error(
        "Hypervisor.framework cannot create a VM ({0}): msbvm needs an Apple Silicon Mac and the \
         com.apple.security.hypervisor entitlement (sign the binary with scripts/macos-sign)"
    )]
    CreateVm(hv::HypervisorError),
    /// Another framework call failed.
    #[error("Hypervisor.framework {what} failed: {source}")]
    Call {
        /// The call.
        what: &'static str,
        /// The framework's error.
        source: hv::HypervisorError,
    },
    /// A system register the neutral code named is not in this layer's table.
    #[error("system register {0:#06x} is not mapped to Hypervisor.framework")]
    UnmappedSysReg(u16),
    /// A vtimer exit reached the framework layer, which has no GIC to raise it in.
    #[error("the virtual timer fired into user space without a GIC there to take it")]
    NoUserspaceGic,
    /// `hv_vm_map` of the VMM's guest memory failed.
    #[error("Hypervisor.framework hv_vm_map of {size:#x} bytes at {guest:#x} failed ({code:#x})")]
    MapMemory {
        /// The guest-physical address.
        guest: u64,
        /// The region's size.
        size: usize,
        /// The framework's `hv_return_t`.
        code: i32,
    },
    /// The framework's redistributors do not fit the arm64 layout's window.
    #[error(
        "Hypervisor.framework's GIC redistributor region ({size:#x} bytes) does not fit \
         msbvm's window ({window:#x} bytes)"
    )]
    GicTooLarge {
        /// What the framework needs.
        size: usize,
        /// What the layout leaves.
        window: u64,
    },
    /// A vCPU used from a thread other than the one that runs it.
    #[error("vCPU {0} can only be used on its own thread, after its first run")]
    WrongThread(u8),
    /// What this backend does not implement yet.
    #[error("{0} is not implemented on Hypervisor.framework yet")]
    NotImplemented(&'static str),
    /// The host clock is macOS's; elsewhere this layer is only type-checked.
    #[error("the host counter is read on macOS only")]
    NotMacos,
}

fn call(what: &'static str) -> impl FnOnce(hv::HypervisorError) -> Error {
    move |source| Error::Call { what, source }
}

/// The VM instance: with the framework's GIC, or without (the GIC in user space).
#[cfg(feature = "framework-gic")]
pub type VmInstance = hv::VirtualMachineInstance<hv::GicEnabled>;
/// The VM instance: with the framework's GIC, or without (the GIC in user space).
#[cfg(not(feature = "framework-gic"))]
pub type VmInstance = hv::VirtualMachineInstance<hv::GicDisabled>;

/// The sizes the device tree needs: (distributor, whole redistributor region).
#[cfg(feature = "framework-gic")]
pub fn gic_sizes() -> Result<(usize, usize), Error> {
    Ok((
        hv::GicConfig::get_distributor_size().map_err(call("hv_gic_get_distributor_size"))?,
        hv::GicConfig::get_redistributor_region_size()
            .map_err(call("hv_gic_get_redistributor_region_size"))?,
    ))
}

/// The host's counter (CNTPCT_EL0, which `mach_absolute_time` reads on Apple Silicon) and
/// its frequency.
// Off aarch64 (`typecheck-macos` on an x86 host) the trait impls that read the frequency
// are left out.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
mod host_counter {
    use super::Error;

    /// The counter now.
    #[cfg(target_os = "macos")]
    pub fn now() -> Result<u64, Error> {
        // SAFETY: no arguments, no state; always safe to call.
        #[allow(unsafe_code)]
        Ok(unsafe { mach2::mach_time::mach_absolute_time() })
    }

    /// Ticks per second, from the timebase (ns per tick = numer / denom).
    #[cfg(target_os = "macos")]
    pub fn hz() -> Result<u64, Error> {
        let mut info = mach2::mach_time::mach_timebase_info { numer: 0, denom: 0 };
        // SAFETY: `info` is a valid, writable struct of the type the call fills.
        #[allow(unsafe_code)]
        let rc = unsafe { mach2::mach_time::mach_timebase_info(&mut info) };
        if rc != 0 || info.numer == 0 {
            return Err(Error::NotMacos);
        }
        Ok(1_000_000_000 * u64::from(info.denom) / u64::from(info.numer))
    }

    /// Off macOS (`typecheck-macos`): never linked into anything that runs.
    #[cfg(not(target_os = "macos"))]
    pub fn now() -> Result<u64, Error> {
        Err(Error::NotMacos)
    }

    /// Off macOS (`typecheck-macos`): never linked into anything that runs.
    #[cfg(not(target_os = "macos"))]
    pub fn hz() -> Result<u64, Error> {
        Err(Error::NotMacos)
    }
}

/// One framework vCPU, bound to the thread that created it.
pub struct HvfVcpu {
    vcpu: hv::Vcpu,
}

impl HvfVcpu {
    /// Creates vCPU `index` on the calling thread, which is the only thread that may use
    /// it, with its MPIDR from [`regs::mpidr_for`].
    pub fn create(vm: &VmInstance, index: u8) -> Result<Self, Error> {
        let vcpu = vm.vcpu_create().map_err(call("hv_vcpu_create"))?;
        vcpu.set_sys_reg(hv::SysReg::MPIDR_EL1, regs::mpidr_for(index))
            .map_err(call("hv_vcpu_set_sys_reg(MPIDR_EL1)"))?;
        Ok(HvfVcpu { vcpu })
    }

    /// A handle other threads use to kick this vCPU (`hv_vcpus_exit`).
    pub fn kick_handle(&self) -> hv::VcpuHandle {
        self.vcpu.get_handle()
    }
}

impl Framework for HvfVcpu {
    fn run_once(&mut self) -> Result<HvExit, Error> {
        self.vcpu.run().map_err(call("hv_vcpu_run"))?;
        let info = self.vcpu.get_exit_info();
        Ok(match info.reason {
            hv::ExitReason::CANCELED => HvExit::Canceled,
            hv::ExitReason::EXCEPTION => HvExit::Exception {
                syndrome: info.exception.syndrome,
                virtual_address: info.exception.virtual_address,
                physical_address: info.exception.physical_address,
            },
            hv::ExitReason::VTIMER_ACTIVATED => HvExit::VtimerActivated,
            hv::ExitReason::UNKNOWN => HvExit::Unknown(hv::ExitReason::UNKNOWN as u32),
        })
    }

    /// The guest's CNTVCT_EL0: the host counter less the vCPU's timer offset.
    fn virtual_counter(&self) -> Result<u64, Error> {
        let offset = self
            .vcpu
            .get_vtimer_offset()
            .map_err(call("hv_vcpu_get_vtimer_offset"))?;
        Ok(host_counter::now()?.wrapping_sub(offset))
    }

    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), Error> {
        self.vcpu
            .set_sys_reg(hv_sys_reg(reg)?, value)
            .map_err(call("hv_vcpu_set_sys_reg"))
    }

    fn set_irq_line(&mut self, asserted: bool) -> Result<(), Error> {
        self.vcpu
            .set_pending_interrupt(hv::InterruptType::IRQ, asserted)
            .map_err(call("hv_vcpu_set_pending_interrupt"))
    }
}

/// `msbvm_vmm::hypervisor`'s traits over the layer above (aarch64 only: the core's
/// register types are the host architecture's).
#[cfg(target_arch = "aarch64")]
mod boundary {
    use std::cell::RefCell;
    use std::sync::{Arc, Mutex, OnceLock};

    #[cfg(feature = "framework-gic")]
    use msbvm_vmm::arch::aarch64::layout::{GIC_DIST_START, GIC_REDIST_END, GIC_REDIST_START};
    use msbvm_vmm::arch::{EntryMode, FaultRegs, VcpuRegisters};
    use msbvm_vmm::event::EventFd;
    use msbvm_vmm::hypervisor::{
        self, DeviceAccess, Hypervisor, IoEventAddress, Kicker, RunState, Vcpu, VcpuExit, Vm,
    };
    use msbvm_vmm::memory::GuestMemory;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[cfg(feature = "framework-gic")]
    use super::call;
    use super::{host_counter, hv, Error, HvfVcpu, VmInstance};
    use crate::cpus::Cpus;
    use crate::exit::VcpuOps;
    #[cfg(not(feature = "framework-gic"))]
    use crate::gic::Gic;
    use crate::regs::{linux_entry, EntryState, Reg, SysReg};
    use crate::run::{Framework, IoEvents, IrqForwarders, VcpuRunner};

    fn failed(e: Error) -> hypervisor::Error {
        hypervisor::Error::Failed(Box::new(e))
    }

    /// Hypervisor.framework on this Mac.
    #[derive(Debug, Default)]
    pub struct Hvf;

    impl Hypervisor for Hvf {
        type Vm = HvfMachine;

        /// Creates the VM and, at once, its GICv3 at the arm64 layout's addresses: the
        /// framework takes the GIC's configuration with the VM, so
        /// [`Vm::create_irqchip`] has nothing left to do.
        #[cfg(feature = "framework-gic")]
        fn create_vm(&self) -> Result<HvfMachine, hypervisor::Error> {
            let redist = hv::GicConfig::get_redistributor_region_size()
                .map_err(call("hv_gic_get_redistributor_region_size"))
                .map_err(failed)?;
            let window = GIC_REDIST_END - GIC_REDIST_START;
            if redist as u64 > window {
                return Err(failed(Error::GicTooLarge {
                    size: redist,
                    window,
                }));
            }
            let mut gic = hv::GicConfig::new();
            gic.set_distributor_base(GIC_DIST_START)
                .map_err(call("hv_gic_config_set_distributor_base"))
                .map_err(failed)?;
            gic.set_redistributor_base(GIC_REDIST_START)
                .map_err(call("hv_gic_config_set_redistributor_base"))
                .map_err(failed)?;
            let vm = hv::VirtualMachine::with_gic(hv::VirtualMachineConfig::new(), gic)
                .map_err(|e| hypervisor::Error::Unavailable(Box::new(Error::CreateVm(e))))?;
            HvfMachine::new(vm)
        }

        /// Creates the VM without a GIC: msbvm's, in user space, is made with the vCPUs
        /// (it needs their number), and [`Vm::create_irqchip`] has nothing to do.
        #[cfg(not(feature = "framework-gic"))]
        fn create_vm(&self) -> Result<HvfMachine, hypervisor::Error> {
            let vm = hv::VirtualMachine::new()
                .map_err(|e| hypervisor::Error::Unavailable(Box::new(Error::CreateVm(e))))?;
            HvfMachine::new(vm)
        }
    }

    impl HvfMachine {
        /// What pulses an SPI (by INTID): the framework's GIC.
        #[cfg(feature = "framework-gic")]
        fn spi_pulse(&self) -> impl Fn(u32) -> Result<(), String> + Send + 'static {
            let vm = self.vm.clone();
            move |intid| {
                vm.gic_set_spi(intid, true)
                    .and_then(|()| vm.gic_set_spi(intid, false))
                    .map_err(|e| e.to_string())
            }
        }

        /// What pulses an SPI (by INTID): msbvm's GIC, whose notifier also makes a running
        /// vCPU it routes the SPI to leave the guest. Before the first vCPU exists there is
        /// no GIC to take it, and it is dropped.
        #[cfg(not(feature = "framework-gic"))]
        fn spi_pulse(&self) -> impl Fn(u32) -> Result<(), String> + Send + 'static {
            let gic = self.gic.clone();
            move |intid| {
                if let Some(gic) = gic.get() {
                    gic.set_spi(intid - 32, true);
                    gic.set_spi(intid - 32, false);
                }
                Ok(())
            }
        }

        fn new(vm: VmInstance) -> Result<HvfMachine, hypervisor::Error> {
            Ok(HvfMachine {
                vm,
                counter_hz: host_counter::hz().map_err(failed)?,
                cpus: Arc::new(OnceLock::new()),
                #[cfg(not(feature = "framework-gic"))]
                gic: Arc::new(OnceLock::new()),
                ioevents: Arc::new(IoEvents::default()),
                irqs: Mutex::new(IrqForwarders::default()),
                kick_handles: Arc::new(Mutex::new(Vec::new())),
                memory: Mutex::new(None),
            })
        }

        /// The user-space GIC, made with the first vCPU for `cpus`: its notifier wakes the
        /// vCPUs sleeping in `cpus` and makes the named one leave the guest.
        #[cfg(not(feature = "framework-gic"))]
        fn user_gic(&self, cpus: &Arc<Cpus>) -> Arc<Gic> {
            use msbvm_vmm::arch::aarch64::layout::NR_SPIS;
            self.gic
                .get_or_init(|| {
                    let gic = Arc::new(Gic::new(cpus.count(), NR_SPIS));
                    let (vm, handles, cpus) =
                        (self.vm.clone(), self.kick_handles.clone(), cpus.clone());
                    gic.set_notifier(Box::new(move |index| {
                        cpus.interrupt_raised();
                        let handle = handles
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(index)
                            .cloned()
                            .flatten();
                        if let Some(handle) = handle {
                            let _ = vm.vcpus_exit(&[handle]);
                        }
                    }));
                    gic
                })
                .clone()
        }
    }

    /// One VM (the framework allows one per process).
    pub struct HvfMachine {
        vm: VmInstance,
        counter_hz: u64,
        /// Made with the first vCPU, which says how many there are (after the devices'
        /// interrupts are wired: those look it up when they fire).
        cpus: Arc<OnceLock<Arc<Cpus>>>,
        /// The GIC in user space, made with the first vCPU as `cpus` is.
        #[cfg(not(feature = "framework-gic"))]
        gic: Arc<OnceLock<Arc<Gic>>>,
        ioevents: Arc<IoEvents>,
        irqs: Mutex<IrqForwarders>,
        /// Each vCPU's handle for `hv_vcpus_exit`, once it ran.
        kick_handles: Arc<Mutex<Vec<Option<hv::VcpuHandle>>>>,
        /// The core's guest memory, kept mapped as long as the VM exists.
        memory: Mutex<Option<GuestMemory>>,
    }

    impl Vm for HvfMachine {
        type Vcpu = HvfVcpuSlot;

        fn map_memory(&self, mem: &GuestMemory) -> Result<(), hypervisor::Error> {
            use applevisor_sys::{hv_vm_map, HV_MEMORY_EXEC, HV_MEMORY_READ, HV_MEMORY_WRITE};
            for region in mem.iter() {
                let (host, guest, size) = (
                    region.as_ptr(),
                    region.start_addr().0,
                    region.len() as usize,
                );
                // SAFETY: `host..host + size` is one mmap of the core's guest memory, which
                // `self.memory` keeps alive (a clone holds the regions) for as long as the
                // VM, whose destruction unmaps it.
                #[allow(unsafe_code)]
                let code = unsafe {
                    hv_vm_map(
                        host.cast(),
                        guest,
                        size,
                        HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC,
                    )
                };
                if code != 0 {
                    return Err(failed(Error::MapMemory { guest, size, code }));
                }
            }
            *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem.clone());
            Ok(())
        }

        /// Done by [`Hvf::create_vm`] (the framework's GIC) or with the vCPUs (msbvm's).
        fn create_irqchip(&self) -> Result<(), hypervisor::Error> {
            Ok(())
        }

        /// SPI `line` is GIC INTID 32 + `line`, as with KVM's in-kernel GIC; each write to
        /// `event` pulses it (an edge, as the device tree declares virtio's interrupts) and
        /// wakes the vCPUs sleeping in a halt.
        fn register_irqfd(&self, event: &EventFd, line: u32) -> Result<(), hypervisor::Error> {
            let cpus = self.cpus.clone();
            self.irqs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(event, 32 + line, self.spi_pulse(), move || {
                    if let Some(cpus) = cpus.get() {
                        cpus.interrupt_raised();
                    }
                })
                .map_err(|e| hypervisor::Error::Failed(Box::new(e)))
        }

        fn register_ioevent(
            &self,
            event: &EventFd,
            addr: IoEventAddress,
            datamatch: u32,
        ) -> Result<(), hypervisor::Error> {
            let IoEventAddress::Mmio(addr) = addr else {
                return Err(failed(Error::NotImplemented(
                    "port I/O (there is none on arm64)",
                )));
            };
            let event = event
                .try_clone()
                .map_err(|e| hypervisor::Error::Failed(Box::new(e)))?;
            self.ioevents.register(addr, datamatch, event);
            Ok(())
        }

        fn create_vcpu(&self, index: u8, count: u8) -> Result<HvfVcpuSlot, hypervisor::Error> {
            let cpus = self.cpus.get_or_init(|| Arc::new(Cpus::new(count))).clone();
            if cpus.count() != usize::from(count.max(1)) {
                return Err(failed(Error::NotImplemented(
                    "vCPUs created with differing counts",
                )));
            }
            let runner =
                VcpuRunner::new(index, cpus.clone(), self.ioevents.clone(), self.counter_hz);
            #[cfg(not(feature = "framework-gic"))]
            let runner = runner.with_gic(self.user_gic(&cpus));
            Ok(HvfVcpuSlot {
                index,
                vm: self.vm.clone(),
                runner,
                cpus,
                entry: None,
                kick_handles: self.kick_handles.clone(),
            })
        }

        fn save_state(&self) -> Result<Vec<u8>, hypervisor::Error> {
            Err(failed(Error::NotImplemented("saving a VM (snapshots)")))
        }

        fn restore_state(&self, _state: &[u8]) -> Result<(), hypervisor::Error> {
            Err(failed(Error::NotImplemented("restoring a VM (snapshots)")))
        }

        fn host_cpu(&self) -> String {
            "Apple Silicon (Hypervisor.framework)".into()
        }

        /// `hv_vcpus_exit` for a vCPU in the guest, and a wake-up for one sleeping in
        /// [`Cpus`] (halted or off), which no signal would end.
        fn vcpu_kicker(&self) -> Option<Kicker> {
            let vm = self.vm.clone();
            let handles = self.kick_handles.clone();
            let cpus = self.cpus.clone();
            Some(Arc::new(move |index| {
                if let Some(cpus) = cpus.get() {
                    cpus.kick(index);
                }
                let handle = handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(usize::from(index))
                    .cloned()
                    .flatten();
                if let Some(handle) = handle {
                    let _ = vm.vcpus_exit(&[handle]);
                }
            }))
        }
    }

    thread_local! {
        /// The framework vCPU of the slot that runs on this thread, with its index.
        static FRAMEWORK_VCPU: RefCell<Option<(u8, HvfVcpu)>> = const { RefCell::new(None) };
    }

    /// What the core holds for a vCPU: everything but the framework vCPU, which is created
    /// on the first run on the running thread and lives in its local storage.
    pub struct HvfVcpuSlot {
        index: u8,
        vm: VmInstance,
        runner: VcpuRunner,
        cpus: Arc<Cpus>,
        /// The boot vCPU's entry, applied when its framework vCPU exists.
        entry: Option<EntryState>,
        kick_handles: Arc<Mutex<Vec<Option<hv::VcpuHandle>>>>,
    }

    impl HvfVcpuSlot {
        /// Runs `f` on this thread's framework vCPU, creating it on first use.
        fn with_framework<T>(
            &mut self,
            f: impl FnOnce(&mut HvfVcpu, &mut VcpuRunner) -> T,
        ) -> Result<T, Error> {
            FRAMEWORK_VCPU.with_borrow_mut(|slot| {
                if slot.is_none() {
                    let mut vcpu = HvfVcpu::create(&self.vm, self.index)?;
                    if let Some(entry) = self.entry.take() {
                        vcpu.set_entry_state(&entry)?;
                    }
                    let mut handles = self.kick_handles.lock().unwrap_or_else(|e| e.into_inner());
                    let i = usize::from(self.index);
                    if handles.len() <= i {
                        handles.resize(i + 1, None);
                    }
                    handles[i] = Some(vcpu.kick_handle());
                    *slot = Some((self.index, vcpu));
                }
                match slot {
                    Some((index, vcpu)) if *index == self.index => Ok(f(vcpu, &mut self.runner)),
                    _ => Err(Error::WrongThread(self.index)),
                }
            })
        }
    }

    impl Vcpu for HvfVcpuSlot {
        fn set_entry(&mut self, entry: EntryMode) -> Result<(), hypervisor::Error> {
            // The Image protocol's entry (x0 the device tree, EL1h with DAIF masked, MMU
            // off), applied when the framework vCPU is made on its thread.
            self.entry = Some(linux_entry(entry.x0, entry.pc));
            Ok(())
        }

        fn run<A: DeviceAccess>(&mut self, io: &mut A) -> VcpuExit<A::Event> {
            match self.with_framework(|vcpu, runner| runner.run(vcpu, io)) {
                Ok(exit) => exit,
                Err(e) => VcpuExit::Fault(msbvm_vmm::FaultKind::Host(e.to_string())),
            }
        }

        fn run_state(&self) -> Result<RunState, hypervisor::Error> {
            // Halts are slept inside `run`, as KVM sleeps them inside KVM_RUN.
            Ok(if self.cpus.is_off(self.index) {
                RunState::WaitingForStartup
            } else {
                RunState::Runnable
            })
        }

        fn registers(&self) -> Result<VcpuRegisters, hypervisor::Error> {
            FRAMEWORK_VCPU.with_borrow(|slot| match slot {
                Some((index, vcpu)) if *index == self.index => {
                    let read = |r: Reg| vcpu.reg(r).map_err(failed);
                    Ok(VcpuRegisters {
                        regs: FaultRegs {
                            pc: read(Reg::Pc)?,
                            sp: vcpu.sys_reg(SysReg::SP_EL1).map_err(failed)?,
                            pstate: read(Reg::Cpsr)?,
                        },
                    })
                }
                _ => Err(failed(Error::WrongThread(self.index))),
            })
        }

        fn save_state(&mut self) -> Result<Vec<u8>, hypervisor::Error> {
            Err(failed(Error::NotImplemented("saving a vCPU (snapshots)")))
        }

        fn restore_state(&mut self, _state: &[u8]) -> Result<(), hypervisor::Error> {
            Err(failed(Error::NotImplemented(
                "restoring a vCPU (snapshots)",
            )))
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub use boundary::{Hvf, HvfMachine, HvfVcpuSlot};

fn hv_reg(reg: Reg) -> hv::Reg {
    match reg {
        Reg::X(n) => X_REGS[usize::from(n.min(30))],
        Reg::Pc => hv::Reg::PC,
        Reg::Fpcr => hv::Reg::FPCR,
        Reg::Fpsr => hv::Reg::FPSR,
        Reg::Cpsr => hv::Reg::CPSR,
    }
}

fn hv_sys_reg(reg: SysReg) -> Result<hv::SysReg, Error> {
    SYS_REGS
        .iter()
        .find(|(_, neutral)| *neutral == reg)
        .map(|(hv_reg, _)| *hv_reg)
        .ok_or(Error::UnmappedSysReg(reg.raw()))
}

impl VcpuOps for HvfVcpu {
    type Error = Error;

    fn reg(&self, reg: Reg) -> Result<u64, Error> {
        self.vcpu
            .get_reg(hv_reg(reg))
            .map_err(call("hv_vcpu_get_reg"))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), Error> {
        self.vcpu
            .set_reg(hv_reg(reg), value)
            .map_err(call("hv_vcpu_set_reg"))
    }

    fn sys_reg(&self, reg: SysReg) -> Result<u64, Error> {
        self.vcpu
            .get_sys_reg(hv_sys_reg(reg)?)
            .map_err(call("hv_vcpu_get_sys_reg"))
    }

    fn set_vtimer_mask(&mut self, masked: bool) -> Result<(), Error> {
        self.vcpu
            .set_vtimer_mask(masked)
            .map_err(call("hv_vcpu_set_vtimer_mask"))
    }

    /// Never called: with the framework's GIC the timer does not exit to user space, and
    /// with msbvm's the exit handling raises the PPI in it.
    fn set_vtimer_irq(&mut self, _asserted: bool) -> Result<(), Error> {
        Err(Error::NoUserspaceGic)
    }
}
