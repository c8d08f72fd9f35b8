//! The client's in-flight table: which call each correlation id belongs to.
//!
//! Kept apart from the tokio driver that owns it (`tokio/client.rs`) so that it has no runtime
//! dependency: the property test checks it against a model, and the loom model checks the
//! correlation logic around it (calls admitted, replies arriving in any order, callers
//! giving up) under every interleaving of the threads involved.

use std::collections::HashMap;

/// The calls sent and waiting for their end, by correlation id: the client's in-flight
/// table. Ids are chosen by the caller (a counter per connection that starts at 1 and does
/// not wrap in practice), and the table refuses 0 and an id that is waiting already, so a
/// message of a call reaches exactly the call that was sent with its id, or nobody (a
/// message with an unknown id is dropped).
#[derive(Debug)]
pub(crate) struct InFlight<T> {
    pub(crate) waiting: HashMap<u64, T>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            waiting: HashMap::new(),
        }
    }
}

impl<T> InFlight<T> {
    /// Records a call under `id`; gives it back if `id` is 0 or another call waits with it.
    pub(crate) fn insert(&mut self, id: u64, call: T) -> Result<(), T> {
        if id == 0 || self.waiting.contains_key(&id) {
            return Err(call);
        }
        self.waiting.insert(id, call);
        Ok(())
    }

