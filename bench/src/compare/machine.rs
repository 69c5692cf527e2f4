//! What machine a comparison ran on, for the report: CPUs, memory, kernel, and
//! the disk the data dirs were on.

use std::path::{Path, PathBuf};

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_gib: Option<f64>,
    pub kernel: Option<String>,
    pub data_root: PathBuf,
    /// The mount holding the data root: device, file system type, mount point.
    pub data_disk: Option<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub source: String,
    pub fs_type: String,
    pub mount_point: String,
}

impl Machine {
    pub fn describe(data_root: &Path) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let data_root = data_root.canonicalize().unwrap_or_else(|_| data_root.to_path_buf());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read("/proc/cpuinfo").and_then(|text| cpu_model(&text)),
            memory_gib: read("/proc/meminfo").and_then(|text| memory_gib(&text)),
            kernel: read("/proc/sys/kernel/osrelease").map(|text| text.trim().to_string()),
            data_disk: read("/proc/self/mountinfo").and_then(|text| mount_of(&text, &data_root)),
            data_root,
        }
    }

    /// `2 CPUs (Intel Xeon ...), 23.4 GiB memory, Linux 6.1.0; data on /dev/vda (ext4) at /`
    pub fn text(&self) -> String {
        let model = self.cpu_model.as_ref().map_or(String::new(), |m| format!(" ({m})"));
        let memory = self
            .memory_gib
            .map_or(String::new(), |g| format!(", {g:.1} GiB memory"));
        let kernel = self.kernel.as_ref().map_or(String::new(), |k| format!(", Linux {k}"));
        let disk = match &self.data_disk {
            Some(mount) => format!(
                " on {} ({}) mounted at {}",
                mount.source, mount.fs_type, mount.mount_point
            ),
            None => String::new(),
        };
        format!(
            "{} CPUs{model}{memory}{kernel}; data dirs under {}{disk}",
            self.cpus,
            self.data_root.display()
        )
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

fn memory_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// The mount in `/proc/self/mountinfo` text whose mount point is the longest
/// prefix of `path`.
fn mount_of(mountinfo: &str, path: &Path) -> Option<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // id parent major:minor root mount_point options [optional...] - fs_type source super_options
            let fields: Vec<&str> = line.split_whitespace().collect();
            let mount_point = *fields.get(4)?;
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                source: fields.get(dash + 2)?.to_string(),
                fs_type: fields.get(dash + 1)?.to_string(),
                mount_point: mount_point.to_string(),
            })
        })
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /tmp rw,nosuid - tmpfs tmpfs rw,size=1024k
31 22 0:28 / /work/data rw - xfs /dev/vdb rw
";

    #[test]
    fn the_longest_mount_point_holding_the_path_wins() {
        let mount = mount_of(MOUNTINFO, Path::new("/work/data/run1")).unwrap();
        assert_eq!((mount.source.as_str(), mount.fs_type.as_str()), ("/dev/vdb", "xfs"));
        let mount = mount_of(MOUNTINFO, Path::new("/tmp/ringkv-bench-x")).unwrap();
        assert_eq!(mount.fs_type, "tmpfs");
        let mount = mount_of(MOUNTINFO, Path::new("/work/database")).unwrap();
        assert_eq!(mount.mount_point, "/", "a prefix must end at a path component");
    }

    #[test]
    fn cpu_model_and_memory_are_read_from_proc() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(memory_gib("MemTotal:       25165824 kB\n"), Some(24.0));
        assert_eq!(memory_gib("nothing here"), None);
    }
}
