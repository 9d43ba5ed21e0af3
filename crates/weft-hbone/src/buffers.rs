//! A per-thread pool of copy buffers, so a connection holds a buffer only
//! while bytes are passing through it.
//!
//! A node proxy may hold tens of thousands of tunnels, nearly all idle at
//! any moment. A copy direction takes a buffer just before it reads and
//! gives it back as soon as the buffer is empty again (everything read has
//! been written), so idle connections cost no buffer at all and a thread
//! needs only as many buffers as it has connections moving bytes at once.
//!
//! Buffers come in power-of-two sizes from [`MIN`] to [`MAX`]; each size
//! has its own free list, which keeps at most [`KEPT_BYTES_PER_SIZE`] bytes
//! so a burst cannot leave a thread holding memory it no longer needs.
//! Free lists are per thread (no locking): a buffer taken on one thread
//! and given back on another simply joins the other thread's list.

use std::cell::RefCell;

/// The smallest buffer.
pub const MIN: usize = 4 * 1024;
/// The largest buffer.
pub const MAX: usize = 128 * 1024;
/// Free bytes kept per buffer size per thread; more are freed.
pub const KEPT_BYTES_PER_SIZE: usize = 512 * 1024;

/// Buffer sizes: MIN, 2·MIN, … MAX.
const SIZES: usize = (MAX / MIN).trailing_zeros() as usize + 1;

thread_local! {
    static FREE: RefCell<[Vec<Vec<u8>>; SIZES]> = RefCell::new(Default::default());
}

/// The free list index of a buffer of `size` bytes (a power of two
/// between [`MIN`] and [`MAX`]).
fn slot(size: usize) -> usize {
    (size.clamp(MIN, MAX) / MIN).trailing_zeros() as usize
}

/// A buffer of `size` bytes (rounded up to a power of two between [`MIN`]
/// and [`MAX`]), from this thread's free list when it has one. Its
/// contents are whatever the last user left: initialized, not zeroed.
pub fn take(size: usize) -> Vec<u8> {
    let size = size.clamp(MIN, MAX).next_power_of_two();
    FREE.with(|free| free.borrow_mut()[slot(size)].pop())
        .unwrap_or_else(|| vec![0; size])
}

/// Gives a buffer from [`take`] back to this thread's free list, or frees
/// it when the list already keeps [`KEPT_BYTES_PER_SIZE`] bytes (or the
/// buffer is not one of the pool's sizes).
pub fn give(buf: Vec<u8>) {
    let size = buf.len();
    if !(MIN..=MAX).contains(&size) || !size.is_power_of_two() {
        return;
    }
    FREE.with(|free| {
        let list = &mut free.borrow_mut()[slot(size)];
        if (list.len() + 1) * size <= KEPT_BYTES_PER_SIZE {
            list.push(buf);
        }
    });
}

/// Free buffers this thread keeps, in bytes (for tests and metrics).
pub fn kept_bytes() -> usize {
    FREE.with(|free| {
        free.borrow()
            .iter()
            .map(|list| list.iter().map(Vec::len).sum::<usize>())
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_powers_of_two_within_bounds() {
        for (asked, got) in [
            (1, MIN),
            (MIN, MIN),
            (MIN + 1, 2 * MIN),
            (3 * MIN, 4 * MIN),
            (MAX, MAX),
            (10 * MAX, MAX),
        ] {
            let buf = take(asked);
            assert_eq!(buf.len(), got, "take({asked})");
            give(buf);
        }
    }

    #[test]
    fn a_given_buffer_is_taken_again_by_the_next_user_of_its_size() {
        std::thread::spawn(|| {
            let buf = take(MIN);
            let ptr = buf.as_ptr();
            give(buf);
            assert_eq!(kept_bytes(), MIN);
            // Another size does not get it.
            let big = take(2 * MIN);
            assert_ne!(big.as_ptr(), ptr);
            let again = take(MIN);
            assert_eq!(again.as_ptr(), ptr, "the free buffer is reused");
            assert_eq!(kept_bytes(), 0);
            give(again);
            give(big);
        })
        .join()
        .expect("pool thread");
    }

    #[test]
    fn each_size_keeps_a_bounded_number_of_free_buffers() {
        std::thread::spawn(|| {
            let taken: Vec<_> = (0..2 * KEPT_BYTES_PER_SIZE / MAX)
                .map(|_| take(MAX))
                .collect();
            taken.into_iter().for_each(give);
            assert_eq!(kept_bytes(), KEPT_BYTES_PER_SIZE);
            // Buffers that are not the pool's are never kept.
            give(vec![0; 5000]);
            give(vec![0; 2 * MAX]);
            assert_eq!(kept_bytes(), KEPT_BYTES_PER_SIZE);
        })
        .join()
        .expect("pool thread");
    }
}
