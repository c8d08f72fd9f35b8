//! Pinning to a CPU core, so that a benchmark's two processes each own one core and the
//! scheduler does not move them (a migration costs more than a whole spin round trip).
//!
//! Linux pins with sched_setaffinity(2), Windows with `SetProcessAffinityMask` (which
//! covers every thread of the process, and which the processes it starts inherit).
//! macOS has no CPU affinity: its thread
//! affinity tags (`THREAD_AFFINITY_POLICY`) are hints to keep threads together, and Apple
//! silicon ignores them. There nothing is pinned, and [`Placement::NotPinnable`] says so,
//! so that no report claims a pinning that did not happen.

use crate::error::CliError;

/// Where the two sides of the cross-process measurements run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This process is pinned to CPU `own`; each peer is to be pinned to CPU `peer`.
    #[cfg_attr(
        not(any(target_os = "linux", windows)),
        allow(
            dead_code,
            reason = "only Linux and Windows can pin; the callers still handle this"
        )
    )]
    Pinned { own: usize, peer: usize },
    /// Only one CPU is available: nothing is pinned, and a spinning side holds the CPU
    /// its peer needs.
    OneCpu,
    /// Several CPUs, but this OS cannot pin a process to one (the reason): nothing is
    /// pinned, and the scheduler places both sides.
    #[cfg_attr(
        any(target_os = "linux", windows),
        allow(
            dead_code,
            reason = "Linux and Windows can always pin; the callers still handle this"
        )
    )]
    NotPinnable(&'static str),
}

impl Placement {
    /// The CPU to pin each peer to, if any.
    pub fn peer_cpu(self) -> Option<usize> {
        match self {
            Placement::Pinned { peer, .. } => Some(peer),
            Placement::OneCpu | Placement::NotPinnable(_) => None,
        }
    }
}

/// Pins this process to the first allowed CPU and picks the second for the peers, where
/// the OS can pin. Call it before any child or thread exists, so that all of ours stay on
/// this core.
pub fn place_beside_peer() -> Result<Placement, CliError> {
    os::place_beside_peer()
}

/// How many CPUs this process may run on.
pub fn cpu_count() -> Result<usize, CliError> {
    os::cpu_count()
}

/// Pins the calling thread to `cpu` (on Windows, the whole process: every thread).
///
/// Threads inherit their creator's mask, so calling this at the start of `main`, before
/// any thread is spawned, pins the whole process.
pub fn pin_to_cpu(cpu: usize) -> Result<(), CliError> {
    os::pin_to_cpu(cpu)
}

/// Lets the calling thread run on every CPU the OS allows it, undoing a pin: for the
/// measurements of unpinned pairs. A child spawned from this thread inherits the wider
/// mask. Where the OS cannot pin, nothing was pinned and this does nothing.
#[cfg_attr(
    windows,
    allow(dead_code, reason = "only `bench`, Unix's for now, unpins")
)]
pub fn unpin() -> Result<(), CliError> {
    os::unpin()
}

/// Where the OS can pin: this process on the first CPU of `allowed`, the peers on the
/// second.
#[cfg(any(target_os = "linux", windows))]
fn place_on_allowed(allowed: &[usize]) -> Result<Placement, CliError> {
    match allowed {
        [own, peer, ..] => {
            os::pin_to_cpu(*own)?;
            Ok(Placement::Pinned {
                own: *own,
                peer: *peer,
            })
        }
        _ => Ok(Placement::OneCpu),
    }
}

#[cfg(target_os = "linux")]
mod os {
    use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

    use super::Placement;
    use crate::error::{CliError, Context};

    pub(super) fn place_beside_peer() -> Result<Placement, CliError> {
        super::place_on_allowed(&allowed_cpus()?)
    }

    pub(super) fn cpu_count() -> Result<usize, CliError> {
        Ok(allowed_cpus()?.len())
    }

    pub(super) fn pin_to_cpu(cpu: usize) -> Result<(), CliError> {
        if cpu >= CpuSet::MAX_CPU {
            return Err(CliError::new(format!(
                "CPU {cpu} is out of range (the largest CPU number is {})",
                CpuSet::MAX_CPU - 1
            )));
        }
        let mut set = CpuSet::new();
        set.set(cpu);
        sched_setaffinity(None, &set).context(format_args!(
            "pinning to CPU {cpu} (is it online and allowed for this process?)"
        ))
    }

    pub(super) fn unpin() -> Result<(), CliError> {
        // Every CPU the mask can name: the kernel keeps those the cpuset allows.
        let mut set = CpuSet::new();
        for cpu in 0..CpuSet::MAX_CPU {
            set.set(cpu);
        }
        sched_setaffinity(None, &set).context("unpinning (widening the CPU affinity mask)")
    }

    /// The CPUs this process may run on, in ascending order.
    fn allowed_cpus() -> Result<Vec<usize>, CliError> {
        let set = sched_getaffinity(None).context("reading the CPU affinity mask")?;
        Ok((0..CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect())
    }
}

#[cfg(windows)]
mod os {
    use super::Placement;
    use crate::error::{CliError, Context};
    use crate::windows::{affinity_masks, set_affinity_mask};

    /// CPU numbers are bits of a mask of one pointer's width: a process belongs to one
    /// processor group of at most 64 CPUs, which is what it may run on.
    const MAX_CPU: usize = usize::BITS as usize;

    pub(super) fn place_beside_peer() -> Result<Placement, CliError> {
        super::place_on_allowed(&allowed_cpus()?)
    }

    pub(super) fn cpu_count() -> Result<usize, CliError> {
        Ok(allowed_cpus()?.len())
    }

    pub(super) fn pin_to_cpu(cpu: usize) -> Result<(), CliError> {
        if cpu >= MAX_CPU {
            return Err(CliError::new(format!(
                "CPU {cpu} is out of range (the largest CPU number is {})",
                MAX_CPU - 1
            )));
        }
        set_affinity_mask(1 << cpu).context(format_args!(
            "pinning to CPU {cpu} (is it in this process's processor group and allowed?)"
        ))
    }

    #[allow(dead_code, reason = "only `bench`, Unix's for now, unpins")]
    pub(super) fn unpin() -> Result<(), CliError> {
        let (_, system) = affinity_masks().context("reading the CPU affinity masks")?;
        set_affinity_mask(system).context("unpinning (widening the CPU affinity mask)")
    }

    /// The CPUs this process may run on, in ascending order.
    fn allowed_cpus() -> Result<Vec<usize>, CliError> {
        let (process, _) = affinity_masks().context("reading the CPU affinity mask")?;
        Ok((0..MAX_CPU)
            .filter(|&cpu| process & (1 << cpu) != 0)
            .collect())
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
mod os {
    use super::Placement;
    use crate::error::{CliError, Context};

    /// Why nothing is pinned here.
    const WHY: &str = "this OS cannot pin a process to a CPU";

    pub(super) fn place_beside_peer() -> Result<Placement, CliError> {
        Ok(if cpu_count()? < 2 {
            Placement::OneCpu
        } else {
            Placement::NotPinnable(WHY)
        })
    }

    /// Every CPU the OS offers: with no affinity mask, a process may run on all of them.
    pub(super) fn cpu_count() -> Result<usize, CliError> {
        std::thread::available_parallelism()
            .map(usize::from)
            .context("counting the CPUs")
    }

    pub(super) fn unpin() -> Result<(), CliError> {
        Ok(())
    }

    pub(super) fn pin_to_cpu(cpu: usize) -> Result<(), CliError> {
        Err(CliError::new(format!(
            "cannot pin to CPU {cpu}: {WHY}; leave out --cpu"
        )))
    }
}
