//! The client's side of the handshake: connect, say hello, check what the server sent
//! (refusals become typed errors; the segment is checked before it is mapped), and ack.

use super::wire::{
    decode_welcome, encode_hello, encode_prefix, Carries, Kind, Status, WELCOME_LEN,
};
use super::{handshake_deadline, handshake_error, socket_error};
use crate::config::ClientConfig;
use crate::conn::{Connection, Segment, Settings, Side};
use crate::core::layout;
use crate::error::Error;
use crate::sys::{self, ControlStream, Doorbell, DoorbellRinger, Grant, SharedRegion};

/// A doorbell that several client connections to one server process share: each gets a
/// duplicate of `bell`, and the server rings `ringer`. Shared by one server's connections
/// only: a server can shut the ringer's socket down (it holds it), which silences the
/// doorbell for everyone who rings it, so it must not be another server's.
#[cfg(ringbell_async)]
#[derive(Debug)]
pub(crate) struct SharedDoorbell {
    pub(crate) bell: Doorbell,
    pub(crate) ringer: DoorbellRinger,
}

/// Picks the shared doorbell for the connections to the server process with this pid.
#[cfg(ringbell_async)]
pub(crate) type DoorbellFor<'a> =
    &'a (dyn Fn(u32) -> Result<std::sync::Arc<SharedDoorbell>, Error> + Sync);

/// Connects to the server at `path` for calls and runs the client's side of the
/// handshake. The connection's doorbell is the one `shared` picks for the server's pid,
/// which is returned with the connection.
#[cfg(ringbell_async)]
pub(crate) fn connect_sharing(
    path: &std::path::Path,
    config: &ClientConfig,
    shared: DoorbellFor<'_>,
) -> Result<(Connection, std::sync::Arc<SharedDoorbell>), Error> {
    let mut chosen = None;
    let connection = connect_with(
        path,
        config,
        Carries::Calls,
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

/// Connects to the server at `path` for calls, with a doorbell of its own (`test_api`).
#[cfg(feature = "__test-api")]
pub(crate) fn connect_for_calls(
    path: &std::path::Path,
    config: &ClientConfig,
) -> Result<Connection, Error> {
    connect_with(path, config, Carries::Calls, None)
}

/// Connects to the server at `path` and runs the client's side of the handshake, for
/// plain messages.
pub(crate) fn connect(path: &std::path::Path, config: &ClientConfig) -> Result<Connection, Error> {
    connect_with(path, config, Carries::Messages, None)
}

/// What `connect_with` asks for the doorbell to share with the server of a given pid.
#[cfg(ringbell_async)]
type PickDoorbell<'a> = &'a mut dyn FnMut(u32) -> Result<std::sync::Arc<SharedDoorbell>, Error>;

#[cfg(not(ringbell_async))]
type PickDoorbell<'a> = &'a mut std::convert::Infallible;

/// The client's side of the handshake, for a connection that carries `carries` (the server
/// refuses it if it serves the other kind).
fn connect_with(
    path: &std::path::Path,
    config: &ClientConfig,
    carries: Carries,
    shared: Option<PickDoorbell<'_>>,
) -> Result<Connection, Error> {
    let deadline = handshake_deadline(config.connect_timeout);
    let control = ControlStream::connect(path, deadline).map_err(|error| match error.kind() {
        // The socket file is owner-only unless the server allows other uids.
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            detail: format!(
                "{} is not accessible to {}: the server admits only its own user \
                 unless it was configured with ServerConfig::allow_uid (on Windows \
                 ServerConfigExt::allow_sid)",
                path.display(),
                sys::current_user()
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
    let server_user = control
        .peer_user()
        .map_err(|error| Error::io("reading the server's credentials", error))?;
    if !config.trusts_server(server_user, sys::current_user()) {
        return Err(Error::PermissionDenied {
            detail: format!(
                "the server at {} runs as {server_user}, which this client does not trust \
                 (ClientConfig::trust_server_uid; on Windows ClientConfigExt::trust_server_sid)",
                path.display()
            ),
        });
    }
    control
        .set_deadline(Some(deadline))
        .map_err(|error| Error::io("setting the handshake deadline", error))?;
    let hello = control.write_all(&encode_hello(carries));
    let mut bytes = [0u8; WELCOME_LEN];
    let received = control.recv_with_grants(&mut bytes);
    if let Err(error) = hello {
        // A server that refuses at once (at its connection limit) may close its end before
        // our Hello arrives; its refusal is still queued for us, and says more.
        if received.is_ok() {
            decode_welcome(&bytes, path)?;
        }
        return Err(socket_error("sending the hello", error));
    }
    let grants =
        received.map_err(|error| socket_error("waiting for the server's welcome", error))?;
    let welcome = decode_welcome(&bytes, path)?;
    let [region, ring_server, client_doorbell]: [Grant; 3] =
        grants.try_into().map_err(|grants: Vec<Grant>| {
            handshake_error(format!(
                "the welcome carried {} fds instead of 3",
                grants.len()
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
    let region = SharedRegion::adopt(region, welcome.segment_len as usize, server_user)
        .map_err(|error| socket_error("checking the shared memory", error))?;
    let segment = Segment::open(region, capacity).map_err(handshake_error)?;
    let ring_server = DoorbellRinger::adopt(ring_server)
        .map_err(|error| socket_error("checking the server's doorbell", error))?;
    let ack = encode_prefix(Kind::Ack, Status::Accepted);
    let own = match shared {
        None => {
            control
                .write_all(&ack)
                .map_err(|error| socket_error("sending the ack", error))?;
            Doorbell::adopt(client_doorbell)
                .map_err(|error| socket_error("checking the client's doorbell", error))?
        }
        #[cfg(ringbell_async)]
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
            let ringer = shared
                .ringer
                .grant()
                .map_err(|error| Error::io("sharing the doorbell", error))?;
            control
                .send_with_grants(&ack, &[&ringer])
                .map_err(|error| socket_error("sending the ack", error))?;
            own
        }
        #[cfg(not(ringbell_async))]
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
            carries,
            idle_timeout: config.idle_timeout,
            // Stalls mid-message guard a server's budget; a client has none.
            stall_timeout: None,
            concurrent_calls: usize::try_from(welcome.concurrent_calls)
                .unwrap_or(usize::MAX)
                .max(1),
        },
    ))
}
