//! Group commit: callers that need the same kind of fsynced write at the same time share one.
//!
//! The first caller to arrive leads: it commits everything waiting, then whatever arrived
//! meanwhile, until nothing waits; the others sleep until the leader has published their
//! outcome. Each caller returns only once its own item is durable (or has failed), so the
//! fsync order of the lifecycle step is unchanged; only the number of fsyncs falls, from one
//! per caller to one per batch. Streams that open, roll or close together (a server restart,
//! a site reconnecting, shutdown) would otherwise queue behind one fsync each.
//!
//! A commit that panics fails its own batch and hands the lead to a waiter, so that an
//! embedding application that survives the panic finds no caller stranded.

use std::sync::{Arc, Condvar, Mutex};

use crate::{Error, Result};

/// A caller's outcome as the leader leaves it: the commit's answer for the item, or (disk full?,
/// message) when the batch failed (an [`Error`] is not `Clone`).
type Slot<R> = Arc<Mutex<Option<std::result::Result<R, (bool, String)>>>>;

struct Waiting<T, R> {
    items: Vec<(T, Slot<R>)>,
    leading: bool,
}

/// Batches items of type `T` into commits that answer each with an `R`.
pub(crate) struct GroupCommit<T, R> {
    name: &'static str,
    waiting: Mutex<Waiting<T, R>>,
    done: Condvar,
}

impl<T, R> GroupCommit<T, R> {
    /// `name` appears in errors ("catalog group commit lock", ...).
    pub(crate) fn new(name: &'static str) -> Self {
        GroupCommit { name, waiting: Mutex::new(Waiting { items: Vec::new(), leading: false }), done: Condvar::new() }
    }

    fn poisoned(&self) -> Error {
        Error::Poisoned(format!("{} group commit lock", self.name))
    }

    /// Commits `item` with whatever else is waiting; returns the commit's answer for it.
    ///
    /// `commit` gets a batch in arrival order and returns one answer per item, in order, once
    /// the whole batch is durable. If it fails, every item of the batch fails: `failed` turns
    /// the leader's (disk full?, message) into each caller's error.
    pub(crate) fn submit(&self, item: T, commit: impl Fn(&[T]) -> Result<Vec<R>>, failed: impl Fn(bool, String) -> Error) -> Result<R> {
        let slot: Slot<R> = Arc::new(Mutex::new(None));
        let mut w = self.waiting.lock().map_err(|_| self.poisoned())?;
        w.items.push((item, slot.clone()));
        loop {
            if let Some(r) = slot.lock().ok().and_then(|mut s| s.take()) {
                return r.map_err(|(no_space, msg)| failed(no_space, msg));
            }
            if !w.leading {
                // Nobody commits: this caller does (the first to arrive, or a waiter whose
                // leader's commit panicked).
                w.leading = true;
                drop(w);
                self.lead(&commit)?;
                w = self.waiting.lock().map_err(|_| self.poisoned())?;
                continue;
            }
            w = self.done.wait(w).map_err(|_| self.poisoned())?;
        }
    }

