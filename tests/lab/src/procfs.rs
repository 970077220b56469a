//! What the lab reads from `/proc` about the processes of its nodes (nspawn and qemu alike).

/// Sum of the PSS of `pids` (from `/proc/PID/smaps_rollup`), in KiB; a pid gone meanwhile
/// counts 0.
pub fn pss_kib(pids: impl IntoIterator<Item = i32>) -> u64 {
    pids.into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}
