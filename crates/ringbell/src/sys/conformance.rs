//! The conformance suite of the platform contract: what every backend must do, tested
//! through the contract's names only, so that the same tests run against whichever backend
//! this build selected. CI runs them for each: natively, and with
//! `RUSTFLAGS="--cfg ringbell_force_posix"` for the POSIX backend. (iceoryx2 keeps such a
//! suite per concept; ours is one file, because the contract is one module.)
//!
//! These are in-process tests of the contract's parts. The whole library's cross-process
//! suites (`tests/`) run against each backend too.
//!
//! The Windows backend runs them too, under Wine in CI (`cargo test -p ringbell --lib
//! --target x86_64-pc-windows-gnu sys::conformance`). Where it differs in kind, a test says
//! so with `cfg!(windows)` or a `cfg` and the reason (docs/WINDOWS.md lists them):
//!
//! - an address is a pipe name, not a file: nothing is left in the file system to look
//!   at, no stale socket file to replace, and a file at the path is another namespace;
//! - a doorbell is an auto-reset event: the wait that sees a ring also resets it, and a
//!   dropped ringer is invisible (an event has no other end to hang up);
//! - a sleep ends with the peer's *process*, not with its end of the stream: two streams
//!   in one process cannot show a death to a sleep (the cross-process suites and
//!   `sys/windows/tests.rs` kill real peers), and `peer_gone` sees a hang-up once the bytes
//!   sent before it are read;
//! - a section cannot shrink at all, and a user has no uid.

#![allow(unsafe_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::core::sync::AtomicU32;
use crate::core::wait::{Sleeper, Woke};

/// A fresh directory for socket files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ringbell-conformance-{}-{name}-{}",
            std::process::id(),
            BACKEND
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn far_deadline() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// A connected pair of control streams through a listener at `path`.
fn control_pair(path: &Path) -> (ControlListener, ControlStream, ControlStream) {
    let listener = ControlListener::bind(path, false).unwrap();
    let client = ControlStream::connect(path, far_deadline()).unwrap();
    let server = loop {
        match listener.accept() {
            Ok(stream) => break stream,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(error) => panic!("accept: {error}"),
        }
    };
    (listener, client, server)
}

/// Writes `value` at `offset` of the region, and reads a byte back from `other`.
fn write_then_read(region: &SharedRegion, other: &SharedRegion, offset: usize, value: u8) -> u8 {
    assert!(offset < region.len() && offset < other.len());
    // SAFETY: both are live mappings of at least `offset + 1` bytes (checked above), used
    // by this test alone; a byte copy cannot break any invariant.
    unsafe {
        region.as_ptr().add(offset).write_volatile(value);
        other.as_ptr().add(offset).read_volatile()
    }
}

#[test]
fn a_region_is_zeroed_and_shared_with_whoever_adopts_its_grant() {
    let scratch = Scratch::new("region");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    let len = 64 * 1024;
    let (region, grant) = SharedRegion::create(len).unwrap();
    assert_eq!(region.len(), len);
    // SAFETY: a live mapping of `len` bytes, read as bytes by this test alone.
    let zeroed = unsafe { std::slice::from_raw_parts(region.as_ptr(), len) };
    assert!(
        zeroed.iter().all(|&byte| byte == 0),
        "a new region is zeroed"
    );

    server.send_with_grants(b"region", &[&grant]).unwrap();
    drop(grant);
    let mut bytes = [0u8; 6];
    let [received]: [Grant; 1] = client
        .recv_with_grants(&mut bytes)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(&bytes, b"region");
    let adopted = SharedRegion::adopt(received, len, current_user()).unwrap();
    assert_eq!(write_then_read(&region, &adopted, 12_345, 0xA5), 0xA5);
    assert_eq!(write_then_read(&adopted, &region, len - 1, 0x5A), 0x5A);
}

/// The defence against `SIGBUS`: a peer that holds the region (its grant) cannot shrink it
/// under our mapping.
// Unix only: it shrinks the object with ftruncate. A Windows section has no call that
// shrinks it (its size is fixed at creation), and a pushed one lacks SECTION_EXTEND_SIZE,
// which `sys/windows/tests.rs` checks in the child that receives it.
#[cfg(unix)]
#[test]
#[cfg_attr(
    all(target_os = "linux", ringbell_force_posix),
    ignore = "a POSIX shm object on Linux can be resized by anyone who holds it: only the \
              Linux backend's memfd seals (and, on macOS, its one-ftruncate rule) stop a \
              peer from shrinking it; see src/sys/posix/shm.rs"
)]
fn a_peer_cannot_shrink_a_region_under_our_mapping() {
    let len = 64 * 1024;
    let (region, grant) = SharedRegion::create(len).unwrap();
    let shrunk = rustix::fs::ftruncate(&grant, 4096);
    assert!(shrunk.is_err(), "the peer shrank the region");
    // Our mapping is whole: its last byte is still there (a shrunk object would SIGBUS).
    // SAFETY: a live mapping of `len` bytes, read by this test alone.
    let last = unsafe { region.as_ptr().add(len - 1).read_volatile() };
    assert_eq!(last, 0);
}

