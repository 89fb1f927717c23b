//! The flattened device tree msbvm hands an arm64 kernel in x0.
//!
//! It describes exactly the machine in [`super::layout`]: the vCPUs (PSCI
//! brings up secondaries, handled by KVM in the kernel), a GICv3, the
//! architected timer, the 16550 console, msbvm's platform device and one node
//! per virtio-mmio device. The platform node's `compatible` ("msbvm,platform")
//! matches no kernel driver: it is there for the guest agent, which finds the
//! device's address in it and writes the registers through `/dev/mem`.

use vm_fdt::{Error as FdtError, FdtWriter};

use crate::arch::VirtioPlacement;

use super::layout::{
    self, GIC_DIST_SIZE, GIC_DIST_START, PLATFORM_MMIO_SIZE, PLATFORM_MMIO_START, SERIAL_IRQ,
    SERIAL_MMIO_SIZE, SERIAL_MMIO_START, VIRTIO_MMIO_SIZE,
};

/// The `compatible` of msbvm's platform node, which the guest agent looks for.
pub const PLATFORM_COMPATIBLE: &str = "msbvm,platform";

/// The interrupt-controller phandle every `interrupts` property refers to.
const GIC_PHANDLE: u32 = 1;
/// `interrupts` cell 0: shared peripheral interrupt.
const GIC_SPI: u32 = 0;
/// `interrupts` cell 0: private peripheral interrupt.
const GIC_PPI: u32 = 1;
/// `interrupts` cell 2: edge, rising.
const IRQ_EDGE_RISING: u32 = 1;
/// `interrupts` cell 2: level, active low (the timer binding's trigger).
const IRQ_LEVEL_LOW: u32 = 8;
/// The 16550's input clock; the value only matters for baud divisors, which
/// the emulated UART ignores, but the driver refuses a zero.
const UART_CLOCK_HZ: u32 = 1_843_200;

/// What the tree describes beyond the fixed layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig<'a> {
    /// Number of vCPUs (MPIDR affinity 0..n).
    pub vcpus: u32,
    /// Guest RAM size in bytes, starting at [`layout::RAM_START`].
    pub ram_size: u64,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initramfs, if any: `(start, size)`.
    pub initrd: Option<(u64, u64)>,
    /// The virtio-mmio devices (their `line` is the SPI number, the irqfd GSI).
    pub virtio: &'a [VirtioPlacement],
}

/// Builds the device tree blob.
pub fn create_fdt(cfg: &FdtConfig<'_>) -> Result<Vec<u8>, FdtError> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let cpus = f.begin_node("cpus")?;
    // MPIDR affinity fits in Aff0 for the vCPU counts the GIC layout allows,
    // which is what KVM assigns by default (vCPU index in Aff0 up to 16,
    // then Aff1); one cell of address is enough for that.
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    for cpu in 0..cfg.vcpus {
        let mpidr = mpidr_affinity(cpu);
        let n = f.begin_node(&format!("cpu@{mpidr:x}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_string("compatible", "arm,arm-v8")?;
        f.property_string("enable-method", "psci")?;
        f.property_u32("reg", mpidr)?;
        f.end_node(n)?;
    }
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", "hvc")?;
    f.end_node(psci)?;

    let mem = f.begin_node(&format!("memory@{:x}", layout::RAM_START))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[layout::RAM_START, cfg.ram_size])?;
    f.end_node(mem)?;

    let (redist, redist_size) = layout::gic_redist_region(u64::from(cfg.vcpus));
    let gic = f.begin_node(&format!("intc@{GIC_DIST_START:x}"))?;
    f.property_string("compatible", "arm,gic-v3")?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_u32("#redistributor-regions", 1)?;
    f.property_array_u64("reg", &[GIC_DIST_START, GIC_DIST_SIZE, redist, redist_size])?;
    f.property_u32("phandle", GIC_PHANDLE)?;
    f.end_node(gic)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    // Secure, non-secure, virtual, hypervisor physical: the binding's order.
    let mut irqs = Vec::new();
    for ppi in [13, 14, 11, 10] {
        irqs.extend([GIC_PPI, ppi, IRQ_LEVEL_LOW]);
    }
    f.property_array_u32("interrupts", &irqs)?;
    f.property_null("always-on")?;
    f.end_node(timer)?;

    let uart_name = format!("uart@{SERIAL_MMIO_START:x}");
    let uart = f.begin_node(&uart_name)?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[SERIAL_MMIO_START, SERIAL_MMIO_SIZE])?;
    f.property_u32("clock-frequency", UART_CLOCK_HZ)?;
    f.property_array_u32("interrupts", &[GIC_SPI, SERIAL_IRQ, IRQ_EDGE_RISING])?;
    f.end_node(uart)?;

    let platform = f.begin_node(&format!("platform@{PLATFORM_MMIO_START:x}"))?;
    f.property_string("compatible", PLATFORM_COMPATIBLE)?;
    f.property_array_u64("reg", &[PLATFORM_MMIO_START, PLATFORM_MMIO_SIZE])?;
    f.end_node(platform)?;

    for dev in cfg.virtio {
        let n = f.begin_node(&format!("virtio_mmio@{:x}", dev.base))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[dev.base, VIRTIO_MMIO_SIZE])?;
        f.property_array_u32("interrupts", &[GIC_SPI, dev.line, IRQ_EDGE_RISING])?;
        f.property_null("dma-coherent")?;
        f.end_node(n)?;
    }

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", cfg.cmdline)?;
    f.property_string("stdout-path", &format!("/{uart_name}"))?;
    if let Some((start, size)) = cfg.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", start + size)?;
    }
    f.end_node(chosen)?;

    f.end_node(root)?;
    f.finish()
}

