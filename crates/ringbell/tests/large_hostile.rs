//! A hostile peer against the large-message path (issue 14), across real processes: a
//! child connects honestly, then forges `Large` and `Piece` frames (and chunks and aborts
//! among them) in its ring and region grants on
//! its control socket (with objects it made itself) as `RB_VARIANT` says. The server, in
//! this process, must report `Error::Corrupted` for that connection only, keep serving
//! others, and hold no more than one of the peer's regions at a time, however many it
//! grants.
//!
//! Linux only, on both of its backends (the Linux one and the POSIX one that
//! `--cfg ringbell_force_posix` selects): the child makes its objects as the backend does
//! (a sealed memfd, or an unlinked shm object) and passes them with `SCM_RIGHTS` itself,
//! and the server's mappings are counted in `/proc/self/maps`. (macOS has no memfd nor
//! `/proc`; on Windows a client's handles are pulled by the server, and a Windows client
//! makes no region at all, see `conn/large.rs`.) Children, watchdogs and the line protocol
//! are those of `tests/common` (see `cross_process.rs`).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use common::{
    accept_from, param, random_bytes, report, shared_test, sleep_until_killed, ChildProcess,
    Context, Scribbler, SocketPath, CLIENT_TO_SERVER, DATA_OFFSET, PATIENCE, RINGS_OFFSET,
    RING_CONTROL_LEN,
};
use ringbell::os::unix::ConnectionExt;
use ringbell::{ClientConfig, Connection, Error, Server, ServerConfig};

/// The server's ring: a `Large` frame takes 40 bytes of it.
const RING: usize = 4096;
/// Generations the child grants, one a message, in `new_generation_every_message`.
const GENERATIONS: u32 = 20;
/// What the child names its objects, so that this process's maps show which are its.
const HOSTILE_NAME: &str = "ringbell-hostile";

#[test]
fn child_entry() {
    common::run_child_entry(|role| match role {
        "hostile_large_client" => role_hostile_large_client(),
        other => Err(format!("unknown role {other:?}")),
    });
}

/// A region object as the backend in use makes them (a sealed memfd on Linux, an unlinked
/// shm object on the POSIX backend), of `len` bytes, holding `bytes` from offset 0, named
/// after the variant (see [`hostile_mappings`]).
fn region_object(len: usize, bytes: &[u8], index: u32) -> Result<OwnedFd, String> {
    use rustix::fs::{self, MemfdFlags, SealFlags};
    let tag = format!("{}-{}", object_tag(&param("RB_VARIANT")), index);
    let fd = if ringbell::backend() == "posix" {
        use rustix::fs::Mode;
        use rustix::shm;
        let name = format!("/{tag}-{}", std::process::id());
        let flags = shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR;
        let fd = shm::open(&name, flags, Mode::RUSR | Mode::WUSR).context("shm_open")?;
        shm::unlink(&name).context("shm_unlink")?;
        fs::ftruncate(&fd, len as u64).context("sizing the object")?;
        fd
    } else {
        let fd = fs::memfd_create(
            tag.as_str(),
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .context("memfd_create")?;
        fs::ftruncate(&fd, len as u64).context("sizing the memfd")?;
        fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .context("sealing the memfd")?;
        fd
    };
    let mut written = 0;
    while written < bytes.len() {
        written += rustix::io::pwrite(&fd, &bytes[written..], written as u64)
            .context("writing the message into the object")?;
    }
    Ok(fd)
}

/// The 16-byte grant message of `core/large.rs`: kind 'L', three zero bytes, the
/// generation (u32 LE), the capacity (u64 LE); sent with `object` attached, if any.
fn send_grant(
    conn: &Connection,
    generation: u32,
    capacity: u64,
    object: Option<&OwnedFd>,
) -> Result<(), String> {
    let mut message = [0u8; 16];
    message[0] = b'L';
    message[4..8].copy_from_slice(&generation.to_le_bytes());
    message[8..16].copy_from_slice(&capacity.to_le_bytes());
    let fds: Vec<_> = object.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)) {
        return Err("no room for the fd".into());
    }
    let sent = rustix::net::sendmsg(
        conn.control_fd(),
        &[std::io::IoSlice::new(&message)],
        &mut control,
        common::SEND_NO_SIGNAL,
    )
    .context("sending a grant")?;
    if sent != message.len() {
        return Err(format!("sent {sent} bytes of a grant"));
    }
    Ok(())
}

/// Writes frames into the client-to-server ring from its start, and publishes each. The
/// ring is never wrapped here (at most 80 frames of at most 48 bytes in 4 KiB).
struct FrameForger {
    segment: Scribbler,
    tail: u64,
}

/// Frame kinds, as `src/core/ring.rs` numbers them.
const MIDDLE: u8 = 3;
const ABORT: u8 = 5;
const LARGE: u8 = 6;
const PIECE: u8 = 8;

