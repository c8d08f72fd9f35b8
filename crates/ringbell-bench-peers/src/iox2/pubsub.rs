//! Publish-subscribe both ways, the receiver busy-polling or (with events) asleep on a
//! listener.

use std::io;
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::SendError;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{event, publish_subscribe};

use super::{
    await_child, copy_out, failed, give_up_when_gone, service_name, spin, Pattern, ALLOCATION,
    LIVENESS_PERIOD, SUBSCRIBER_BUFFER,
};
use crate::peer_link::{peer_gone, PeerLink};
use crate::{Channel, Pending};

/// The event id of a payload notification.
const MESSAGE: EventId = EventId::new(0);
/// The event id a side sends when it drops its channel, so that a sleeping peer wakes and
/// leaves at once instead of at its next liveness check.
const GOODBYE: EventId = EventId::new(1);

type Service = publish_subscribe::PortFactory<ipc::Service, [u8], ()>;

/// One end. Fields drop in order: the ports, then the node, then the liveness socket, so
/// that the other side, waiting for the socket to close, knows our resources are gone.
struct PubSubChannel {
    publisher: Publisher<ipc::Service, [u8], ()>,
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    /// With [`Pattern::PubSubEvent`]: how we wake the other side and sleep ourselves.
    events: Option<Events>,
    _node: Node<ipc::Service>,
    link: PeerLink,
}

struct Events {
    notifier: Notifier<ipc::Service>,
    listener: Listener<ipc::Service>,
}

/// Which way a service carries messages: named from the parent's point of view.
#[derive(Clone, Copy)]
enum Direction {
    ToChild,
    ToParent,
}

impl Direction {
    fn suffix(self) -> &'static str {
        match self {
            Direction::ToChild => "to-child",
            Direction::ToParent => "to-parent",
        }
    }
}

/// Both sides ask for the same settings: the parent creates the service, the child opens
/// it (an opener asking for more than the creator set up fails).
fn payload_service(
    node: &Node<ipc::Service>,
    services: &str,
    direction: Direction,
    create: bool,
) -> io::Result<Service> {
    let builder = node
        .service_builder(&service_name(services, direction.suffix())?)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .max_nodes(2)
        .history_size(0)
        .subscriber_max_buffer_size(SUBSCRIBER_BUFFER)
        .subscriber_max_borrowed_samples(1)
        // A full buffer makes the publisher wait (its backpressure strategy) rather than
        // overwrite the oldest sample: every message of a stream arrives.
        .enable_safe_overflow(false);
    if create {
        builder
            .create()
            .map_err(failed("creating a publish-subscribe service"))
    } else {
        builder
            .open()
            .map_err(failed("opening a publish-subscribe service"))
    }
}

fn event_service(
    node: &Node<ipc::Service>,
    services: &str,
    direction: Direction,
    create: bool,
) -> io::Result<event::PortFactory<ipc::Service>> {
    // An event service may share its name with the publish-subscribe one: the pattern is
    // part of a service's identity.
    let builder = node
        .service_builder(&service_name(services, direction.suffix())?)
        .event()
        .max_notifiers(1)
        .max_listeners(1)
        .max_nodes(2)
        .event_id_max_value(GOODBYE.as_value());
    if create {
        builder
            .create()
            .map_err(failed("creating an event service"))
    } else {
        builder.open().map_err(failed("opening an event service"))
    }
}

fn publisher(
    service: &Service,
    max_message: usize,
    link: &PeerLink,
) -> io::Result<Publisher<ipc::Service, [u8], ()>> {
    service
        .publisher_builder()
        .initial_max_slice_len(max_message)
        .allocation_strategy(ALLOCATION)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .set_backpressure_handler(give_up_when_gone(link.clone()))
        .create()
        .map_err(failed("creating a publisher"))
}

fn subscriber(service: &Service) -> io::Result<Subscriber<ipc::Service, [u8], ()>> {
    service
        .subscriber_builder()
        .buffer_size(SUBSCRIBER_BUFFER)
        .create()
        .map_err(failed("creating a subscriber"))
}

fn events(
    outgoing: &event::PortFactory<ipc::Service>,
    incoming: &event::PortFactory<ipc::Service>,
) -> io::Result<Events> {
    Ok(Events {
        notifier: outgoing
            .notifier_builder()
            .default_event_id(MESSAGE)
            .create()
            .map_err(failed("creating a notifier"))?,
        listener: incoming
            .listener_builder()
            .create()
            .map_err(failed("creating a listener"))?,
    })
}

