//! API keys at the door: who may even reach the database to have a key checked.
//!
//! A key checked on the primary is remembered, so most requests cost no lookup, for as
//! long as the instance is told of every change to keys: the database announces each one
//! as it commits (migration 0015) and `listen` makes the gate forget what changed. While
//! the instance is not subscribed it remembers nothing and checks every request. So a
//! revoked key is refused as soon as its instance hears of the revocation (milliseconds),
//! and never later than `REMEMBER_FOR`.
//!
//! Keys that checked out recently, the active keys the database held when the instance
//! started (`keys::active_hashes`) and those it announced as added since (migration
//! 0019) go straight to that lookup; any other key waits for one of a few lookup
//! permits. A flood of random bearer tokens thus holds at most `UNKNOWN_LOOKUPS`
//! connections of the pool and answers 429 beyond that, while genuine clients keep their
//! lane (I5 in docs/invariants.md). Concurrent requests with the same new key queue behind
//! its first lookup rather than for permits of their own, so a new client's first burst
//! is not mistaken for a flood.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use paystream_db::Primary;
use paystream_db::keys::{self, KeyChange, KeyChanges, Principal};
use paystream_service::Metrics;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Concurrent lookups of keys not seen valid recently.
const UNKNOWN_LOOKUPS: usize = 2;
/// How long a request with an unknown key waits for a lookup permit before its 429.
const UNKNOWN_WAIT: Duration = Duration::from_millis(200);
/// Keys remembered as recently valid (oldest forgotten first).
const KNOWN_KEYS: usize = 10_000;
/// The longest a remembered key is trusted without a lookup: a bound in case a change
/// notice is lost without the subscription noticing.
const REMEMBER_FOR: Duration = Duration::from_secs(60);

pub struct KeyGate {
    known: Mutex<Known>,
    unknown: Semaphore,
    /// One queue per unknown key being looked up right now.
    pending: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    remembered: Mutex<Remembered>,
}

/// Principals of keys the primary confirmed, trusted only while the gate is subscribed
/// to key changes.
#[derive(Default)]
struct Remembered {
    subscribed: bool,
    /// Bumped by every change heard: a lookup that began before a change may have read the
    /// key as it was, so its answer is not remembered.
    epoch: u64,
    keys: HashMap<Vec<u8>, (Principal, Instant)>,
}

impl Remembered {
    fn get(&self, hash: &[u8], now: Instant) -> Option<Principal> {
        let (p, at) = self.keys.get(hash)?;
        (self.subscribed && now.duration_since(*at) < REMEMBER_FOR).then_some(*p)
    }

    fn forget(&mut self, change: &KeyChange) {
        match change {
            KeyChange::Key(hash) => {
                self.keys.remove(hash);
            }
            KeyChange::All => self.keys.clear(),
            // Nothing remembered can be wrong about a key that did not exist.
            KeyChange::Added(_) => return,
        }
        self.epoch += 1;
    }

    fn remember(&mut self, hash: Vec<u8>, p: Principal, since_epoch: u64, now: Instant) {
        if !self.subscribed || self.epoch != since_epoch {
            return;
        }
        if self.keys.len() >= KNOWN_KEYS {
            self.keys.clear();
        }
        self.keys.insert(hash, (p, now));
    }

    fn subscribed(&mut self, on: bool) {
        self.forget(&KeyChange::All);
        self.subscribed = on;
    }
}

