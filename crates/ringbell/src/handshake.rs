//! The handshake over the control socket.
//!
//! ```text
//! client                                   server
//!   connect ───────────────────────────────▶ accept; SO_PEERCRED → uid
//!   Hello  {magic, version} ───────────────▶ check magic, version, uid
//!                                            create memfd segment (sealed), 2 doorbells
//!          ◀─────────────── Welcome {status, capacity, max message, segment size}
//!                           + SCM_RIGHTS [memfd, server's doorbell ringer, client's doorbell]
//!   check seals + size, map, check header
//!   Ack ───────────────────────────────────▶ connection ready on both sides
//!          [+ SCM_RIGHTS [client's own doorbell ringer]]
//! ```
//!
//! A client whose connections to one server share one doorbell (a
//! [`ClientGroup`](crate::tokio::ClientGroup)) attaches that doorbell's ringer to its Ack;
//! the server then rings it instead of the doorbell it made, so that one wake-up of the
//! group's task serves all its connections, and a server that replies to many of them in
//! one sweep rings it once (see `tokio_serve.rs`).
//!
//! Every message starts with the same 16-byte prefix, little-endian:
//! `magic "RINGBELL" (8) | version u16 | kind u16 | status u32`, so that a peer of another
//! version can still read a refusal. The Welcome adds three u64: ring capacity, maximum
//! message size, segment length. The whole exchange runs under a deadline on both sides.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::config::{ClientConfig, ServerConfig};
use crate::conn::{Connection, Settings, Side};
use crate::error::Error;
use crate::layout;
use crate::segment::Segment;
use crate::server::ConnectionSlot;
use crate::sys::{self, ControlStream, Doorbell, DoorbellRinger, SharedRegion};

/// The first bytes of every handshake message.
pub(crate) const MAGIC: [u8; 8] = *b"RINGBELL";
/// The handshake protocol version this build speaks.
/// Version 2: the Ack may carry the client's own doorbell ringer.
pub(crate) const PROTOCOL_VERSION: u16 = 2;
/// Length of the common prefix, and of Hello and Ack.
pub(crate) const PREFIX_LEN: usize = 16;
/// Length of a Welcome.
pub(crate) const WELCOME_LEN: usize = PREFIX_LEN + 24;

/// Which handshake message a prefix introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Hello = 1,
    Welcome = 2,
    Ack = 3,
}

/// The server's verdict in a Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Accepted = 0,
    PermissionDenied = 1,
    UnsupportedVersion = 2,
    ServerError = 3,
    /// Out of file descriptors.
    OutOfResources = 4,
    /// At its connection limit.
    ServerBusy = 5,
}

impl Status {
    fn from_u32(value: u32) -> Option<Status> {
        Some(match value {
            0 => Status::Accepted,
            1 => Status::PermissionDenied,
            2 => Status::UnsupportedVersion,
            3 => Status::ServerError,
            4 => Status::OutOfResources,
            5 => Status::ServerBusy,
            _ => return None,
        })
    }
}

/// A decoded prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) version: u16,
    pub(crate) kind: Kind,
    pub(crate) status: Status,
}

/// The body of a Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) ring_capacity: u64,
    pub(crate) max_message_size: u64,
    pub(crate) segment_len: u64,
}

