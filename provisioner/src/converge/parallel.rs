//! The per-host fan-out every command uses: one thread per host at most `forks` at a time (like
//! Ansible's forks), so a hundred hosts never open a hundred SSH sessions at once, and results
//! always come back in the hosts' order.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// How many hosts are worked on at once when the command line does not say (`--forks`).
pub const DEFAULT_FORKS: usize = 10;

/// Runs `work` on every item, at most `forks` at once. The result of item `i` is at index `i`:
/// `Some(result)`, or `None` when `work` panicked on it (the others carry on).
pub fn each_mut<T, R, F>(items: &mut [T], forks: NonZeroUsize, work: F) -> Vec<Option<R>>
where
    T: Send,
    R: Send,
    F: Fn(&mut T) -> R + Sync,
{
    let count = items.len();
    let queue: Mutex<VecDeque<(usize, &mut T)>> =
        Mutex::new(items.iter_mut().enumerate().collect());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..count).map(|_| None).collect());
    let workers = forks.get().min(count);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                // The guard is dropped at the end of this statement: no lock is held while working.
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some((index, item)) = next else { break };
                if let Ok(result) = catch_unwind(AssertUnwindSafe(|| work(item))) {
                    results.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(result);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// [`each_mut`] over shared items.
pub fn each<T, R, F>(items: &[T], forks: NonZeroUsize, work: F) -> Vec<Option<R>>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let mut refs: Vec<&T> = items.iter().collect();
    each_mut(&mut refs, forks, |item| work(item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn forks(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("non-zero")
    }

    #[test]
    fn never_more_than_forks_at_once_and_results_in_order() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let items: Vec<usize> = (0..25).collect();
        let results = each(&items, forks(4), |&item| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            item * 2
        });
        let expected: Vec<Option<usize>> = (0..25).map(|item| Some(item * 2)).collect();
        assert_eq!(results, expected);
        assert_eq!(most.load(Ordering::SeqCst), 4, "four at once, no more");
    }

    #[test]
    fn a_panic_loses_only_its_own_result() {
        let mut items = vec![1, 2, 3];
        let results = each_mut(&mut items, forks(2), |item| {
            assert_ne!(*item, 2, "this one panics");
            *item += 10;
            *item
        });
        assert_eq!(results, [Some(11), None, Some(13)]);
        assert_eq!(items, [11, 2, 13]);
    }

    #[test]
    fn no_items_no_threads() {
        let results: Vec<Option<()>> = each(&Vec::<u8>::new(), forks(3), |_| ());
        assert!(results.is_empty());
    }
}