#[test]
fn a_region_of_another_size_is_refused_before_it_is_mapped() {
    let scratch = Scratch::new("size");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    let (_region, grant) = SharedRegion::create(8192).unwrap();
    for announced in [4096, 16384] {
        server.send_with_grants(b"x", &[&grant]).unwrap();
        let mut byte = [0u8; 1];
        let [received]: [Grant; 1] = client
            .recv_with_grants(&mut byte)
            .unwrap()
            .try_into()
            .unwrap();
        let error = SharedRegion::adopt(received, announced, current_user()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }
}

#[test]
fn a_doorbell_that_is_not_one_is_refused() {
    let scratch = Scratch::new("not-a-doorbell");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    // A region's grant where a doorbell end should be.
    let (_region, grant) = SharedRegion::create(8192).unwrap();
    server.send_with_grants(b"ab", &[&grant, &grant]).unwrap();
    let mut bytes = [0u8; 2];
    let [first, second]: [Grant; 2] = client
        .recv_with_grants(&mut bytes)
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        Doorbell::adopt(first).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    assert_eq!(
        DoorbellRinger::adopt(second).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
}

#[test]
fn a_doorbell_wakes_its_sleeper_and_stays_rung_until_drained() {
    let scratch = Scratch::new("doorbell");
    let (_listener, client, _server) = control_pair(&scratch.path("control"));
    let (bell, ringer) = doorbell_pair().unwrap();

    // Rung before the sleep: the sleep returns at once (a ring is never lost), and on Unix
    // again until drained. On Windows the wait that sees the ring resets it (an
    // auto-reset event), so a second sleep ends by its deadline, which is near.
    ringer.ring();
    sleep_until_rung(&bell, &client, Some(far_deadline()));
    let again = if cfg!(windows) {
        Instant::now() + Duration::from_millis(30)
    } else {
        far_deadline()
    };
    sleep_until_rung(&bell, &client, Some(again));
    bell.drain();

    // Not rung: the sleep ends by its deadline (it may end early: callers loop).
    let deadline = Instant::now() + Duration::from_millis(30);
    assert_eq!(
        sleep_until_rung(&bell, &client, Some(deadline)),
        Woke::Maybe
    );

    // Rung from another thread while asleep.
    let ringing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        ringer.ring();
        ringer
    });
    sleep_until_rung(&bell, &client, None);
    bell.drain();
    drop(ringing.join().unwrap());
}

#[test]
fn ringing_never_blocks_and_a_drain_never_waits() {
    let (bell, ringer) = doorbell_pair().unwrap();
    // Far more rings than any socket buffer holds: a full doorbell is a rung one.
    for _ in 0..100_000 {
        ringer.ring();
    }
    bell.drain();
    bell.drain();
    // The ringer's peer gone: ringing is still harmless.
    drop(bell);
    ringer.ring();
}

#[test]
fn a_doorbell_end_travels_and_still_rings() {
    let scratch = Scratch::new("doorbell-grant");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    let (bell, ringer) = doorbell_pair().unwrap();
    server
        .send_with_grants(b"r", &[&ringer.into_grant()])
        .unwrap();
    let mut byte = [0u8; 1];
    let [grant]: [Grant; 1] = client
        .recv_with_grants(&mut byte)
        .unwrap()
        .try_into()
        .unwrap();
    let ringer = DoorbellRinger::adopt(grant).unwrap();
    ringer.ring();
    sleep_until_rung(&bell, &client, Some(far_deadline()));
}