pub(crate) fn encode_prefix(kind: Kind, status: Status) -> [u8; PREFIX_LEN] {
    let mut bytes = [0u8; PREFIX_LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    bytes[12..16].copy_from_slice(&(status as u32).to_le_bytes());
    bytes
}

fn handshake_error(detail: impl Into<String>) -> Error {
    Error::Handshake {
        detail: detail.into(),
    }
}

/// Decodes a prefix and checks that it is `expected`. The version is returned, not checked:
/// the caller decides what a mismatch means.
pub(crate) fn decode_prefix(bytes: &[u8; PREFIX_LEN], expected: Kind) -> Result<Prefix, Error> {
    if bytes[0..8] != MAGIC {
        return Err(handshake_error(
            "bad magic: the peer is not a ringbell endpoint",
        ));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let kind = match u16::from_le_bytes([bytes[10], bytes[11]]) {
        1 => Kind::Hello,
        2 => Kind::Welcome,
        3 => Kind::Ack,
        other => {
            return Err(handshake_error(format!(
                "unknown handshake message kind {other}"
            )))
        }
    };
    if kind != expected {
        return Err(handshake_error(format!(
            "expected a {expected:?} message, got a {kind:?}"
        )));
    }
    let status_raw = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let status = Status::from_u32(status_raw)
        .ok_or_else(|| handshake_error(format!("unknown handshake status {status_raw}")))?;
    Ok(Prefix {
        version,
        kind,
        status,
    })
}

pub(crate) fn encode_welcome(status: Status, welcome: &Welcome) -> [u8; WELCOME_LEN] {
    let mut bytes = [0u8; WELCOME_LEN];
    bytes[..PREFIX_LEN].copy_from_slice(&encode_prefix(Kind::Welcome, status));
    bytes[16..24].copy_from_slice(&welcome.ring_capacity.to_le_bytes());
    bytes[24..32].copy_from_slice(&welcome.max_message_size.to_le_bytes());
    bytes[32..40].copy_from_slice(&welcome.segment_len.to_le_bytes());
    bytes
}

/// The Welcome that refuses a client because the server is out of fds.
pub(crate) fn out_of_resources_refusal() -> [u8; WELCOME_LEN] {
    refusal(Status::OutOfResources)
}

/// Decodes a Welcome. Refusals become the matching error.
pub(crate) fn decode_welcome(bytes: &[u8; WELCOME_LEN]) -> Result<Welcome, Error> {
    let prefix_bytes: &[u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().expect("16 bytes");
    let prefix = decode_prefix(prefix_bytes, Kind::Welcome)?;
    match prefix.status {
        Status::Accepted => {}
        Status::PermissionDenied => {
            return Err(Error::PermissionDenied {
                detail: format!(
                "the server does not admit uid {} (it admits more with ServerConfig::allow_uid)",
                own_uid()
            ),
            })
        }
        Status::UnsupportedVersion => {
            return Err(handshake_error(format!(
                "version mismatch: this client speaks protocol v{PROTOCOL_VERSION}, the server v{}",
                prefix.version
            )))
        }
        Status::ServerError => {
            return Err(handshake_error(
                "the server failed to set up the connection; see its log",
            ))
        }
        Status::OutOfResources => {
            return Err(Error::ServerBusy {
                detail: "the server is out of file descriptors (its RLIMIT_NOFILE)".into(),
            })
        }
        Status::ServerBusy => {
            return Err(Error::ServerBusy {
                detail: "the server is at its connection limit (ServerConfig::max_connections)"
                    .into(),
            })
        }
    }
    if prefix.version != PROTOCOL_VERSION {
        return Err(handshake_error(format!(
            "version mismatch: this client speaks protocol v{PROTOCOL_VERSION}, the server v{}",
            prefix.version
        )));
    }
    let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Welcome {
        ring_capacity: field(16),
        max_message_size: field(24),
        segment_len: field(32),
    })
}

/// The deadline of a handshake that may take `timeout` (a year if that overflows).
fn handshake_deadline(timeout: Duration) -> Instant {
    crate::wait::deadline_after(timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
}

fn handshake_timeout(step: &str) -> Error {
    handshake_error(format!("timed out {step}"))
}

/// Maps a socket error during the handshake to a clear error.
fn socket_error(step: &str, error: std::io::Error) -> Error {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => handshake_timeout(step),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            handshake_error(format!("the peer hung up {step}"))
        }
        ErrorKind::InvalidData => handshake_error(format!("{step}: {error}")),
        _ => Error::io(step, error),
    }
}

/// The Welcome that refuses a client with `status`.
fn refusal(status: Status) -> [u8; WELCOME_LEN] {
    encode_welcome(
        status,
        &Welcome {
            ring_capacity: 0,
            max_message_size: 0,
            segment_len: 0,
        },
    )
}

/// Refuses a client before reading anything from it: the server is at its connection
/// limit. The refusal waits in the client's socket buffer for it to read after its Hello;
/// a client already gone is not an error.
pub(crate) fn refuse_busy(control: ControlStream) {
    control.try_send(&refusal(Status::ServerBusy));
}

/// The server's side of one handshake, driven without blocking, so that one thread or task
/// can carry any number of them: a client that stalls holds one fd until its deadline and
/// delays nobody else.
///
/// Call [`advance`](Self::advance) whenever [`fd`](Self::fd) is readable (or hung up), and
/// give up with [`timed_out`](Self::timed_out) at [`deadline`](Self::deadline).
#[derive(Debug)]
pub(crate) struct ServerHandshake {
    control: ControlStream,
    deadline: Instant,
    /// The 16-byte message being received (a Hello, then an Ack), and how much of it has.
    message: [u8; PREFIX_LEN],
    received: usize,
    stage: Stage,
    /// This handshake's place under the server's connection limit, passed on to the
    /// connection it makes.
    slot: ConnectionSlot,
    /// The doorbell ringer the client attached to its Ack, if it did.
    client_ringer: Option<OwnedFd>,
}

impl std::os::fd::AsRawFd for ServerHandshake {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.control.as_fd().as_raw_fd()
    }
}

