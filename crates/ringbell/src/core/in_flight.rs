//! The client's in-flight table: which call each correlation id belongs to.
//!
//! Kept apart from the tokio driver that owns it (`tokio/client.rs`) so that it has no runtime
//! dependency: the property test checks it against a model, and the loom model checks the
//! correlation logic around it (calls admitted, replies arriving in any order, callers
//! giving up) under every interleaving of the threads involved.

use std::collections::HashMap;

/// The calls sent and waiting for replies, by correlation id: the client's in-flight table.
/// Ids are never 0 and never reused while their call waits, so a reply reaches exactly the
/// call that was sent with its id, or nobody (a reply with an unknown id is dropped).
#[derive(Debug)]
pub(crate) struct InFlight<T> {
    pub(crate) waiting: HashMap<u64, T>,
    pub(crate) next_id: u64,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            waiting: HashMap::new(),
            next_id: 1,
        }
    }
}

impl<T> InFlight<T> {
    /// Records a call and returns its correlation id.
    pub(crate) fn admit(&mut self, call: T) -> u64 {
        let mut id = self.next_id;
        while id == 0 || self.waiting.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        self.waiting.insert(id, call);
        id
    }

    /// The call a reply with `id` answers, if it still waits.
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
        /// Against a model of which call holds which id: every reply, in any order, reaches
        /// exactly its own call once; stray ids reach nobody; ids are never 0 or shared.
        #[test]
        fn replies_reach_exactly_their_calls(
            start in prop_oneof![Just(1u64), Just(u64::MAX - 3), any::<u64>()],
            steps in proptest::collection::vec(step(), 1..300),
        ) {
            let mut table = InFlight { waiting: HashMap::new(), next_id: start };
            let mut model: Vec<(u64, u32)> = Vec::new(); // (id, call number)
            let mut calls = 0u32;
            for step in steps {
                match step {
                    Step::Call => {
                        let id = table.admit(calls);
                        prop_assert_ne!(id, 0);
                        prop_assert!(model.iter().all(|(other, _)| *other != id));
                        model.push((id, calls));
                        calls += 1;
                    }
                    Step::Reply(pick) if !model.is_empty() => {
                        let (id, call) = model.remove(pick % model.len());
                        prop_assert_eq!(table.complete(id), Some(call));
                        prop_assert_eq!(table.complete(id), None);
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
/// them in the real [`InFlight`] table and passes them to a server; the server answers in
/// reverse order and adds a reply with an id nobody was given; the driver routes each
/// reply through the table. One caller waits for its reply, the other gives up at any
/// point. Under every interleaving, the waiting caller gets its own reply and no other,
/// the stray reply reaches nobody, and the table ends empty.
///
/// This is a model of the driver (threads and channels instead of tokio tasks), around
/// the real table: tokio itself cannot run under loom.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::mpsc::channel;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;

    /// A one-shot reply slot, as tokio's `oneshot` behaves for the driver: a send to a
    /// caller that gave up fails and is dropped. (loom's channels do not see a dropped
    /// receiver.)
    #[derive(Default)]
    struct ReplySlot {
        state: Mutex<(Option<u8>, bool)>,
        filled: Condvar,
    }

    impl ReplySlot {
        /// Fills the slot; `false` if its caller gave up.
        fn send(&self, response: u8) -> bool {
            let mut state = self.state.lock().unwrap();
            if state.1 {
                return false;
            }
            state.0 = Some(response);
            self.filled.notify_one();
            true
        }

        fn recv(&self) -> u8 {
            let mut state = self.state.lock().unwrap();
            loop {
                if let Some(response) = state.0.take() {
                    return response;
                }
                state = self.filled.wait(state).unwrap();
            }
        }

        fn give_up(&self) {
            let mut state = self.state.lock().unwrap();
            state.1 = true;
            state.0 = None;
        }
    }

    /// What reaches the driver: a new call, or a reply from the server.
    enum Event {
        Call { request: u8, reply: Arc<ReplySlot> },
        Reply { id: u64, response: u8 },
    }

    #[test]
    fn loom_replies_reach_their_own_callers() {
        loom::model(|| {
            let (events, driver_inbox) = channel::<Event>();
            let (to_server, server_inbox) = channel::<(u64, u8)>();

            // Caller 1 waits for its reply; caller 2 gives up on its call at once.
            let waiting = {
                let events = events.clone();
                thread::spawn(move || {
                    let reply = Arc::new(ReplySlot::default());
                    let request = 1;
                    events
                        .send(Event::Call {
                            request,
                            reply: reply.clone(),
                        })
                        .unwrap();
                    reply.recv()
                })
            };
            let giving_up = {
                let events = events.clone();
                thread::spawn(move || {
                    let reply = Arc::new(ReplySlot::default());
                    events
                        .send(Event::Call {
                            request: 2,
                            reply: reply.clone(),
                        })
                        .unwrap();
                    reply.give_up();
                })
            };
            // The server echoes both requests, last first, then a reply to nobody.
            let server = thread::spawn(move || {
                let first = server_inbox.recv().unwrap();
                let second = server_inbox.recv().unwrap();
                for (id, request) in [second, first] {
                    events
                        .send(Event::Reply {
                            id,
                            response: request,
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

            let mut table: InFlight<Arc<ReplySlot>> = InFlight::default();
            let mut routed = 0;
            for _ in 0..5 {
                match driver_inbox.recv().unwrap() {
                    Event::Call { request, reply } => {
                        let id = table.admit(reply);
                        to_server.send((id, request)).unwrap();
                    }
                    Event::Reply { id, response } => match table.complete(id) {
                        Some(caller) => {
                            routed += 1;
                            // A caller that gave up is not an error.
                            caller.send(response);
                        }
                        None => assert_eq!(response, 99, "a real reply found no caller"),
                    },
                }
            }
            assert_eq!(routed, 2);
            assert!(table.is_empty());
            assert_eq!(waiting.join().unwrap(), 1, "a caller got another's reply");
            giving_up.join().unwrap();
            server.join().unwrap();
        });
    }
}
