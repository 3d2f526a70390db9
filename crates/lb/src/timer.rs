//! Coarse deadlines for every request: the client's header timeout and the
//! backend's answer timeout.
//!
//! Each request arms two deadlines and nearly always cancels both. Through
//! tokio's timer that cost a 128-byte aligned allocation, a lock of the time
//! driver and a wheel insert and removal per deadline — a few percent of the load
//! balancer's CPU per request in `perf`. These deadlines are seconds long and
//! need no precision, so a worker keeps them in one slab that a ticker scans every
//! [`RESOLUTION`] (as nginx keeps its timers in one tree per worker): arming is a
//! slab insert, cancelling a removal, and a deadline fires up to one tick late.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the ticker looks for passed deadlines; how late one may fire.
pub const RESOLUTION: Duration = Duration::from_millis(100);
/// How often every waiter is woken whatever its deadline, so that it can look again
/// at what nothing else tells it about (a backend found dead while it waited).
pub const NUDGE_EVERY: u32 = 10;

/// One worker's deadlines. Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct Coarse {
    slots: Arc<Mutex<Slots>>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<(Instant, Waker)>>,
    free: Vec<usize>,
}

impl Coarse {
    /// Wakes the waiters whose deadline passed, every [`RESOLUTION`], for as long
    /// as the runtime runs. Without it no deadline fires.
    pub fn spawn_ticker(&self) {
        let timer = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RESOLUTION);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks = 0u32;
            loop {
                every.tick().await;
                ticks = ticks.wrapping_add(1);
                timer.fire(Instant::now(), ticks.is_multiple_of(NUDGE_EVERY));
            }
        });
    }

    /// Wakes (without forgetting) every waiter whose deadline is at or before `now`,
    /// or every waiter (`all`): each forgets itself when polled or dropped, and one
    /// woken early looks at its condition and waits again.
    fn fire(&self, now: Instant, all: bool) {
        let due: Vec<Waker> = {
            let slots = self.lock();
            slots
                .entries
                .iter()
                .flatten()
                .filter(|(deadline, _)| all || *deadline <= now)
                .map(|(_, waker)| waker.clone())
                .collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// A future that completes at `deadline` (or up to one tick after).
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            timer: self.clone(),
            deadline,
            key: None,
        }
    }

    /// `work`, or `Err(Elapsed)` once `duration` has passed.
    pub async fn timeout<F: Future>(
        &self,
        duration: Duration,
        work: F,
    ) -> Result<F::Output, Elapsed> {
        self.timeout_unless(duration, work, || false)
            .await
            .map_err(|_| Elapsed)
    }

    /// `work`, or `Err(Stopped::Elapsed)` once `duration` has passed, or
    /// `Err(Stopped::GaveUp)` when `give_up` holds — asked whenever the work is
    /// polled, and at least once a second ([`NUDGE_EVERY`] ticks).
    pub async fn timeout_unless<F: Future>(
        &self,
        duration: Duration,
        work: F,
        give_up: impl Fn() -> bool,
    ) -> Result<F::Output, Stopped> {
        let mut work = std::pin::pin!(work);
        let mut sleep = self.sleep_until(Instant::now() + duration);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if give_up() {
                return Poll::Ready(Err(Stopped::GaveUp));
            }
            Pin::new(&mut sleep)
                .poll(cx)
                .map(|()| Err(Stopped::Elapsed))
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deadlines armed now.
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.lock().entries.iter().flatten().count()
    }
}

/// The deadline passed first.
#[derive(Debug, PartialEq)]
pub struct Elapsed;

/// Why [`Coarse::timeout_unless`] stopped waiting.
#[derive(Debug, PartialEq)]
pub enum Stopped {
    Elapsed,
    GaveUp,
}

/// A deadline; armed in its worker's slab only while something waits on it.
pub struct Sleep {
    timer: Coarse,
    deadline: Instant,
    key: Option<usize>,
}

impl Sleep {
    /// Forgets the deadline until polled again.
    pub fn disarm(&mut self) {
        if let Some(key) = self.key.take() {
            let mut slots = self.timer.lock();
            slots.entries[key] = None;
            slots.free.push(key);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.disarm();
            return Poll::Ready(());
        }
        let mut slots = this.timer.lock();
        match this.key {
            Some(key) => {
                if let Some((_, waker)) = &mut slots.entries[key]
                    && !waker.will_wake(cx.waker())
                {
                    *waker = cx.waker().clone();
                }
            }
            None => {
                let entry = Some((this.deadline, cx.waker().clone()));
                let key = match slots.free.pop() {
                    Some(key) => {
                        slots.entries[key] = entry;
                        key
                    }
                    None => {
                        slots.entries.push(entry);
                        slots.entries.len() - 1
                    }
                };
                this.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.disarm();
    }
}

impl hyper::rt::Sleep for Sleep {}

impl hyper::rt::Timer for Coarse {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Coarse::sleep_until(self, Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Coarse::sleep_until(self, deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Sleep>() {
            Some(mut ours) => {
                ours.disarm();
                ours.deadline = new_deadline;
            }
            None => *sleep = hyper::rt::Timer::sleep_until(self, new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_within_a_tick_and_a_finished_race_disarms_it() {
        let timer = Coarse::default();
        timer.spawn_ticker();
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(
            timer.timeout(Duration::from_millis(150), never).await,
            Err(Elapsed)
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        assert_eq!(timer.armed(), 0, "fired, then forgotten");

        let quick = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        };
        assert_eq!(timer.timeout(Duration::from_secs(60), quick).await, Ok(7));
        assert_eq!(timer.armed(), 0, "answered first: disarmed");
    }

    #[tokio::test]
    async fn a_waiter_gives_up_within_a_nudge_of_its_condition_holding() {
        let timer = Coarse::default();
        timer.spawn_ticker();
        let dead = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = dead.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let never = std::future::pending::<()>();
        let stopped = timer
            .timeout_unless(Duration::from_secs(60), never, || {
                dead.load(std::sync::atomic::Ordering::Relaxed)
            })
            .await;
        assert_eq!(
            stopped,
            Err(Stopped::GaveUp),
            "nothing but the nudge woke it"
        );
        assert_eq!(timer.armed(), 0);
    }

    #[tokio::test]
    async fn slots_are_reused_and_reset_moves_the_deadline() {
        let timer = Coarse::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let far = Instant::now() + Duration::from_secs(60);
        let mut a = timer.sleep_until(far);
        let mut b = timer.sleep_until(far);
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert_eq!(timer.armed(), 2);
        drop(a);
        let mut c = timer.sleep_until(far);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        assert_eq!(timer.lock().entries.len(), 2, "the freed slot taken again");

        let mut boxed = hyper::rt::Timer::sleep_until(&timer, far);
        assert!(boxed.as_mut().poll(&mut cx).is_pending());
        hyper::rt::Timer::reset(&timer, &mut boxed, Instant::now());
        assert!(boxed.as_mut().poll(&mut cx).is_ready(), "moved to now");
        drop((b, c, boxed));
        assert_eq!(timer.armed(), 0);
    }
}
