//! A group leader's proposals: client commands that reach the leader while it is busy share
//! one Raft entry.
//!
//! Every entry costs the same Raft work whatever it carries: openraft's bookkeeping and
//! metrics, a log row on every replica, its share of the replication messages, an apply call's
//! overhead, and a response channel. Under load a group's leader receives commands faster than
//! it makes entries, so the commands that arrive while one entry is being made wait for the
//! next and go into it together, as TiKV batches the commands of a region into one proposal.
//! A command on an idle group gets an entry of its own at once: batching adds no wait, only a
//! task hand-off.
//!
//! Commands in one entry apply in order, each as if it had its own entry at the same time
//! (see [`Command::Batch`]); each proposer gets its own outcome. An entry that fails to commit
//! fails every command in it with the same error, and none of them applied, as for a single
//! command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::command::{Command, Outcome, Stamped};
use crate::consensus::{ConsensusError, GroupRaft};
use crate::node::AddressBook;
use crate::signals::Signals;
use crate::{Error, Result};

/// The most commands one entry carries.
pub const MAX_BATCH_COMMANDS: usize = 128;
/// The most bytes of command text one entry carries (a single larger command still gets an
/// entry of its own).
pub const MAX_BATCH_BYTES: usize = 256 << 10;

/// One group's proposals on this node.
pub(crate) struct Proposer {
    group: u64,
    raft: GroupRaft,
    signals: Arc<Signals>,
    book: Arc<AddressBook>,
    entries: Arc<AtomicU64>,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    bytes: usize,
    /// A drain task is on its way: it takes whatever is waiting when it runs.
    draining: bool,
}

struct Waiting {
    command: Command,
    reply: oneshot::Sender<Result<Outcome>>,
}

impl Proposer {
    pub(crate) fn new(
        group: u64,
        raft: GroupRaft,
        signals: Arc<Signals>,
        book: Arc<AddressBook>,
        entries: Arc<AtomicU64>,
    ) -> Arc<Proposer> {
        Arc::new(Proposer {
            group,
            raft,
            signals,
            book,
            entries,
            queue: Mutex::new(Queue::default()),
        })
    }

    /// Replicates `command` to a majority in an entry of its own or shared with others,
    /// applies it, and returns its outcome.
    pub(crate) async fn propose(self: &Arc<Self>, command: Command) -> Result<Outcome> {
        if !command.batchable() {
            return self.write(command).await.map_err(|e| self.write_error(&e));
        }
        let (reply, outcome) = oneshot::channel();
        let start_drain = {
            let mut queue = self.queue.lock().expect("proposal queue lock");
            queue.bytes += command.text_len();
            queue.waiting.push(Waiting { command, reply });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_drain {
            tokio::spawn(self.clone().drain());
        }
        outcome.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(format!(
                "group {}: the proposal was dropped; it may still apply",
                self.group
            )))
        })
    }

    /// Proposes everything waiting, in entries of at most [`MAX_BATCH_COMMANDS`] commands and
    /// [`MAX_BATCH_BYTES`] bytes.
    async fn drain(self: Arc<Self>) {
        // Let the tasks that are ready to run now, other clients' requests among them, queue
        // their commands first: they share this entry instead of each waiting for its own.
        tokio::task::yield_now().await;
        loop {
            let (batch, more) = {
                let mut queue = self.queue.lock().expect("proposal queue lock");
                let batch = take_batch(&mut queue);
                let more = !queue.waiting.is_empty();
                queue.draining = more;
                (batch, more)
            };
            if more {
                tokio::spawn(self.clone().commit(batch));
            } else {
                self.commit(batch).await;
                return;
            }
        }
    }

    async fn commit(self: Arc<Self>, batch: Vec<Waiting>) {
        let (mut commands, replies): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|w| (w.command, w.reply)).unzip();
        let count = commands.len();
        let command = if count == 1 {
            commands.pop().expect("one command")
        } else {
            Command::Batch(commands)
        };
        match self.write(command).await {
            Ok(Outcome::Batch(outcomes)) if count > 1 && outcomes.len() == count => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(outcome) if count == 1 => {
                let reply = replies.into_iter().next().expect("one reply");
                let _ = reply.send(Ok(outcome));
            }
            Ok(other) => {
                for reply in replies {
                    let _ = reply.send(Err(Error::Fatal(format!(
                        "group {}: {count} commands applied as {other}",
                        self.group
                    ))));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(self.write_error(&e)));
                }
            }
        }
    }

    async fn write(&self, command: Command) -> std::result::Result<Outcome, ConsensusError> {
        let stamped = Stamped {
            at_ms: self.signals.stamp(self.group, crate::node::now_ms()),
            command,
        };
        self.entries.fetch_add(1, Ordering::Relaxed);
        self.raft.write(stamped).await
    }

    fn write_error(&self, e: &ConsensusError) -> Error {
        match e {
            ConsensusError::NotLeader(leader) => Error::NotLeader {
                leader: self.book.hint(*leader),
            },
            ConsensusError::Unavailable(m) => Error::Unavailable(m.clone()),
        }
    }
}