impl FrameForger {
    /// A `Large` frame: the message at `offset`, `len` bytes, in region `generation`.
    fn push(&mut self, generation: u32, offset: u64, len: u64) {
        self.push_frame(LARGE, &large_ref(generation, offset, len));
    }

    /// A `Piece` frame: a piece at `offset`, `len` bytes, in region `generation`, of a
    /// message of `total` bytes.
    fn push_piece(&mut self, generation: u32, offset: u64, len: u64, total: u64) {
        let mut payload = large_ref(generation, offset, len);
        payload.extend_from_slice(&total.to_le_bytes());
        self.push_frame(PIECE, &payload);
    }

    fn push_frame(&mut self, kind: u8, payload: &[u8]) {
        let mut frame = common::frame_header(payload.len() as u32, kind).to_vec();
        frame.extend_from_slice(payload);
        frame.resize(frame.len().next_multiple_of(8), 0);
        self.segment
            .write_bytes(DATA_OFFSET + self.tail as usize, &frame);
        self.tail += frame.len() as u64;
        let tail_word = RINGS_OFFSET + CLIENT_TO_SERVER * RING_CONTROL_LEN;
        self.segment.store_word(tail_word, self.tail);
    }
}

/// The 20 bytes that say where a message or a piece lies: generation u32, offset u64,
/// length u64, little-endian.
fn large_ref(generation: u32, offset: u64, len: u64) -> Vec<u8> {
    let mut bytes = generation.to_le_bytes().to_vec();
    bytes.extend_from_slice(&offset.to_le_bytes());
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes
}

/// Connects, then forges as `RB_VARIANT` says, reports "forged", and stays alive.
fn role_hostile_large_client() -> Result<(), String> {
    let conn =
        Connection::connect(param("RB_PATH"), ClientConfig::default()).context("connecting")?;
    let mut forger = FrameForger {
        segment: Scribbler::find(&conn)?,
        tail: 0,
    };
    let region = 64 << 10;
    // The server's bound: 2 × its 16 MiB limit.
    let bound = 32u64 << 20;
    match param("RB_VARIANT").as_str() {
        // A frame of generation 1, whose grant was never sent.
        "never_granted" => forger.push(1, 0, 100_000),
        // A frame that skips generations.
        "skipped_generation" => forger.push(7, 0, 1000),
        // A grant one grain past the bound (with a small object): refused before mapping.
        "grant_beyond_the_bound" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, bound + (64 << 10), Some(&object))?;
            forger.push(1, 0, 100);
        }
        // A grant whose object is smaller than it says: the region's own check refuses it.
        "grant_larger_than_its_object" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, 2 * region as u64, Some(&object))?;
            forger.push(1, 0, 100);
        }
        // A grant with no object attached.
        "grant_without_object" => {
            send_grant(&conn, 1, region as u64, None)?;
            forger.push(1, 0, 100);
        }
        // A proper region, and a message said to run past its end.
        "outside_its_region" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push(1, region as u64 - 1000, 2000);
        }
        // A proper region, and an offset that overflows with the length.
        "offset_overflows" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push(1, u64::MAX - 10, 100);
        }
        // A proper region, and a piece said to run past its end.
        "piece_outside_its_region" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, region as u64 - 1000, 2000, 100_000);
        }
        // A piece longer than the message it says it is part of.
        "piece_longer_than_its_message" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 2000, 1000);
        }
        // A piece that announces more than the server's limit (16 MiB).
        "pieces_beyond_the_limit" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 1000, (16 << 20) + 1);
        }
        // A second piece that announces another length than the first.
        "pieces_disagree_on_the_length" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 20_000, 50_000);
            forger.push_piece(1, 20_000, 20_000, 40_000);
        }
        // Pieces that add up to more than the length they announce.
        "pieces_add_up_to_more" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 30_000, 50_000);
            forger.push_piece(1, 30_000, 30_000, 50_000);
        }
        // A chunk in the middle of a message in pieces.
        "chunk_among_pieces" => {
            let object = region_object(region, &[], 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 30_000, 50_000);
            forger.push_frame(MIDDLE, &[0u8; 8]);
        }
        // A message in pieces withdrawn part-way with an abort frame, then one whole in
        // pieces: only the second is a message (see `aborted_pieces_are_not_delivered`).
        "aborted_pieces" => {
            let (withdrawn, kept) = aborted_pieces_messages();
            let mut bytes = withdrawn[..30_000].to_vec();
            bytes.extend_from_slice(&kept);
            let object = region_object(region, &bytes, 0)?;
            send_grant(&conn, 1, region as u64, Some(&object))?;
            forger.push_piece(1, 0, 30_000, withdrawn.len() as u64);
            forger.push_frame(ABORT, &[]);
            let half = kept.len() as u64 / 2;
            forger.push_piece(1, 30_000, half, kept.len() as u64);
            forger.push_piece(
                1,
                30_000 + half,
                kept.len() as u64 - half,
                kept.len() as u64,
            );
        }
        // Honest messages, each in a new region of a new generation (of varying sizes).
        "new_generation_every_message" => {
            for generation in 1..=GENERATIONS {
                let (len, capacity) = hostile_message(generation);
                let message = random_bytes(u64::from(generation), len);
                let object = region_object(capacity, &message, generation)?;
                send_grant(&conn, generation, capacity as u64, Some(&object))?;
                forger.push(generation, 0, len as u64);
                // Our copy of the fd goes; the server's (and the object) stays while mapped.
            }
        }
        other => return Err(format!("unknown variant {other:?}")),
    }
    report("forged");
    let _keep_open = conn;
    sleep_until_killed()
}