/// The MPIDR affinity KVM gives vCPU `index` by default: Aff0 holds the low
/// four bits (16 CPUs per cluster, the GICv3 target-list limit), Aff1 the rest.
pub fn mpidr_affinity(index: u32) -> u32 {
    ((index >> 4) << 8) | (index & 0xf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A minimal FDT reader: path -> property name -> value bytes.
    fn parse(blob: &[u8]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        let be32 = |o: usize| u32::from_be_bytes(blob[o..o + 4].try_into().unwrap());
        assert_eq!(be32(0), 0xd00d_feed);
        assert_eq!(be32(4) as usize, blob.len());
        let (structs, strings) = (be32(8) as usize, be32(12) as usize);
        let cstr = |o: usize| {
            let end = blob[o..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8(blob[o..o + end].to_vec()).unwrap()
        };
        let mut out = BTreeMap::new();
        let mut path: Vec<String> = Vec::new();
        let mut o = structs;
        loop {
            let tok = be32(o);
            o += 4;
            match tok {
                1 => {
                    let name = cstr(o);
                    o += (name.len() + 1).next_multiple_of(4);
                    path.push(name);
                    out.insert(path.join("/"), BTreeMap::new());
                }
                2 => {
                    path.pop();
                }
                3 => {
                    let (len, nameoff) = (be32(o) as usize, be32(o + 4) as usize);
                    let val = blob[o + 8..o + 8 + len].to_vec();
                    o += 8 + len.next_multiple_of(4);
                    out.get_mut(&path.join("/"))
                        .unwrap()
                        .insert(cstr(strings + nameoff), val);
                }
                4 => {}
                9 => break,
                t => panic!("bad token {t}"),
            }
        }
        out
    }

    fn cells(v: &[u8]) -> Vec<u32> {
        v.chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn describes_the_machine() {
        let virtio = [VirtioPlacement {
            base: layout::VIRTIO_MMIO_START,
            line: 2,
        }];
        let blob = create_fdt(&FdtConfig {
            vcpus: 2,
            ram_size: 512 << 20,
            cmdline: "console=ttyS0",
            initrd: Some((0x8040_0000, 0x1000)),
            virtio: &virtio,
        })
        .unwrap();
        assert!(blob.len() as u64 <= layout::FDT_MAX_SIZE);
        let t = parse(&blob);
        let root = &t[""];
        assert_eq!(root["compatible"], b"linux,dummy-virt\0");
        assert_eq!(cells(&root["#address-cells"]), [2]);
        assert_eq!(cells(&t["/cpus/cpu@1"]["reg"]), [1]);
        assert_eq!(t["/cpus/cpu@0"]["enable-method"], b"psci\0");
        assert_eq!(t["/psci"]["compatible"], b"arm,psci-1.0\0arm,psci-0.2\0");
        assert_eq!(
            cells(&t["/memory@80000000"]["reg"]),
            [0, 0x8000_0000, 0, 512 << 20]
        );
        let gic = &t["/intc@8000000"];
        assert_eq!(
            cells(&gic["reg"]),
            [0, 0x0800_0000, 0, 0x1_0000, 0, 0x080a_0000, 0, 0x4_0000]
        );
        assert!(gic.contains_key("interrupt-controller"));
        assert_eq!(
            cells(&t["/timer"]["interrupts"]),
            [1, 13, 8, 1, 14, 8, 1, 11, 8, 1, 10, 8]
        );
        assert_eq!(cells(&t["/uart@9000000"]["interrupts"]), [0, 1, 1]);
        let platform = &t["/platform@9010000"];
        assert_eq!(platform["compatible"], b"msbvm,platform\0");
        assert_eq!(cells(&platform["reg"]), [0, 0x0901_0000, 0, 0x1000]);
        let v = &t["/virtio_mmio@a000000"];
        assert_eq!(cells(&v["interrupts"]), [0, 2, 1]);
        assert!(v.contains_key("dma-coherent"));
        let chosen = &t["/chosen"];
        assert_eq!(chosen["bootargs"], b"console=ttyS0\0");
        assert_eq!(chosen["stdout-path"], b"/uart@9000000\0");
        assert_eq!(cells(&chosen["linux,initrd-end"]), [0, 0x8040_1000]);
    }

    #[test]
    fn mpidr_moves_to_aff1_after_16_cpus() {
        assert_eq!(mpidr_affinity(15), 0xf);
        assert_eq!(mpidr_affinity(17), 0x101);
    }
}
