//! The Windows backend's tests, run under Wine in CI (never on real Windows yet): what
//! steps 1 and 2a of `docs/WINDOWS.md` built (regions, grants, doorbells, users, the
//! control pipe), between real processes where a peer matters. The pipe's framing and
//! address rule have platform-free tests of their own (`frame.rs`, `pipe_name.rs`), which
//! run on Linux too.
//!
//! # How the peer process is made
//!
//! As in `tests/common/mod.rs` for Unix: a test re-executes this test binary
//! ([`std::env::current_exe`]) with `--exact sys::windows::tests::child_entry --nocapture
//! --test-threads=1` and the environment variable [`ROLE`] naming what the child does (one
//! of the `role_*` functions). In the child, libtest runs only [`child_entry`], which runs
//! the role and ends the process: 0 if it succeeded, 1 after its panic message if not.
//! Run normally, `child_entry` is an empty test.
//!
//! The parent pushes handles into the child (`Grant::push_to`, as the server does) and
//! sends their values, with its other parameters, as one line of `name=value` pairs on the
//! child's stdin (a pipe test's child gets its listener's address in [`PIPE`] and speaks
//! over the pipe instead); the child reports lines containing [`MARKER`] on its stdout. libtest
//! writes its own text on the same line as the child's first one, so the parent looks for
//! the marker anywhere in a line.
//!
//! Every test has a watchdog that aborts the process after 60 s, and no test asserts how
//! long anything took: a wait that must end by the peer's death has a deadline ten
//! minutes away.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_ACCESS_DENIED, INVALID_HANDLE_VALUE, STATUS_INFO_LENGTH_MISMATCH,
    WAIT_FAILED,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_READ, FILE_MAP_WRITE, PAGE_READWRITE, SECTION_QUERY, SEC_RESERVE,
};
use windows_sys::Win32::System::Threading::{
    WaitForSingleObject, EVENT_MODIFY_STATE, PROCESS_SYNCHRONIZE, SYNCHRONIZATION_SYNCHRONIZE,
};

use super::handle::basic_information;
use super::*;

/// The environment variable that makes this test binary a child in a role.
const ROLE: &str = "RINGBELL_WINDOWS_TEST_CHILD";

/// The environment variable that tells a child the address of a control pipe.
const PIPE: &str = "RINGBELL_WINDOWS_TEST_PIPE";

/// What starts every line a child reports to its parent.
const MARKER: &str = "ringbell-child:";

/// A deadline that no test reaches: a wait that ends did so for another reason.
fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(600)
}

/// Aborts the process if it is still alive 60 s after this was made, unless dropped first:
/// a test that hangs fails instead of stalling CI.
struct Watchdog {
    _cancel: mpsc::Sender<()>,
}

fn watchdog(what: &'static str) -> Watchdog {
    let (cancel, cancelled) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) =
            cancelled.recv_timeout(Duration::from_secs(60))
        {
            // Past libtest's capture of `eprintln!`, which would die with the process.
            let _ = writeln!(
                io::stderr(),
                "watchdog: {what} still running after 60 s: aborting"
            );
            std::process::abort();
        }
    });
    Watchdog { _cancel: cancel }
}

// ---------------------------------------------------------------------------------------
// The child processes.

/// A child process running a role, killed on drop if it is still running.
struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn spawn(role: &str) -> ChildProcess {
        ChildProcess::spawn_at(role, "")
    }

    /// A child whose role uses the control pipe at `address` (in [`PIPE`]).
    fn spawn_at(role: &str, address: &str) -> ChildProcess {
        let test_name = concat!(module_path!(), "::child_entry")
            .split_once("::")
            .expect("a module path has the crate's name first")
            .1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PIPE, address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the test binary re-executes itself");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        ChildProcess {
            child,
            stdin,
            stdout,
        }
    }

    /// The child's process, opened as a server opens its client's.
    fn open(&self) -> PeerProcess {
        PeerProcess::open(self.child.id()).expect("OpenProcess on our own child")
    }

    /// Sends the child one line of `name=value` pairs.
    fn send(&mut self, pairs: &[(&str, u64)]) {
        let line: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{}", line.join(" ")).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the child reports, after the marker.
    fn report(&mut self) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let read = self.stdout.read_line(&mut line).unwrap();
            assert!(read > 0, "the child ended without reporting");
            // libtest may have written its own text before ours on this line.
            if let Some((_, report)) = line.split_once(MARKER) {
                return report.trim().to_string();
            }
        }
    }

    /// Waits for the child to end, and checks that its role succeeded.
    fn succeeds(mut self) {
        self.stdin = None;
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the child failed: {status}");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entry point of every child role; an empty test when run normally.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let _watchdog = watchdog("a child role");
    let outcome = std::panic::catch_unwind(|| match role.as_str() {
        "share" => role_share(),
        "ring-and-exit" => role_ring_and_exit(),
        "sleep" => role_sleep(),
        "idle" => role_idle(),
        "widen" => role_widen(),
        "offer-manual-reset" => role_offer_manual_reset(),
        "count-own-handles" => role_count_own_handles(),
        "pipe-client" => role_pipe_client(),
        "pipe-server" => role_pipe_server(),
        "pipe-server-once" => role_pipe_server_once(),
        "pipe-idle-client" => role_pipe_idle_client(),
        "count-pipe-handles" => role_count_pipe_handles(),
        "handshake-client" => role_handshake_client(),
        #[cfg(feature = "tokio")]
        "ring-on-cue" => readiness::role_ring_on_cue(),
        #[cfg(feature = "tokio")]
        "count-async-handles" => readiness::role_count_async_handles(),
        other => panic!("unknown role {other}"),
    });
    // Exit here, so that libtest does not go on to report (or run) anything else.
    std::process::exit(if outcome.is_ok() { 0 } else { 1 });
}

/// Reports a line to the parent.
fn report(what: &str) {
    println!("{MARKER} {what}");
}

/// The parent's line of `name=value` pairs.
fn parameters() -> HashMap<String, u64> {
    let mut line = String::new();
    io::stdin().read_line(&mut line).unwrap();
    line.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("name=value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The grant whose value the parent sent as `name`.
fn received(parameters: &HashMap<String, u64>, name: &str) -> Grant {
    Grant::from_peer_value(parameters[name]).expect("the parent pushed a handle")
}

/// The rights a handle carries.
fn rights(handle: &impl AsHandle) -> u32 {
    basic_information(handle.as_handle()).unwrap().GrantedAccess
}

/// Whether a zero-timeout wait on `handle` is refused for want of `SYNCHRONIZE`.
fn wait_is_denied(handle: &impl AsHandle) -> bool {
    // SAFETY: a zero-timeout wait on a handle the caller owns; no memory is involved.
    let status = unsafe { WaitForSingleObject(handle.as_handle().as_raw_handle(), 0) };
    // SAFETY: reads this thread's last error, set by the wait just made.
    status == WAIT_FAILED && unsafe { GetLastError() } == ERROR_ACCESS_DENIED
}

/// The byte at `offset` of the test pattern that `who` writes.
fn pattern(who: u8, offset: usize) -> u8 {
    (offset as u8).wrapping_mul(31).wrapping_add(who)
}

const PARENT: u8 = 1;
const CHILD: u8 = 2;
/// Where in the region each side writes its pattern: the parent at the start, the child
/// at the end, so that both the first and the last page are shown to be shared.
const PATTERN_LEN: usize = 4096;

/// Writes `who`'s pattern over `range` of `region`.
///
/// Only for bytes the peer does not touch meanwhile: every test writes its part before it
/// rings the peer, and the peer writes only its own part.
fn write_pattern(region: &SharedRegion, who: u8, range: std::ops::Range<usize>) {
    assert!(range.end <= region.len(), "inside the region");
    for offset in range {
        // SAFETY: inside the live mapping (asserted above); a volatile byte write through
        // a raw pointer, to bytes no one else accesses now (see above), breaks nothing.
        unsafe {
            region
                .as_ptr()
                .add(offset)
                .write_volatile(pattern(who, offset))
        };
    }
}

/// Checks that `range` of `region` holds `who`'s pattern; the peer wrote it before it
/// rang, and writes nothing there since.
fn expect_pattern(region: &SharedRegion, who: u8, range: std::ops::Range<usize>) {
    assert!(range.end <= region.len(), "inside the region");
    for offset in range {
        // SAFETY: as in `write_pattern`, a volatile byte read inside the live mapping.
        let byte = unsafe { region.as_ptr().add(offset).read_volatile() };
        assert_eq!(byte, pattern(who, offset), "{who}'s pattern at {offset}");
    }
}

/// Child: adopts the region, a ringer, a doorbell and the parent's process, checks each
/// handle's rights, reads the parent's pattern and writes its own, rings the parent, and
/// waits for the parent's ring (or death).
fn role_share() {
    let parameters = parameters();
    let len = parameters["len"] as usize;

    let region_grant = received(&parameters, "region");
    assert_eq!(
        rights(&region_grant),
        FILE_MAP_READ | FILE_MAP_WRITE | SECTION_QUERY,
        "the section came with other rights than the peer's (never SECTION_EXTEND_SIZE)"
    );
    let region = SharedRegion::adopt(region_grant, len, current_user()).unwrap();
    assert_eq!(region.len(), len);

    let ringer_grant = received(&parameters, "ringer");
    assert_eq!(rights(&ringer_grant), doorbell::RINGER_ACCESS);
    assert!(
        wait_is_denied(&ringer_grant),
        "a ringer can wait on its doorbell, and so swallow its rings"
    );
    let ringer = DoorbellRinger::adopt(ringer_grant).unwrap();

    let doorbell_grant = received(&parameters, "doorbell");
    assert_eq!(rights(&doorbell_grant), doorbell::WAITER_ACCESS);
    let doorbell = Doorbell::adopt(doorbell_grant).unwrap();

    let parent_grant = received(&parameters, "parent");
    assert_eq!(rights(&parent_grant), PROCESS_SYNCHRONIZE);
    let parent = PeerProcess::adopt(parent_grant).unwrap();

    expect_pattern(&region, PARENT, 0..PATTERN_LEN);
    write_pattern(&region, CHILD, len - PATTERN_LEN..len);
    ringer.ring();
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&parent), Some(far_deadline())).unwrap(),
        Rang::Rung
    );
    report(&format!("done user={}", current_user()));
}

