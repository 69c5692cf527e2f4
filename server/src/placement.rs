//! Where the store core runs when the flags do not say: on the CPU that takes
//! the completion interrupts of the disk under the data directory, if one CPU
//! takes them all.
//!
//! The store core waits for each WAL write and fdatasync in the system call
//! (`ringkv_engine::wal::io`). A disk with a single hardware queue (virtio-blk
//! with one queue, an AHCI port) completes every request through one
//! interrupt, and the kernel wakes the waiting thread from the CPU that took
//! it: a store core pinned elsewhere is woken by an inter-processor interrupt,
//! twice per durable write, which on a virtual machine is an exit to the
//! hypervisor each (docs/benchmarks.md). A disk with a queue per CPU (NVMe)
//! completes on the CPU that asked, so it gives no such CPU, nor does a
//! filesystem on no block device; then the store core keeps CPU 0.
//!
//! Read from sysfs and procfs once at start: a later change of the
//! interrupt's affinity (irqbalance) is not followed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Block devices followed down through their `slaves` (device-mapper, md) at most.
const STACKED_DEVICES_MAX: usize = 4;

/// The CPU that takes a disk's completion interrupts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInterrupts {
    pub cpu: usize,
    pub irq: u32,
    /// The disk's name in sysfs (`vda`, `sda`).
    pub disk: String,
}

/// The CPU that takes the interrupts of the disk holding `data_dir` (or, for
/// a data directory not made yet, the nearest directory above it that exists).
pub fn disk_interrupts(data_dir: &Path) -> Option<DiskInterrupts> {
    let existing = data_dir
        .ancestors()
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
        })
        .find(|dir| dir.exists())?;
    let dev = fs::metadata(existing).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Host {
        sys: PathBuf::from("/sys"),
        proc: PathBuf::from("/proc"),
    }
    .disk_interrupts(major, minor)
}

/// Where sysfs and procfs are mounted (a directory tree of the same shape in tests).
struct Host {
    sys: PathBuf,
    proc: PathBuf,
}

impl Host {
    fn disk_interrupts(&self, major: u32, minor: u32) -> Option<DiskInterrupts> {
        let block = whole_disk(fs::canonicalize(self.sys.join(format!("dev/block/{major}:{minor}"))).ok()?);
        let disk = self.single_queue_disk(block, STACKED_DEVICES_MAX)?;
        let irqs = device_interrupts(&fs::canonicalize(disk.join("device")).ok()?, &self.sys)?;
        let interrupts = fs::read_to_string(self.proc.join("interrupts")).ok()?;
        let irq = busiest(&interrupts, &irqs)?;
        let cpu = self.only_cpu(irq)?;
        Some(DiskInterrupts {
            cpu,
            irq,
            disk: disk.file_name()?.to_string_lossy().into_owned(),
        })
    }

    /// `block` if it is a disk with one hardware queue, or stacks on exactly
    /// one device that leads to one.
    fn single_queue_disk(&self, block: PathBuf, depth: usize) -> Option<PathBuf> {
        if let Ok(queues) = fs::read_dir(block.join("mq")) {
            return (queues.count() == 1).then_some(block);
        }
        let mut below = fs::read_dir(block.join("slaves")).ok()?;
        let only = below.next()?.ok()?.file_name();
        if below.next().is_some() || depth == 0 {
            return None;
        }
        let next = whole_disk(fs::canonicalize(self.sys.join("class/block").join(only)).ok()?);
        self.single_queue_disk(next, depth - 1)
    }

    /// The one CPU interrupt `irq` is delivered to, if it is one.
    fn only_cpu(&self, irq: u32) -> Option<usize> {
        let dir = self.proc.join(format!("irq/{irq}"));
        let list = fs::read_to_string(dir.join("effective_affinity_list"))
            .ok()
            .filter(|list| !list.trim().is_empty())
            .or_else(|| fs::read_to_string(dir.join("smp_affinity_list")).ok())?;
        match cpu_list(&list)?.as_slice() {
            [cpu] => Some(*cpu),
            _ => None,
        }
    }
}

/// The disk a partition is part of, or `block` itself.
fn whole_disk(block: PathBuf) -> PathBuf {
    if block.join("partition").exists() {
        if let Some(disk) = block.parent() {
            return disk.to_path_buf();
        }
    }
    block
}