    /// Commits batches until nothing waits, publishing each caller's outcome. A panic in
    /// `commit` fails its batch, hands the lead back (a waiter takes it) and goes on unwinding.
    fn lead(&self, commit: &impl Fn(&[T]) -> Result<Vec<R>>) -> Result<()> {
        loop {
            let batch = {
                let mut w = self.waiting.lock().map_err(|_| self.poisoned())?;
                if w.items.is_empty() {
                    w.leading = false;
                    return Ok(());
                }
                std::mem::take(&mut w.items)
            };
            let (items, slots): (Vec<T>, Vec<Slot<R>>) = batch.into_iter().unzip();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&items)));
            let (outcome, panic) = match outcome {
                Ok(o) => (o, None),
                Err(p) => (Err(Error::Poisoned(format!("{} commit panicked", self.name))), Some(p)),
            };
            let outcome = outcome.and_then(|answers| {
                if answers.len() == items.len() {
                    Ok(answers)
                } else {
                    Err(Error::FailedPrecondition(format!("{} commit answered {} of {} items", self.name, answers.len(), items.len())))
                }
            });
            // Outcomes are published under the waiting lock, which a waiter holds from checking
            // its slot until it sleeps: no wake-up is lost.
            let mut w = self.waiting.lock().map_err(|_| self.poisoned())?;
            match outcome {
                Ok(answers) => {
                    for (s, a) in slots.iter().zip(answers) {
                        if let Ok(mut s) = s.lock() {
                            *s = Some(Ok(a));
                        }
                    }
                }
                Err(e) => {
                    let (no_space, msg) = (e.is_no_space(), e.to_string());
                    for s in &slots {
                        if let Ok(mut s) = s.lock() {
                            *s = Some(Err((no_space, msg.clone())));
                        }
                    }
                }
            }
            if let Some(p) = panic {
                w.leading = false;
                drop(w);
                self.done.notify_all();
                std::panic::resume_unwind(p);
            }
            self.done.notify_all();
        }
    }

    #[cfg(test)]
    fn waiting_len(&self) -> usize {
        self.waiting.lock().map(|w| w.items.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Waits (at most 10 s) until `n` callers are queued behind the running commit.
    fn wait_queued(g: &GroupCommit<u32, u32>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.waiting_len() < n {
            assert!(Instant::now() < deadline, "the later callers never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// While a leader's commit is in progress, later callers wait and then go out together in
    /// one commit; each gets its own answer.
    #[test]
    fn callers_arriving_during_a_commit_share_the_next_one() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new("test"));
        let commits: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let commit = {
            let commits = commits.clone();
            move |items: &[u32]| {
                commits.lock().expect("commits").push(items.to_vec());
                if items == [1] {
                    // The first commit holds until the test has queued the others behind it.
                    entered_tx.send(()).expect("entered");
                    release_rx.lock().expect("release").recv().expect("release");
                }
                Ok(items.iter().map(|i| i * 10).collect())
            }
        };
        let commit = Arc::new(commit);
        let call = |i: u32| {
            let (g, commit) = (g.clone(), commit.clone());
            std::thread::spawn(move || g.submit(i, |b| commit(b), |_, m| Error::InvalidArgument(m)).expect("submit"))
        };
        let first = call(1);
        entered_rx.recv().expect("first commit started");
        let later: Vec<_> = (2..=4).map(call).collect();
        wait_queued(&g, 3);
        release_tx.send(()).expect("release");
        assert_eq!(first.join().expect("first"), 10);
        let mut answers: Vec<u32> = later.into_iter().map(|t| t.join().expect("later")).collect();
        answers.sort_unstable();
        assert_eq!(answers, vec![20, 30, 40]);
        let commits = commits.lock().expect("commits").clone();
        assert_eq!(commits.len(), 2, "one commit for the leader's item, one for the three that waited: {commits:?}");
        let mut second = commits[1].clone();
        second.sort_unstable();
        assert_eq!(second, vec![2, 3, 4]);
    }

    /// A commit that panics fails its own batch and unwinds its leader; callers that queued
    /// behind it are not stranded: one of them leads their commit.
    #[test]
    fn callers_queued_behind_a_panicking_commit_still_get_committed() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new("test"));
        let (entered_tx, entered_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new((entered_tx, release_rx)));
        let commit = move |items: &[u32]| -> Result<Vec<u32>> {
            if items == [1] {
                let g = gate.lock().expect("gate");
                g.0.send(()).expect("entered");
                g.1.recv().expect("release");
                panic!("commit of the first batch fails hard");
            }
            Ok(items.iter().map(|i| i * 10).collect())
        };
        let commit = Arc::new(commit);
        let call = |i: u32| {
            let (g, commit) = (g.clone(), commit.clone());
            std::thread::spawn(move || g.submit(i, |b| commit(b), |_, m| Error::InvalidArgument(m)))
        };
        let first = call(1);
        entered_rx.recv().expect("first commit started");
        let later: Vec<_> = (2..=3).map(call).collect();
        wait_queued(&g, 2);
        release_tx.send(()).expect("release");
        assert!(first.join().is_err(), "the leader's panic goes on unwinding");
        // Bounded: stranded callers would wait for ever.
        let (done_tx, done_rx) = mpsc::channel();
        for t in later {
            let done_tx = done_tx.clone();
            std::thread::spawn(move || done_tx.send(t.join().expect("later").expect("committed")));
        }
        let mut answers: Vec<u32> =
            (0..2).map(|_| done_rx.recv_timeout(Duration::from_secs(10)).expect("a queued caller was stranded")).collect();
        answers.sort_unstable();
        assert_eq!(answers, vec![20, 30]);
    }

    /// A failed commit fails every caller of its batch, with the leader's message and whether
    /// the disk was full; the next caller leads a fresh commit.
    #[test]
    fn a_failed_commit_fails_its_whole_batch_and_the_next_caller_starts_afresh() {
        let g: GroupCommit<u32, u32> = GroupCommit::new("test");
        let err = g
            .submit(1, |_| Err(Error::NoSpace { path: "/data".into() }), |no_space, m| Error::InvalidArgument(format!("{no_space} {m}")))
            .expect_err("the commit failed");
        let Error::InvalidArgument(m) = err else { panic!("mapped error expected, got {err:?}") };
        assert!(m.starts_with("true "), "{m}");
        assert_eq!(g.submit(2, |b| Ok(b.to_vec()), |_, m| Error::InvalidArgument(m)).expect("fresh commit"), 2);
        // A commit that answers too few items is an error, not a hang or a wrong answer.
        assert!(g.submit(3, |_| Ok(vec![]), |_, m| Error::InvalidArgument(m)).is_err());
    }
}