/// What a [`ServerHandshake`] waits for.
#[derive(Debug)]
enum Stage {
    Hello,
    /// The Welcome went out with the fds; what remains is the server's half.
    Ack(Box<ServerHalf>),
}

/// The server's parts of a connection whose Welcome has been sent.
#[derive(Debug)]
struct ServerHalf {
    segment: Segment,
    own_doorbell: Doorbell,
    ring_client: DoorbellRinger,
}

/// What one [`ServerHandshake::advance`] achieved.
#[derive(Debug)]
pub(crate) enum Step {
    /// The client has not sent enough yet: wait for the fd to be readable again.
    Waiting(ServerHandshake),
    /// The client hung up without sending a byte: not a client but a probe (for example
    /// another `Server::bind` checking whether this server is alive).
    Probe,
    /// The handshake is complete.
    Done(Box<Connection>),
}

impl ServerHandshake {
    /// Starts the handshake on a freshly accepted stream, under `config.handshake_timeout`.
    pub(crate) fn start(
        control: ControlStream,
        config: &ServerConfig,
        slot: ConnectionSlot,
    ) -> ServerHandshake {
        ServerHandshake {
            control,
            deadline: handshake_deadline(config.handshake_timeout),
            message: [0; PREFIX_LEN],
            received: 0,
            stage: Stage::Hello,
            slot,
            client_ringer: None,
        }
    }

