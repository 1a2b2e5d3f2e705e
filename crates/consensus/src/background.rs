//! Threads for work nobody waits on (writing a snapshot, removing old
//! ones): they run at the lowest CPU priority, so that on a busy machine
//! the driver, persistence and network threads never queue behind them.

use std::io;
use std::thread::JoinHandle;

use tracing::debug;

/// Starts `work` on a thread named `name` at background priority.
pub fn spawn<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name).spawn(move || {
        lower_priority();
        work()
    })
}

/// SCHED_BATCH at nice 19: the thread still gets every idle cycle, so it
/// finishes, but never delays a thread with latency to keep.
fn lower_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, batch) {
        debug!("cannot lower a background thread's priority: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn background_threads_run_at_the_lowest_priority() {
        let nice = super::spawn("test-background".into(), || {
            // Field 19 of /proc/thread-self/stat, counted after the
            // parenthesised command name.
            let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            after.split(' ').nth(16).expect("nice").to_owned()
        })
        .expect("spawn")
        .join()
        .expect("thread");
        assert_eq!(nice, "19");
    }
}