/// The length of the message of `generation` in `new_generation_every_message`, and the
/// capacity of its region.
fn hostile_message(generation: u32) -> (usize, usize) {
    let capacity = (64 << 10) * (1 + generation as usize % 4);
    (capacity - 1000 - generation as usize, capacity)
}

/// The messages of `aborted_pieces`: the one withdrawn after its first 30,000 bytes, and
/// the one sent whole after it.
fn aborted_pieces_messages() -> (Vec<u8>, Vec<u8>) {
    (random_bytes(31, 50_000), random_bytes(32, 20_001))
}

/// The start of the names of the objects a child forging `variant` makes, so that each
/// test counts only its own child's (the tests run side by side in this process).
fn object_tag(variant: &str) -> String {
    format!("{HOSTILE_NAME}-{variant}-")
}

/// This process's mappings of objects the hostile child forging `variant` made.
fn hostile_mappings(variant: &str) -> Vec<String> {
    let tag = object_tag(variant);
    std::fs::read_to_string("/proc/self/maps")
        .expect("reading /proc/self/maps")
        .lines()
        .filter(|line| line.contains(&tag))
        .map(str::to_owned)
        .collect()
}

fn server(socket: &SocketPath) -> Server {
    let config = ServerConfig::default()
        .ring_capacity(RING)
        .send_timeout(Some(PATIENCE));
    Server::bind(socket, config).expect("binding")
}

/// The child forges `variant`; the server's receive must give `Corrupted` (and again on
/// the next call), the child must still live (corruption, not death), nothing of the
/// child's stays mapped once the connection is dropped, and the server still serves.
fn is_reported_as_corrupted(variant: &str, expected_detail: &str) {
    let test = format!("large_hostile_{variant}");
    let _test = shared_test(&test);
    let socket = SocketPath::new(&test);
    let server = server(&socket);
    let mut hostile = ChildProcess::spawn(
        "hostile_large_client",
        &[("RB_PATH", socket.param()), ("RB_VARIANT", variant.into())],
    );
    let mut conn = accept_from(&server, &mut hostile);
    hostile.expect_line("forged");
    let mut buf = Vec::new();
    let result = conn.recv(&mut buf, Some(PATIENCE));
    match &result {
        Err(Error::Corrupted { detail }) if detail.contains(expected_detail) => {}
        _ => {
            let diagnostics = hostile.diagnostics();
            panic!(
                "{variant}: expected Corrupted ({expected_detail}), got {result:?}; {diagnostics}"
            )
        }
    }
    let again = conn.recv(&mut buf, Some(Duration::ZERO));
    assert!(
        matches!(again, Err(Error::Corrupted { .. })),
        "{variant}: the connection must stay closed, the next recv gave {again:?}"
    );
    assert!(hostile.is_running(), "{variant}: {}", hostile.diagnostics());
    drop(conn);
    assert_eq!(
        hostile_mappings(variant),
        Vec::<String>::new(),
        "{variant}: left mapped"
    );
    hostile.kill();
    still_serves(&server, &socket);
}

/// An honest client in this process sends a large message through `server` and gets it
/// back: the server goes on serving after a hostile connection.
fn still_serves(server: &Server, socket: &SocketPath) {
    let client = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut conn =
                Connection::connect(socket, ClientConfig::default()).expect("connecting");
            let message = random_bytes(77, 300_000);
            conn.send(&message).expect("sending");
            let mut buf = Vec::new();
            conn.recv(&mut buf, Some(PATIENCE))
                .expect("receiving the echo");
            buf == message
        });
        let mut conn = server.accept().expect("accepting an honest client");
        let mut buf = Vec::new();
        conn.recv(&mut buf, Some(PATIENCE)).expect("receiving");
        conn.send(&buf).expect("echoing");
        client.join().expect("the honest client panicked")
    });
    assert!(client, "the honest echo differs");
}

