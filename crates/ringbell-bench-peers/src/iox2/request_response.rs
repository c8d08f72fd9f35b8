//! Request-response: the parent the client, the child the server, both busy-polling.
//!
//! A message from the parent is a request; a message from the child is the response to
//! the oldest request it holds, and the child answers at most once per request: an echo
//! answers each, a sink only its count marker. A request the server lets go of
//! unanswered (it drops the `ActiveRequest`) ends its `PendingResponse`, and the client
//! forgets it.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use iceoryx2::active_request::ActiveRequest;
use iceoryx2::pending_response::PendingResponse;
use iceoryx2::port::client::{Client, RequestSendError};
use iceoryx2::port::server::Server;
use iceoryx2::port::SendError;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::request_response;

use super::{
    await_child, copy_out, failed, give_up_when_gone, service_name, spin, ALLOCATION,
    MAX_ACTIVE_REQUESTS,
};
use crate::peer_link::{peer_gone, PeerLink};
use crate::{Channel, Pending};

type Service = request_response::PortFactory<ipc::Service, [u8], (), [u8], ()>;
/// A request sent, as the client sees it until its response is taken.
type SentRequest = PendingResponse<ipc::Service, [u8], (), [u8], ()>;
/// A request received, as the server sees it until it lets go.
type ReceivedRequest = ActiveRequest<ipc::Service, [u8], (), [u8], ()>;

/// Both sides ask for the same settings: the parent creates the service, the child
/// opens it.
fn service(node: &Node<ipc::Service>, services: &str, create: bool) -> io::Result<Service> {
    let builder = node
        .service_builder(&service_name(services, "rpc")?)
        .request_response::<[u8], [u8]>()
        .max_clients(1)
        .max_servers(1)
        .max_nodes(2)
        .max_active_requests_per_client(MAX_ACTIVE_REQUESTS)
        .max_response_buffer_size(1)
        .max_borrowed_responses_per_pending_response(1)
        // Full buffers make the sender wait instead of dropping the oldest entry.
        .enable_safe_overflow_for_requests(false)
        .enable_safe_overflow_for_responses(false);
    if create {
        builder
            .create()
            .map_err(failed("creating a request-response service"))
    } else {
        builder
            .open()
            .map_err(failed("opening a request-response service"))
    }
}

/// The parent's end. Fields drop in order: requests and ports, node, liveness socket.
struct ClientChannel {
    /// Requests sent whose response has not been taken, oldest first.
    pending: VecDeque<SentRequest>,
    client: Client<ipc::Service, [u8], (), [u8], ()>,
    _node: Node<ipc::Service>,
    link: PeerLink,
}

/// The child's end.
struct ServerChannel {
    /// The request received last, until it is answered or the next one is taken.
    held: Option<ReceivedRequest>,
    server: Server<ipc::Service, [u8], (), [u8], ()>,
    _node: Node<ipc::Service>,
    link: PeerLink,
}

pub(super) fn listen(
    node: Node<ipc::Service>,
    services: &str,
    max_message: usize,
    link: PeerLink,
) -> io::Result<Pending> {
    let service = service(&node, services, true)?;
    let client = service
        .client_builder()
        .initial_max_slice_len(max_message)
        .allocation_strategy(ALLOCATION)
        .max_active_requests(MAX_ACTIVE_REQUESTS)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .set_backpressure_handler(give_up_when_gone(link.clone()))
        .create()
        .map_err(failed("creating a client"))?;
    Ok(Pending {
        inner: Box::new(move |timeout| {
            // A request reaches only the servers there when it is sent.
            await_child(&link, timeout, || {
                service.dynamic_config().number_of_servers() == 1
            })?;
            Ok(Box::new(ClientChannel {
                pending: VecDeque::with_capacity(MAX_ACTIVE_REQUESTS),
                client,
                _node: node,
                link,
            }) as Box<dyn Channel>)
        }),
    })
}

