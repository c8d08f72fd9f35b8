//! Pinning to a CPU core, so that a benchmark's two processes each own one core and the
//! scheduler does not move them (a migration costs more than a whole spin round trip).

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use crate::error::{CliError, Context};

/// Pins the calling thread to `cpu`.
///
/// Threads inherit their creator's mask, so calling this at the start of `main`, before
/// any thread is spawned, pins the whole process.
pub fn pin_to_cpu(cpu: usize) -> Result<(), CliError> {
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

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Result<Vec<usize>, CliError> {
    let set = sched_getaffinity(None).context("reading the CPU affinity mask")?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}
