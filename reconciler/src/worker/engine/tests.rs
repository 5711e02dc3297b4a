use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;
use crate::envelope::PaymentRow;

fn wall0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("a valid timestamp")
}

fn now0() -> Now {
    Now {
        mono: Instant::now(),
        wall: wall0(),
    }
}

fn row(id: Uuid, status: &str, created_at: DateTime<Utc>) -> PaymentRow {
    crate::envelope::test_row(id, status, created_at, 2)
}

/// A change that only updates the state.
fn pending() -> Result<Change, DecodeError> {
    Ok(Change::Upsert {
        row: row(Uuid::now_v7(), "pending", wall0()),
        before_status: None,
        snapshot: false,
        lsn: 1,
        commit_ts_ms: 1,
    })
}

/// A change into a final status: an update to publish.
fn resolved() -> Result<Change, DecodeError> {
    Ok(Change::Upsert {
        row: row(Uuid::now_v7(), "succeeded", wall0()),
        before_status: Some("pending".into()),
        snapshot: false,
        lsn: 1,
        commit_ts_ms: 1,
    })
}

fn undecodable() -> Result<Change, DecodeError> {
    Err(DecodeError::NoKey)
}

fn record(partition: i32, offset: i64, change: Result<Change, DecodeError>) -> Event {
    Event::Record {
        partition,
        offset,
        change,
    }
}

fn ok(delivery: DeliveryId) -> Event {
    Event::Delivered {
        delivery,
        result: Ok(()),
    }
}

fn handed(partition: i32) -> Handed {
    Handed {
        partition,
        ..Handed::default()
    }
}

/// A state of `n` payments whose first poll is due at `wall0()`.
fn due_state(n: usize) -> PendingState {
    let mut s = PendingState::default();
    let created = wall0() - chrono::Duration::minutes(10);
    for _ in 0..n {
        let change = Change::Upsert {
            row: row(Uuid::now_v7(), "pending", created),
            before_status: None,
            snapshot: true,
            lsn: 0,
            commit_ts_ms: 0,
        };
        s.apply(&change, &Schedule::default());
    }
    s
}

fn holding(cfg: PollConfig, partitions: Vec<Handed>, total: i32, now: Now) -> Engine {
    let mut e = Engine::new(cfg, now.mono);
    e.step(
        Event::Assigned {
            total_partitions: total,
            partitions,
        },
        now,
    );
    e
}

/// One partition of one, holding `due` payments whose polls are all due.
fn holding_due(cfg: PollConfig, due: usize, now: Now) -> Engine {
    let handed = Handed {
        partition: 0,
        state: due_state(due),
        start_at: None,
    };
    holding(cfg, vec![handed], 1, now)
}

fn engine(partitions: &[i32]) -> Engine {
    let handed = partitions.iter().map(|p| handed(*p)).collect();
    holding(PollConfig::default(), handed, 4, now0())
}

fn stores(cmds: &[Command]) -> Vec<(i32, i64)> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StoreOffset { partition, offset } => Some((*partition, *offset)),
            _ => None,
        })
        .collect()
}

fn delivery(cmds: &[Command]) -> Option<DeliveryId> {
    cmds.iter().find_map(|c| match c {
        Command::Publish { delivery, .. } | Command::DeadLetter { delivery, .. } => Some(*delivery),
        _ => None,
    })
}

fn halt(cmds: &[Command]) -> Option<&Halt> {
    cmds.iter().find_map(|c| match c {
        Command::Halt(h) => Some(h),
        _ => None,
    })
}

fn polls(cmds: &[Command]) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::StartPoll { .. }))
        .count()
}

#[test]
fn a_change_with_nothing_to_publish_stores_its_offset_at_once() {
    let mut e = engine(&[0]);
    let cmds = e.step(record(0, 7, pending()), now0());
    assert_eq!(stores(&cmds), [(0, 7)]);
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Count(Count::Applied {
            effect: Effect::Added,
            commit_ts_ms: Some(1)
        })
    )));
    assert_eq!(e.unconfirmed(), 0);
}

