//! The handshake's messages as bytes. Every message starts with the same 16-byte prefix,
//! little-endian: `magic "RINGBELL" (8) | version u16 | kind u16 | status u32`, so that a
//! peer of another version can still read a refusal. In a Hello, the last field is what
//! the client will carry ([`Carries`]) rather than a status. The Welcome adds four u64:
//! ring capacity, maximum message size, segment length, and the calls the server takes
//! at once on the connection (`ServerConfig::concurrent_requests`).

use super::handshake_error;
use crate::error::Error;

/// The first bytes of every handshake message.
pub(crate) const MAGIC: [u8; 8] = *b"RINGBELL";

/// The handshake protocol version this build speaks.
/// Version 2: the Ack may carry the client's own doorbell ringer.
/// Version 3: the Hello says what the client will carry ([`Carries`]), and a server that
/// serves the other kind refuses it.
/// Version 4: the call protocol of `core/call.rs` (streams, cancellation, deadlines,
/// metadata), and the Welcome says how many calls the server takes at once.
/// Version 5: a stream's window is in bytes (the opening's window is a u32), and small
/// streamed responses travel packed (`ITEMS`); and a message larger than one frame goes
/// through the sender's large-message region (`core/large.rs`): a `Large` frame in the
/// ring, and the region's grant on the control channel, which carried nothing after the
/// handshake before.
/// Version 6: messages fed (`feed`, `send_batch`) travel packed, several to a `Pack` frame
/// (`core/ring.rs`), which a receiver of version 5 would refuse as an unknown kind; and a
/// message larger than one frame may go through the region in pieces, each announced by
/// a `Piece` frame as soon as it is in (`core/large.rs`).
pub(crate) const PROTOCOL_VERSION: u16 = 6;

/// What a connection carries, which both ends must agree on: a client that makes calls
/// would wait forever for replies from a server that echoes plain messages (and drop them,
/// untagged), and a plain client would read replies' status bytes as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carries {
    /// Plain messages: `Connection`, `AsyncConnection`, and the servers' `accept`.
    Messages = 0,
    /// Request/response calls: `tokio::Client` and `ClientGroup`, and the servers' `serve`.
    Calls = 1,
}

impl Carries {
    fn from_u32(value: u32) -> Option<Carries> {
        match value {
            0 => Some(Carries::Messages),
            1 => Some(Carries::Calls),
            _ => None,
        }
    }

    /// The refusal a server that carries `self` sends a client that wants the other kind.
    pub(crate) fn refusal_status(self) -> Status {
        match self {
            Carries::Messages => Status::ServesMessages,
            Carries::Calls => Status::ServesCalls,
        }
    }
}

/// Length of the common prefix, and of Hello and Ack.
pub(crate) const PREFIX_LEN: usize = 16;

/// Length of a Welcome.
pub(crate) const WELCOME_LEN: usize = PREFIX_LEN + 32;

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
    /// The server serves plain messages, and the client asked for calls.
    ServesMessages = 6,
    /// The server serves calls, and the client asked for plain messages.
    ServesCalls = 7,
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
            6 => Status::ServesMessages,
            7 => Status::ServesCalls,
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
    /// The calls the server takes at once on this connection: a client keeps at most this
    /// many outstanding, so that the server never stops reading its ring while a call
    /// under way waits for the client's credit (`core/call.rs`).
    pub(crate) concurrent_calls: u64,
}