    /// The socket to wait on.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.control.as_fd()
    }

    /// When the client's time is up.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// What the handshake waits for, for its errors.
    fn waiting_for(&self) -> &'static str {
        match self.stage {
            Stage::Hello => "waiting for the client's hello",
            Stage::Ack(_) => "waiting for the client's ack",
        }
    }

    /// The error for a client that did not finish by its deadline; drop the handshake.
    pub(crate) fn timed_out(&self) -> Error {
        handshake_timeout(self.waiting_for())
    }

    /// Makes all the progress the bytes already received allow, without waiting.
    pub(crate) fn advance(mut self, config: &ServerConfig, own_uid: u32) -> Result<Step, Error> {
        loop {
            let step = self.waiting_for();
            match self
                .control
                .try_read_with_fds(&mut self.message[self.received..])
            {
                Ok(None) => return Ok(Step::Waiting(self)),
                Ok(Some((0, _))) if self.received == 0 && matches!(self.stage, Stage::Hello) => {
                    return Ok(Step::Probe)
                }
                Ok(Some((0, _))) => {
                    return Err(handshake_error(format!("the peer hung up {step}")))
                }
                Ok(Some((read, fds))) => {
                    self.received += read;
                    self.take_fds(fds)?;
                }
                Err(error) => return Err(socket_error(step, error)),
            }
            if self.received < PREFIX_LEN {
                continue;
            }
            self.received = 0;
            match std::mem::replace(&mut self.stage, Stage::Hello) {
                Stage::Hello => {
                    let half = self.welcome(config, own_uid)?;
                    self.stage = Stage::Ack(Box::new(half));
                }
                Stage::Ack(half) => {
                    decode_prefix(&self.message, Kind::Ack)?;
                    return Ok(Step::Done(Box::new(self.finish(*half, config)?)));
                }
            }
        }
    }

    /// Checks the Hello in `self.message` and the client's uid, sets up the connection's
    /// memory and doorbells, and sends the Welcome with the client's fds.
    fn welcome(&self, config: &ServerConfig, own_uid: u32) -> Result<ServerHalf, Error> {
        let control = &self.control;
        let prefix = decode_prefix(&self.message, Kind::Hello)?;
        // A refusal is a courtesy: the client may be gone already.
        let refuse = |status: Status| control.try_send(&refusal(status));
        if prefix.version != PROTOCOL_VERSION {
            refuse(Status::UnsupportedVersion);
            return Err(handshake_error(format!(
                "version mismatch: this server speaks protocol v{PROTOCOL_VERSION}, the client v{}",
                prefix.version
            )));
        }
        let uid = control
            .peer_uid()
            .map_err(|error| Error::io("reading the client's credentials", error))?;
        if !config.admits(uid, own_uid) {
            refuse(Status::PermissionDenied);
            return Err(Error::PermissionDenied {
                detail: format!(
                    "a client running as uid {uid} was refused (admit it with ServerConfig::allow_uid)"
                ),
            });
        }

        let capacity = config.ring_capacity;
        let segment_len =
            layout::segment_len(capacity).expect("capacity validated in Server::bind");
        let setup = || -> std::io::Result<_> {
            let (region, memfd) = SharedRegion::create(segment_len)?;
            Ok((region, memfd, sys::doorbell_pair()?, sys::doorbell_pair()?))
        };
        let (region, memfd, (own_doorbell, client_rings_server), (client_doorbell, ring_client)) =
            match setup() {
                Ok(parts) => parts,
                Err(error) => {
                    if sys::is_out_of_fds(&error) {
                        refuse(Status::OutOfResources);
                        tracing::warn!(
                            "out of file descriptors: refused a client; raise RLIMIT_NOFILE to serve more"
                        );
                    } else {
                        refuse(Status::ServerError);
                    }
                    return Err(Error::io("creating the connection's shared memory", error));
                }
            };
        let segment = Segment::initialize(region, capacity);
        let welcome = Welcome {
            ring_capacity: capacity as u64,
            max_message_size: config.max_message_size as u64,
            segment_len: segment_len as u64,
        };
        // The client has sent its Hello and reads nothing else, so its socket buffer is
        // empty and these 40 bytes go out at once; the deadline bounds the send anyway.
        control
            .set_deadline(Some(self.deadline))
            .map_err(|error| Error::io("setting the handshake deadline", error))?;
        control
            .send_with_fds(
                &encode_welcome(Status::Accepted, &welcome),
                &[
                    memfd.as_fd(),
                    client_rings_server.as_fd(),
                    client_doorbell.as_fd(),
                ],
            )
            .map_err(|error| socket_error("sending the welcome", error))?;
        // `memfd`, `client_rings_server` and `client_doorbell` drop here: the client holds
        // its own references now, ours would only keep the memory alive.
        Ok(ServerHalf {
            segment,
            own_doorbell,
            ring_client,
        })
    }

    /// Keeps the fds a client attached: only its doorbell ringer, once, with its Ack.
    fn take_fds(&mut self, mut fds: Vec<OwnedFd>) -> Result<(), Error> {
        if fds.is_empty() {
            return Ok(());
        }
        if !matches!(self.stage, Stage::Ack(_)) {
            return Err(handshake_error("the client attached fds to its hello"));
        }
        if fds.len() > 1 || self.client_ringer.is_some() {
            return Err(handshake_error(
                "the client attached more than one fd to its ack",
            ));
        }
        self.client_ringer = fds.pop();
        Ok(())
    }

    /// The connection, once the client's Ack has arrived.
    fn finish(mut self, half: ServerHalf, config: &ServerConfig) -> Result<Connection, Error> {
        // The client's own doorbell, if it sent one, replaces the one made for it.
        let ring_client = match self.client_ringer.take() {
            Some(fd) => DoorbellRinger::from_peer(fd)
                .map_err(|error| socket_error("checking the client's doorbell", error))?,
            None => half.ring_client,
        };
        // Clearing the deadline only resets socket timeouts; a failure would leave a bound
        // on blocking socket calls, which the connection no longer makes.
        let _ = self.control.set_deadline(None);
        let mut connection = Connection::new(
            half.segment,
            Side::Server,
            self.control,
            half.own_doorbell,
            ring_client,
            Settings {
                wait: config.wait,
                max_message_size: config.max_message_size,
                send_timeout: config.send_timeout,
            },
        );
        connection.hold_slot(self.slot);
        Ok(connection)
    }
}

