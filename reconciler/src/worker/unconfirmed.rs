//! The messages whose work is not yet confirmed, per partition, in consumption order.
//!
//! The broker acknowledges deliveries in any order (a dead letter and an update go to
//! different topics and partitions), but an offset may only be stored once every message
//! before it on its partition is done: storing it says "replay from here". So a
//! confirmation only marks its message done, and offsets move over the done prefix of the
//! partition's line.

use std::collections::{HashMap, VecDeque};

/// A delivery the engine waits for: the shell reports its outcome with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(u64);

#[derive(Debug)]
enum Progress {
    Waiting,
    Done,
    Failed(String),
}

#[derive(Debug)]
struct Work {
    /// Ids grow in the order work is queued, so a line is sorted by them.
    id: DeliveryId,
    offset: i64,
    /// The rebalance epoch the message was consumed in.
    epoch: u64,
    progress: Progress,
}

/// What a confirmation let through on one partition.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub partition: i32,
    /// Messages whose work is now confirmed (counted, whatever their epoch).
    pub confirmed: u64,
    /// The offset to store: the last one released that was consumed in the current epoch.
    pub store: Option<i64>,
    /// The delivery at the head of the line failed: later offsets must never be stored.
    pub failed: Option<String>,
}

#[derive(Debug, Default)]
pub struct Unconfirmed {
    lines: HashMap<i32, VecDeque<Work>>,
    partition_of: HashMap<DeliveryId, i32>,
    next_id: u64,
    len: usize,
}

impl Unconfirmed {
    /// Messages queued and not yet released, over all partitions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn id(&mut self) -> DeliveryId {
        self.next_id += 1;
        DeliveryId(self.next_id)
    }

    /// A message whose work needs no delivery. Returns whether its offset can be stored now
    /// (nothing before it on its partition is waiting); otherwise it waits in line.
    pub fn done_now(&mut self, partition: i32, offset: i64, epoch: u64) -> bool {
        if self.lines.get(&partition).is_none_or(VecDeque::is_empty) {
            return true;
        }
        self.push(partition, offset, epoch, Progress::Done);
        false
    }

    /// A message whose work is done once the returned delivery is confirmed.
    pub fn wait(&mut self, partition: i32, offset: i64, epoch: u64) -> DeliveryId {
        let id = self.push(partition, offset, epoch, Progress::Waiting);
        self.partition_of.insert(id, partition);
        id
    }

    fn push(&mut self, partition: i32, offset: i64, epoch: u64, progress: Progress) -> DeliveryId {
        let id = self.id();
        self.lines.entry(partition).or_default().push_back(Work {
            id,
            offset,
            epoch,
            progress,
        });
        self.len += 1;
        id
    }

    /// Records a delivery's outcome and releases the done prefix of its partition's line.
    /// `None` for an id that is not waiting (never issued, or reported twice).
    pub fn settle(
        &mut self,
        delivery: DeliveryId,
        result: Result<(), String>,
        epoch_now: u64,
    ) -> Option<Released> {
        let partition = self.partition_of.remove(&delivery)?;
        let line = self.lines.get_mut(&partition)?;
        let at = line.binary_search_by_key(&delivery, |w| w.id).ok()?;
        line[at].progress = match result {
            Ok(()) => Progress::Done,
            Err(e) => Progress::Failed(e),
        };
        let mut released = Released {
            partition,
            ..Released::default()
        };
        while let Some(head) = line.front_mut() {
            match &mut head.progress {
                Progress::Waiting => break,
                Progress::Failed(e) => {
                    released.failed = Some(std::mem::take(e));
                    break;
                }
                Progress::Done => {
                    if head.epoch == epoch_now {
                        released.store = Some(head.offset);
                    }
                    released.confirmed += 1;
                    line.pop_front();
                    self.len -= 1;
                }
            }
        }
        if line.is_empty() {
            self.lines.remove(&partition);
        }
        Some(released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_waits_for_every_earlier_message_of_its_partition_only() {
        let mut u = Unconfirmed::default();
        assert!(u.done_now(0, 1, 1), "nothing waiting: stored at once");
        let a = u.wait(0, 2, 1);
        assert!(!u.done_now(0, 3, 1), "behind a: waits");
        let b = u.wait(0, 4, 1);
        assert!(u.done_now(1, 9, 1), "another partition is not held up");
        assert_eq!(u.len(), 3);
        let r = u.settle(b, Ok(()), 1).unwrap();
        assert_eq!((r.confirmed, r.store), (0, None), "a is still out");
        let r = u.settle(a, Ok(()), 1).unwrap();
        assert_eq!((r.partition, r.confirmed, r.store), (0, 3, Some(4)));
        assert!(u.is_empty());
        assert_eq!(u.settle(a, Ok(()), 1), None, "a second report is ignored");
    }

    #[test]
    fn a_failure_stops_the_line_where_it_stands_and_old_epochs_store_nothing() {
        let mut u = Unconfirmed::default();
        let a = u.wait(0, 1, 1);
        let b = u.wait(0, 2, 2);
        let c = u.wait(0, 3, 2);
        let r = u.settle(c, Err("gone".into()), 2).unwrap();
        assert_eq!(r.failed, None, "not at the head yet");
        let r = u.settle(a, Ok(()), 2).unwrap();
        assert_eq!(
            (r.confirmed, r.store),
            (1, None),
            "consumed before the rebalance"
        );
        let r = u.settle(b, Ok(()), 2).unwrap();
        assert_eq!(
            (r.confirmed, r.store, r.failed.as_deref()),
            (1, Some(2), Some("gone"))
        );
    }
}