pub(crate) fn encode_prefix(kind: Kind, status: Status) -> [u8; PREFIX_LEN] {
    let mut bytes = [0u8; PREFIX_LEN];
    bytes[0..8].copy_from_slice(&MAGIC);
    bytes[8..10].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    bytes[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    bytes[12..16].copy_from_slice(&(status as u32).to_le_bytes());
    bytes
}

/// The client's Hello: a prefix whose last field says what the client will carry.
pub(crate) fn encode_hello(carries: Carries) -> [u8; PREFIX_LEN] {
    let mut bytes = encode_prefix(Kind::Hello, Status::Accepted);
    bytes[12..16].copy_from_slice(&(carries as u32).to_le_bytes());
    bytes
}

/// Decodes a Hello: the client's protocol version and, if it speaks ours, what it will
/// carry. The version is returned, not checked, as in [`decode_prefix`].
pub(crate) fn decode_hello(bytes: &[u8; PREFIX_LEN]) -> Result<(u16, Option<Carries>), Error> {
    let mut prefix = *bytes;
    // The status field of a Hello is `Carries`: decode the rest as any prefix.
    prefix[12..16].copy_from_slice(&(Status::Accepted as u32).to_le_bytes());
    let version = decode_prefix(&prefix, Kind::Hello)?.version;
    let raw = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if version != PROTOCOL_VERSION {
        return Ok((version, None));
    }
    let carries = Carries::from_u32(raw)
        .ok_or_else(|| handshake_error(format!("a hello asks to carry unknown kind {raw}")))?;
    Ok((version, Some(carries)))
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
    bytes[40..48].copy_from_slice(&welcome.concurrent_calls.to_le_bytes());
    bytes
}

/// The Welcome that refuses a client because the server is out of fds.
pub(crate) fn out_of_resources_refusal() -> [u8; WELCOME_LEN] {
    refusal(Status::OutOfResources)
}

/// Decodes a Welcome. Refusals become the matching error.
pub(crate) fn decode_welcome(
    bytes: &[u8; WELCOME_LEN],
    path: &std::path::Path,
) -> Result<Welcome, Error> {
    let prefix_bytes: &[u8; PREFIX_LEN] = bytes[..PREFIX_LEN].try_into().expect("16 bytes");
    let prefix = decode_prefix(prefix_bytes, Kind::Welcome)?;
    match prefix.status {
        Status::Accepted => {}
        Status::PermissionDenied => {
            return Err(Error::PermissionDenied {
                detail: format!(
                    "the server does not admit {} (it admits more with ServerConfig::allow_uid, \
                     or on Windows ServerConfigExt::allow_sid)",
                    crate::sys::current_user()
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
                detail: format!("the server is {}", crate::sys::OUT_OF_HANDLES),
            })
        }
        Status::ServerBusy => {
            return Err(Error::ServerBusy {
                detail: "the server is at its connection limit (ServerConfig::max_connections)"
                    .into(),
            })
        }
        Status::ServesMessages => {
            return Err(handshake_error(format!(
                "the server at {} serves plain messages, not calls: talk to it with \
                 `Connection` or `AsyncConnection`, or serve it with `AsyncServer::serve` \
                 or `Server::serve`",
                path.display()
            )))
        }
        Status::ServesCalls => {
            return Err(handshake_error(format!(
                "the server at {} serves calls (request/response), not plain messages: \
                 call it with `tokio::Client`, or accept its connections with \
                 `Server::accept` or `AsyncServer::accept`",
                path.display()
            )))
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
        concurrent_calls: field(40),
    })
}

/// The Welcome that refuses a client with `status`.
pub(crate) fn refusal(status: Status) -> [u8; WELCOME_LEN] {
    encode_welcome(
        status,
        &Welcome {
            ring_capacity: 0,
            max_message_size: 0,
            segment_len: 0,
            concurrent_calls: 0,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static std::path::Path {
        std::path::Path::new("/tmp/app.sock")
    }

    #[test]
    fn a_hello_says_what_it_carries_and_unknown_kinds_are_refused() {
        for carries in [Carries::Messages, Carries::Calls] {
            assert_eq!(
                decode_hello(&encode_hello(carries)).unwrap(),
                (PROTOCOL_VERSION, Some(carries))
            );
        }
        let mut hello = encode_hello(Carries::Calls);
        hello[12] = 9;
        assert!(matches!(decode_hello(&hello), Err(Error::Handshake { .. })));
        // Another version's Hello is decoded far enough to refuse it by version.
        hello[8..10].copy_from_slice(&(PROTOCOL_VERSION - 1).to_le_bytes());
        assert_eq!(decode_hello(&hello).unwrap(), (PROTOCOL_VERSION - 1, None));
    }

    #[test]
    fn welcome_round_trips() {
        let welcome = Welcome {
            ring_capacity: 1 << 16,
            max_message_size: 1 << 20,
            segment_len: 4096 + (2 << 16),
            concurrent_calls: 64,
        };
        assert_eq!(
            decode_welcome(&encode_welcome(Status::Accepted, &welcome), path()).unwrap(),
            welcome
        );
    }

    #[test]
    fn refusals_and_garbage_are_typed_errors() {
        let zero = Welcome {
            ring_capacity: 0,
            max_message_size: 0,
            segment_len: 0,
            concurrent_calls: 0,
        };
        assert!(matches!(
            decode_welcome(&encode_welcome(Status::PermissionDenied, &zero), path()),
            Err(Error::PermissionDenied { .. })
        ));
        assert!(matches!(
            decode_welcome(&[0xAB; WELCOME_LEN], path()),
            Err(Error::Handshake { .. })
        ));
        for (status, says) in [
            (Status::ServesMessages, "serves plain messages, not calls"),
            (
                Status::ServesCalls,
                "serves calls (request/response), not plain messages",
            ),
        ] {
            let error = decode_welcome(&encode_welcome(status, &zero), path()).unwrap_err();
            assert!(
                matches!(&error, Error::Handshake { detail } if detail.contains(says) && detail.contains("/tmp/app.sock")),
                "{error}"
            );
        }
        let mut hello = encode_prefix(Kind::Hello, Status::Accepted);
        assert!(decode_prefix(&hello, Kind::Hello).is_ok());
        assert!(decode_prefix(&hello, Kind::Ack).is_err());
        hello[12] = 9;
        assert!(decode_prefix(&hello, Kind::Hello).is_err());
    }
}