#[test]
fn an_offset_is_stored_only_once_the_updates_up_to_it_are_confirmed() {
    let mut e = engine(&[0, 1]);
    let a = delivery(&e.step(record(0, 1, resolved()), now0())).expect("a publish");
    let b = delivery(&e.step(record(0, 2, resolved()), now0())).expect("a publish");
    let cmds = e.step(record(0, 3, pending()), now0());
    assert!(stores(&cmds).is_empty(), "behind unconfirmed updates");
    assert_eq!(
        stores(&e.step(record(1, 1, pending()), now0())),
        [(1, 1)],
        "another partition does not wait"
    );
    assert!(
        stores(&e.step(ok(b), now0())).is_empty(),
        "b is confirmed before a: nothing moves"
    );
    let cmds = e.step(ok(a), now0());
    assert_eq!(stores(&cmds), [(0, 3)], "a, b and the change behind them");
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Count(Count::Confirmed(3))))
    );
    assert_eq!(e.unconfirmed(), 0);
}

#[test]
fn a_failed_delivery_halts_once_the_work_before_it_is_stored() {
    let mut e = engine(&[0]);
    let a = delivery(&e.step(record(0, 1, resolved()), now0())).expect("a publish");
    let b = delivery(&e.step(record(0, 2, resolved()), now0())).expect("a publish");
    let cmds = e.step(
        Event::Delivered {
            delivery: b,
            result: Err("timed out".into()),
        },
        now0(),
    );
    assert!(halt(&cmds).is_none(), "a is still out");
    let cmds = e.step(ok(a), now0());
    assert_eq!(stores(&cmds), [(0, 1)]);
    assert_eq!(halt(&cmds), Some(&Halt::Publish("timed out".into())));
}

#[test]
fn a_confirmation_from_before_a_rebalance_stores_nothing() {
    let mut e = engine(&[0]);
    let old = delivery(&e.step(record(0, 5, resolved()), now0())).expect("a publish");
    e.step(Event::Revoked(vec![0]), now0());
    assert!(
        e.step(record(0, 6, pending()), now0()).is_empty(),
        "a record of a partition no longer held is skipped"
    );
    e.step(
        Event::Assigned {
            total_partitions: 4,
            partitions: vec![handed(0)],
        },
        now0(),
    );
    // Handed back: consumption restarts at the last commit, before 5.
    assert!(
        stores(&e.step(record(0, 3, pending()), now0())).is_empty(),
        "waits behind the old delivery"
    );
    let cmds = e.step(ok(old), now0());
    assert_eq!(
        stores(&cmds),
        [(0, 3)],
        "the old message's offset 5 is never stored"
    );

    let mut e = engine(&[0]);
    let old = delivery(&e.step(record(0, 5, resolved()), now0())).expect("a publish");
    e.step(Event::Revoked(vec![0]), now0());
    assert!(stores(&e.step(ok(old), now0())).is_empty());
}

#[test]
fn a_partition_new_to_the_group_starts_at_its_end_and_skips_older_records() {
    let mut e = Engine::new(PollConfig::default(), now0().mono);
    let cmds = e.step(
        Event::Assigned {
            total_partitions: 2,
            partitions: vec![
                Handed {
                    partition: 0,
                    state: PendingState::default(),
                    start_at: Some(10),
                },
                handed(1),
            ],
        },
        now0(),
    );
    assert!(matches!(
        cmds.as_slice(),
        [
            Command::Seek {
                partition: 0,
                offset: 10
            },
            Command::CommitStart(starts)
        ] if starts == &[(0, 10)]
    ));
    assert!(
        e.step(record(0, 9, resolved()), now0()).is_empty(),
        "already in the state read"
    );
    assert!(e.step(record(0, 9, undecodable()), now0()).is_empty());
    assert_eq!(stores(&e.step(record(0, 10, pending()), now0())), [(0, 10)]);
    assert_eq!(
        stores(&e.step(record(1, 0, pending()), now0())),
        [(1, 0)],
        "a committed partition replays everything"
    );
    assert!(
        e.step(record(3, 0, pending()), now0()).is_empty(),
        "not ours"
    );
}

#[test]
fn a_run_of_undecodable_records_halts_and_a_decodable_one_resets_it() {
    let cfg = PollConfig {
        halt_after_undecodable: 3,
        ..PollConfig::default()
    };
    let mut e = holding(cfg, vec![handed(0)], 1, now0());
    let mut offset = 0;
    let mut feed = |e: &mut Engine, change| {
        offset += 1;
        e.step(record(0, offset, change), now0())
    };
    for _ in 0..2 {
        let cmds = feed(&mut e, undecodable());
        assert!(
            matches!(cmds.as_slice(), [Command::Count(Count::Undecodable), Command::DeadLetter { error, .. }] if error == "record has no key")
        );
    }
    feed(&mut e, pending());
    for _ in 0..2 {
        assert!(halt(&feed(&mut e, undecodable())).is_none(), "run reset");
    }
    let cmds = feed(&mut e, undecodable());
    assert_eq!(halt(&cmds), Some(&Halt::Undecodable(3)));
    assert!(
        delivery(&cmds).is_none(),
        "the record that halts is not dead-lettered"
    );
}