/// Takes the first waiting commands that fit one entry: at least one, however large.
fn take_batch(queue: &mut Queue) -> Vec<Waiting> {
    if queue.waiting.len() <= MAX_BATCH_COMMANDS && queue.bytes <= MAX_BATCH_BYTES {
        queue.bytes = 0;
        return std::mem::take(&mut queue.waiting);
    }
    let mut bytes = 0;
    let mut n = 0;
    for w in &queue.waiting {
        let len = w.command.text_len();
        if n == MAX_BATCH_COMMANDS || (n > 0 && bytes + len > MAX_BATCH_BYTES) {
            break;
        }
        bytes += len;
        n += 1;
    }
    queue.bytes -= bytes;
    let rest = queue.waiting.split_off(n);
    std::mem::replace(&mut queue.waiting, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload_bytes: usize) -> Command {
        Command::Event {
            id: "w".into(),
            event: "e".into(),
            payload_json: Some("x".repeat(payload_bytes)),
            expected_revision: None,
            request_id: None,
        }
    }

    fn queue_of(commands: Vec<Command>) -> Queue {
        let mut queue = Queue::default();
        for command in commands {
            queue.bytes += command.text_len();
            queue.waiting.push(Waiting {
                command,
                reply: oneshot::channel().0,
            });
        }
        queue
    }

    fn sizes(batch: &[Waiting]) -> Vec<usize> {
        batch.iter().map(|w| w.command.text_len()).collect()
    }

    #[test]
    fn a_batch_takes_what_waits_up_to_its_bounds_in_order() {
        let mut queue = queue_of((0..MAX_BATCH_COMMANDS + 5).map(event).collect());
        let first = take_batch(&mut queue);
        assert_eq!(first.len(), MAX_BATCH_COMMANDS);
        assert_eq!(first[0].command.text_len(), 2);
        let second = take_batch(&mut queue);
        assert_eq!(
            sizes(&second),
            (MAX_BATCH_COMMANDS..MAX_BATCH_COMMANDS + 5)
                .map(|n| n + 2)
                .collect::<Vec<_>>()
        );
        assert!(queue.waiting.is_empty());
        assert_eq!(queue.bytes, 0);

        // By bytes: the third command would pass the bound; a lone oversized one goes alone.
        let big = MAX_BATCH_BYTES / 2;
        let mut queue = queue_of(vec![event(big), event(big - 10), event(10), event(3 * big)]);
        assert_eq!(sizes(&take_batch(&mut queue)), [big + 2, big - 8]);
        assert_eq!(sizes(&take_batch(&mut queue)), [12]);
        assert_eq!(sizes(&take_batch(&mut queue)), [3 * big + 2]);
        assert_eq!(queue.bytes, 0);
    }
}