/// Child: adopts a ringer, rings it once, and exits.
fn role_ring_and_exit() {
    let parameters = parameters();
    DoorbellRinger::adopt(received(&parameters, "ringer"))
        .unwrap()
        .ring();
}

/// Child: adopts a doorbell and the parent's process, says so, and sleeps on the doorbell
/// (which nobody rings) until the parent kills it, or dies itself.
fn role_sleep() {
    let parameters = parameters();
    let doorbell = Doorbell::adopt(received(&parameters, "doorbell")).unwrap();
    let parent = PeerProcess::adopt(received(&parameters, "parent")).unwrap();
    report("asleep");
    let rang = sleep_until_rung_or_ended(&doorbell, Some(&parent), None).unwrap();
    assert_eq!(rang, Rang::PeerEnded, "nobody rings this doorbell");
}

/// Child: says it is ready and waits for its stdin to close, holding still, so that its
/// parent can count its handles.
fn role_idle() {
    report("ready");
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

/// Child: lists its own handles around making and dropping one of everything, in a
/// process where nothing else runs.
fn role_count_own_handles() {
    let make_all = || {
        let (region, grant) = SharedRegion::create(64 * 1024).unwrap();
        let (doorbell, ringer) = doorbell_pair().unwrap();
        let me = PeerProcess::open(std::process::id()).unwrap();
        let own = PeerProcess::grant_of_this_process().unwrap();
        // A region pushed to ourselves and adopted: its section handle is closed once it
        // is mapped, as the peer's would be.
        let adopted = SharedRegion::adopt(
            Grant::from_peer_value(grant.push_to(&me).unwrap().value()).unwrap(),
            64 * 1024,
            current_user(),
        )
        .unwrap();
        // The section, the event twice (doorbell and ringer), our process as a peer, and
        // our process to grant: five handles; the adopted region holds a view, not a
        // handle.
        let values = [
            value_of(&grant),
            value_of(&doorbell),
            value_of(&ringer),
            value_of(&me),
            value_of(&own),
        ];
        ((region, grant, doorbell, ringer, me, own, adopted), values)
    };
    // Once first, so that whatever Wine makes on first use is there before counting.
    drop(make_all());
    let pid = std::process::id();
    let before = handles_of(pid);
    let (everything, values) = make_all();
    let during = handles_of(pid);
    drop(everything);
    let after = handles_of(pid);
    for value in values {
        assert!(!before.contains(&value), "{value:#x} was open before");
        assert!(
            during.contains(&value),
            "{value:#x} is not in the handle table"
        );
        assert!(
            !after.contains(&value),
            "{value:#x} is still open after drop"
        );
    }
    assert_eq!(during.len(), before.len() + 5, "handles while alive");
    assert_eq!(after.len(), before.len(), "handles left after drop");
    report(&format!(
        "counted {} {} {}",
        before.len(),
        during.len(),
        after.len()
    ));
}

/// The value of a handle of this process.
fn value_of(handle: &impl AsHandle) -> u64 {
    handle.as_handle().as_raw_handle() as u64
}

// ---------------------------------------------------------------------------------------
// Counting handles.

/// One entry of the system handle table (`SYSTEM_HANDLE_TABLE_ENTRY_INFO`, for
/// `NtQuerySystemInformation` class 16), whose owner's pid is cut to 16 bits.
#[repr(C)]
#[derive(Clone, Copy)]
struct HandleEntry {
    owner_pid: u16,
    creator_back_trace_index: u16,
    object_type_index: u8,
    attributes: u8,
    value: u16,
    object: *mut std::ffi::c_void,
    granted_access: u32,
}

/// `SystemHandleInformation`.
const SYSTEM_HANDLE_INFORMATION: i32 = 16;

/// The values of the handles the process `pid` holds, from the system handle table:
/// Wine's `GetProcessHandleCount` succeeds and always answers 0. The table gives 16 bits
/// of each owner's pid and of each value, which is enough under Wine, whose pids and
/// handle values are small.
fn handles_of(pid: u32) -> Vec<u64> {
    let mut buffer: Vec<u64> = vec![0; 64 * 1024];
    loop {
        let size = buffer.len() * 8;
        let mut returned = 0u32;
        // SAFETY: the buffer is live, writable and `size` bytes long.
        let status = unsafe {
            NtQuerySystemInformation(
                SYSTEM_HANDLE_INFORMATION,
                buffer.as_mut_ptr().cast(),
                size as u32,
                &mut returned,
            )
        };
        if status == STATUS_INFO_LENGTH_MISMATCH {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        assert!(status >= 0, "NtQuerySystemInformation: {status:#x}");
        // The count (a u32, padded to 8 bytes), then the entries.
        let count = buffer[0] as u32 as usize;
        let room = (size - 8) / size_of::<HandleEntry>();
        assert!(count <= room, "the handle table overflows its buffer");
        // SAFETY: `count` entries follow the count, inside the buffer (checked above),
        // 8-aligned; the struct is plain data, valid for any bits.
        let entries = unsafe {
            std::slice::from_raw_parts(buffer.as_ptr().add(1).cast::<HandleEntry>(), count)
        };
        return entries
            .iter()
            .filter(|entry| entry.owner_pid == pid as u16)
            .map(|entry| u64::from(entry.value))
            .collect();
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_region_and_doorbells_pushed_into_a_child_carry_its_writes_and_its_ring() {
    let _watchdog = watchdog("the region test");
    let len = 64 * 1024;
    let (region, region_grant) = SharedRegion::create(len).unwrap();
    assert_eq!(region.len(), len);
    // SAFETY: a live mapping of `len` bytes, which the child does not touch until it has
    // the parameters; byte reads cannot break any invariant.
    let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
    assert!(
        bytes.iter().all(|&byte| byte == 0),
        "a new region is zeroed"
    );
    write_pattern(&region, PARENT, 0..PATTERN_LEN);
    let (ours, ringer_for_child) = doorbell_pair().unwrap();
    let (doorbell_for_child, ringer) = doorbell_pair().unwrap();

    let mut child = ChildProcess::spawn("share");
    let peer = child.open();
    let pushed = [
        ("region", region_grant.push_to(&peer).unwrap()),
        (
            "ringer",
            ringer_for_child.into_grant().push_to(&peer).unwrap(),
        ),
        (
            "doorbell",
            doorbell_for_child.into_grant().push_to(&peer).unwrap(),
        ),
        (
            "parent",
            PeerProcess::grant_of_this_process()
                .unwrap()
                .push_to(&peer)
                .unwrap(),
        ),
    ];
    // Our own handles to what we pushed go now (the doorbell's and the ringer's with the
    // temporaries above): the child's keep the objects alive.
    drop(region_grant);
    let mut line: Vec<(&str, u64)> = pushed.iter().map(|(n, h)| (*n, h.value())).collect();
    line.push(("len", len as u64));
    child.send(&line);

    assert_eq!(
        sleep_until_rung_or_ended(&ours, Some(&peer), Some(far_deadline())).unwrap(),
        Rang::Rung,
        "the child rings once it has written"
    );
    expect_pattern(&region, CHILD, len - PATTERN_LEN..len);
    ringer.ring();
    let done = child.report();
    assert_eq!(done, format!("done user={}", current_user()), "same user");
    child.succeeds();
}

#[test]
fn a_ring_is_latched_until_a_wait_takes_it_even_after_the_ringer_exits() {
    let _watchdog = watchdog("the latched ring test");
    // In one process: a ring before the wait is not lost, and rings before one wait are
    // one ring (a zero timeout, so the second wait only looks).
    let (doorbell, ringer) = doorbell_pair().unwrap();
    let me = PeerProcess::open(std::process::id()).unwrap();
    ringer.ring();
    ringer.ring();
    let now = Some(Instant::now());
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&me), now).unwrap(),
        Rang::Rung
    );
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&me), now).unwrap(),
        Rang::TimedOut
    );
    ringer.ring();
    doorbell.drain();
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&me), now).unwrap(),
        Rang::TimedOut,
        "drained"
    );

    // Across processes: the child rings and exits before we wait. The ring is still there,
    // and wins over the child's end; the next wait sees the end.
    let mut child = ChildProcess::spawn("ring-and-exit");
    let peer = child.open();
    let pushed = ringer.into_grant().push_to(&peer).unwrap();
    child.send(&[("ringer", pushed.value())]);
    let status = child.child.wait().unwrap();
    assert!(status.success(), "the child failed: {status}");
    assert!(peer.has_ended());
    let far = Some(far_deadline());
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&peer), far).unwrap(),
        Rang::Rung
    );
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, Some(&peer), far).unwrap(),
        Rang::PeerEnded
    );
}