#[test]
fn a_dead_letter_holds_the_offsets_behind_it_until_confirmed() {
    let mut e = engine(&[0]);
    let cmds = e.step(record(0, 1, undecodable()), now0());
    let d = delivery(&cmds).expect("a dead letter");
    assert!(stores(&cmds).is_empty());
    assert!(stores(&e.step(record(0, 2, pending()), now0())).is_empty());
    assert_eq!(stores(&e.step(ok(d), now0())), [(0, 2)]);
}

#[test]
fn polls_start_within_the_rate() {
    let cfg = PollConfig {
        // Polls alone: a sweep in flight holds them back (tested below).
        sweep_every_ms: 0,
        rate_per_sec: 2,
        burst: 2,
        max_in_flight: 100,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut e = holding_due(cfg, 10, t0);
    let cmds = e.step(Event::Tick, t0);
    assert_eq!(polls(&cmds), 2, "the burst");
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Count(Count::RateLimitWait)))
    );
    assert_eq!(
        polls(&e.step(Event::Tick, t0.after(Duration::from_millis(100)))),
        0
    );
    assert_eq!(
        polls(&e.step(Event::Tick, t0.after(Duration::from_millis(500)))),
        1,
        "2 per second"
    );
    assert_eq!(e.polls_in_flight(), 3);
}

