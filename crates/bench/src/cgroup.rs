//! CPU budgets: a process given a fixed share of the CPU through a cgroup, as if
//! it ran on a small machine of its own ("4 clones × 0.25 CPU" is a core's worth
//! of clones, not four processes fighting over the machine).
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu`, `cpu.cfs_quota_us` per `cpu.cfs_period_us`)
//! and v2 (`cpu.max`) are both detected. Every group lives under
//! `bakery-bench-<pid>/` and is removed, its processes moved back to the root,
//! when dropped.
//!
//! A budget of at most one core is also one core ([`pin`]): a process whose
//! threads wander between cores pays for it in cache misses and in quota left on a
//! core it no longer runs on (the kernel hands a group's quota to each core in
//! 5 ms slices, a quarter-core's whole period). On this machine an unpinned clone
//! spent twice the CPU per request when it was alone (its threads woken on whichever
//! core was idle) as when three others kept the cores busy, and `bench scale`
//! showed 1.39 efficiency at four clones; pinned, 0.13 ms a request at every point
//! and 0.95–0.98.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bakery_config::ConfigError;
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// A short period keeps a throttled process's stalls short (25 % of a core is
/// 5 ms every 20 ms, not 25 ms every 100 ms), so p99 shows the budget, not the
/// scheduler's granularity.
const PERIOD_US: u64 = 20_000;

#[derive(Clone, Debug)]
enum Hierarchy {
    V1 { root: PathBuf },
    V2 { root: PathBuf },
}

/// Where this run's groups live.
pub struct Budgets {
    hierarchy: Hierarchy,
    base: PathBuf,
}

/// One group with a CPU quota; its processes run within it.
pub struct Group {
    dir: PathBuf,
    root: PathBuf,
    pub cpus: f64,
}

fn detect() -> Option<Hierarchy> {
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Some(Hierarchy::V1 { root: v1.into() });
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "cpu")
        .then(|| Hierarchy::V2 { root: v2.into() })
}

fn refused(detail: impl std::fmt::Display) -> anyhow::Error {
    ConfigError::new(
        "--cpu-per-clone",
        format!(
            "CPU budgets need a writable cgroup cpu controller (run as root, or leave the budget out): {detail}"
        ),
    )
    .into()
}

impl Budgets {
    /// Finds the cgroup hierarchy and makes this run's parent group; a clear error
    /// (exit 2) when there is none or it is not writable.
    pub fn open() -> anyhow::Result<Self> {
        let hierarchy = detect().ok_or_else(|| refused("no cgroup v1 or v2 cpu controller"))?;
        let root = match &hierarchy {
            Hierarchy::V1 { root } | Hierarchy::V2 { root } => root.clone(),
        };
        let base = root.join(format!("bakery-bench-{}", std::process::id()));
        std::fs::create_dir_all(&base).map_err(|e| refused(format!("{}: {e}", base.display())))?;
        if let Hierarchy::V2 { .. } = hierarchy {
            // Children of the base get the cpu controller.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            std::fs::write(base.join("cgroup.subtree_control"), "+cpu")
                .map_err(|e| refused(format!("enabling cpu under {}: {e}", base.display())))?;
        }
        Ok(Self { hierarchy, base })
    }

    pub fn version(&self) -> &'static str {
        match self.hierarchy {
            Hierarchy::V1 { .. } => "v1",
            Hierarchy::V2 { .. } => "v2",
        }
    }

    /// A group named `name` limited to `cpus` cores (0.25 = a quarter of one).
    pub fn group(&self, name: &str, cpus: f64) -> anyhow::Result<Group> {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| refused(format!("{}: {e}", dir.display())))?;
        let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
        let written = match &self.hierarchy {
            Hierarchy::V1 { .. } => {
                std::fs::write(dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
                    .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string()))
            }
            Hierarchy::V2 { .. } => {
                std::fs::write(dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
            }
        };
        written.map_err(|e| refused(format!("{}: {e}", dir.display())))?;
        let root = match &self.hierarchy {
            Hierarchy::V1 { root } | Hierarchy::V2 { root } => root.clone(),
        };
        Ok(Group { dir, root, cpus })
    }
}

impl Drop for Budgets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.base);
    }
}

impl Group {
    /// Moves process `pid` (all its threads, and whatever it starts later) in.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }
}

/// Keeps process `pid` on `core` (modulo the machine's cores): every thread it has
/// now, and so every thread those start. Best effort: a thread that ends meanwhile
/// is skipped.
pub fn pin(pid: u32, core: usize) {
    let mut set = CpuSet::new();
    if set.set(core % crate::cpu::cores() as usize).is_err() {
        return;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for tid in tasks
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let _ = sched_setaffinity(Pid::from_raw(tid), &set);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // A group can only be removed empty: its processes go back to the root
        // (those still alive; the caller has usually stopped them).
        for _ in 0..20 {
            let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            if pids.trim().is_empty() {
                break;
            }
            for pid in pids.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