// Unix only: the peer here is a stream in this same process, and on Windows a sleep ends
// with the peer's process, which does not end. `peer_gone` for a stream dropped in-process
// is the next test; a killed peer process ending a sleep is in `sys/windows/tests.rs` and
// the cross-process suites.
#[cfg(unix)]
#[test]
fn the_death_of_the_peer_ends_a_doorbell_sleep_and_shows_on_its_control_stream() {
    let scratch = Scratch::new("peer-gone");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    let (bell, _ringer) = doorbell_pair().unwrap();
    assert!(!client.peer_gone());
    // Bytes from a peer are not its death.
    server.write_all(b"noise").unwrap();
    assert!(
        !client.peer_gone(),
        "bytes on the control stream read as a death"
    );
    let dying = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(server);
    });
    // Until the peer is gone: a sleep that returns for anything else sleeps again.
    while sleep_until_rung(&bell, &client, None) != Woke::PeerHungUp {}
    dying.join().unwrap();
    assert!(client.peer_gone());
    assert!(!bell.closed(), "the doorbell's own peer end is still open");
}

/// Windows: the hang-up of a stream's peer shows on the stream once the bytes it sent
/// before are read (`PeekNamedPipe` succeeds while some are unread), and bytes are never
/// taken for a death.
#[cfg(windows)]
#[test]
fn a_stream_whose_peer_hangs_up_shows_it_once_its_bytes_are_read() {
    let scratch = Scratch::new("peer-gone");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    assert!(!client.peer_gone());
    server.write_all(b"noise").unwrap();
    assert!(
        !client.peer_gone(),
        "bytes on the control stream read as a death"
    );
    drop(server);
    let mut noise = [0u8; 5];
    client.recv_with_grants(&mut noise).unwrap();
    assert_eq!(&noise, b"noise");
    assert!(client.peer_gone());
    let (bell, _ringer) = doorbell_pair().unwrap();
    assert!(!bell.closed(), "the doorbell's own peer end is still open");
}

// Unix only: a Windows doorbell is an event, which has no other end to hang up; a dropped
// ringer is not seen (`closed` is always false), the peer's process is.
#[cfg(unix)]
#[test]
fn a_doorbell_whose_peer_end_hangs_up_says_so() {
    let scratch = Scratch::new("doorbell-hang-up");
    let (_listener, client, _server) = control_pair(&scratch.path("control"));
    let (bell, ringer) = doorbell_pair().unwrap();
    assert!(!bell.closed());
    drop(ringer);
    // Readable for ever now: the sleep reports the hang-up instead of a ring.
    assert_eq!(sleep_until_rung(&bell, &client, None), Woke::PeerHungUp);
    assert!(bell.closed());
}

#[test]
fn a_control_stream_knows_its_peers_user() {
    let scratch = Scratch::new("credentials");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    assert_eq!(client.peer_user().unwrap(), current_user());
    assert_eq!(server.peer_user().unwrap(), current_user());
    // Unix users have uids; Windows users have SIDs, and no uid.
    assert_eq!(current_user().uid().is_some(), cfg!(unix));
}