/// A doorbell that several client connections to one server process share: each gets a
/// duplicate of `bell`, and the server rings `ringer`. Shared by one server's connections
/// only: a server can shut the ringer's socket down (it holds it), which silences the
/// doorbell for everyone who rings it, so it must not be another server's.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) struct SharedDoorbell {
    pub(crate) bell: Doorbell,
    pub(crate) ringer: DoorbellRinger,
}

/// Picks the shared doorbell for the connections to the server process with this pid.
#[cfg(feature = "tokio")]
pub(crate) type DoorbellFor<'a> =
    &'a (dyn Fn(u32) -> Result<std::sync::Arc<SharedDoorbell>, Error> + Sync);

/// Connects to the server at `path` and runs the client's side of the handshake. With
/// `shared`, the connection's doorbell is the one it picks for the server's pid, which is
/// returned with the connection.
#[cfg(feature = "tokio")]
pub(crate) fn connect_sharing(
    path: &std::path::Path,
    config: &ClientConfig,
    shared: DoorbellFor<'_>,
) -> Result<(Connection, std::sync::Arc<SharedDoorbell>), Error> {
    let mut chosen = None;
    let connection = connect_with(
        path,
        config,
        Some(&mut |pid| {
            let doorbell = shared(pid)?;
            chosen = Some(doorbell.clone());
            Ok(doorbell)
        }),
    )?;
    Ok((
        connection,
        chosen.expect("a shared doorbell was picked for the connection"),
    ))
}

/// Connects to the server at `path` and runs the client's side of the handshake.
pub(crate) fn connect(path: &std::path::Path, config: &ClientConfig) -> Result<Connection, Error> {
    connect_with(path, config, None)
}

/// What `connect_with` asks for the doorbell to share with the server of a given pid.
#[cfg(feature = "tokio")]
type PickDoorbell<'a> = &'a mut dyn FnMut(u32) -> Result<std::sync::Arc<SharedDoorbell>, Error>;
#[cfg(not(feature = "tokio"))]
type PickDoorbell<'a> = &'a mut std::convert::Infallible;

