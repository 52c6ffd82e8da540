//! Opening a sled database whose previous handle in this process may still be closing.
//!
//! Why: sled 0.34 releases its file lock only when the last internal reference to the
//! file is gone, and its I/O threadpool can still hold one for a moment after the `Db` and
//! every `Tree` were dropped (the closure of a write that has just finished). Reopening
//! the same directory at once in the same process (a test restarting a server, a
//! restarted ledger) then fails with "could not acquire lock". [`open_sled`] waits that
//! moment out, up to [`LOCK_WAIT`]; a lock that is still held after that (another live
//! process using the directory) is reported as sled reports it.

use std::time::{Duration, Instant};

/// Longest time [`open_sled`] waits for a lock held by a closing handle.
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens `config`'s database, retrying while sled cannot take its file lock (see the
/// module docs). Any other error is returned at once.
pub fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "sled directory still locked; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second open of a directory waits while the first handle is alive and succeeds
    /// once it is dropped; held past [`LOCK_WAIT`] it fails with sled's own error.
    #[test]
    fn waits_for_a_closing_handle_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = sled::Config::new().path(dir.path().join("db"));
        let first = open_sled(&config).expect("first open");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = open_sled(&config).expect("opens once the first handle is gone");
        closer.join().expect("closer thread");
        let started = Instant::now();
        let err = open_sled(&config).expect_err("still held by `second`");
        assert!(
            started.elapsed() >= LOCK_WAIT,
            "gave up after {:?}",
            started.elapsed()
        );
        assert!(err.to_string().contains("could not acquire lock"), "{err}");
        drop(second);
    }
}