#[test]
fn a_wait_ends_when_the_peer_process_is_killed() {
    let _watchdog = watchdog("the killed peer test");
    let (ours, _never_rung) = doorbell_pair().unwrap();
    let (doorbell_for_child, _never_rung_either) = doorbell_pair().unwrap();
    let mut child = ChildProcess::spawn("sleep");
    let peer = child.open();
    let doorbell = doorbell_for_child.into_grant().push_to(&peer).unwrap();
    let parent = PeerProcess::grant_of_this_process()
        .unwrap()
        .push_to(&peer)
        .unwrap();
    child.send(&[("doorbell", doorbell.value()), ("parent", parent.value())]);
    assert_eq!(child.report(), "asleep");
    assert!(!peer.has_ended());

    // Killed while we wait, most likely (if before, the wait ends at once just the same).
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        child.child.kill().unwrap();
        child
    });
    assert_eq!(
        sleep_until_rung_or_ended(&ours, Some(&peer), Some(far_deadline())).unwrap(),
        Rang::PeerEnded
    );
    let mut child = killer.join().unwrap();
    assert!(!child.child.wait().unwrap().success());
}

// ---------------------------------------------------------------------------------------
// Security: the DACL of sections and events, widening a pushed handle, the reset mode.

/// The one entry of the DACL of sections and doorbell events, as `dacl_text` may write it
/// back: OWNER RIGHTS allowed `READ_CONTROL`, by abbreviation or by number.
const SHARED_OBJECT_ACES: [&str; 4] = [
    "(A;;RC;;;OW)",
    "(A;;RC;;;S-1-3-4)",
    "(A;;0x20000;;;OW)",
    "(A;;0x20000;;;S-1-3-4)",
];

#[test]
fn sections_and_doorbell_events_carry_a_dacl_that_grants_nothing_to_widen_with() {
    let (_region, region_grant) = SharedRegion::create(64 * 1024).unwrap();
    let (doorbell, ringer) = doorbell_pair().unwrap();
    for (what, handle) in [
        ("the section", region_grant.as_handle()),
        ("the doorbell's event", doorbell.as_handle()),
    ] {
        let text = dacl_text(handle);
        let dacl = text.strip_prefix("D:P").unwrap_or_else(|| {
            panic!("{what}: a protected DACL: {text}");
        });
        assert!(
            SHARED_OBJECT_ACES.contains(&dacl),
            "{what}: one entry, OWNER RIGHTS allowed READ_CONTROL only: {text}"
        );
        assert!(!text.contains(&current_user().to_string()), "{text}");
    }
    // Our own handles keep the rights they need: the creator's were granted at creation,
    // the ringer's by a duplicate asking for fewer.
    assert_eq!(rights(&ringer), doorbell::RINGER_ACCESS);
    ringer.ring();
    assert_eq!(
        sleep_until_rung_or_ended(&doorbell, None, Some(far_deadline())).unwrap(),
        Rang::Rung
    );
}

/// What a `DuplicateHandle` of `handle` in this process, asking for `access`, did:
/// `granted`, `denied` (`ERROR_ACCESS_DENIED`) or `error <code>`.
fn duplicate_outcome(handle: &impl AsHandle, access: u32) -> String {
    use windows_sys::Win32::Foundation::{DuplicateHandle, FALSE};
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    let mut raw = std::ptr::null_mut();
    // SAFETY: the source handle is borrowed for the call, the process pseudo-handle is
    // always valid, and the out-pointer points at a live local, which receives a new
    // handle that the `OwnedHandle` below closes.
    let made = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle.as_handle().as_raw_handle(),
            GetCurrentProcess(),
            &mut raw,
            access,
            FALSE,
            0,
        )
    };
    if made != 0 {
        // SAFETY: a new handle of ours, which nothing else owns.
        drop(unsafe { OwnedHandle::from_raw_handle(raw) });
        return "granted".to_string();
    }
    // SAFETY: reads this thread's last error, set by the failed call just made.
    match unsafe { GetLastError() } {
        ERROR_ACCESS_DENIED => "denied".to_string(),
        code => format!("error {code}"),
    }
}

/// Child: receives a section, a ringer and a doorbell made by the backend, and an event
/// made with the default DACL, and tries to duplicate each to the rights it was pushed
/// (which must work) and to more; reports what each attempt did.
fn role_widen() {
    use windows_sys::Win32::Storage::FileSystem::{READ_CONTROL, WRITE_DAC};
    use windows_sys::Win32::System::Memory::SECTION_EXTEND_SIZE;

    let parameters = parameters();
    let region = received(&parameters, "region");
    let ringer = received(&parameters, "ringer");
    let doorbell = received(&parameters, "doorbell");
    let plain = received(&parameters, "plain");
    let section_rights = FILE_MAP_READ | FILE_MAP_WRITE | SECTION_QUERY;
    let attempts = [
        ("section-same", &region, section_rights),
        (
            "section-extend",
            &region,
            section_rights | SECTION_EXTEND_SIZE,
        ),
        ("section-write-dac", &region, WRITE_DAC),
        ("section-read-control", &region, READ_CONTROL),
        ("ringer-same", &ringer, doorbell::RINGER_ACCESS),
        (
            "ringer-synchronize",
            &ringer,
            doorbell::RINGER_ACCESS | SYNCHRONIZATION_SYNCHRONIZE,
        ),
        ("ringer-write-dac", &ringer, WRITE_DAC),
        ("doorbell-same", &doorbell, doorbell::WAITER_ACCESS),
        (
            "doorbell-modify",
            &doorbell,
            doorbell::WAITER_ACCESS | EVENT_MODIFY_STATE,
        ),
        (
            "plain-synchronize",
            &plain,
            doorbell::RINGER_ACCESS | SYNCHRONIZATION_SYNCHRONIZE,
        ),
    ];
    let outcomes: Vec<String> = attempts
        .iter()
        .map(|(name, handle, access)| format!("{name}={}", duplicate_outcome(*handle, *access)))
        .collect();
    report(&outcomes.join(" "));
}

/// Pushes into a `widen` child a section, a ringer and a doorbell made by the backend, and
/// an event with the default DACL, and returns what the child's attempts to duplicate each
/// did (its report, and the same split into name and outcome), after checking the
/// controls: a handle can always be duplicated to the rights it has, and the default DACL
/// lets the same user widen them. Without these, a refusal would prove nothing.
fn widening_in_a_child() -> (String, HashMap<String, String>) {
    let _watchdog = watchdog("the widening test");
    let (_region, region_grant) = SharedRegion::create(64 * 1024).unwrap();
    let (_doorbell, ringer) = doorbell_pair().unwrap();
    let (doorbell_for_child, _ringer) = doorbell_pair().unwrap();
    // SAFETY: no pointer is passed but nulls (default security, no name); a null result is
    // checked below.
    let raw = unsafe {
        windows_sys::Win32::System::Threading::CreateEventW(
            std::ptr::null(),
            0,
            0,
            std::ptr::null(),
        )
    };
    assert!(!raw.is_null(), "CreateEventW");
    // SAFETY: a new handle, which nothing else owns.
    let plain = Grant::new(
        unsafe { OwnedHandle::from_raw_handle(raw) },
        doorbell::RINGER_ACCESS,
    );

    let mut child = ChildProcess::spawn("widen");
    let peer = child.open();
    let pushed = [
        ("region", region_grant.push_to(&peer).unwrap()),
        ("ringer", ringer.into_grant().push_to(&peer).unwrap()),
        (
            "doorbell",
            doorbell_for_child.into_grant().push_to(&peer).unwrap(),
        ),
        ("plain", plain.push_to(&peer).unwrap()),
    ];
    let line: Vec<(&str, u64)> = pushed.iter().map(|(n, h)| (*n, h.value())).collect();
    child.send(&line);
    let report = child.report();
    child.succeeds();
    println!("widening in the child: {report}");
    let outcomes: HashMap<String, String> = report
        .split_whitespace()
        .map(|pair| {
            let (name, outcome) = pair.split_once('=').expect("name=outcome");
            (name.to_string(), outcome.to_string())
        })
        .collect();
    for name in [
        "section-same",
        "ringer-same",
        "doorbell-same",
        "plain-synchronize",
    ] {
        assert_eq!(outcomes[name], "granted", "{name}: {report}");
    }
    (report, outcomes)
}

#[test]
fn a_holder_cannot_duplicate_a_pushed_handle_to_more_rights() {
    let (report, outcomes) = widening_in_a_child();
    for name in ["section-extend", "ringer-synchronize", "doorbell-modify"] {
        assert_eq!(outcomes[name], "denied", "{name}: {report}");
    }
}

/// The other way to widen a handle: give oneself `WRITE_DAC`, rewrite the DACL, then
/// duplicate. Windows grants an object's owner `WRITE_DAC` whatever its DACL says, unless
/// the DACL has an OWNER RIGHTS (S-1-3-4) entry, which ours has for this (`security.rs`).
///
/// Ignored because Wine 8 does not honour OWNER RIGHTS: it grants the owner
/// `READ_CONTROL | WRITE_DAC` anyway (seen here: `section-write-dac=granted`,
/// `ringer-write-dac=granted`), so under Wine a holder of the same user can still rewrite
/// the DACL and widen its handle. Run it with `--ignored` on real Windows.
#[test]
#[ignore = "Wine 8 grants an object's owner WRITE_DAC whatever the DACL says (no OWNER RIGHTS)"]
fn a_holder_cannot_give_itself_write_dac_to_rewrite_the_dacl() {
    let (report, outcomes) = widening_in_a_child();
    for name in ["section-write-dac", "ringer-write-dac"] {
        assert_eq!(outcomes[name], "denied", "{name}: {report}");
    }
}

