//! The POSIX backend's shared-memory wait: there is none.

/// This backend's name, for reports.
pub(crate) const BACKEND: &str = "posix";

/// POSIX has no way for a process to sleep on a word of shared memory until another
/// process wakes it: only process-shared mutexes and condition variables, which a hostile
/// peer could leave locked, and named semaphores, which outlive a crash. (macOS 14.4 has
/// `os_sync_wait_on_address`, which its own backend uses.) So this backend has none,
/// and a waiting side sleeps on its doorbell. Uninhabited: the code that would call it is
/// statically dead here.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SharedWait {}

/// No shared-memory wait on this backend: see [`SharedWait`].
pub(crate) fn shared_wait() -> Option<SharedWait> {
    None
}

impl SharedWait {
    /// Never called: there is no value to call it on.
    pub(crate) fn wake(&self, _word: &crate::core::sync::AtomicU32) {
        match *self {}
    }
}

impl crate::core::wait::Sleeper for SharedWait {
    fn announcement(&self) -> u32 {
        match *self {}
    }

    fn sleep(
        &self,
        _word: &crate::core::sync::AtomicU32,
        _expected: u32,
        _deadline: Option<std::time::Instant>,
    ) -> crate::core::wait::Woke {
        match *self {}
    }
}