#[test]
fn a_listener_refuses_a_live_address_replaces_a_dead_one_and_cleans_up() {
    let scratch = Scratch::new("listener");
    let path = scratch.path("control");
    let listener = ControlListener::bind(&path, false).unwrap();
    let error = ControlListener::bind(&path, false).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    drop(listener);
    assert!(!path.exists(), "the listener's address outlived it");
    #[cfg(windows)]
    {
        // A pipe name goes with its last instance: nothing is left to replace, and the
        // name is free again. A file at the path lives in another namespace than the
        // pipe's name, and is never touched.
        drop(ControlListener::bind(&path, false).unwrap());
        std::fs::write(&path, b"precious").unwrap();
        drop(ControlListener::bind(&path, false).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
    #[cfg(unix)]
    {
        a_dead_servers_socket_is_replaced_and_a_file_never_touched(&path);
    }
}

#[cfg(unix)]
fn a_dead_servers_socket_is_replaced_and_a_file_never_touched(path: &Path) {
    // A dead server's address: a socket file nobody listens on.
    let stale = std::os::unix::net::UnixListener::bind(path).unwrap();
    drop(stale);
    assert!(path.exists());
    let listener = ControlListener::bind(path, false).unwrap();
    drop(listener);

    // Something that is not a listener's address is never touched.
    std::fs::write(path, b"precious").unwrap();
    assert!(ControlListener::bind(path, false).is_err());
    assert_eq!(std::fs::read(path).unwrap(), b"precious");
}

#[test]
fn a_listener_and_streams_can_be_waited_on_together() {
    let scratch = Scratch::new("wait-readable");
    let (listener, client, server) = control_pair(&scratch.path("control"));
    let idle = wait_readable(&[&listener, &server], Some(Duration::from_millis(10))).unwrap();
    assert_eq!(idle, [false, false]);
    client.write_all(b"hello").unwrap();
    let ready = wait_readable(&[&listener, &server], Some(Duration::from_secs(5))).unwrap();
    assert_eq!(ready, [false, true]);
}

#[test]
fn grants_beyond_the_limit_are_refused() {
    let scratch = Scratch::new("too-many");
    let (_listener, client, server) = control_pair(&scratch.path("control"));
    let grants: Vec<Grant> = (0..=MAX_GRANTS)
        .map(|_| doorbell_pair().unwrap().0.into_grant())
        .collect();
    let refs: Vec<&Grant> = grants.iter().collect();
    assert!(server.send_with_grants(b"many", &refs).is_err());
    assert!(server
        .send_with_grants(b"four", &refs[..MAX_GRANTS])
        .is_ok());
    let mut bytes = [0u8; 4];
    assert_eq!(
        client.recv_with_grants(&mut bytes).unwrap().len(),
        MAX_GRANTS
    );

    // A peer that sends more anyway (not through `send_with_grants`) is refused.
    #[cfg(unix)]
    {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        use std::mem::MaybeUninit;
        use std::os::fd::{AsFd, BorrowedFd};
        let fds: Vec<BorrowedFd<'_>> = grants.iter().map(|grant| grant.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
        let mut ancillary = SendAncillaryBuffer::new(&mut space);
        assert!(ancillary.push(SendAncillaryMessage::ScmRights(&fds)));
        let bytes = [io::IoSlice::new(b"many")];
        sendmsg(&server, &bytes, &mut ancillary, SendFlags::empty()).unwrap();
        let mut received = [0u8; 4];
        let error = client.recv_with_grants(&mut received).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }
}

#[test]
fn the_shared_wait_wakes_a_sleeper_if_the_backend_has_one() {
    let Some(shared) = shared_wait() else {
        // A backend without one sleeps on its doorbell, tested above. Linux always has one;
        // macOS from 14.4.
        assert_ne!(BACKEND, "linux", "the Linux backend lost its futex");
        return;
    };
    let word = std::sync::Arc::new(AtomicU32::new(0));
    // Every sleep below must be one the OS agreed to: `Unavailable` would mean it refused
    // the word, and an honest waiter would fall back to its doorbell every time. (That
    // the wake, not a timeout, ends the last sleep is not checked: no test looks at a time.
    // On Linux a lost wake would hang it until the watchdog; on macOS each sleep is capped
    // at a second, so a lost wake would only slow it.)
    let sleep = |expected: u32, deadline: Instant| {
        let woke = shared.sleep(&word, expected, Some(deadline));
        assert_eq!(woke, Woke::Maybe, "the OS refused the shared wait");
    };
    // A changed value: no sleep at all.
    sleep(1, far_deadline());
    // A timeout ends a sleep nobody wakes (it may end early: callers loop).
    sleep(0, Instant::now() + Duration::from_millis(30));
    // A wake from another thread ends it.
    let waker = {
        let word = word.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SYNC: pairs with the Acquire load of the waiting loop below.
            word.store(1, crate::core::sync::Ordering::Release);
            shared.wake(&word);
        })
    };
    // SYNC: pairs with the Release store of the waker above.
    while word.load(crate::core::sync::Ordering::Acquire) == 0 {
        sleep(0, far_deadline());
    }
    waker.join().unwrap();
}

#[test]
fn running_out_of_handles_is_recognised_and_the_limit_named() {
    // EMFILE on every Unix; ERROR_NO_SYSTEM_RESOURCES on Windows, which has no fd limit.
    let exhausted = io::Error::from_raw_os_error(if cfg!(windows) { 1450 } else { 24 });
    assert!(is_resource_exhaustion(&exhausted));
    assert!(!is_resource_exhaustion(&io::Error::from(
        io::ErrorKind::NotFound
    )));
    assert!(!OUT_OF_HANDLES.is_empty() && !RAISE_LIMIT_HINT.is_empty());
    let limit = raise_resource_limit();
    assert!(
        limit.is_none_or(|limit| limit >= 64),
        "a usable limit: {limit:?}"
    );
}

// On Windows a ring is reported once the thread pool's callback for it has run, a moment
// after `ring` returns, so a test there awaits `stirred` before it drains (as the sweeper
// always does); and a doorbell cannot hang up (an event has no other end): a peer's end is
// its process's, which `sys/windows/tests.rs` shows with real processes.
#[cfg(ringbell_async)]
mod readiness {
    use super::*;