#[derive(Default)]
struct Known {
    set: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Known {
    fn insert(&mut self, hash: Vec<u8>) {
        if self.set.insert(hash.clone()) {
            self.order.push_back(hash);
            if self.order.len() > KNOWN_KEYS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

impl Default for KeyGate {
    fn default() -> Self {
        KeyGate {
            known: Mutex::new(Known::default()),
            unknown: Semaphore::new(UNKNOWN_LOOKUPS),
            pending: Mutex::new(HashMap::new()),
            remembered: Mutex::default(),
        }
    }
}

impl KeyGate {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Remembered> {
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's principal: remembered, or through `lookup` (the database's answer),
    /// admitting unknown keys only as fast as the lookup permits allow. Only a lookup on
    /// the primary may be remembered (`remember`): a replica may not have replayed a
    /// revocation the gate already heard of.
    pub async fn check<F, Fut>(
        &self,
        key: &str,
        remember: bool,
        lookup: F,
    ) -> Result<Option<Principal>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Principal>, ApiError>>,
    {
        let hash = keys::hash(key);
        let epoch = {
            let remembered = self.remembered();
            if let Some(p) = remembered.get(&hash, Instant::now()) {
                return Ok(Some(p));
            }
            remembered.epoch
        };
        let found = self.look_up(hash.clone(), lookup).await?;
        if let (true, Some(p)) = (remember, found) {
            self.remembered().remember(hash, p, epoch, Instant::now());
        }
        Ok(found)
    }

    /// Hears the database's key changes until `token` is canceled, resubscribing after a
    /// lost subscription. The gate remembers keys only while subscribed, which
    /// `api_key_changes_subscribed` shows: at 0 every request costs a lookup.
    pub async fn listen(&self, db: &Primary, metrics: &Metrics, token: CancellationToken) {
        let subscribed = |on: bool| {
            self.remembered().subscribed(on);
            metrics.set_gauge(
                "api_key_changes_subscribed",
                "1 while this instance hears key changes and so remembers keys; 0 while it looks every key up",
                &[],
                i64::from(on),
            );
        };
        subscribed(false);
        match keys::active_hashes(db, KNOWN_KEYS).await {
            Ok(active) => {
                let n = active.len();
                self.learn(active);
                tracing::info!(keys = n, "active keys loaded into the fast lane");
            }
            // Only the first request of each key waits in the strangers' line meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "active keys not loaded; new keys queue for lookups")
            }
        }
        while !token.is_cancelled() {
            match KeyChanges::subscribe(db).await {
                Ok(mut changes) => {
                    subscribed(true);
                    loop {
                        let next = tokio::select! {
                            () = token.cancelled() => break,
                            next = changes.next() => next,
                        };
                        match next {
                            Ok(Some(KeyChange::Added(hash))) => self.learn([hash]),
                            Ok(Some(change)) => self.remembered().forget(&change),
                            Ok(None) => {
                                tracing::warn!(
                                    "key change subscription lost; checking every key until it is back"
                                );
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "key change subscription failed; checking every key until it is back");
                                break;
                            }
                        }
                    }
                    subscribed(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to key changes; checking every key");
                }
            }
            tokio::select! {
                () = token.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Puts `hashes` (keys the database holds: the active ones at start, oldest first, and
    /// each one it announces as added) in the fast lane: their first check is still a
    /// lookup, but it does not queue for the few permits kept for strangers. A restarted
    /// instance would otherwise take every client's first request for a stranger's and
    /// answer a busy minute's burst with 429s.
    fn learn(&self, hashes: impl IntoIterator<Item = Vec<u8>>) {
        let mut known = self.known();
        for hash in hashes {
            known.insert(hash);
        }
    }

    /// Whether `key`'s first lookup skips the strangers' line: the database held it as
    /// active when this instance started, or announced it since.
    pub fn expects(&self, key: &str) -> bool {
        self.known().set.contains(&keys::hash(key))
    }

    /// Whether the gate hears key changes now, and so remembers keys.
    pub fn is_subscribed(&self) -> bool {
        self.remembered().subscribed
    }

    /// Whether `key` would pass now without a lookup.
    pub fn remembers(&self, key: &str) -> bool {
        self.remembered()
            .get(&keys::hash(key), Instant::now())
            .is_some()
    }

    async fn look_up<F, Fut>(&self, hash: Vec<u8>, lookup: F) -> Result<Option<Principal>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Principal>, ApiError>>,
    {
        if self.known().set.contains(&hash) {
            return self.looked_up(hash, true, lookup().await?);
        }
        let queue = self.pending().entry(hash.clone()).or_default().clone();
        let turn = queue.lock().await;
        // The request before in this key's queue may have just learned it: the fast lane,
        // without holding up the rest of the queue.
        let found = if self.known().set.contains(&hash) {
            drop(turn);
            lookup()
                .await
                .and_then(|f| self.looked_up(hash.clone(), true, f))
        } else {
            let found = match tokio::time::timeout(UNKNOWN_WAIT, self.unknown.acquire()).await {
                Ok(Ok(_permit)) => lookup()
                    .await
                    .and_then(|f| self.looked_up(hash.clone(), false, f)),
                _ => Err(busy()),
            };
            // Learned (or not) before the next in the queue looks.
            drop(turn);
            found
        };
        let mut pending = self.pending();
        // Only the map and this request hold it: nobody else waits on this key.
        if Arc::strong_count(&queue) <= 2 {
            pending.remove(&hash);
        }
        found
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps the fast lane up to date with what the database said of `hash`.
    fn looked_up(
        &self,
        hash: Vec<u8>,
        known: bool,
        found: Option<Principal>,
    ) -> Result<Option<Principal>, ApiError> {
        match found {
            Some(_) if !known => self.known().insert(hash),
            // Revoked meanwhile: back to the slow lane (the set forgets it in time).
            None if known => {
                self.known().set.remove(&hash);
            }
            _ => {}
        }
        Ok(found)
    }
}

fn busy() -> ApiError {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests with keys this service does not know; retry shortly",
    );
    err.retry_after_secs = Some(1);
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_db::keys::Role;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the lookups running at once, and the most that ever did.
    #[derive(Clone, Default)]
    struct Concurrency {
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    impl Concurrency {
        /// One lookup that takes `took`.
        async fn lookup(&self, took: Duration) {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(took).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
        }

        fn peak(&self) -> usize {
            self.peak.load(Ordering::SeqCst)
        }
    }

    fn principal() -> Principal {
        Principal {
            client_id: paystream_core::ClientId::generate(),
            role: Role::Client,
        }
    }

    #[tokio::test]
    async fn unknown_keys_share_a_few_slow_lookups_and_known_keys_skip_the_line() {
        let gate = Arc::new(KeyGate::default());
        let p = principal();
        assert_eq!(
            gate.check("good", false, || async { Ok(Some(p)) })
                .await
                .unwrap(),
            Some(p)
        );
        // A flood of bad keys whose lookups hang: at most UNKNOWN_LOOKUPS run at once, the
        // others get 429 after UNKNOWN_WAIT.
        let lookups = Concurrency::default();
        let flood: Vec<_> = (0..20)
            .map(|i| {
                let (gate, lookups) = (gate.clone(), lookups.clone());
                tokio::spawn(async move {
                    gate.check(&format!("bad-{i}"), false, || async move {
                        lookups.lookup(Duration::from_millis(500)).await;
                        Ok(None)
                    })
                    .await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Meanwhile the known key is looked up at once.
        let started = std::time::Instant::now();
        assert_eq!(
            gate.check("good", false, || async { Ok(Some(p)) })
                .await
                .unwrap(),
            Some(p)
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        let mut busy = 0;
        for f in flood {
            if let Err(e) = f.await.unwrap() {
                assert_eq!(
                    (e.status, e.code),
                    (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
                );
                busy += 1;
            }
        }
        assert_eq!(lookups.peak(), UNKNOWN_LOOKUPS);
        assert_eq!(busy, 20 - UNKNOWN_LOOKUPS, "the rest were turned away");
        // A known key that is revoked is refused at once and leaves the fast lane.
        assert_eq!(
            gate.check("good", false, || async { Ok(None) })
                .await
                .unwrap(),
            None
        );
        assert!(!gate.known().set.contains(&keys::hash("good")));
    }

    #[test]
    fn a_key_is_remembered_only_while_subscribed_and_until_a_change_is_heard() {
        let (p, now) = (principal(), Instant::now());
        let (a, b) = (keys::hash("a"), keys::hash("b"));
        let mut r = Remembered::default();
        // Not subscribed: nothing is remembered.
        r.remember(a.clone(), p, r.epoch, now);
        assert_eq!(r.get(&a, now), None);
        r.subscribed(true);
        let epoch = r.epoch;
        r.remember(a.clone(), p, epoch, now);
        r.remember(b.clone(), p, epoch, now);
        assert_eq!(r.get(&a, now), Some(p));
        // Only up to REMEMBER_FOR.
        assert_eq!(r.get(&a, now + REMEMBER_FOR), None);
        // A change to one key forgets that key only...
        r.forget(&KeyChange::Key(a.clone()));
        assert_eq!((r.get(&a, now), r.get(&b, now)), (None, Some(p)));
        // ...and a lookup that began before it is not remembered: it may have read the key
        // as it was before the change.
        r.remember(a.clone(), p, epoch, now);
        assert_eq!(r.get(&a, now), None);
        r.remember(a.clone(), p, r.epoch, now);
        assert_eq!(r.get(&a, now), Some(p));
        r.forget(&KeyChange::All);
        assert_eq!((r.get(&a, now), r.get(&b, now)), (None, None));
        // Losing the subscription forgets everything, and nothing is remembered until it
        // is back.
        r.remember(a.clone(), p, r.epoch, now);
        r.subscribed(false);
        assert_eq!(r.get(&a, now), None);
        r.remember(a.clone(), p, r.epoch, now);
        assert_eq!(r.get(&a, now), None);
    }

    #[tokio::test]
    async fn a_remembered_key_costs_no_lookup_and_a_replica_answer_is_never_remembered() {
        let gate = KeyGate::default();
        gate.remembered().subscribed(true);
        let p = principal();
        let lookups = AtomicUsize::new(0);
        let lookup = || async {
            lookups.fetch_add(1, Ordering::SeqCst);
            Ok(Some(p))
        };
        for _ in 0..3 {
            assert_eq!(gate.check("replica", false, lookup).await.unwrap(), Some(p));
        }
        assert_eq!(lookups.swap(0, Ordering::SeqCst), 3);
        for _ in 0..3 {
            assert_eq!(gate.check("primary", true, lookup).await.unwrap(), Some(p));
        }
        assert_eq!(lookups.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_new_clients_first_burst_shares_one_lookup_instead_of_permits() {
        let gate = Arc::new(KeyGate::default());
        let p = principal();
        let lookups = Arc::new(AtomicUsize::new(0));
        let burst: Vec<_> = (0..50)
            .map(|_| {
                let (gate, lookups) = (gate.clone(), lookups.clone());
                tokio::spawn(async move {
                    gate.check("brand-new", false, || async move {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        // Slower than the permit wait: separate permits would time out.
                        tokio::time::sleep(UNKNOWN_WAIT + Duration::from_millis(50)).await;
                        Ok(Some(p))
                    })
                    .await
                })
            })
            .collect();
        for b in burst {
            assert_eq!(b.await.unwrap().unwrap(), Some(p), "no 429 for a real key");
        }
        assert!(gate.pending().is_empty(), "queues are dropped once empty");
        assert_eq!(
            lookups.load(Ordering::SeqCst),
            50,
            "every request is still checked"
        );
    }

    /// A restarted instance under load: twenty clients' first requests at once, each
    /// lookup slower than the strangers' wait. Without the active keys learned at start,
    /// all but `UNKNOWN_LOOKUPS` of them would get 429.
    #[tokio::test]
    async fn active_keys_learned_at_start_skip_the_strangers_line() {
        let gate = Arc::new(KeyGate::default());
        let clients: Vec<String> = (0..20).map(|i| format!("client-{i}")).collect();
        gate.learn(clients.iter().map(|k| keys::hash(k)));
        let p = principal();
        let lookups = Concurrency::default();
        let firsts: Vec<_> = clients
            .into_iter()
            .map(|key| {
                let (gate, lookups) = (gate.clone(), lookups.clone());
                tokio::spawn(async move {
                    gate.check(&key, false, || async move {
                        lookups
                            .lookup(UNKNOWN_WAIT + Duration::from_millis(50))
                            .await;
                        Ok(Some(p))
                    })
                    .await
                })
            })
            .collect();
        for f in firsts {
            assert_eq!(f.await.unwrap().unwrap(), Some(p), "no 429 for a known key");
        }
        assert_eq!(lookups.peak(), 20, "no queueing for permits");
        // Strangers still share the few permits.
        let stranger = gate.check("stranger", false, || async { Ok(None) }).await;
        assert_eq!(stranger.unwrap(), None);
        assert!(!gate.expects("stranger"));
    }
}
