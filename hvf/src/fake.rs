//! An in-memory stand-in for Hypervisor.framework and for the VMM's bus, so
//! the exit handling is tested on every OS.

use std::collections::{HashMap, VecDeque};

use msbvm_vmm::hypervisor::DeviceAccess;

use crate::exit::{HvExit, Mmio, VcpuOps};
use crate::regs::{Reg, SysReg};
use crate::run::Framework;

/// A vCPU whose registers are plain maps (unset registers read as 0).
#[derive(Debug, Default)]
pub struct FakeVcpu {
    regs: HashMap<Reg, u64>,
    sys_regs: HashMap<SysReg, u64>,
    /// Every register write, in order.
    written: Vec<(Reg, u64)>,
    /// The framework's virtual timer mask.
    pub vtimer_masked: bool,
    /// The timer PPI's level in the (fake) interrupt controller.
    pub vtimer_irq: bool,
    /// Every IRQ line setting (`set_irq_line`), in order.
    pub irq_lines: Vec<bool>,
    /// Makes every register read and write fail, as a broken framework would.
    pub fail: bool,
    /// What each `run_once` returns, in order; an empty script is a framework error.
    pub exits: VecDeque<HvExit>,
    /// The guest's virtual counter.
    pub counter: u64,
    /// Called inside every `run_once`, as if other threads acted while the guest ran.
    pub during_run: Option<Hook>,
}

/// Code a test runs at a chosen point.
#[derive(Clone)]
pub struct Hook(pub std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

impl FakeVcpu {
    /// A vCPU with PC at `pc`.
    pub fn at(pc: u64) -> FakeVcpu {
        let mut v = FakeVcpu::default();
        v.regs.insert(Reg::Pc, pc);
        v
    }

    /// Sets a register without recording the write.
    pub fn set(&mut self, reg: Reg, value: u64) {
        self.regs.insert(reg, value);
    }

    /// A register's value.
    pub fn get(&self, reg: Reg) -> u64 {
        self.regs.get(&reg).copied().unwrap_or(0)
    }

    /// Sets a system register.
    pub fn set_sys(&mut self, reg: SysReg, value: u64) {
        self.sys_regs.insert(reg, value);
    }

    /// The writes the handler made to X registers.
    pub fn writes_to_x(&self) -> Vec<(Reg, u64)> {
        self.written
            .iter()
            .filter(|(r, _)| matches!(r, Reg::X(_)))
            .copied()
            .collect()
    }
}

impl VcpuOps for FakeVcpu {
    type Error = String;

    fn reg(&self, reg: Reg) -> Result<u64, String> {
        if self.fail {
            return Err("fake failure".into());
        }
        Ok(self.get(reg))
    }

    fn set_reg(&mut self, reg: Reg, value: u64) -> Result<(), String> {
        if self.fail {
            return Err("fake failure".into());
        }
        self.written.push((reg, value));
        self.regs.insert(reg, value);
        Ok(())
    }

    fn sys_reg(&self, reg: SysReg) -> Result<u64, String> {
        Ok(self.sys_regs.get(&reg).copied().unwrap_or(0))
    }

    fn set_vtimer_mask(&mut self, masked: bool) -> Result<(), String> {
        self.vtimer_masked = masked;
        Ok(())
    }

    fn set_vtimer_irq(&mut self, asserted: bool) -> Result<(), String> {
        self.vtimer_irq = asserted;
        Ok(())
    }
}

impl Framework for FakeVcpu {
    fn run_once(&mut self) -> Result<HvExit, String> {
        if let Some(hook) = &self.during_run {
            (hook.0)();
        }
        self.exits
            .pop_front()
            .ok_or_else(|| "no exit scripted".to_string())
    }

    fn virtual_counter(&self) -> Result<u64, String> {
        Ok(self.counter)
    }

    fn set_sys_reg(&mut self, reg: SysReg, value: u64) -> Result<(), String> {
        if self.fail {
            return Err("fake failure".into());
        }
        self.sys_regs.insert(reg, value);
        Ok(())
    }

    fn set_irq_line(&mut self, asserted: bool) -> Result<(), String> {
        self.irq_lines.push(asserted);
        Ok(())
    }
}

/// A bus that answers reads from a map of bytes and records every access.
#[derive(Debug, Default)]
pub struct FakeBus {
    memory: HashMap<u64, u8>,
    /// Reads: address and length.
    pub reads: Vec<(u64, usize)>,
    /// Writes: address and bytes.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The event every write returns.
    pub event_on_write: Option<u32>,
}

impl FakeBus {
    /// A bus where `bytes` are readable from `addr` on.
    pub fn with_read(addr: u64, bytes: &[u8]) -> FakeBus {
        let mut bus = FakeBus::default();
        for (i, b) in bytes.iter().enumerate() {
            bus.memory.insert(addr.wrapping_add(i as u64), *b);
        }
        bus
    }
}

impl Mmio for FakeBus {
    type Event = u32;

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.reads.push((addr, data.len()));
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .memory
                .get(&addr.wrapping_add(i as u64))
                .copied()
                .unwrap_or(0);
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<u32> {
        self.writes.push((addr, data.to_vec()));
        self.event_on_write
    }
}

/// The core's side: MMIO as above; arm64 has no port I/O.
impl DeviceAccess for FakeBus {
    type Event = u32;

    fn pio_read(&mut self, _port: u16, _data: &mut [u8]) {}

    fn pio_write(&mut self, _port: u16, _data: &[u8]) -> Option<u32> {
        None
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        Mmio::mmio_read(self, addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<u32> {
        Mmio::mmio_write(self, addr, data)
    }
}