pub(super) fn connect_child(
    node: Node<ipc::Service>,
    services: &str,
    max_message: usize,
    link: PeerLink,
) -> io::Result<Box<dyn Channel>> {
    let server = service(&node, services, false)?
        .server_builder()
        .initial_max_slice_len(max_message)
        .allocation_strategy(ALLOCATION)
        .max_loaned_responses_per_request(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .set_backpressure_handler(give_up_when_gone(link.clone()))
        .create()
        .map_err(failed("creating a server"))?;
    Ok(Box::new(ServerChannel {
        held: None,
        server,
        _node: node,
        link,
    }))
}

impl ClientChannel {
    /// Forgets the oldest requests the server let go of unanswered.
    fn forget_unanswered(&mut self) {
        while let Some(oldest) = self.pending.front() {
            // The order matters: a response sent just before the server let go is
            // seen by `has_response` once `is_connected` is false.
            if oldest.is_connected() || oldest.has_response() {
                return;
            }
            self.pending.pop_front();
        }
    }

    /// The oldest request's response, if it has come. With every request let go
    /// unanswered, nothing can come: the wait ends with the timeout or with the server's
    /// process (whose port someone's dead-node clean-up may have removed meanwhile).
    fn take_response(&mut self, buffer: &mut Vec<u8>) -> io::Result<Option<usize>> {
        self.forget_unanswered();
        let Some(oldest) = self.pending.front() else {
            return Ok(None);
        };
        let Some(response) = oldest.receive().map_err(failed("receiving a response"))? else {
            return Ok(None);
        };
        let len = copy_out(response.payload(), buffer);
        drop(response);
        // One response per request: the request is done.
        self.pending.pop_front();
        Ok(Some(len))
    }
}

impl Channel for ClientChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        if self.pending.len() == MAX_ACTIVE_REQUESTS {
            // Wait for the server to answer or let go of the oldest.
            let link = self.link.clone();
            spin(&link, None, || {
                self.forget_unanswered();
                if self.pending.len() < MAX_ACTIVE_REQUESTS {
                    Ok(Some(()))
                } else if self.pending.iter().all(|pending| pending.has_response()) {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{MAX_ACTIVE_REQUESTS} iceoryx2 responses are waiting to be \
                             received; receive them before sending more requests"
                        ),
                    ))
                } else {
                    Ok(None)
                }
            })?;
        }
        let request = self
            .client
            .loan_slice_uninit(message.len())
            .map_err(failed("loaning a request"))?;
        let pending = match request.write_from_slice(message).send() {
            Ok(pending) => pending,
            Err(RequestSendError::SendError(SendError::UnableToDeliver)) => return Err(peer_gone()),
            Err(error) => return Err(failed("sending a request")(error)),
        };
        if pending.number_of_server_connections() == 0 {
            // The server's port is gone, and with it the child's end.
            return Err(peer_gone());
        }
        self.pending.push_back(pending);
        Ok(())
    }

    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        if self.pending.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an iceoryx2 client receives only responses, and no request awaits one",
            ));
        }
        let link = self.link.clone();
        spin(&link, timeout, || self.take_response(buffer))
    }
}

impl Channel for ServerChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let Some(request) = self.held.take() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an iceoryx2 server sends only responses, and it holds no request to answer",
            ));
        };
        let response = request
            .loan_slice_uninit(message.len())
            .map_err(failed("loaning a response"))?;
        let sent = match response.write_from_slice(message).send() {
            Ok(()) => Ok(()),
            Err(SendError::UnableToDeliver) => Err(peer_gone()),
            Err(error) => Err(failed("sending a response")(error)),
        };
        // Tells the client that no more responses follow.
        drop(request);
        sent
    }

    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        // Whatever we held unanswered stays unanswered.
        self.held = None;
        let request = spin(&self.link, timeout, || {
            self.server.receive().map_err(failed("receiving a request"))
        })?;
        Ok(request.map(|request| {
            let len = copy_out(request.payload(), buffer);
            self.held = Some(request);
            len
        }))
    }
}

impl Drop for ClientChannel {
    fn drop(&mut self) {
        self.link.hang_up(|| {});
    }
}

impl Drop for ServerChannel {
    fn drop(&mut self) {
        self.link.hang_up(|| {});
    }
}
