//! The async runtime given to openraft: tokio, with a thread RNG the simulator can seed.
//!
//! openraft draws election timeouts from `AsyncRuntime::thread_rng()`. In production that is
//! the OS-seeded `rand::thread_rng()`; a thread that called [`seed_thread_rng`] gets a
//! deterministic stream instead, which is what makes a simulator run replayable.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::OptionalSend;
use openraft::TokioRuntime;
use rand::rngs::StdRng;
use rand::RngCore;
use rand::SeedableRng;

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes every later `OmRuntime::thread_rng()` on this thread draw from a stream seeded by `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|r| *r.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Returns this thread to the OS-seeded RNG.
pub fn unseed_thread_rng() {
    SEEDED.with(|r| *r.borrow_mut() = None);
}

/// Handle to this thread's RNG: the seeded stream if there is one, else `rand::thread_rng()`.
#[derive(Debug, Default)]
pub struct OmRng(());

impl RngCore for OmRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        SEEDED.with(|r| match r.borrow_mut().as_mut() {
            Some(rng) => rng.next_u64(),
            None => rand::thread_rng().next_u64(),
        })
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        SEEDED.with(|r| match r.borrow_mut().as_mut() {
            Some(rng) => rng.fill_bytes(dest),
            None => rand::thread_rng().fill_bytes(dest),
        })
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// tokio for everything, with [`OmRng`] as the thread RNG.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OmRuntime;

impl AsyncRuntime for OmRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = OmRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        OmRng(())
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_stream_repeats() {
        seed_thread_rng(7);
        let a: Vec<u64> = (0..4).map(|_| OmRuntime::thread_rng().next_u64()).collect();
        seed_thread_rng(7);
        let b: Vec<u64> = (0..4).map(|_| OmRuntime::thread_rng().next_u64()).collect();
        seed_thread_rng(8);
        let c: Vec<u64> = (0..4).map(|_| OmRuntime::thread_rng().next_u64()).collect();
        unseed_thread_rng();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