#[test]
fn polls_pause_after_a_429_for_twice_as_long_each_time() {
    let cfg = PollConfig {
        // Polls alone: a sweep in flight holds them back (tested below).
        sweep_every_ms: 0,
        rate_per_sec: 1000,
        burst: 1000,
        max_in_flight: 1,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut e = holding_due(cfg, 10, t0);
    let started = |cmds: Vec<Command>| {
        cmds.into_iter().find_map(|c| match c {
            Command::StartPoll { target, .. } => Some(target.id),
            _ => None,
        })
    };
    let mut id = started(e.step(Event::Tick, t0)).expect("a poll");
    let mut at = t0;
    for pause in [MIN_BACKOFF, MIN_BACKOFF * 2, MIN_BACKOFF * 4] {
        let limited = e.step(
            Event::PollDone {
                partition: 0,
                id,
                answer: PollAnswer::RateLimited,
            },
            at,
        );
        assert_eq!(polls(&limited), 0);
        let early = at.after(pause - Duration::from_millis(1));
        assert_eq!(
            polls(&e.step(Event::Tick, early)),
            0,
            "paused, though tokens and a free slot are there"
        );
        at = at.after(pause);
        id = started(e.step(Event::Tick, at)).expect("resumed after the pause");
    }
    let cmds = e.step(
        Event::PollDone {
            partition: 0,
            id,
            answer: PollAnswer::Answered { usable: true },
        },
        at,
    );
    assert_eq!(polls(&cmds), 1, "an answer does not pause");
}

#[test]
fn polls_in_flight_are_bounded_and_each_answer_lets_one_more_start() {
    let cfg = PollConfig {
        // Polls alone: a sweep in flight holds them back (tested below).
        sweep_every_ms: 0,
        max_in_flight: 2,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut e = holding_due(cfg, 5, t0);
    let started: Vec<Uuid> = e
        .step(Event::Tick, t0)
        .into_iter()
        .filter_map(|c| match c {
            Command::StartPoll { target, .. } => Some(target.id),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 2);
    assert_eq!(polls(&e.step(Event::Tick, t0)), 0);
    let cmds = e.step(
        Event::PollDone {
            partition: 0,
            id: started[0],
            answer: PollAnswer::Answered { usable: true },
        },
        t0,
    );
    assert_eq!(polls(&cmds), 1);
    assert_eq!(polls(&e.step(Event::PollLost, t0)), 1);
    assert_eq!(e.polls_in_flight(), 2);
}

#[test]
fn the_budget_is_shared_by_the_partitions_held() {
    let t0 = now0();
    let cfg = PollConfig {
        rate_per_sec: 20,
        burst: 20,
        max_in_flight: 100,
        ..PollConfig::default()
    };
    let mut e = holding(
        cfg,
        vec![Handed {
            partition: 0,
            state: due_state(30),
            start_at: None,
        }],
        4,
        t0,
    );
    assert_eq!(polls(&e.step(Event::Tick, t0)), 5, "a quarter of the burst");
}

#[test]
fn rejoins_only_after_holding_no_partition_for_a_while() {
    let t0 = now0();
    let rejoins = |cmds: Vec<Command>| cmds.iter().any(|c| matches!(c, Command::Rejoin));
    let mut e = Engine::new(PollConfig::default(), t0.mono);
    assert!(!rejoins(e.step(Event::Tick, t0)));
    assert!(!rejoins(e.step(
        Event::Tick,
        t0.after(REJOIN_AFTER - Duration::from_millis(1))
    )));
    assert!(rejoins(e.step(Event::Tick, t0.after(REJOIN_AFTER))));
    let mut e = engine(&[0]);
    for s in [0, 30, 600, 3600] {
        assert!(!rejoins(
            e.step(Event::Tick, t0.after(Duration::from_secs(s)))
        ));
    }
    e.step(Event::Revoked(vec![0]), t0);
    let later = t0.after(Duration::from_secs(4000));
    assert!(!rejoins(e.step(Event::Tick, later)));
    assert!(rejoins(e.step(Event::Tick, later.after(REJOIN_AFTER))));
}

#[test]
fn shutdown_commits_once_in_flight_work_is_done_and_starts_no_poll() {
    let t0 = now0();
    let mut e = Engine::new(PollConfig::default(), t0.mono);
    assert!(matches!(
        e.step(Event::Shutdown, t0).as_slice(),
        [Command::Commit]
    ));

    let one_poll = PollConfig {
        max_in_flight: 1,
        ..PollConfig::default()
    };
    let mut e = holding_due(one_poll, 3, t0);
    let id = e
        .step(Event::Tick, t0)
        .into_iter()
        .find_map(|c| match c {
            Command::StartPoll { target, .. } => Some(target.id),
            _ => None,
        })
        .expect("a poll");
    let d = delivery(&e.step(record(0, 1, resolved()), t0)).expect("a publish");
    assert!(e.step(Event::Shutdown, t0).is_empty());
    assert!(
        e.step(Event::Tick, t0.after(Duration::from_secs(5)))
            .is_empty()
    );
    let cmds = e.step(
        Event::PollDone {
            partition: 0,
            id,
            answer: PollAnswer::Answered { usable: true },
        },
        t0,
    );
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Commit)),
        "the delivery is out"
    );
    let cmds = e.step(ok(d), t0);
    assert!(
        matches!(
            cmds.as_slice(),
            [
                Command::Count(Count::Confirmed(1)),
                Command::StoreOffset {
                    partition: 0,
                    offset: 1
                },
                Command::Commit
            ]
        ),
        "{cmds:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    /// kind: 0 a change, 1 an update to publish, 2 undecodable.
    Record {
        partition: i32,
        kind: u8,
    },
    /// Confirms (or fails) the `pick`-th delivery still out.
    Ack {
        pick: usize,
        ok: bool,
    },
    Revoke(i32),
    Assign(i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0_i32..3, 0_u8..3).prop_map(|(partition, kind)| Op::Record { partition, kind }),
        5 => (any::<usize>(), prop::bool::weighted(0.97)).prop_map(|(pick, ok)| Op::Ack { pick, ok }),
        1 => (0_i32..3).prop_map(Op::Revoke),
        1 => (0_i32..3).prop_map(Op::Assign),
    ]
}

#[derive(Debug)]
struct Consumed {
    partition: i32,
    /// Which assignment of the partition it was consumed in.
    assignment: u32,
    /// Rebalances (of any partition) before it was consumed.
    rebalances: u32,
    offset: i64,
    delivery: Option<DeliveryId>,
    done: bool,
}

/// A model of the consumer around the engine: what was consumed, confirmed and stored.
#[derive(Debug, Default)]
struct Model {
    held: BTreeSet<i32>,
    rebalances: u32,
    assignment: BTreeMap<i32, u32>,
    next_offset: BTreeMap<i32, i64>,
    stored: BTreeMap<i32, i64>,
    consumed: Vec<Consumed>,
    out: Vec<DeliveryId>,
}