/// A manual-reset event, with all rights (default security, no name).
fn manual_reset_event() -> OwnedHandle {
    // SAFETY: no pointer is passed but nulls; a null result is checked below.
    let raw = unsafe {
        windows_sys::Win32::System::Threading::CreateEventW(
            std::ptr::null(),
            1,
            0,
            std::ptr::null(),
        )
    };
    assert!(!raw.is_null(), "CreateEventW");
    // SAFETY: a new handle, which nothing else owns.
    unsafe { OwnedHandle::from_raw_handle(raw) }
}

/// Checks that `result` is the refusal of a manual-reset event.
fn refused_as_manual_reset<T: std::fmt::Debug>(result: io::Result<T>, what: &str) {
    let error = result.expect_err(what);
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{what}: {error}");
    assert!(
        error.to_string().contains("manual-reset"),
        "{what}: {error}"
    );
}

#[test]
fn a_manual_reset_event_pushed_as_a_doorbell_or_a_ringer_is_refused() {
    let me = PeerProcess::open(std::process::id()).unwrap();
    let event = manual_reset_event();
    let push = |access| {
        let grant = Grant::new(event.try_clone().unwrap(), access);
        Grant::from_peer_value(grant.push_to(&me).unwrap().value()).unwrap()
    };
    refused_as_manual_reset(
        Doorbell::adopt(push(doorbell::WAITER_ACCESS)),
        "a manual-reset doorbell",
    );
    refused_as_manual_reset(
        DoorbellRinger::adopt(push(doorbell::RINGER_ACCESS)),
        "a manual-reset ringer",
    );
    // The same pushes of an auto-reset event are adopted.
    let (doorbell, ringer) = doorbell_pair().unwrap();
    let doorbell = Doorbell::adopt(
        Grant::from_peer_value(doorbell.into_grant().push_to(&me).unwrap().value()).unwrap(),
    )
    .unwrap();
    DoorbellRinger::adopt(
        Grant::from_peer_value(ringer.into_grant().push_to(&me).unwrap().value()).unwrap(),
    )
    .unwrap()
    .ring();
    doorbell.drain();
}

/// Child: offers a manual-reset event twice, with a ringer's and with a doorbell's rights,
/// as a client offers its ringer, and holds them until its stdin closes.
fn role_offer_manual_reset() {
    let event = manual_reset_event();
    let offer = |access| {
        Grant::new(event.try_clone().unwrap(), access)
            .offer()
            .unwrap()
    };
    let as_ringer = offer(doorbell::RINGER_ACCESS);
    let as_doorbell = offer(doorbell::WAITER_ACCESS);
    report(&format!(
        "ringer={} doorbell={}",
        value_of(&as_ringer),
        value_of(&as_doorbell)
    ));
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

#[test]
fn a_manual_reset_event_offered_by_a_child_is_refused() {
    let _watchdog = watchdog("the manual-reset offer test");
    let mut child = ChildProcess::spawn("offer-manual-reset");
    let peer = child.open();
    let report = child.report();
    let values: HashMap<&str, u64> = report
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("name=value");
            (name, value.parse().expect("a number"))
        })
        .collect();
    // Pulled as a server pulls its client's offer, with the rights it has there.
    let ringer = Grant::pull_from(&peer, values["ringer"]).unwrap();
    assert_eq!(rights(&ringer), doorbell::RINGER_ACCESS);
    refused_as_manual_reset(DoorbellRinger::adopt(ringer), "an offered ringer");
    let doorbell = Grant::pull_from(&peer, values["doorbell"]).unwrap();
    refused_as_manual_reset(Doorbell::adopt(doorbell), "an offered doorbell");
    child.succeeds();
}

#[test]
fn values_that_cannot_be_pushed_handles_are_refused() {
    let refused = |value: u64| match Grant::from_peer_value(value) {
        Ok(grant) => panic!("{value:#x} was taken for a handle: {grant:?}"),
        Err(error) => {
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            error.to_string()
        }
    };
    assert!(refused(0).contains("null"));
    for pseudo in -12i64..=-1 {
        assert!(refused(pseudo as u64).contains("pseudo-handle"), "{pseudo}");
    }
    // Not a multiple of 4 (the OS would ignore the low bits and find another handle), out
    // of the range of handle values, or naming no open handle.
    assert!(refused(0x45).contains("not a handle value"));
    assert!(refused(1 << 40).contains("not a handle value"));
    assert!(refused(-13i64 as u64).contains("not a handle value"));
    assert!(refused(0x7FFF_FFF0).contains("no open handle"));
}

/// A second grant for the object of `grant`, the way a peer's would arrive: pushed into a
/// process (ours) and taken back from its value.
fn pushed_to_ourselves(grant: &Grant) -> Grant {
    let me = PeerProcess::open(std::process::id()).unwrap();
    Grant::from_peer_value(grant.push_to(&me).unwrap().value()).unwrap()
}

fn refusal<T: std::fmt::Debug>(adopted: io::Result<T>) -> String {
    let error = adopted.expect_err("a wrong object was adopted");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    error.to_string()
}

#[test]
fn a_region_of_another_size_or_kind_is_refused_before_it_is_used() {
    let user = current_user();
    let (_region, grant) = SharedRegion::create(8192).unwrap();
    let adopted = SharedRegion::adopt(pushed_to_ourselves(&grant), 8192, user).unwrap();
    assert_eq!(adopted.len(), 8192);
    for announced in [4096, 12288, 16384, 1 << 30] {
        let refused = refusal(SharedRegion::adopt(
            pushed_to_ourselves(&grant),
            announced,
            user,
        ));
        assert!(refused.contains("size differs"), "{announced}: {refused}");
    }
    assert!(refusal(SharedRegion::adopt(pushed_to_ourselves(&grant), 0, user)).contains("empty"));

    // An event where a section should be.
    let (doorbell, _ringer) = doorbell_pair().unwrap();
    let event = doorbell.into_grant();
    let refused = refusal(SharedRegion::adopt(pushed_to_ourselves(&event), 8192, user));
    assert!(refused.contains("of type Event, not Section"), "{refused}");

    // A section made with SEC_RESERVE, whose pages are not committed and would fault.
    // SAFETY: no pointer is passed but nulls; the handle is checked and owned below.
    let reserved = unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_READWRITE | SEC_RESERVE,
            0,
            8192,
            std::ptr::null(),
        )
    };
    assert!(!reserved.is_null());
    // SAFETY: a new handle, which nothing else owns.
    let reserved = Grant::new(
        unsafe { OwnedHandle::from_raw_handle(reserved) },
        FILE_MAP_READ | FILE_MAP_WRITE | SECTION_QUERY,
    );
    let refused = refusal(SharedRegion::adopt(
        pushed_to_ourselves(&reserved),
        8192,
        user,
    ));
    assert!(refused.contains("not committed"), "{refused}");
}

#[test]
fn a_doorbell_or_a_process_that_is_not_one_is_refused() {
    let (_region, section) = SharedRegion::create(8192).unwrap();
    let refused = refusal(Doorbell::adopt(pushed_to_ourselves(&section)));
    assert!(refused.contains("of type Section, not Event"), "{refused}");
    let refused = refusal(DoorbellRinger::adopt(pushed_to_ourselves(&section)));
    assert!(refused.contains("of type Section, not Event"), "{refused}");
    let refused = refusal(PeerProcess::adopt(pushed_to_ourselves(&section)));
    assert!(
        refused.contains("of type Section, not Process"),
        "{refused}"
    );

    // A ringer's handle can set the event, not wait on it: it is no doorbell.
    let (_doorbell, ringer) = doorbell_pair().unwrap();
    let refused = refusal(Doorbell::adopt(pushed_to_ourselves(&ringer.into_grant())));
    assert!(refused.contains("lacks the rights"), "{refused}");
    // And a doorbell's handle can wait, not ring.
    let (doorbell, _ringer) = doorbell_pair().unwrap();
    let refused = refusal(DoorbellRinger::adopt(pushed_to_ourselves(
        &doorbell.into_grant(),
    )));
    assert!(refused.contains("lacks the rights"), "{refused}");
}

#[test]
fn a_handle_pushed_into_a_child_is_closed_there_when_retracted() {
    let _watchdog = watchdog("the retract test");
    let mut child = ChildProcess::spawn("idle");
    assert_eq!(child.report(), "ready");
    let peer = child.open();
    let pid = child.child.id();
    let (_region, grant) = SharedRegion::create(8192).unwrap();
    let pushed = grant.push_to(&peer).unwrap();
    // The child's table itself, not its size: the child may make and close handles of its
    // own meanwhile (a count taken under load once found one more after the retraction).
    assert!(
        handles_of(pid).contains(&pushed.value()),
        "the push made the child a handle"
    );
    pushed.retract(&peer).unwrap();
    assert!(
        !handles_of(pid).contains(&pushed.value()),
        "the retraction closed it"
    );
    child.succeeds();
}

#[test]
fn dropping_everything_closes_every_handle_it_made() {
    let _watchdog = watchdog("the handle count test");
    let mut child = ChildProcess::spawn("count-own-handles");
    let counted = child.report();
    assert!(counted.starts_with("counted "), "{counted}");
    child.succeeds();
}

// ---------------------------------------------------------------------------------------
// The control pipe (step 2a).

/// An address for a test's listener, unique to this process and `tag` (tests run in
/// parallel threads of one process): a Unix-style path, so that the address rule is used.
fn address(tag: &str) -> std::path::PathBuf {
    format!("/tmp/ringbell-test-{}-{tag}.sock", std::process::id()).into()
}

/// A listener at `address` and both ends of one connection to it, in this process: the
/// server pushes into (and pulls from) its own process, which is its client's.
fn control_pair(address: &std::path::Path) -> (ControlListener, ControlStream, ControlStream) {
    let listener = ControlListener::bind(address, false).unwrap();
    let client = ControlStream::connect(address, far_deadline()).unwrap();
    let server = listener.accept().unwrap();
    (listener, client, server)
}