pub(super) fn listen(
    node: Node<ipc::Service>,
    services: &str,
    pattern: Pattern,
    max_message: usize,
    link: PeerLink,
) -> io::Result<Pending> {
    let to_child = payload_service(&node, services, Direction::ToChild, true)?;
    let to_parent = payload_service(&node, services, Direction::ToParent, true)?;
    let publisher = publisher(&to_child, max_message, &link)?;
    let subscriber = subscriber(&to_parent)?;
    let event_services = match pattern {
        Pattern::PubSubEvent => Some((
            event_service(&node, services, Direction::ToChild, true)?,
            event_service(&node, services, Direction::ToParent, true)?,
        )),
        _ => None,
    };
    let events = match &event_services {
        Some((to_child, to_parent)) => Some(events(to_child, to_parent)?),
        None => None,
    };
    Ok(Pending {
        inner: Box::new(move |timeout| {
            await_child(&link, timeout, || {
                let payload = to_child.dynamic_config().number_of_subscribers() == 1
                    && to_parent.dynamic_config().number_of_publishers() == 1;
                let events = event_services.as_ref().is_none_or(|(to_child, to_parent)| {
                    to_child.dynamic_config().number_of_listeners() == 1
                        && to_parent.dynamic_config().number_of_notifiers() == 1
                });
                payload && events
            })?;
            Ok(Box::new(PubSubChannel {
                publisher,
                subscriber,
                events,
                _node: node,
                link,
            }) as Box<dyn Channel>)
        }),
    })
}

pub(super) fn connect_child(
    node: Node<ipc::Service>,
    services: &str,
    pattern: Pattern,
    max_message: usize,
    link: PeerLink,
) -> io::Result<Box<dyn Channel>> {
    let to_child = payload_service(&node, services, Direction::ToChild, false)?;
    let to_parent = payload_service(&node, services, Direction::ToParent, false)?;
    let subscriber = subscriber(&to_child)?;
    let publisher = publisher(&to_parent, max_message, &link)?;
    let events = match pattern {
        Pattern::PubSubEvent => Some(events(
            &event_service(&node, services, Direction::ToParent, false)?,
            &event_service(&node, services, Direction::ToChild, false)?,
        )?),
        _ => None,
    };
    Ok(Box::new(PubSubChannel {
        publisher,
        subscriber,
        events,
        _node: node,
        link,
    }))
}

impl PubSubChannel {
    /// Takes the next sample, if there is one, into `buffer`.
    fn take(&self, buffer: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let sample = self
            .subscriber
            .receive()
            .map_err(failed("receiving a sample"))?;
        Ok(sample.map(|sample| copy_out(sample.payload(), buffer)))
    }

    /// Takes the next sample, asleep on the listener while there is none.
    fn sleep_for_sample(
        &self,
        events: &Events,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        loop {
            if let Some(len) = self.take(buffer)? {
                return Ok(Some(len));
            }
            let nap = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.min(LIVENESS_PERIOD)
                }
                None => LIVENESS_PERIOD,
            };
            let mut goodbye = false;
            let notifications = events
                .listener
                .timed_wait(|activation| goodbye |= activation.id == GOODBYE, nap)
                .map_err(failed("waiting on the listener"))?;
            if goodbye {
                return self.take(buffer)?.map(Some).ok_or_else(peer_gone);
            }
            if notifications == 0 {
                // Slept the whole nap: a killed peer says no goodbye.
                if let Err(gone) = self.link.check() {
                    return self.take(buffer)?.map(Some).ok_or(gone);
                }
            }
        }
    }
}

impl Channel for PubSubChannel {
    fn send(&mut self, message: &[u8]) -> io::Result<()> {
        let sample = self
            .publisher
            .loan_slice_uninit(message.len())
            .map_err(failed("loaning a sample"))?;
        match sample.write_from_slice(message).send() {
            Ok(1) => {}
            // The subscriber was there when we connected: its process is gone, and
            // someone's dead-node clean-up removed its port.
            Ok(_) => return Err(peer_gone()),
            // The backpressure handler gave up: the subscriber's process is gone.
            Err(SendError::UnableToDeliver) => return Err(peer_gone()),
            Err(error) => return Err(failed("sending a sample")(error)),
        }
        if let Some(events) = &self.events {
            let listeners = events
                .notifier
                .notify()
                .map_err(failed("notifying the listener"))?;
            if listeners == 0 {
                return Err(peer_gone());
            }
        }
        Ok(())
    }

    fn recv(
        &mut self,
        buffer: &mut Vec<u8>,
        timeout: Option<Duration>,
    ) -> io::Result<Option<usize>> {
        match &self.events {
            None => spin(&self.link, timeout, || self.take(buffer)),
            Some(events) => self.sleep_for_sample(events, buffer, timeout),
        }
    }
}

impl Drop for PubSubChannel {
    fn drop(&mut self) {
        self.link.hang_up(|| {
            if let Some(events) = &self.events {
                let _ = events.notifier.notify_with_custom_event_id(GOODBYE);
            }
        });
    }
}