impl Model {
    /// Checks one batch of commands; returns whether the engine halted.
    fn check(&mut self, cmds: &[Command]) -> Result<bool, TestCaseError> {
        for c in cmds {
            match c {
                Command::StoreOffset { partition, offset } => {
                    let p = *partition;
                    prop_assert!(self.held.contains(&p), "stored for {p}, not held");
                    if let Some(last) = self.stored.get(&p) {
                        prop_assert!(offset > last, "{p}: stored {offset} after {last}");
                    }
                    let now = self.assignment[&p];
                    let mine = self
                        .consumed
                        .iter()
                        .filter(|m| m.partition == p && m.assignment == now);
                    prop_assert!(
                        mine.clone().any(|m| m.offset == *offset),
                        "{p}: stored {offset}, never consumed in this assignment"
                    );
                    for m in mine.filter(|m| m.offset <= *offset) {
                        prop_assert!(m.done, "{p}: stored {offset} past unconfirmed {m:?}");
                    }
                    self.stored.insert(p, *offset);
                }
                Command::Publish { delivery, .. } | Command::DeadLetter { delivery, .. } => {
                    self.out.push(*delivery);
                    if let Some(m) = self.consumed.last_mut() {
                        m.delivery = Some(*delivery);
                    }
                }
                Command::Halt(_) => return Ok(true),
                _ => {}
            }
        }
        Ok(false)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the interleaving of records, confirmations in any order, failures and
    /// rebalances: an offset is stored only for a partition held, only for a message
    /// consumed in its current assignment, after every message up to it is confirmed,
    /// and offsets only grow within an assignment. Once everything is confirmed, every
    /// held partition has stored its last message consumed since the last rebalance.
    #[test]
    fn offsets_follow_confirmed_work_in_consumption_order(ops in proptest::collection::vec(op(), 1..120)) {
        let cfg = PollConfig { halt_after_undecodable: u32::MAX, ..PollConfig::default() };
        let t0 = now0();
        let mut e = Engine::new(cfg, t0.mono);
        let mut m = Model::default();
        for p in 0..3 {
            m.assignment.insert(p, 0);
            m.next_offset.insert(p, 0);
        }
        let mut halted = false;
        for op in ops {
            let cmds = match op {
                Op::Record { partition, kind } => {
                    let offset = m.next_offset[&partition];
                    let change = match kind {
                        0 => pending(),
                        1 => resolved(),
                        _ => undecodable(),
                    };
                    if m.held.contains(&partition) {
                        m.next_offset.insert(partition, offset + 1);
                        m.consumed.push(Consumed {
                            partition,
                            assignment: m.assignment[&partition],
                            rebalances: m.rebalances,
                            offset,
                            delivery: None,
                            done: kind == 0,
                        });
                    }
                    let cmds = e.step(record(partition, offset, change), t0);
                    if !m.held.contains(&partition) {
                        prop_assert!(cmds.is_empty(), "a record of a partition not held: {cmds:?}");
                    }
                    cmds
                }
                Op::Ack { pick, ok } => {
                    if m.out.is_empty() {
                        continue;
                    }
                    let d = m.out.remove(pick % m.out.len());
                    if ok {
                        for c in m.consumed.iter_mut().filter(|c| c.delivery == Some(d)) {
                            c.done = true;
                        }
                    }
                    let result = if ok { Ok(()) } else { Err("refused".to_owned()) };
                    e.step(Event::Delivered { delivery: d, result }, t0)
                }
                Op::Revoke(p) => {
                    if !m.held.remove(&p) {
                        continue;
                    }
                    m.stored.remove(&p);
                    m.rebalances += 1;
                    e.step(Event::Revoked(vec![p]), t0)
                }
                Op::Assign(p) => {
                    if !m.held.insert(p) {
                        continue;
                    }
                    *m.assignment.get_mut(&p).expect("every partition") += 1;
                    // The new owner replays from the last commit: some offsets again.
                    let replay_from = (m.next_offset[&p] - 3).max(0);
                    m.next_offset.insert(p, replay_from);
                    m.rebalances += 1;
                    e.step(Event::Assigned { total_partitions: 3, partitions: vec![handed(p)] }, t0)
                }
            };
            if m.check(&cmds)? {
                halted = true;
                break;
            }
        }
        if !halted {
            while let Some(d) = m.out.pop() {
                for c in m.consumed.iter_mut().filter(|c| c.delivery == Some(d)) {
                    c.done = true;
                }
                let cmds = e.step(ok(d), t0);
                if m.check(&cmds)? {
                    // A failure reported earlier reached the head of its line.
                    halted = true;
                    break;
                }
            }
        }
        if !halted {
            prop_assert_eq!(e.unconfirmed(), 0);
            // Every rebalance changes the epoch of all partitions (with eager rebalancing
            // each one revokes them all anyway): only work consumed since the last one
            // still stores its offset.
            for p in &m.held {
                let last = m.consumed.iter().filter(|c| c.partition == *p && c.rebalances == m.rebalances).map(|c| c.offset).max();
                if last.is_some() {
                    prop_assert_eq!(m.stored.get(p).copied(), last, "partition {}", p);
                }
            }
        }
    }

    /// Over any run of ticks and answers, polls started never exceed the burst plus the
    /// rate times the time passed, never exceed `max_in_flight` at once, and none starts
    /// within the minimum backoff after a 429.
    #[test]
    fn polls_stay_within_the_budget_and_the_backoff(
        rate in 1_u32..20,
        burst in 1_u32..20,
        max_in_flight in 1_usize..8,
        steps in proptest::collection::vec((0_u64..700, 0_u8..4, any::<usize>()), 1..150),
    ) {
        let cfg = PollConfig { rate_per_sec: rate, burst, max_in_flight, ..PollConfig::default() };
        let t0 = now0();
        let mut e = holding_due(cfg, 200, t0);
        let mut running: Vec<Uuid> = Vec::new();
        let mut started: u64 = 0;
        let mut elapsed_ms: u64 = 0;
        let mut last_429: Option<u64> = None;
        for (gap, what, pick) in steps {
            elapsed_ms += gap;
            let now = t0.after(Duration::from_millis(elapsed_ms));
            let event = match what {
                0 | 1 => Event::Tick,
                _ if running.is_empty() => Event::Tick,
                w => {
                    let id = running.remove(pick % running.len());
                    let answer = if w == 2 { PollAnswer::RateLimited } else { PollAnswer::Answered { usable: true } };
                    if answer == PollAnswer::RateLimited {
                        last_429 = Some(elapsed_ms);
                    }
                    Event::PollDone { partition: 0, id, answer }
                }
            };
            for c in e.step(event, now) {
                if let Command::StartPoll { target, .. } = c {
                    started += 1;
                    running.push(target.id);
                    if let Some(at) = last_429 {
                        prop_assert!(elapsed_ms >= at + MIN_BACKOFF.as_millis() as u64, "a poll {}ms after a 429", elapsed_ms - at);
                    }
                }
            }
            prop_assert!(running.len() <= max_in_flight);
            prop_assert_eq!(e.polls_in_flight(), running.len());
            prop_assert!(started * 1000 <= u64::from(burst) * 1000 + u64::from(rate) * elapsed_ms,
                "{} polls in {}ms at {}/s, burst {}", started, elapsed_ms, rate, burst);
        }
    }

    /// The engine halts exactly when the last `n` records were all undecodable, and sends
    /// every undecodable record before that to the dead-letter topic.
    #[test]
    fn a_run_of_n_undecodable_records_halts(n in 1_u32..6, records in proptest::collection::vec(prop::bool::weighted(0.7), 1..60)) {
        let cfg = PollConfig { halt_after_undecodable: n, ..PollConfig::default() };
        let t0 = now0();
        let mut e = holding(cfg, vec![handed(0)], 1, t0);
        let mut run = 0;
        for (offset, bad) in (0_i64..).zip(records) {
            let cmds = e.step(record(0, offset, if bad { undecodable() } else { pending() }), t0);
            run = if bad { run + 1 } else { 0 };
            let dead = cmds.iter().filter(|c| matches!(c, Command::DeadLetter { .. })).count();
            if run >= n {
                prop_assert_eq!(halt(&cmds), Some(&Halt::Undecodable(n)));
                prop_assert_eq!(dead, 0);
                break;
            }
            prop_assert!(halt(&cmds).is_none());
            prop_assert_eq!(dead, usize::from(bad));
        }
    }
}

fn sweeps(cmds: &[Command]) -> Vec<i64> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Sweep { from, .. } => Some(from.since),
            _ => None,
        })
        .collect()
}