fn connect_with(
    path: &std::path::Path,
    config: &ClientConfig,
    shared: Option<PickDoorbell<'_>>,
) -> Result<Connection, Error> {
    let deadline = handshake_deadline(config.connect_timeout);
    let control = ControlStream::connect(path, deadline).map_err(|error| match error.kind() {
        // The socket file is owner-only unless the server allows other uids.
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            detail: format!(
                "{} is not accessible to uid {}: the server admits only its own uid \
                 unless it was configured with ServerConfig::allow_uid",
                path.display(),
                own_uid()
            ),
        },
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Error::io(
            &format!(
                "connecting to {} (is a ringbell server running there?)",
                path.display()
            ),
            error,
        ),
        _ => Error::io(&format!("connecting to {}", path.display()), error),
    })?;
    let server_uid = control
        .peer_uid()
        .map_err(|error| Error::io("reading the server's credentials", error))?;
    if !config.trusts_server(server_uid, own_uid()) {
        return Err(Error::PermissionDenied {
            detail: format!(
                "the server at {} runs as uid {server_uid}, which this client does not trust \
                 (ClientConfig::trust_server_uid)",
                path.display()
            ),
        });
    }
    control
        .set_deadline(Some(deadline))
        .map_err(|error| Error::io("setting the handshake deadline", error))?;
    let hello = control.write_all(&encode_prefix(Kind::Hello, Status::Accepted));
    let mut bytes = [0u8; WELCOME_LEN];
    let received = control.recv_with_fds(&mut bytes);
    if let Err(error) = hello {
        // A server that refuses at once (at its connection limit) may close its end before
        // our Hello arrives; its refusal is still queued for us, and says more.
        if received.is_ok() {
            decode_welcome(&bytes)?;
        }
        return Err(socket_error("sending the hello", error));
    }
    let fds = received.map_err(|error| socket_error("waiting for the server's welcome", error))?;
    let welcome = decode_welcome(&bytes)?;
    let [memfd, ring_server, client_doorbell]: [OwnedFd; 3] =
        fds.try_into().map_err(|fds: Vec<OwnedFd>| {
            handshake_error(format!(
                "the welcome carried {} fds instead of 3",
                fds.len()
            ))
        })?;
    let capacity = usize::try_from(welcome.ring_capacity)
        .map_err(|_| handshake_error("the announced ring capacity does not fit in memory"))?;
    let max_message_size = usize::try_from(welcome.max_message_size)
        .ok()
        .filter(|&max| max > 0)
        .ok_or_else(|| handshake_error("the announced maximum message size is out of range"))?;
    if layout::segment_len(capacity).map(|len| len as u64) != Some(welcome.segment_len) {
        return Err(handshake_error(
            "the announced segment size does not match the ring capacity",
        ));
    }
    let region = SharedRegion::open(&memfd, welcome.segment_len as usize)
        .map_err(|error| socket_error("checking the shared memory", error))?;
    drop(memfd);
    let segment = Segment::open(region, capacity).map_err(handshake_error)?;
    let ring_server = DoorbellRinger::from_peer(ring_server)
        .map_err(|error| socket_error("checking the server's doorbell", error))?;
    let ack = encode_prefix(Kind::Ack, Status::Accepted);
    let own = match shared {
        None => {
            control
                .write_all(&ack)
                .map_err(|error| socket_error("sending the ack", error))?;
            Doorbell::from_peer(client_doorbell)
                .map_err(|error| socket_error("checking the client's doorbell", error))?
        }
        #[cfg(feature = "tokio")]
        Some(pick) => {
            // The doorbell the server made for us is not needed: it will ring ours.
            drop(client_doorbell);
            let server_pid = control
                .peer_pid()
                .map_err(|error| Error::io("reading the server's credentials", error))?;
            let shared = pick(server_pid)?;
            let own = shared
                .bell
                .try_clone()
                .map_err(|error| Error::io("sharing the doorbell", error))?;
            control
                .send_with_fds(&ack, &[shared.ringer.as_fd()])
                .map_err(|error| socket_error("sending the ack", error))?;
            own
        }
        #[cfg(not(feature = "tokio"))]
        Some(never) => match *never {},
    };
    control
        .set_deadline(None)
        .map_err(|error| Error::io("clearing the handshake deadline", error))?;
    Ok(Connection::new(
        segment,
        Side::Client,
        control,
        own,
        ring_server,
        Settings {
            wait: config.wait,
            max_message_size,
            send_timeout: config.send_timeout,
        },
    ))
}

/// This process's uid, for the server's default admission rule.
pub(crate) fn own_uid() -> u32 {
    sys::current_uid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welcome_round_trips() {
        let welcome = Welcome {
            ring_capacity: 1 << 16,
            max_message_size: 1 << 20,
            segment_len: 4096 + (2 << 16),
        };
        assert_eq!(
            decode_welcome(&encode_welcome(Status::Accepted, &welcome)).unwrap(),
            welcome
        );
    }

    #[test]
    fn refusals_and_garbage_are_typed_errors() {
        let zero = Welcome {
            ring_capacity: 0,
            max_message_size: 0,
            segment_len: 0,
        };
        assert!(matches!(
            decode_welcome(&encode_welcome(Status::PermissionDenied, &zero)),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            decode_welcome(&[0xAB; WELCOME_LEN]),
            Err(Error::Handshake { .. })
        ));
        let mut hello = encode_prefix(Kind::Hello, Status::Accepted);
        assert!(decode_prefix(&hello, Kind::Hello).is_ok());
        assert!(decode_prefix(&hello, Kind::Ack).is_err());
        hello[12] = 9;
        assert!(decode_prefix(&hello, Kind::Hello).is_err());
    }
}