/// The address a child was given.
fn child_address() -> std::path::PathBuf {
    std::env::var(PIPE).expect("the parent names a pipe").into()
}

/// Child: connects to its parent's listener and checks who serves it; offers the ringer
/// of a doorbell of its own with its hello; adopts the region and the ringer its parent
/// pushed with the welcome (and the parent's process, which came with them), reads the
/// parent's pattern and writes its own, rings; sleeps until the parent rings back through
/// the offered ringer; says goodbye.
fn role_pipe_client() {
    let parameters = parameters();
    let control = ControlStream::connect(&child_address(), far_deadline()).unwrap();
    assert_eq!(u64::from(control.peer_pid().unwrap()), parameters["server"]);
    assert_eq!(control.peer_user().unwrap(), current_user());
    assert!(
        control.peer_process().is_err(),
        "no process handle before the server's first grants"
    );
    let (own, ringer_for_server) = doorbell_pair().unwrap();
    control
        .send_with_grants(b"hello", &[&ringer_for_server.into_grant()])
        .unwrap();

    let mut welcome = [0u8; 7];
    let grants = control.recv_with_grants(&mut welcome).unwrap();
    assert_eq!(&welcome, b"welcome");
    let [region, ringer]: [Grant; 2] = grants.try_into().expect("two grants");
    let len = parameters["len"] as usize;
    let region = SharedRegion::adopt(region, len, current_user()).unwrap();
    let ringer = DoorbellRinger::adopt(ringer).unwrap();
    let server = control
        .peer_process()
        .expect("the server's process came too");
    assert_eq!(rights(server), PROCESS_SYNCHRONIZE, "SYNCHRONIZE only");
    expect_pattern(&region, PARENT, 0..PATTERN_LEN);
    write_pattern(&region, CHILD, len - PATTERN_LEN..len);
    ringer.ring();
    assert_eq!(
        sleep_until_rung_or_ended(&own, Some(server), Some(far_deadline())).unwrap(),
        Rang::Rung
    );
    control.write_all(b"bye").unwrap();
    report("done");
    // Wait for the parent's hang-up, so that our goodbye is read before we exit.
    let mut more = [0u8; 1];
    let end = control.read_exact(&mut more).unwrap_err();
    assert_eq!(end.kind(), io::ErrorKind::UnexpectedEof, "{end}");
}

/// Child: listens at the address it was given, says so, and holds still until its stdin
/// closes or it is killed.
fn role_pipe_server() {
    let _listener = ControlListener::bind(&child_address(), false).unwrap();
    report("listening");
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

/// Child: listens, accepts one client, pushes it a doorbell (and so its process), writes
/// bytes the client will not read yet, says so, and holds still until killed.
fn role_pipe_server_once() {
    let listener = ControlListener::bind(&child_address(), false).unwrap();
    report("listening");
    let control = listener.accept().unwrap();
    let (doorbell, _ringer) = doorbell_pair().unwrap();
    control
        .send_with_grants(b"w", &[&doorbell.into_grant()])
        .unwrap();
    control.write_all(b"unread").unwrap();
    report("sent");
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

/// Child: connects, says so, and holds still until its stdin closes or it is killed.
fn role_pipe_idle_client() {
    let _control = ControlStream::connect(&child_address(), far_deadline()).unwrap();
    report("connected");
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

/// Child: counts its handles around many connections made, used and dropped, in a
/// process where nothing else runs.
fn role_count_pipe_handles() {
    let address = address("count");
    let cycle = |listener: &ControlListener| {
        let client = ControlStream::connect(&address, far_deadline()).unwrap();
        let server = listener.accept().unwrap();
        assert_eq!(server.peer_user().unwrap(), current_user());
        assert_eq!(client.peer_user().unwrap(), current_user());
        // A grant each way: offered and pulled, pushed and adopted (with the process).
        let (_doorbell, ringer) = doorbell_pair().unwrap();
        client
            .send_with_grants(b"hello", &[&ringer.into_grant()])
            .unwrap();
        let mut hello = [0u8; 5];
        let pulled = server.recv_with_grants(&mut hello).unwrap();
        DoorbellRinger::adopt(pulled.into_iter().next().unwrap()).unwrap();
        let (region, grant) = SharedRegion::create(8192).unwrap();
        server.send_with_grants(b"welcome", &[&grant]).unwrap();
        let mut welcome = [0u8; 7];
        let pushed = client.recv_with_grants(&mut welcome).unwrap();
        let adopted =
            SharedRegion::adopt(pushed.into_iter().next().unwrap(), 8192, current_user()).unwrap();
        assert!(client.peer_process().is_ok() && !client.peer_gone());
        // A read cut off by its deadline, and one failed connect.
        server
            .set_deadline(Some(Instant::now() + Duration::from_millis(1)))
            .unwrap();
        let mut nothing = [0u8; 1];
        assert_eq!(
            server.read_exact(&mut nothing).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
        let nobody = ControlStream::connect(&self::address("nobody"), far_deadline());
        assert_eq!(nobody.unwrap_err().kind(), io::ErrorKind::NotFound);
        drop((client, server, region, grant, adopted));
    };
    // A listener made and dropped, then cycles on one kept: warmed up once first, so that
    // whatever Wine makes on first use is there before counting.
    let listener = ControlListener::bind(&address, false).unwrap();
    cycle(&listener);
    drop(listener);
    let pid = std::process::id();
    let before = handles_of(pid);
    let listener = ControlListener::bind(&address, false).unwrap();
    for _ in 0..50 {
        cycle(&listener);
    }
    drop(listener);
    let after = handles_of(pid);
    let left: Vec<u64> = after
        .iter()
        .filter(|value| !before.contains(value))
        .copied()
        .collect();
    assert_eq!(
        after.len(),
        before.len(),
        "handles left after 50 connections: {left:x?}"
    );
    report(&format!("counted {} {}", before.len(), after.len()));
}

#[test]
fn bytes_and_grants_cross_between_two_processes_over_the_pipe() {
    let _watchdog = watchdog("the pipe round trip test");
    let address = address("round-trip");
    let listener = ControlListener::bind(&address, false).unwrap();
    let mut child = ChildProcess::spawn_at("pipe-client", address.to_str().unwrap());
    let len = 64 * 1024;
    child.send(&[
        ("server", u64::from(std::process::id())),
        ("len", len as u64),
    ]);
    let server = listener.accept().unwrap();
    assert_eq!(server.peer_pid().unwrap(), child.child.id());
    assert_eq!(server.peer_user().unwrap(), current_user());

    let mut hello = [0u8; 5];
    let offered = server.recv_with_grants(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    let [ringer]: [Grant; 1] = offered.try_into().expect("one grant");
    assert_eq!(
        rights(&ringer),
        doorbell::RINGER_ACCESS,
        "pulled with the rights the client offered"
    );
    let ring_child = DoorbellRinger::adopt(ringer).unwrap();

    let (region, region_grant) = SharedRegion::create(len).unwrap();
    // The child does not touch the region until it has the welcome.
    write_pattern(&region, PARENT, 0..PATTERN_LEN);
    let (own, ringer_for_child) = doorbell_pair().unwrap();
    server
        .send_with_grants(b"welcome", &[&region_grant, &ringer_for_child.into_grant()])
        .unwrap();
    drop(region_grant);
    let peer = server.peer_process().unwrap();
    assert_eq!(
        sleep_until_rung_or_ended(&own, Some(peer), Some(far_deadline())).unwrap(),
        Rang::Rung,
        "the child rings once it has written"
    );
    expect_pattern(&region, CHILD, len - PATTERN_LEN..len);
    ring_child.ring();
    let mut bye = [0u8; 3];
    server.read_exact(&mut bye).unwrap();
    assert_eq!(&bye, b"bye");
    assert_eq!(child.report(), "done");
    drop(server);
    child.succeeds();
}

#[test]
fn an_address_maps_to_its_pipe_name_and_either_reaches_the_listener() {
    let _watchdog = watchdog("the address rule test");
    let address = address("mapped");
    let (listener, _client, _server) = control_pair(&address);
    let expected = format!(
        r"\\.\pipe\ringbell--tmp-ringbell-test-{}-mapped.sock",
        std::process::id()
    );
    assert_eq!(listener.pipe_name(), expected);
    // The full name reaches the same listener.
    let full = ControlStream::connect(std::path::Path::new(&expected), far_deadline()).unwrap();
    let accepted = listener.accept().unwrap();
    full.write_all(b"x").unwrap();
    let mut x = [0u8; 1];
    accepted.read_exact(&mut x).unwrap();
    assert_eq!(&x, b"x");
    // A bad full name or a remote one is refused before anything is made.
    for bad in [r"\\.\pipe\a\b", r"\\server\pipe\x"] {
        let error = ControlListener::bind(std::path::Path::new(bad), false).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad}: {error}");
    }
}

#[test]
fn a_live_name_is_refused_and_a_dead_servers_name_is_free_again() {
    let _watchdog = watchdog("the live name test");
    // In this process: the second bind is refused, and the listener lives on; its next
    // accept is the probe the refused bind made, which has hung up (as on Unix).
    let here = address("live-here");
    let listener = ControlListener::bind(&here, false).unwrap();
    let error = ControlListener::bind(&here, false).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    let probe = listener.accept().unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(
        probe.try_read_with_grants(&mut buf),
        Ok(Some((0, _)))
    ));
    let client = ControlStream::connect(&here, far_deadline()).unwrap();
    let server = listener.accept().unwrap();
    client.write_all(b"y").unwrap();
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"y");
    drop((probe, client, server, listener));
    // All its instances gone, the name is free.
    drop(ControlListener::bind(&here, false).unwrap());

    // Across processes: a child's live listener, then the child killed.
    let there = address("live-there");
    let mut child = ChildProcess::spawn_at("pipe-server", there.to_str().unwrap());
    assert_eq!(child.report(), "listening");
    let error = ControlListener::bind(&there, false).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    let listener = ControlListener::bind(&there, false).expect("a dead server's name is free");
    drop(listener);
}

#[test]
fn a_client_that_finds_every_instance_busy_waits_for_the_next_accept() {
    let _watchdog = watchdog("the busy instance test");
    let address = address("busy");
    let listener = ControlListener::bind(&address, false).unwrap();
    // The one pending instance is taken; until an accept makes the next, others wait.
    let first = ControlStream::connect(&address, far_deadline()).unwrap();
    let soon = Instant::now() + Duration::from_millis(50);
    let error = ControlStream::connect(&address, soon).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    let waiting = {
        let address = address.clone();
        std::thread::spawn(move || ControlStream::connect(&address, far_deadline()).unwrap())
    };
    let first_accepted = listener.accept().unwrap();
    let second_accepted = listener.accept().unwrap();
    let second = waiting.join().unwrap();
    first.write_all(b"1").unwrap();
    second.write_all(b"2").unwrap();
    let mut buf = [0u8; 1];
    first_accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"1");
    second_accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"2");
    // Non-blocking, with nobody waiting.
    listener.set_nonblocking().unwrap();
    let error = listener.accept().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::WouldBlock, "{error}");
    let third = ControlStream::connect(&address, far_deadline()).unwrap();
    let third_accepted = listener
        .accept()
        .expect("a connected client is accepted at once");
    third.write_all(b"3").unwrap();
    third_accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"3");
}