fn started(cmds: &[Command]) -> Vec<Uuid> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::StartPoll { target, .. } => Some(target.id),
            _ => None,
        })
        .collect()
}

fn moved(
    payment: Uuid,
    intent: &str,
    event: &str,
    status: &str,
) -> paystream_core::gateway::IntentEvent {
    paystream_core::gateway::IntentEvent {
        id: event.into(),
        created: wall0().timestamp(),
        intent: paystream_core::IntentView {
            id: intent.into(),
            stripe_status: status.into(),
            amount: 100,
            currency: "usd".into(),
            payment_id: Some(payment.to_string()),
            client_secret: None,
            last_error: None,
            created: wall0().timestamp(),
            amount_capturable: 0,
            amount_received: 100,
        },
    }
}

/// A payment the sweep finds final at Stripe gets that status applied at once; one that
/// moved to a status that is not final (authorized) is polled next, ahead of a backlog of
/// due polls; events about payments not held here, or about another intent than the one
/// a payment holds, move nothing.
#[test]
fn a_swept_event_puts_its_payments_poll_first() {
    let cfg = PollConfig {
        rate_per_sec: 1,
        burst: 1,
        max_in_flight: 1,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut state = due_state(50);
    let (target, authorized, other_intent) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for id in [target, authorized, other_intent] {
        let mut r = row(id, "pending", wall0() - chrono::Duration::hours(5));
        r.stripe_payment_intent_id = Some(format!("pi_{id}"));
        let change = Change::Upsert {
            row: r,
            before_status: None,
            snapshot: true,
            lsn: 0,
            commit_ts_ms: 0,
        };
        state.apply(&change, &Schedule::default());
    }
    let handed = Handed {
        partition: 0,
        state,
        start_at: None,
    };
    let mut e = holding(cfg, vec![handed], 1, t0);
    let first = e.step(Event::Tick, t0);
    assert_eq!(
        sweeps(&first).len(),
        1,
        "a sweep starts while payments are pending"
    );
    let backlog = started(&first)[0];
    assert_ne!(backlog, target);
    let cmds = e.step(
        Event::Swept(Ok(Swept {
            events: vec![
                moved(target, &format!("pi_{target}"), "evt_1", "succeeded"),
                moved(other_intent, "pi_someone_else", "evt_2", "succeeded"),
                moved(Uuid::now_v7(), "pi_x", "evt_3", "canceled"),
                moved(
                    authorized,
                    &format!("pi_{authorized}"),
                    "evt_4",
                    "requires_capture",
                ),
            ],
            calls: 1,
            truncated: false,
            last: None,
        })),
        t0,
    );
    assert!(cmds.iter().any(|c| matches!(
        c,
        Command::Count(Count::Swept {
            events: 4,
            nudged: 2,
            ..
        })
    )));
    let applied = |cmds: &[Command]| -> Vec<(Uuid, String)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::ApplySwept(s) => Some((s.id, s.intent.stripe_status.clone())),
                _ => None,
            })
            .collect()
    };
    assert!(
        applied(&cmds).is_empty(),
        "waits for a free slot (max_in_flight 1)"
    );
    let backlog_done = Event::PollDone {
        partition: 0,
        id: backlog,
        answer: PollAnswer::Answered { usable: true },
    };
    let cmds = e.step(backlog_done, t0);
    assert_eq!(
        applied(&cmds),
        [(target, "succeeded".to_owned())],
        "applied as read: no Stripe call, no token"
    );
    assert_eq!(polls(&cmds), 0);
    assert_eq!(e.polls_in_flight(), 1, "the apply holds the slot");
    let target_done = Event::PollDone {
        partition: 0,
        id: target,
        answer: PollAnswer::Answered { usable: true },
    };
    e.step(target_done, t0);
    let later = t0.after(Duration::from_secs(1));
    assert_eq!(
        started(&e.step(Event::Tick, later)),
        [authorized],
        "the authorized one first"
    );
    assert!(
        sweeps(&e.step(Event::Tick, t0.after(Duration::from_millis(1500)))).is_empty(),
        "the next sweep waits its period"
    );
    assert_eq!(
        sweeps(&e.step(Event::Tick, t0.after(Duration::from_secs(3)))),
        [wall0().timestamp() - crate::sweep::OVERLAP_SECS]
    );
}

