//! A one-shot completion that works with any executor (`.await`) or none (`.wait()`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{JournalError, Result};

enum State<T> {
    Waiting(Option<Waker>),
    Done(Result<T>),
    Taken,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
}

/// Resolves when the journal finished the request (for appends: written and synced).
///
/// Await it from async code, or call [`Completion::wait`] from a plain thread. Dropping it
/// does not cancel the request.
pub struct Completion<T> {
    slot: Arc<Slot<T>>,
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Completion")
    }
}

/// The writer's side. Dropping it unresolved resolves the completion with `Closed`.
pub(crate) struct Completer<T> {
    slot: Option<Arc<Slot<T>>>,
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Completer")
    }
}

pub(crate) fn pair<T>() -> (Completer<T>, Completion<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting(None)),
        cv: Condvar::new(),
    });
    (
        Completer {
            slot: Some(slot.clone()),
        },
        Completion { slot },
    )
}

impl<T> Completion<T> {
    /// An already resolved completion.
    pub(crate) fn ready(v: Result<T>) -> Self {
        Completion {
            slot: Arc::new(Slot {
                state: Mutex::new(State::Done(v)),
                cv: Condvar::new(),
            }),
        }
    }

    /// Blocks the current thread until resolved. Do not call from inside an async task.
    pub fn wait(self) -> Result<T> {
        let mut st = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match std::mem::replace(&mut *st, State::Taken) {
                State::Done(v) => return v,
                State::Taken => return Err(JournalError::Closed),
                w @ State::Waiting(_) => {
                    *st = w;
                    st = self.slot.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// True once resolved.
    pub fn is_ready(&self) -> bool {
        matches!(
            *self.slot.state.lock().unwrap_or_else(|e| e.into_inner()),
            State::Done(_)
        )
    }
}

impl<T> Future for Completion<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut st = self.slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *st, State::Taken) {
            State::Done(v) => Poll::Ready(v),
            State::Taken => Poll::Ready(Err(JournalError::Closed)),
            State::Waiting(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *st = State::Waiting(Some(w));
                Poll::Pending
            }
        }
    }
}

impl<T> Completer<T> {
    pub(crate) fn complete(mut self, v: Result<T>) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, v);
        }
    }
}

fn fill<T>(slot: &Slot<T>, v: Result<T>) {
    let waker = {
        let mut st = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(&mut *st, State::Done(v)) {
            State::Waiting(w) => w,
            _ => None,
        }
    };
    slot.cv.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            fill(&slot, Err(JournalError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_and_drop() {
        let (c, f) = pair::<u32>();
        let t = std::thread::spawn(move || f.wait());
        c.complete(Ok(5));
        assert_eq!(t.join().unwrap().unwrap(), 5);
        let (c, f) = pair::<u32>();
        drop(c);
        assert!(matches!(f.wait(), Err(JournalError::Closed)));
        assert_eq!(Completion::ready(Ok(1)).wait().unwrap(), 1);
    }
}