#[test]
fn a_large_frame_whose_grant_never_came_is_corruption() {
    is_reported_as_corrupted("never_granted", "grant never arrived");
}

#[test]
fn a_large_frame_of_a_generation_never_granted_is_corruption() {
    is_reported_as_corrupted("skipped_generation", "never granted");
}

#[test]
fn a_grant_beyond_the_bound_is_corruption() {
    is_reported_as_corrupted(
        "grant_beyond_the_bound",
        "larger than this connection's bound",
    );
}

#[test]
fn a_grant_larger_than_its_object_is_corruption() {
    is_reported_as_corrupted("grant_larger_than_its_object", "failed its checks");
}

#[test]
fn a_grant_without_an_object_is_corruption() {
    is_reported_as_corrupted("grant_without_object", "other than one handle");
}

#[test]
fn a_large_message_outside_its_region_is_corruption() {
    is_reported_as_corrupted("outside_its_region", "outside its region");
}

#[test]
fn a_large_message_whose_offset_overflows_is_corruption() {
    is_reported_as_corrupted("offset_overflows", "outside its region");
}

/// A peer that grants a new region with every message: every message arrives intact, and
/// the server never holds more than one of its regions (the old mapping goes when the next
/// is mapped), and none once the connection is dropped.
#[test]
fn a_new_generation_every_message_is_served_holding_one_region() {
    let _test = shared_test("large_hostile_generations");
    let socket = SocketPath::new("large_hostile_generations");
    let server = server(&socket);
    let mut hostile = ChildProcess::spawn(
        "hostile_large_client",
        &[
            ("RB_PATH", socket.param()),
            ("RB_VARIANT", "new_generation_every_message".into()),
        ],
    );
    let mut conn = accept_from(&server, &mut hostile);
    hostile.expect_line("forged");
    let mut buf = Vec::new();
    for generation in 1..=GENERATIONS {
        conn.recv(&mut buf, Some(PATIENCE))
            .unwrap_or_else(|error| panic!("generation {generation}: {error}"));
        let (len, _) = hostile_message(generation);
        assert!(
            buf == random_bytes(u64::from(generation), len),
            "generation {generation}: the message differs"
        );
        let mapped = hostile_mappings("new_generation_every_message");
        assert_eq!(mapped.len(), 1, "generation {generation}: {mapped:#?}");
    }
    drop(conn);
    assert_eq!(
        hostile_mappings("new_generation_every_message"),
        Vec::<String>::new(),
        "left mapped"
    );
    hostile.kill();
    still_serves(&server, &socket);
}

#[test]
fn a_piece_outside_its_region_is_corruption() {
    is_reported_as_corrupted("piece_outside_its_region", "outside its region");
}

#[test]
fn a_piece_longer_than_its_message_is_corruption() {
    is_reported_as_corrupted("piece_longer_than_its_message", "longer than its message");
}

#[test]
fn pieces_of_a_message_beyond_the_limit_are_corruption() {
    is_reported_as_corrupted(
        "pieces_beyond_the_limit",
        "exceeds the connection's maximum",
    );
}

#[test]
fn pieces_that_disagree_on_their_message_length_are_corruption() {
    is_reported_as_corrupted("pieces_disagree_on_the_length", "disagree on its length");
}

#[test]
fn pieces_that_add_up_to_more_than_their_message_are_corruption() {
    is_reported_as_corrupted("pieces_add_up_to_more", "add up to more");
}

#[test]
fn a_chunk_among_pieces_is_corruption() {
    is_reported_as_corrupted("chunk_among_pieces", "out of sequence");
}

/// Pieces withdrawn by an abort frame are never delivered: the receiver drops what it took
/// of them, and the message after arrives whole and alone.
#[test]
fn aborted_pieces_are_not_delivered() {
    let _test = shared_test("large_hostile_aborted_pieces");
    let socket = SocketPath::new("large_hostile_aborted_pieces");
    let server = server(&socket);
    let mut hostile = ChildProcess::spawn(
        "hostile_large_client",
        &[
            ("RB_PATH", socket.param()),
            ("RB_VARIANT", "aborted_pieces".into()),
        ],
    );
    let mut conn = accept_from(&server, &mut hostile);
    hostile.expect_line("forged");
    let mut buf = Vec::new();
    conn.recv(&mut buf, Some(PATIENCE))
        .expect("receiving the message after the aborted one");
    let (_, kept) = aborted_pieces_messages();
    assert!(
        buf == kept,
        "received {} bytes, not the message sent whole",
        buf.len()
    );
    let nothing = conn.recv(&mut buf, Some(Duration::from_millis(50)));
    assert!(matches!(nothing, Err(Error::Timeout)), "then {nothing:?}");
    drop(conn);
    hostile.kill();
    still_serves(&server, &socket);
}