/// A 429 on a sweep pauses the instance's polls too (the account's limit is shared), and
/// nothing is swept while no payment is pending.
#[test]
fn a_rate_limited_sweep_pauses_polls_and_an_empty_state_sweeps_nothing() {
    let t0 = now0();
    let cfg = PollConfig {
        max_in_flight: 1,
        ..PollConfig::default()
    };
    let mut e = holding_due(cfg, 5, t0);
    let first = e.step(Event::Tick, t0);
    assert_eq!((sweeps(&first).len(), polls(&first)), (1, 1));
    let cmds = e.step(Event::Swept(Err(GatewayError::RateLimited)), t0);
    assert_eq!(polls(&cmds), 0);
    // The poll's slot frees up (its task ended), yet nothing starts during the pause.
    assert_eq!(polls(&e.step(Event::PollLost, t0)), 0, "paused");
    assert_eq!(
        polls(&e.step(Event::Tick, t0.after(MIN_BACKOFF / 2))),
        0,
        "paused"
    );
    assert_eq!(polls(&e.step(Event::Tick, t0.after(MIN_BACKOFF))), 1);

    let mut idle = engine(&[0, 1]);
    assert!(sweeps(&idle.step(Event::Tick, now0())).is_empty());
}

/// A sweep reads at most half of the instance's share of the rate over a sweep period,
/// whatever `sweep_max_pages` allows: an instance holding a quarter of the partitions
/// sweeps with a quarter of the pages.
#[test]
fn sweep_pages_follow_the_instances_share_of_the_rate() {
    let pages = |cmds: &[Command]| {
        cmds.iter()
            .find_map(|c| match c {
                Command::Sweep { pages, .. } => Some(*pages),
                _ => None,
            })
            .expect("a sweep")
    };
    let cfg = PollConfig {
        rate_per_sec: 8,
        burst: 8,
        sweep_every_ms: 2_000,
        sweep_max_pages: 50,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut whole = holding_due(cfg, 3, t0);
    assert_eq!(pages(&whole.step(Event::Tick, t0)), 8);
    let quarter = Handed {
        partition: 0,
        state: due_state(3),
        start_at: None,
    };
    let mut e = holding(cfg, vec![quarter], 4, t0);
    assert_eq!(pages(&e.step(Event::Tick, t0)), 2);
    let capped = PollConfig {
        sweep_max_pages: 3,
        ..cfg
    };
    let mut e = holding_due(capped, 3, t0);
    assert_eq!(pages(&e.step(Event::Tick, t0)), 3);
}

/// While a sweep reads, its pages get the tokens and no poll starts; once it is back (or
/// stalled past any call's timeout), polls start again.
#[test]
fn polls_wait_while_a_sweep_reads() {
    let cfg = PollConfig {
        max_in_flight: 4,
        rate_per_sec: 1000,
        burst: 1000,
        ..PollConfig::default()
    };
    let t0 = now0();
    let mut e = holding_due(cfg, 50, t0);
    let first = e.step(Event::Tick, t0);
    assert_eq!(
        (sweeps(&first).len(), polls(&first)),
        (1, 4),
        "polls first, then the sweep"
    );
    let t1 = t0.after(Duration::from_millis(500));
    for _ in 0..4 {
        assert_eq!(polls(&e.step(Event::PollLost, t1)), 0, "the sweep reads");
    }
    assert_eq!(polls(&e.step(Event::Tick, t1)), 0, "the sweep reads");
    let done = Swept {
        events: Vec::new(),
        calls: 1,
        truncated: false,
        last: None,
    };
    assert_eq!(
        polls(&e.step(Event::Swept(Ok(done)), t1)),
        4,
        "back to polls"
    );

    let mut stalled = holding_due(cfg, 50, t0);
    stalled.step(Event::Tick, t0);
    for _ in 0..4 {
        stalled.step(Event::PollLost, t0);
    }
    assert_eq!(
        polls(&stalled.step(Event::Tick, t0.after(Duration::from_secs(29)))),
        0
    );
    assert!(
        polls(&stalled.step(Event::Tick, t0.after(Duration::from_secs(31)))) > 0,
        "a sweep that never came back no longer holds polls"
    );
}

/// An event about a payment whose row has not reached the state yet (CDC behind Stripe)
/// is acted on when the row arrives.
#[test]
fn an_event_ahead_of_its_row_is_acted_on_when_the_row_arrives() {
    let t0 = now0();
    let mut e = holding(PollConfig::default(), vec![handed(0)], 1, t0);
    e.step(Event::Tick, t0);
    let id = Uuid::now_v7();
    let event = moved(id, &format!("pi_{id}"), "evt_early", "succeeded");
    let swept = Swept {
        events: vec![event],
        calls: 1,
        truncated: false,
        last: None,
    };
    let cmds = e.step(Event::Swept(Ok(swept)), t0);
    assert!(!cmds.iter().any(|c| matches!(c, Command::ApplySwept(_))));
    let mut r = row(id, "pending", wall0());
    r.stripe_payment_intent_id = Some(format!("pi_{id}"));
    let change = Ok(Change::Upsert {
        row: r,
        before_status: None,
        snapshot: false,
        lsn: 1,
        commit_ts_ms: 1,
    });
    let cmds = e.step(record(0, 5, change), t0);
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::Count(Count::NudgedLate))),
        "counted with the sweep's nudges: {cmds:?}"
    );
    let cmds = e.step(Event::Tick, t0.after(Duration::from_millis(30)));
    assert!(
        cmds.iter()
            .any(|c| matches!(c, Command::ApplySwept(s) if s.id == id && s.event == "evt_early")),
        "{cmds:?}"
    );
}