/// The interrupts of the bus device nearest above `device` that has any:
/// its MSI vectors, else its one legacy line.
fn device_interrupts(device: &Path, sys: &Path) -> Option<Vec<u32>> {
    let devices = fs::canonicalize(sys.join("devices")).ok()?;
    let mut dir = device;
    while dir.starts_with(&devices) {
        if let Ok(vectors) = fs::read_dir(dir.join("msi_irqs")) {
            let irqs: Vec<u32> = vectors
                .filter_map(|vector| vector.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            if !irqs.is_empty() {
                return Some(irqs);
            }
        }
        if let Some(line) = fs::read_to_string(dir.join("irq"))
            .ok()
            .and_then(|irq| irq.trim().parse::<u32>().ok())
            .filter(|&irq| irq != 0)
        {
            return Some(vec![line]);
        }
        dir = dir.parent()?;
    }
    None
}

/// Of `irqs`, the one `/proc/interrupts` counts most deliveries of (a device's
/// configuration vector next to its request queue's counts a handful); None if
/// none has fired yet.
fn busiest(interrupts: &str, irqs: &[u32]) -> Option<u32> {
    let mut lines = interrupts.lines();
    let cpus = lines.next()?.split_whitespace().count();
    lines
        .filter_map(|line| {
            let (number, counts) = line.trim_start().split_once(':')?;
            let irq: u32 = number.parse().ok()?;
            irqs.contains(&irq).then(|| {
                let total: u64 = counts
                    .split_whitespace()
                    .take(cpus)
                    .map_while(|count| count.parse::<u64>().ok())
                    .sum();
                (total, irq)
            })
        })
        .filter(|&(total, _)| total > 0)
        .max()
        .map(|(_, irq)| irq)
}

/// A kernel CPU list ("0-3,8"); None if it is not one.
fn cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                if last < first {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const INTERRUPTS: &str = "           CPU0       CPU1
 35:          0          1 PCI-MSIX-0000:00:02.0   0-edge      virtio1-config
 36:          0   51232503 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 41:      16714          0 PCI-MSIX-0000:00:04.0   1-edge      virtio3-rx
NMI:          0          0   Non-maskable interrupts
";

    /// sysfs and procfs as a virtual machine with one virtio disk `vda`
    /// (partition `vda1`, 254:1; the disk 254:0) shows them, under `root`.
    fn virtio_host(root: &Path, queues: usize, affinity: &str) {
        let pci = root.join("sys/devices/pci0000:00/0000:00:02.0");
        let vda = pci.join("virtio1/block/vda");
        fs::create_dir_all(vda.join("vda1")).unwrap();
        fs::write(vda.join("vda1/partition"), "1\n").unwrap();
        for queue in 0..queues {
            fs::create_dir_all(vda.join(format!("mq/{queue}"))).unwrap();
        }
        symlink("../../../virtio1", vda.join("device")).unwrap();
        for irq in ["35", "36"] {
            fs::create_dir_all(pci.join("msi_irqs")).unwrap();
            fs::write(pci.join("msi_irqs").join(irq), "msix\n").unwrap();
        }
        fs::create_dir_all(root.join("sys/dev/block")).unwrap();
        symlink(&vda, root.join("sys/dev/block/254:0")).unwrap();
        symlink(vda.join("vda1"), root.join("sys/dev/block/254:1")).unwrap();
        fs::create_dir_all(root.join("sys/class/block")).unwrap();
        symlink(&vda, root.join("sys/class/block/vda")).unwrap();
        fs::create_dir_all(root.join("proc/irq/36")).unwrap();
        fs::create_dir_all(root.join("proc/irq/35")).unwrap();
        fs::write(root.join("proc/interrupts"), INTERRUPTS).unwrap();
        fs::write(root.join("proc/irq/36/effective_affinity_list"), affinity).unwrap();
        fs::write(root.join("proc/irq/35/effective_affinity_list"), "0\n").unwrap();
    }

    fn host(root: &Path) -> Host {
        Host {
            sys: root.join("sys"),
            proc: root.join("proc"),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringkv-placement-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::canonicalize(dir).unwrap()
    }

    #[test]
    fn a_single_queue_disk_gives_the_cpu_of_its_busiest_interrupt() {
        let root = temp("virtio");
        virtio_host(&root, 1, "1\n");
        let expected = Some(DiskInterrupts {
            cpu: 1,
            irq: 36,
            disk: "vda".to_string(),
        });
        assert_eq!(host(&root).disk_interrupts(254, 0), expected, "the disk");
        assert_eq!(host(&root).disk_interrupts(254, 1), expected, "a partition of it");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_cpu_for_a_disk_of_many_queues_an_interrupt_on_many_cpus_or_no_disk() {
        let root = temp("many-queues");
        virtio_host(&root, 4, "1\n");
        assert_eq!(host(&root).disk_interrupts(254, 0), None, "a queue per CPU");
        fs::remove_dir_all(&root).unwrap();
        virtio_host(&root, 1, "0-1\n");
        assert_eq!(host(&root).disk_interrupts(254, 0), None, "delivered to either CPU");
        assert_eq!(host(&root).disk_interrupts(0, 42), None, "no block device (tmpfs)");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_mapped_device_is_followed_to_the_one_disk_below_it() {
        let root = temp("dm");
        virtio_host(&root, 1, "1\n");
        let dm = root.join("sys/devices/virtual/block/dm-0");
        fs::create_dir_all(dm.join("slaves")).unwrap();
        symlink(root.join("sys/dev/block/254:1"), dm.join("slaves/vda1")).unwrap();
        symlink(root.join("sys/dev/block/254:1"), root.join("sys/class/block/vda1")).unwrap();
        symlink(&dm, root.join("sys/dev/block/253:0")).unwrap();
        assert_eq!(host(&root).disk_interrupts(253, 0).map(|disk| disk.cpu), Some(1));
        // Striped over two devices: no one disk.
        symlink(root.join("sys/dev/block/254:0"), dm.join("slaves/vda")).unwrap();
        assert_eq!(host(&root).disk_interrupts(253, 0), None);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_busiest_of_a_devices_interrupts_is_the_one_that_fired_most() {
        assert_eq!(busiest(INTERRUPTS, &[35, 36]), Some(36));
        assert_eq!(busiest(INTERRUPTS, &[35]), Some(35));
        assert_eq!(busiest(INTERRUPTS, &[99]), None, "not listed");
        let quiet = "  CPU0\n 7:  0  IO-APIC  ata_piix\n";
        assert_eq!(busiest(quiet, &[7]), None, "never fired");
    }

    #[test]
    fn cpu_lists_read_as_the_kernel_writes_them() {
        assert_eq!(cpu_list("1\n"), Some(vec![1]));
        assert_eq!(cpu_list("0-3,8"), Some(vec![0, 1, 2, 3, 8]));
        assert_eq!(cpu_list(""), Some(vec![]));
        assert_eq!(cpu_list("3-1"), None);
        assert_eq!(cpu_list("one"), None);
    }
}
