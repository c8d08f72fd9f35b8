//! The server's side of the handshake: a state machine driven by whoever owns the control
//! stream (the blocking `Server::accept`, or a tokio task per handshake), never blocking.

use std::time::Instant;

use super::wire::{
    decode_hello, decode_prefix, encode_welcome, refusal, Carries, Kind, Status, Welcome,
    PREFIX_LEN, PROTOCOL_VERSION,
};
use super::{handshake_deadline, handshake_error, handshake_timeout, socket_error};
use crate::config::ServerConfig;
use crate::conn::{Connection, ConnectionSlot, Segment, Settings, Side};
use crate::core::layout;
use crate::error::Error;
use crate::sys::{self, ControlStream, Doorbell, DoorbellRinger, Grant, SharedRegion, User};

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
/// Call [`advance`](Self::advance) whenever [`control`](Self::control) is readable (or hung up), and
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
    client_ringer: Option<Grant>,
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
    /// What the connection carries, agreed when the Welcome went out.
    carries: Carries,
}

/// What one [`ServerHandshake::advance`] achieved.
// `Waiting` is larger than the rest where a control stream carries its own buffers and
// locks (Windows); it is the common step, moved straight back into the caller's list, so
// boxing it would only add an allocation per step.
#[allow(clippy::large_enum_variant)]
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

    /// The control stream to wait on.
    pub(crate) fn control(&self) -> &ControlStream {
        &self.control
    }

    /// Registers the control stream with the current tokio runtime, so that a task can
    /// await it (`control().stirred()`). The connection made at the end is not registered.
    #[cfg(ringbell_async)]
    pub(crate) fn register_with_runtime(&mut self) -> std::io::Result<()> {
        self.control.register()
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
    /// A client that asks to carry something other than `carries` (what the caller serves)
    /// is refused, and told what this server serves.
    pub(crate) fn advance(
        mut self,
        config: &ServerConfig,
        own_user: User,
        carries: Carries,
    ) -> Result<Step, Error> {
        loop {
            let step = self.waiting_for();
            match self
                .control
                .try_read_with_grants(&mut self.message[self.received..])
            {
                Ok(None) => return Ok(Step::Waiting(self)),
                Ok(Some((0, _))) if self.received == 0 && matches!(self.stage, Stage::Hello) => {
                    return Ok(Step::Probe)
                }
                Ok(Some((0, _))) => {
                    return Err(handshake_error(format!("the peer hung up {step}")))
                }
                Ok(Some((read, grants))) => {
                    self.received += read;
                    self.take_grants(grants)?;
                }
                Err(error) => return Err(socket_error(step, error)),
            }
            if self.received < PREFIX_LEN {
                continue;
            }
            self.received = 0;
            match std::mem::replace(&mut self.stage, Stage::Hello) {
                Stage::Hello => {
                    let half = self.welcome(config, own_user, carries)?;
                    self.stage = Stage::Ack(Box::new(half));
                }
                Stage::Ack(half) => {
                    decode_prefix(&self.message, Kind::Ack)?;
                    return Ok(Step::Done(Box::new(self.finish(*half, config)?)));
                }
            }
        }
    }

    /// Checks the Hello in `self.message` (its version, and that it carries what this
    /// server serves, `serves`) and the client's user, sets up the connection's memory and
    /// doorbells, and sends the Welcome with the client's grants.
    fn welcome(
        &self,
        config: &ServerConfig,
        own_user: User,
        serves: Carries,
    ) -> Result<ServerHalf, Error> {
        let control = &self.control;
        let (version, carries) = decode_hello(&self.message)?;
        // A refusal is a courtesy: the client may be gone already.
        let refuse = |status: Status| control.try_send(&refusal(status));
        let Some(carries) = carries else {
            refuse(Status::UnsupportedVersion);
            return Err(handshake_error(format!(
                "version mismatch: this server speaks protocol v{PROTOCOL_VERSION}, the client v{version}"
            )));
        };
        let user = control
            .peer_user()
            .map_err(|error| Error::io("reading the client's credentials", error))?;
        if !config.admits(user, own_user) {
            refuse(Status::PermissionDenied);
            return Err(Error::PermissionDenied {
                detail: format!(
                    "a client running as {user} was refused (admit it with ServerConfig::allow_uid)"
                ),
            });
        }
        // After the uid check: a client that is not admitted learns nothing of what we serve.
        if carries != serves {
            refuse(serves.refusal_status());
            return Err(handshake_error(match serves {
                Carries::Messages => {
                    "a client asked for calls (a `tokio::Client`), but this server accepts \
                     plain-message connections: serve calls with `AsyncServer::serve` or \
                     `Server::serve`"
                }
                Carries::Calls => {
                    "a client asked for plain messages (a `Connection` or `AsyncConnection`), \
                     but this server serves calls: call it with `tokio::Client`"
                }
            }));
        }

        let capacity = config.ring_capacity;
        let segment_len =
            layout::segment_len(capacity).expect("capacity validated in Server::bind");
        let setup = || -> std::io::Result<_> {
            let (region, region_grant) = SharedRegion::create(segment_len)?;
            Ok((
                region,
                region_grant,
                sys::doorbell_pair()?,
                sys::doorbell_pair()?,
            ))
        };
        let (
            region,
            region_grant,
            (own_doorbell, client_rings_server),
            (client_doorbell, ring_client),
        ) = match setup() {
            Ok(parts) => parts,
            Err(error) => {
                if sys::is_resource_exhaustion(&error) {
                    refuse(Status::OutOfResources);
                    tracing::warn!(
                        "{}: refused a client; {}",
                        sys::OUT_OF_HANDLES,
                        sys::RAISE_LIMIT_HINT
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
            concurrent_calls: config.concurrent_requests as u64,
        };
        // The client has sent its Hello and reads nothing else, so its socket buffer is
        // empty and these 48 bytes go out at once; the deadline bounds the send anyway.
        control
            .set_deadline(Some(self.deadline))
            .map_err(|error| Error::io("setting the handshake deadline", error))?;
        control
            .send_with_grants(
                &encode_welcome(Status::Accepted, &welcome),
                &[
                    &region_grant,
                    &client_rings_server.into_grant(),
                    &client_doorbell.into_grant(),
                ],
            )
            .map_err(|error| socket_error("sending the welcome", error))?;
        // The grants drop here: the client holds its own now, and ours would only keep the
        // memory and the doorbells alive.
        Ok(ServerHalf {
            segment,
            own_doorbell,
            ring_client,
            carries,
        })
    }

    /// Keeps the grants a client attached: only its doorbell ringer, once, with its Ack.
    fn take_grants(&mut self, mut grants: Vec<Grant>) -> Result<(), Error> {
        if grants.is_empty() {
            return Ok(());
        }
        if !matches!(self.stage, Stage::Ack(_)) {
            return Err(handshake_error("the client attached fds to its hello"));
        }
        if grants.len() > 1 || self.client_ringer.is_some() {
            return Err(handshake_error(
                "the client attached more than one fd to its ack",
            ));
        }
        self.client_ringer = grants.pop();
        Ok(())
    }

    /// The connection, once the client's Ack has arrived.
    fn finish(mut self, half: ServerHalf, config: &ServerConfig) -> Result<Connection, Error> {
        // The client's own doorbell, if it sent one, replaces the one made for it.
        let ring_client = match self.client_ringer.take() {
            Some(grant) => DoorbellRinger::adopt(grant)
                .map_err(|error| socket_error("checking the client's doorbell", error))?,
            None => half.ring_client,
        };
        // Clearing the deadline only resets socket timeouts; a failure would leave a bound
        // on blocking socket calls, which the connection no longer makes.
        let _ = self.control.set_deadline(None);
        #[cfg(ringbell_async)]
        self.control.deregister();
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
                carries: half.carries,
                idle_timeout: config.idle_timeout,
                stall_timeout: config.stall_timeout,
                concurrent_calls: config.concurrent_requests,
            },
        );
        connection.hold_slot(self.slot);
        Ok(connection)
    }
}
