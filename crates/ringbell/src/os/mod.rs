//! Per-OS extensions: the few things that only make sense on one OS, such as the handles
//! an event loop of your own would wait on. As in `std::os`, each is an extension trait in
//! a module named after the OS family; the rest of the API is the same everywhere.

#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub mod unix;

#[cfg(windows)]
#[cfg_attr(docsrs, doc(cfg(windows)))]
pub mod windows;