/// The DACL of the object `handle` refers to, in SDDL (`GetSecurityInfo`; the handle needs
/// `READ_CONTROL`).
fn dacl_text(handle: BorrowedHandle<'_>) -> String {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SDDL_REVISION_1,
        SE_KERNEL_OBJECT,
    };
    use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;

    let mut descriptor = std::ptr::null_mut();
    // SAFETY: the handle is borrowed for the call; the out-pointers point at live locals;
    // the descriptor is ours to free with LocalFree.
    let status = unsafe {
        GetSecurityInfo(
            handle.as_raw_handle(),
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    assert_eq!(status, 0, "GetSecurityInfo");
    let mut text = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: the descriptor came from GetSecurityInfo; the out-pointers point at live
    // locals; the text is ours to free with LocalFree.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            descriptor,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            &mut len,
        )
    };
    assert_ne!(
        ok, 0,
        "ConvertSecurityDescriptorToStringSecurityDescriptorW"
    );
    // SAFETY: `len` UTF-16 units at `text`, written by the call (with its NUL).
    let units = unsafe { std::slice::from_raw_parts(text, len as usize) };
    let string = String::from_utf16_lossy(units)
        .trim_end_matches('\0')
        .to_string();
    // SAFETY: both were allocated for us by the calls above, and are not used after.
    unsafe {
        LocalFree(text.cast());
        LocalFree(descriptor);
    }
    string
}

#[test]
fn the_pipe_is_owner_only() {
    let listener = ControlListener::bind(&address("owner-only"), false).unwrap();
    let text = listener.with_pending_pipe(dacl_text);
    let own = format!(";;;{})", current_user());
    assert!(text.starts_with("D:P"), "a protected DACL: {text}");
    assert!(text.contains(&own), "our SID is granted: {text}");
    assert_eq!(text.matches("(A;").count(), 1, "one entry, ours: {text}");
    for nobody in ["WD", "AN", "AU", "BU"] {
        assert!(
            !text.contains(&format!(";;;{nobody})")),
            "{nobody} in {text}"
        );
    }
}