    /// The call with `id`, if it still waits, for a message that does not end it (a
    /// streamed response, credit).
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        self.waiting.get_mut(&id)
    }

    /// The call a final reply with `id` ends, if it still waits.
    pub(crate) fn complete(&mut self, id: u64) -> Option<T> {
        self.waiting.remove(&id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Every waiting call, for failing them all when the connection ends.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.waiting.drain().map(|(_, call)| call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Step {
        /// A new call.
        Call,
        /// The reply to the n-th waiting call (modulo how many wait).
        Reply(usize),
        /// A reply with an id nobody was given.
        Stray(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Call),
            3 => any::<usize>().prop_map(Step::Reply),
            1 => any::<u64>().prop_map(Step::Stray),
        ]
    }

    proptest! {
        /// Against a model of which call holds which id: every message, in any order,
        /// reaches exactly its own call, and its reply once; stray ids reach nobody; ids
        /// are never 0 or shared.
        #[test]
        fn replies_reach_exactly_their_calls(
            start in prop_oneof![Just(1u64), Just(u64::MAX - 3), any::<u64>()],
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let mut table = InFlight { waiting: HashMap::new() };
            let mut model: Vec<(u64, u32)> = Vec::new(); // (id, call number)
            let mut calls = 0u32;
            // The client's counter, from anywhere (wrapping, to reach 0 and reused ids).
            let mut next_id = start;
            for step in steps {
                match step {
                    Step::Call => {
                        let id = next_id;
                        next_id = next_id.wrapping_add(1);
                        let taken = id == 0 || model.iter().any(|(other, _)| *other == id);
                        match table.insert(id, calls) {
                            Ok(()) => {
                                prop_assert!(!taken, "id {} was accepted twice", id);
                                model.push((id, calls));
                            }
                            Err(call) => {
                                prop_assert!(taken);
                                prop_assert_eq!(call, calls);
                            }
                        }
                        calls += 1;
                    }
                    Step::Reply(pick) if !model.is_empty() => {
                        let index = pick % model.len();
                        let (id, call) = model[index];
                        // A streamed message reaches its call and leaves it waiting.
                        prop_assert_eq!(table.get_mut(id).copied(), Some(call));
                        model.remove(index);
                        prop_assert_eq!(table.complete(id), Some(call));
                        prop_assert_eq!(table.complete(id), None);
                        prop_assert_eq!(table.get_mut(id), None);
                    }
                    Step::Reply(_) => {}
                    Step::Stray(id) => {
                        let expected = model.iter().position(|(other, _)| *other == id);
                        match expected {
                            Some(index) => {
                                let (_, call) = model.remove(index);
                                prop_assert_eq!(table.complete(id), Some(call));
                            }
                            None => prop_assert_eq!(table.complete(id), None),
                        }
                    }
                }
            }
            let mut left: Vec<u32> = table.drain().collect();
            left.sort_unstable();
            let mut expected: Vec<u32> = model.into_iter().map(|(_, call)| call).collect();
            expected.sort_unstable();
            prop_assert_eq!(left, expected);
        }
    }
}

/// A loom model of the correlation logic: callers hand calls to a driver, which records
/// them in the real [`InFlight`] table and passes them to a server; the server streams
/// one message for each call, then its reply, in reverse order of the calls, and adds a
/// reply with an id nobody was given; the driver routes each through the table. One
/// caller waits for its stream and reply; the other cancels its call at any point, and
/// its entry stays until the server's last word for it. Under every interleaving, the
/// waiting caller gets its own message and then its own reply and nothing else, the
/// cancelled caller gets nothing after it gave up, every reply but the stray one finds its
/// entry, the stray reaches nobody, and the table ends empty (the cancelled call's slot
/// comes back).
///
/// This is a model of the driver (threads and channels instead of tokio tasks), around
/// the real table: tokio itself cannot run under loom.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::mpsc::channel;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// What a caller received: its streamed messages, its reply, and whether it gave up.
    #[derive(Default)]
    struct Received {
        messages: Vec<u8>,
        reply: Option<u8>,
        gave_up: bool,
    }

    /// A caller's end of a call, as tokio's channels behave for the driver: what is sent
    /// to a caller that gave up is dropped. (loom's channels do not see a dropped
    /// receiver.)
    #[derive(Default)]
    struct CallSlot {
        state: Mutex<Received>,
        filled: Condvar,
    }

    impl CallSlot {
        fn message(&self, message: u8) {
            let mut state = self.state.lock().unwrap();
            assert!(
                state.reply.is_none(),
                "a message came after its call's reply"
            );
            if !state.gave_up {
                state.messages.push(message);
            }
        }

        fn reply(&self, response: u8) {
            let mut state = self.state.lock().unwrap();
            if !state.gave_up {
                state.reply = Some(response);
                self.filled.notify_one();
            }
        }

        /// Waits for the reply; returns the messages before it, and it.
        fn wait(&self) -> (Vec<u8>, u8) {
            let mut state = self.state.lock().unwrap();
            loop {
                if let Some(reply) = state.reply {
                    return (std::mem::take(&mut state.messages), reply);
                }
                state = self.filled.wait(state).unwrap();
            }
        }

        fn give_up(&self) {
            let mut state = self.state.lock().unwrap();
            state.gave_up = true;
            state.messages.clear();
            state.reply = None;
        }
    }

    /// What reaches the driver: from callers, a new call or a cancel; from the server, a
    /// streamed message or a reply.
    enum Event {
        Call { id: u64, slot: Arc<CallSlot> },
        Cancel { id: u64 },
        Message { id: u64, message: u8 },
        Reply { id: u64, response: u8 },
    }

    #[test]
    fn loom_messages_and_replies_reach_their_own_callers() {
        // Bounded, as loom's docs advise for models of this size: three preemptions, as
        // the sleep/wake model has. It runs in about a second; the full search took 15
        // minutes on our 2-core VM, too long for CI.
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let (events, driver_inbox) = channel::<Event>();
            let (to_server, server_inbox) = channel::<u64>();

            // Caller 1 waits for its stream and reply; caller 2 cancels its call at once.
            let waiting = {
                let events = events.clone();
                thread::spawn(move || {
                    let slot = Arc::new(CallSlot::default());
                    events
                        .send(Event::Call {
                            id: 1,
                            slot: slot.clone(),
                        })
                        .unwrap();
                    slot.wait()
                })
            };
            let cancelling = {
                let events = events.clone();
                thread::spawn(move || {
                    let slot = Arc::new(CallSlot::default());
                    events
                        .send(Event::Call {
                            id: 2,
                            slot: slot.clone(),
                        })
                        .unwrap();
                    slot.give_up();
                    events.send(Event::Cancel { id: 2 }).unwrap();
                })
            };
            // The server streams one message for each call, then replies, the last call
            // first; then it replies to nobody.
            let server = thread::spawn(move || {
                let first = server_inbox.recv().unwrap();
                let second = server_inbox.recv().unwrap();
                for id in [second, first] {
                    let value = id as u8 * 10;
                    events.send(Event::Message { id, message: value }).unwrap();
                    events
                        .send(Event::Reply {
                            id,
                            response: value + 1,
                        })
                        .unwrap();
                }
                events
                    .send(Event::Reply {
                        id: 0,
                        response: 99,
                    })
                    .unwrap();
            });

            let mut table: InFlight<Arc<CallSlot>> = InFlight::default();
            for _ in 0..8 {
                match driver_inbox.recv().unwrap() {
                    Event::Call { id, slot } => {
                        assert!(table.insert(id, slot).is_ok());
                        to_server.send(id).unwrap();
                    }
                    Event::Cancel { id } => {
                        // The call keeps its entry, and so its slot, until the server's
                        // last word for it (as the client's driver does: the server counts
                        // a cancelled call until its handler ends). Its reply may have come
                        // first: then there is nothing left.
                        if let Some(slot) = table.get_mut(id) {
                            assert!(slot.state.lock().unwrap().gave_up);
                        }
                    }
                    Event::Message { id, message } => {
                        if let Some(slot) = table.get_mut(id) {
                            slot.message(message);
                        }
                    }
                    Event::Reply { id, response } => match table.complete(id) {
                        Some(slot) => slot.reply(response),
                        None => assert_eq!(response, 99, "a call's reply found no entry"),
                    },
                }
            }
            assert!(table.is_empty());
            assert_eq!(
                waiting.join().unwrap(),
                (vec![10], 11),
                "a caller got another's messages or reply"
            );
            cancelling.join().unwrap();
            server.join().unwrap();
        });
    }
}