    #[tokio::test]
    async fn a_poller_reports_rings_and_hang_ups_once_each_by_key() {
        let mut poller = Poller::new().unwrap();
        let (bell_a, ringer_a) = doorbell_pair().unwrap();
        let (bell_b, ringer_b) = doorbell_pair().unwrap();
        poller.add(&bell_a, 7).unwrap();
        poller.add(&bell_b, 9).unwrap();
        let mut seen = Vec::new();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert!(seen.is_empty(), "nothing rang yet: {seen:?}");

        ringer_a.ring();
        poller.stirred().await.unwrap();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].key, seen[0].readable, seen[0].hung_up),
            (7, true, false)
        );

        // Edge-triggered: not reported again until something changes.
        seen.clear();
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        assert!(seen.is_empty(), "reported twice: {seen:?}");

        #[cfg(unix)]
        {
            drop(ringer_b);
            poller.stirred().await.unwrap();
            poller.drain(|stirred| seen.push(stirred)).unwrap();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!(seen[0].key, 9);
            assert!(seen[0].hung_up);
        }
        // Rung again after its report: reported again (the watch was re-armed).
        #[cfg(windows)]
        for _ in 0..2 {
            ringer_b.ring();
            poller.stirred().await.unwrap();
            seen.clear();
            poller.drain(|stirred| seen.push(stirred)).unwrap();
            assert_eq!(seen.len(), 1, "{seen:?}");
            assert_eq!((seen[0].key, seen[0].hung_up), (9, false));
        }

        seen.clear();
        poller.remove(&bell_a);
        ringer_a.ring();
        // Windows: a ring after it, awaited, so that a report of `a` would have come too
        // (a removed wait is unregistered before `remove` returns, so none can).
        #[cfg(windows)]
        {
            ringer_b.ring();
            poller.stirred().await.unwrap();
        }
        poller.drain(|stirred| seen.push(stirred)).unwrap();
        seen.retain(|stirred| stirred.key != 9);
        assert!(seen.is_empty(), "reported after removal: {seen:?}");
    }

    #[tokio::test]
    async fn a_poller_drains_more_events_than_one_call_fetches() {
        let mut poller = Poller::new().unwrap();
        let pairs: Vec<_> = (0..600)
            .map(|key| {
                let (bell, ringer) = doorbell_pair().unwrap();
                poller.add(&bell, key).unwrap();
                ringer.ring();
                (bell, ringer)
            })
            .collect();
        let mut keys = Vec::new();
        poller.drain(|stirred| keys.push(stirred.key)).unwrap();
        if cfg!(windows) {
            // Reported as the thread pool's callbacks run; a watchdog, not a timing claim.
            let all = tokio::time::timeout(Duration::from_secs(60), async {
                while keys.len() < pairs.len() {
                    poller.stirred().await.unwrap();
                    poller.drain(|stirred| keys.push(stirred.key)).unwrap();
                }
            });
            assert!(
                all.await.is_ok(),
                "{} of {} reported",
                keys.len(),
                pairs.len()
            );
        }
        keys.sort_unstable();
        assert_eq!(keys, (0..pairs.len()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_registered_doorbell_and_control_stream_can_be_awaited() {
        let scratch = Scratch::new("readiness");
        let (mut listener, client, server) = control_pair(&scratch.path("control"));
        let (mut bell, ringer) = doorbell_pair().unwrap();
        bell.register().unwrap();
        let mut control = client;
        control.register().unwrap();
        listener.register().unwrap();

        ringer.ring();
        let rung = tokio::time::timeout(Duration::from_secs(5), bell.rung()).await;
        assert!(rung.is_ok(), "a ring was not seen");
        bell.drain();

        let _second = ControlStream::connect(&scratch.path("control"), far_deadline()).unwrap();
        let acceptable = tokio::time::timeout(Duration::from_secs(5), listener.acceptable()).await;
        assert!(acceptable.is_ok(), "a waiting client was not seen");

        drop(server);
        let stirred = tokio::time::timeout(Duration::from_secs(5), control.stirred()).await;
        assert!(stirred.is_ok(), "the peer's death was not seen");
        assert!(control.peer_gone());
        bell.deregister();
        control.deregister();
    }

    #[test]
    fn registering_outside_a_runtime_is_an_error_not_a_panic() {
        let (mut bell, _ringer) = doorbell_pair().unwrap();
        let error = bell.register().unwrap_err();
        assert!(error.to_string().contains("tokio runtime"), "{error}");
        assert!(Poller::new().is_err());
    }
}