#[test]
fn each_end_knows_its_peers_user_and_pid_and_sees_it_go() {
    let _watchdog = watchdog("the peer test");
    // In this process, the peer is ourselves.
    let (_listener, client, server) = control_pair(&address("peer-here"));
    assert_eq!(client.peer_user().unwrap(), current_user());
    assert_eq!(server.peer_user().unwrap(), current_user());
    assert_eq!(client.peer_pid().unwrap(), std::process::id());
    assert_eq!(server.peer_pid().unwrap(), std::process::id());
    assert!(!client.peer_gone() && !server.peer_gone());
    // A refusal written just before the server hangs up is still read, then the end.
    // Wine's PeekNamedPipe reports the hang-up only once the bytes before it are read (a
    // client that has its server's process handle sees the end at once: see below).
    assert!(server.try_send(b"refused"));
    drop(server);
    let mut refusal = [0u8; 7];
    client.read_exact(&mut refusal).unwrap();
    assert_eq!(&refusal, b"refused");
    assert!(client.peer_gone());
    let mut buf = [0u8; 1];
    assert!(matches!(
        client.try_read_with_grants(&mut buf),
        Ok(Some((0, _)))
    ));
    assert_eq!(
        client.read_exact(&mut buf).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
    assert_eq!(
        client.write_all(b"late").unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );

    // A child client, killed.
    let there = address("peer-there");
    let listener = ControlListener::bind(&there, false).unwrap();
    let mut child = ChildProcess::spawn_at("pipe-idle-client", there.to_str().unwrap());
    let server = listener.accept().unwrap();
    assert_eq!(child.report(), "connected");
    assert_eq!(server.peer_pid().unwrap(), child.child.id());
    assert_eq!(server.peer_user().unwrap(), current_user());
    assert!(!server.peer_gone());
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    assert!(server.peer_gone(), "the killed client is gone");
    assert_eq!(
        server.read_exact(&mut buf).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn a_client_sees_its_servers_death_at_once_even_with_bytes_unread() {
    let _watchdog = watchdog("the server death test");
    let there = address("server-death");
    let mut child = ChildProcess::spawn_at("pipe-server-once", there.to_str().unwrap());
    assert_eq!(child.report(), "listening");
    let client = ControlStream::connect(&there, far_deadline()).unwrap();
    let mut w = [0u8; 1];
    let grants = client.recv_with_grants(&mut w).unwrap();
    assert_eq!((&w, grants.len()), (b"w", 1));
    assert_eq!(child.report(), "sent");
    assert!(client.peer_process().is_ok());
    assert!(!client.peer_gone());
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    assert!(
        client.peer_gone(),
        "the server's process has ended, though its last bytes are unread"
    );
    let mut unread = [0u8; 6];
    client.read_exact(&mut unread).unwrap();
    assert_eq!(&unread, b"unread");
    assert_eq!(
        client.read_exact(&mut w).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[test]
fn grants_beyond_the_limit_are_refused_both_ways() {
    let _watchdog = watchdog("the grant limit test");
    let (_listener, client, server) = control_pair(&address("too-many"));
    let grants: Vec<Grant> = (0..=MAX_GRANTS)
        .map(|_| doorbell_pair().unwrap().0.into_grant())
        .collect();
    let refs: Vec<&Grant> = grants.iter().collect();
    for end in [&server, &client] {
        let error = end.send_with_grants(b"many", &refs).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        let error = end.send_with_grants(b"", &refs[..1]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    }
    server
        .send_with_grants(b"four", &refs[..MAX_GRANTS])
        .unwrap();
    let mut four = [0u8; 4];
    let received = client.recv_with_grants(&mut four).unwrap();
    assert_eq!(received.len(), MAX_GRANTS);
    for grant in received {
        Doorbell::adopt(grant).unwrap();
    }
    client
        .send_with_grants(b"four", &refs[..MAX_GRANTS])
        .unwrap();
    assert_eq!(
        server.recv_with_grants(&mut four).unwrap().len(),
        MAX_GRANTS
    );

    // Two frames of grants read as one message are more than one message may carry.
    server.send_with_grants(b"ab", &refs[..3]).unwrap();
    server.send_with_grants(b"cd", &refs[..3]).unwrap();
    let error = client.recv_with_grants(&mut four).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");

    // A peer that writes a frame with more anyway (not through `send_with_grants`).
    let (_listener, client, server) = control_pair(&address("too-many-raw"));
    let mut frame = vec![0xB1, 0, MAX_GRANTS as u8 + 1, 0, 1, 0, 0, 0];
    frame.extend(std::iter::repeat_n(0u8, 8 * (MAX_GRANTS + 1) + 1));
    client.write_raw(&frame).unwrap();
    let error = server.recv_with_grants(&mut [0u8; 1]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    assert!(error.to_string().contains("more than"), "{error}");
    server.write_raw(&frame).unwrap();
    let error = client.recv_with_grants(&mut [0u8; 1]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}

#[test]
fn garbage_on_the_pipe_is_invalid_data_not_a_panic() {
    let _watchdog = watchdog("the garbage test");
    let invalid_data = |result: io::Result<Vec<Grant>>| {
        let error = result.expect_err("garbage was read as a message");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        error.to_string()
    };
    // Bytes that are no frame, on either end; and the stream stays refused.
    let (_listener, client, server) = control_pair(&address("garbage"));
    client.write_raw(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let refused = invalid_data(server.recv_with_grants(&mut [0u8; 4]));
    assert!(refused.contains("where a frame begins"), "{refused}");
    invalid_data(server.recv_with_grants(&mut [0u8; 4]));
    assert_eq!(
        server
            .try_read_with_grants(&mut [0u8; 4])
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidData
    );
    server
        .write_raw(&[0xB1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let refused = invalid_data(client.recv_with_grants(&mut [0u8; 4]));
    assert!(refused.contains("outside"), "{refused}");

    // Values that are no handles: a pseudo-handle pushed to a client, a value naming
    // nothing offered to a server, a process handle from a client.
    let frame = |process: Option<u64>, grants: &[u64]| {
        let flags = u8::from(process.is_some());
        let mut frame = vec![0xB1, flags, grants.len() as u8, 0, 1, 0, 0, 0];
        for value in process.iter().chain(grants) {
            frame.extend_from_slice(&value.to_le_bytes());
        }
        frame.push(b'!');
        frame
    };
    let (_listener, client, server) = control_pair(&address("bad-values"));
    server.write_raw(&frame(None, &[u64::MAX])).unwrap();
    let refused = invalid_data(client.recv_with_grants(&mut [0u8; 1]));
    assert!(refused.contains("pseudo-handle"), "{refused}");
    client.write_raw(&frame(None, &[0x7FFF_FFF0])).unwrap();
    let refused = invalid_data(server.recv_with_grants(&mut [0u8; 1]));
    assert!(refused.contains("cannot be taken"), "{refused}");
    let (_listener, client, server) = control_pair(&address("client-process"));
    client.write_raw(&frame(Some(0x40), &[])).unwrap();
    let refused = invalid_data(server.recv_with_grants(&mut [0u8; 1]));
    assert!(refused.contains("only a server sends"), "{refused}");

    // A frame cut off by the peer's hang-up.
    let (_listener, client, server) = control_pair(&address("cut-off"));
    client
        .write_raw(&[0xB1, 0, 0, 0, 9, 0, 0, 0, b'a'])
        .unwrap();
    drop(client);
    let error = server.recv_with_grants(&mut [0u8; 9]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
}

#[test]
fn a_read_past_its_deadline_times_out_and_leaves_the_stream_in_step() {
    let _watchdog = watchdog("the deadline test");
    let (_listener, client, server) = control_pair(&address("deadline"));
    server
        .set_deadline(Some(Instant::now() + Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 4];
    let error = server.recv_with_grants(&mut buf).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert!(matches!(server.try_read_with_grants(&mut buf), Ok(None)));
    server.set_deadline(None).unwrap();
    // Nothing was lost or read twice by the cancelled read.
    client.write_all(b"late").unwrap();
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late");
    // A large write crosses as several frames.
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let writer = std::thread::spawn(move || {
        client.write_all(&big).unwrap();
        (client, big)
    });
    let mut got = vec![0u8; 100_000];
    server.read_exact(&mut got).unwrap();
    let (_client, big) = writer.join().unwrap();
    assert_eq!(got, big);
}

#[test]
fn a_push_that_fails_part_way_is_taken_back_from_the_child() {
    let _watchdog = watchdog("the half-failed push test");
    let there = address("half-push");
    let listener = ControlListener::bind(&there, false).unwrap();
    let mut child = ChildProcess::spawn_at("pipe-idle-client", there.to_str().unwrap());
    let server = listener.accept().unwrap();
    assert_eq!(child.report(), "connected");
    let pid = child.child.id();
    let (_a, first) = doorbell_pair().unwrap();
    let (_b, second) = doorbell_pair().unwrap();

    // Our process handle and the first grant reach the child, the second fails.
    pipe::test_hooks::fail_after(2);
    let error = server
        .send_with_grants(b"x", &[&first.into_grant(), &second.into_grant()])
        .unwrap_err();
    assert!(error.to_string().contains("made to fail"), "{error}");
    let pushed = pipe::test_hooks::take_pushed();
    assert_eq!(pushed.len(), 2, "two pushes before the failure");
    let table = handles_of(pid);
    for value in &pushed {
        assert!(!table.contains(value), "{value:#x} is still in the child");
    }
    // The check above can fail: a push that is not taken back stays in the child's table.
    let (_c, third) = doorbell_pair().unwrap();
    server
        .send_with_grants(b"y", &[&third.into_grant()])
        .unwrap();
    let delivered = pipe::test_hooks::take_pushed();
    assert_eq!(
        delivered.len(),
        2,
        "the process handle again, and the grant"
    );
    let table = handles_of(pid);
    for value in &delivered {
        assert!(table.contains(value), "{value:#x} did not reach the child");
    }
    child.succeeds();
}

#[test]
fn many_connections_leave_no_handle_behind() {
    let _watchdog = watchdog("the pipe handle count test");
    let mut child = ChildProcess::spawn("count-pipe-handles");
    let counted = child.report();
    assert!(counted.starts_with("counted "), "{counted}");
    child.succeeds();
}

// ---------------------------------------------------------------------------------------
// Step 2b: the handshake on the pipe.

/// Child: connects with the library's client, reports whether the handshake failed, then
/// holds still (its handle table looked at) until its stdin closes.
fn role_handshake_client() {
    let outcome = crate::Connection::connect(child_address(), crate::ClientConfig::default());
    report(match &outcome {
        Ok(_) => "connected",
        Err(crate::Error::Handshake { .. }) => "refused",
        Err(_) => "failed otherwise",
    });
    let mut line = String::new();
    while io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {}
}

/// A welcome whose pushes fail part-way (forced by the test hook: our process handle and
/// the region reach the client, its doorbell's ringer does not) fails that handshake, takes
/// back from the client what it pushed (read from the client's handle table while it is
/// still alive), and leaves the server serving: the next client is echoed.
#[test]
fn a_welcome_that_fails_part_way_is_taken_back_and_the_server_serves_on() {
    let _watchdog = watchdog("the half-failed welcome test");
    let there = address("half-welcome");
    let server = crate::Server::bind(&there, crate::ServerConfig::default()).unwrap();
    let mut child = ChildProcess::spawn_at("handshake-client", there.to_str().unwrap());
    // The handshake runs on this thread, where the hook counts pushes.
    pipe::test_hooks::fail_after(2);
    let refused = server.accept();
    assert!(refused.is_err(), "the half-pushed welcome was accepted");
    assert_eq!(child.report(), "refused");
    let pushed = pipe::test_hooks::take_pushed();
    assert_eq!(pushed.len(), 2, "the process handle and the region, pushed");
    let table = handles_of(child.child.id());
    for value in &pushed {
        assert!(!table.contains(value), "{value:#x} is still in the client");
    }
    child.succeeds();

    let path = there.clone();
    let client = std::thread::spawn(move || {
        let mut conn = crate::Connection::connect(&path, crate::ClientConfig::default()).unwrap();
        conn.send(b"after").unwrap();
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(Duration::from_secs(60))).unwrap();
        buf
    });
    let mut conn = server.accept().unwrap();
    let mut buf = Vec::new();
    conn.recv(&mut buf, Some(Duration::from_secs(60))).unwrap();
    conn.send(&buf).unwrap();
    assert_eq!(client.join().unwrap(), b"after");
}

// ---------------------------------------------------------------------------------------
// Step 3: readiness for tokio, and the poller.

#[cfg(feature = "tokio")]
mod readiness {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;

    use super::*;

    /// A runtime of one thread, as a test's own (its child roles have none from libtest).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Polls `future` once, with the task's real waker, and says whether it was ready.
    async fn ready_at_once<F: Future>(mut future: Pin<&mut F>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await
    }

    /// A bound on a wait that must end for another reason: a watchdog, not a timing claim.
    const NEVER: Duration = Duration::from_secs(60);

    /// Child: adopts a ringer; for every line from its parent, rings once and says so.
    pub(super) fn role_ring_on_cue() {
        let parameters = parameters();
        let ringer = DoorbellRinger::adopt(received(&parameters, "ringer")).unwrap();
        report("ready");
        let mut line = String::new();
        loop {
            line.clear();
            if !io::stdin().read_line(&mut line).is_ok_and(|read| read > 0) {
                return;
            }
            ringer.ring();
            report("rang");
        }
    }

    #[test]
    fn a_ring_from_another_process_wakes_a_task_awaiting_the_doorbell() {
        let _watchdog = watchdog("the awaited ring test");
        let runtime = runtime();
        let (mut bell, ringer) = doorbell_pair().unwrap();
        let mut child = ChildProcess::spawn("ring-on-cue");
        let peer = child.open();
        let pushed = ringer.into_grant().push_to(&peer).unwrap();
        child.send(&[("ringer", pushed.value())]);
        assert_eq!(child.report(), "ready");
        runtime.block_on(async {
            bell.register().unwrap();
            // Each round arms a fresh one-shot wait: not ready before the child rings,
            // woken (not polled into readiness) once it has.
            for round in 0..20 {
                let mut rung = Box::pin(bell.rung());
                assert!(
                    !ready_at_once(rung.as_mut()).await,
                    "round {round}: ready before the child rang"
                );
                child.send(&[("ring", 1)]);
                assert_eq!(child.report(), "rang");
                let woke = tokio::time::timeout(NEVER, rung.as_mut()).await;
                assert!(
                    woke.is_ok(),
                    "round {round}: the ring did not wake the task"
                );
                bell.drain();
            }
            // A ring that comes while nobody awaits is latched in the event, and the next
            // await sees it.
            child.send(&[("ring", 1)]);
            assert_eq!(child.report(), "rang");
            let woke = tokio::time::timeout(NEVER, bell.rung()).await;
            assert!(woke.is_ok(), "a ring before the await was lost");
            bell.deregister();
        });
        drop(child.stdin.take());
        child.succeeds();
    }

    #[test]
    fn a_poller_sees_rings_from_another_process_and_a_killed_peers_end() {
        let _watchdog = watchdog("the poller test");
        let runtime = runtime();
        let address = address("poller");
        let listener = ControlListener::bind(&address, false).unwrap();
        let mut client = ChildProcess::spawn_at("pipe-idle-client", &address.to_string_lossy());
        assert_eq!(client.report(), "connected");
        let mut server = listener.accept().unwrap();
        let (bell, ringer) = doorbell_pair().unwrap();
        let mut ringing = ChildProcess::spawn("ring-on-cue");
        let pushed = ringer.into_grant().push_to(&ringing.open()).unwrap();
        ringing.send(&[("ringer", pushed.value())]);
        assert_eq!(ringing.report(), "ready");
        runtime.block_on(async {
            let mut poller = Poller::new().unwrap();
            poller.add(&bell, 2).unwrap();
            poller.add(&server, 3).unwrap();
            server.register().unwrap();
            let mut seen = Vec::new();
            for round in 0..10 {
                ringing.send(&[("ring", 1)]);
                assert_eq!(ringing.report(), "rang");
                let stirred = tokio::time::timeout(NEVER, poller.stirred()).await;
                assert!(stirred.is_ok(), "round {round}: the ring was not reported");
                seen.clear();
                poller.drain(|stirred| seen.push(stirred)).unwrap();
                assert_eq!(seen.len(), 1, "round {round}: {seen:?}");
                assert_eq!((seen[0].key, seen[0].hung_up), (2, false), "round {round}");
                bell.drain();
            }
            // The client killed: its end is reported, once, as a hang-up; and the stream's
            // own await (its read issued ahead) ends too.
            let mut stream_stirred = Box::pin(server.stirred());
            assert!(
                !ready_at_once(stream_stirred.as_mut()).await,
                "stirred before the kill"
            );
            client.child.kill().unwrap();
            let stirred = tokio::time::timeout(NEVER, poller.stirred()).await;
            assert!(stirred.is_ok(), "the peer's end was not reported");
            seen.clear();
            poller.drain(|stirred| seen.push(stirred)).unwrap();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!((seen[0].key, seen[0].hung_up), (3, true));
            let ended = tokio::time::timeout(NEVER, stream_stirred.as_mut()).await;
            assert!(
                ended.is_ok(),
                "the stream's await did not see the peer's end"
            );
            assert!(server.peer_gone());
            // Not reported again: a process ends once.
            ringing.send(&[("ring", 1)]);
            assert_eq!(ringing.report(), "rang");
            tokio::time::timeout(NEVER, poller.stirred())
                .await
                .unwrap()
                .unwrap();
            seen.clear();
            poller.drain(|stirred| seen.push(stirred)).unwrap();
            assert_eq!(
                seen.iter().map(|s| s.key).collect::<Vec<_>>(),
                [2],
                "{seen:?}"
            );
            poller.remove(&bell);
            poller.remove(&server);
            drop(stream_stirred);
            server.deregister();
        });
        drop(ringing.stdin.take());
        ringing.succeeds();
    }

    #[test]
    fn bytes_from_a_peer_stir_a_stream_once_and_are_read_in_order() {
        let _watchdog = watchdog("the read-ahead test");
        let runtime = runtime();
        let (_listener, mut client, server) = control_pair(&address("read-ahead"));
        runtime.block_on(async {
            client.register().unwrap();
            let mut stirred = Box::pin(client.stirred());
            assert!(
                !ready_at_once(stirred.as_mut()).await,
                "stirred with nothing sent"
            );
            server.write_all(b"first").unwrap();
            tokio::time::timeout(NEVER, stirred.as_mut())
                .await
                .unwrap()
                .unwrap();
            // Reported once: the same bytes, unread, do not stir it again.
            let mut again = Box::pin(client.stirred());
            assert!(
                !ready_at_once(again.as_mut()).await,
                "the same bytes stirred it twice"
            );
            server.write_all(b" second").unwrap();
            tokio::time::timeout(NEVER, again.as_mut())
                .await
                .unwrap()
                .unwrap();
            // What was read ahead comes first, in order, then what was not.
            server.write_all(b" third").unwrap();
            let mut all = [0u8; 18];
            client.read_exact(&mut all).unwrap();
            assert_eq!(&all, b"first second third");
            // A read cut off by its deadline while a read ahead is in flight.
            let mut pending = Box::pin(client.stirred());
            assert!(!ready_at_once(pending.as_mut()).await);
            client
                .set_deadline(Some(Instant::now() + Duration::from_millis(1)))
                .unwrap();
            let mut one = [0u8; 1];
            assert_eq!(
                client.read_exact(&mut one).unwrap_err().kind(),
                io::ErrorKind::TimedOut
            );
            client.set_deadline(None).unwrap();
            server.write_all(b"!").unwrap();
            client.read_exact(&mut one).unwrap();
            assert_eq!(&one, b"!");
            // The hang-up, reported to every await from then on.
            drop(server);
            tokio::time::timeout(NEVER, client.stirred())
                .await
                .unwrap()
                .unwrap();
            tokio::time::timeout(NEVER, client.stirred())
                .await
                .unwrap()
                .unwrap();
            assert!(client.peer_gone());
            let mut rest = [0u8; 1];
            assert_eq!(
                client.read_exact(&mut rest).unwrap_err().kind(),
                io::ErrorKind::UnexpectedEof
            );
            drop((stirred, again, pending));
            client.deregister();
        });
    }

    #[test]
    fn a_read_ahead_cancelled_by_its_threads_exit_is_issued_again_and_loses_nothing() {
        let _watchdog = watchdog("the thread-exit test");
        let (_listener, mut client, server) = control_pair(&address("thread-exit"));
        // Issued ahead by a thread that then exits: Windows cancels the I/O a thread
        // issued when it exits, so the read ends with nothing.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                runtime().block_on(async {
                    let mut stirred = Box::pin(client.stirred());
                    assert!(
                        !ready_at_once(stirred.as_mut()).await,
                        "stirred with nothing sent"
                    );
                });
                assert!(client.read_ahead_in_flight(), "no read was issued ahead");
            });
        });
        // Wine 8 cancels it a moment after the thread has gone (wineserver learns of the
        // exit on its own time); the bound is a watchdog, not a timing claim.
        let exited = Instant::now();
        while client.read_ahead_in_flight() {
            assert!(
                exited.elapsed() < NEVER,
                "the read issued ahead outlived the thread that issued it"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Awaited again here: the cancelled read is seen (an early wake-up at most), a new
        // one is issued by this thread, and the bytes sent now stir the stream.
        server.write_all(b"after").unwrap();
        runtime().block_on(async {
            let stirred = tokio::time::timeout(NEVER, async {
                loop {
                    client.stirred().await.unwrap();
                    if client.ready_now() {
                        return;
                    }
                }
            });
            assert!(stirred.await.is_ok(), "the bytes did not stir the stream");
        });
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"after");
        client.deregister();
    }

    /// Child: counts its handles around awaits of every kind (rung, stirred, acceptable,
    /// a poller's), some cancelled with their waits armed, and everything dropped, in a
    /// process where nothing else runs.
    pub(super) fn role_count_async_handles() {
        let runtime = runtime();
        let address = address("count-async");
        let exercise = || {
            runtime.block_on(async {
                let (mut bell, ringer) = doorbell_pair().unwrap();
                bell.register().unwrap();
                ringer.ring();
                bell.rung().await.unwrap();
                bell.drain();
                // Cancelled with its wait armed: unregistered when the doorbell goes.
                let mut armed = Box::pin(bell.rung());
                assert!(!ready_at_once(armed.as_mut()).await);

                let mut listener = ControlListener::bind(&address, false).unwrap();
                listener.register().unwrap();
                let mut acceptable = Box::pin(listener.acceptable());
                assert!(!ready_at_once(acceptable.as_mut()).await);
                let mut client = ControlStream::connect(&address, far_deadline()).unwrap();
                tokio::time::timeout(NEVER, acceptable.as_mut())
                    .await
                    .unwrap()
                    .unwrap();
                listener.set_nonblocking().unwrap();
                let server = listener.accept().unwrap();

                // A read ahead left in flight, its wait armed.
                client.register().unwrap();
                let mut stirred = Box::pin(client.stirred());
                assert!(!ready_at_once(stirred.as_mut()).await);

                let mut poller = Poller::new().unwrap();
                let (polled, polled_ringer) = doorbell_pair().unwrap();
                poller.add(&polled, 1).unwrap();
                poller.add(&server, 2).unwrap();
                polled_ringer.ring();
                tokio::time::timeout(NEVER, poller.stirred())
                    .await
                    .unwrap()
                    .unwrap();
                poller.drain(|_| {}).unwrap();
                // Dropped with its entries still watched (re-armed after the drain).
                drop(poller);
                drop((armed, acceptable, stirred));
                drop((
                    polled,
                    polled_ringer,
                    server,
                    client,
                    listener,
                    bell,
                    ringer,
                ));
            });
        };
        // Once first, so that whatever Wine makes on first use (the thread pool's wait
        // threads among it) is there before counting.
        exercise();
        let pid = std::process::id();
        let before = handles_of(pid);
        for _ in 0..20 {
            exercise();
        }
        let after = handles_of(pid);
        let left: Vec<u64> = after
            .iter()
            .filter(|value| !before.contains(value))
            .copied()
            .collect();
        assert_eq!(
            after.len(),
            before.len(),
            "handles left after 20 rounds of awaits: {left:x?}"
        );
        report(&format!("counted {} {}", before.len(), after.len()));
    }

    #[test]
    fn awaits_of_every_kind_leave_no_handle_behind() {
        let _watchdog = watchdog("the async handle count test");
        let mut child = ChildProcess::spawn("count-async-handles");
        let counted = child.report();
        assert!(counted.starts_with("counted "), "{counted}");
        child.succeeds();
    }
}
