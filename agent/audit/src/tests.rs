//! The audit log's promises, each tested so it can fail: any changed byte is found, a torn tail
//! is cut without losing records, concurrent writers never interleave, pruning keeps the chain.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kubedna_proto::{AuditResult, Caller, Outcome, Role, Via};

use super::*;

fn entry(action: &str, time: Option<DateTime<Utc>>) -> Entry {
    Entry {
        caller: Caller {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            user: Some("alice".into()),
            via: Via::Socket,
        },
        role: Some(Role::Operator),
        action: action.into(),
        args: serde_json::json!({"filter": "debug"}),
        result: AuditResult {
            outcome: Outcome::Ok,
            status: 200,
            message: None,
        },
        time,
    }
}

fn day(d: u32) -> Option<DateTime<Utc>> {
    Some(
        Utc.with_ymd_and_hms(2026, 3, d, 12, 0, 0)
            .single()
            .expect("date"),
    )
}

fn write_n(dir: &Path, n: usize) {
    let mut w = Writer::open(dir, 365).expect("open");
    for i in 0..n {
        w.append_batch(vec![entry(&format!("test.{i}"), day(1 + (i as u32 % 2)))])
            .expect("append");
    }
}

#[test]
fn a_fresh_chain_verifies_across_daily_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_n(dir.path(), 6);
    let files = daily_files(dir.path()).expect("files");
    assert_eq!(files.len(), 2, "one file per UTC day");
    let report = verify(dir.path()).expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 6);
    assert_eq!(report.files_checked, 2);
}

/// Flip every byte of every record, one at a time: each flip is found, at the line it is in.
#[test]
fn tampering_with_any_byte_of_any_record_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_n(dir.path(), 4);
    for (_, path) in daily_files(dir.path()).expect("files") {
        let original = std::fs::read(&path).expect("read");
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x01;
            std::fs::write(&path, &bytes).expect("write");
            let report = verify(dir.path()).expect("verify");
            let line_of_byte = original[..i].iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let brk = report
                .first_break
                .unwrap_or_else(|| panic!("flip at byte {i} of {} went unnoticed", path.display()));
            assert!(!report.ok);
            assert_eq!(brk.line, line_of_byte, "byte {i}: {}", brk.reason);
            assert_eq!(brk.file, path.display().to_string());
        }
        std::fs::write(&path, &original).expect("restore");
    }
    assert!(verify(dir.path()).expect("verify").ok);
}

#[test]
fn removed_and_reordered_records_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Writer::open(dir.path(), 365).expect("open");
    w.append_batch((0..4).map(|i| entry(&format!("a{i}"), day(1))).collect())
        .expect("append");
    let path = &daily_files(dir.path()).expect("files")[0].1;
    let text = std::fs::read_to_string(path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let without_second = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]);
    std::fs::write(path, without_second).expect("write");
    let brk = verify(dir.path())
        .expect("verify")
        .first_break
        .expect("break");
    assert_eq!(brk.line, 2);
    let swapped = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
    std::fs::write(path, swapped).expect("write");
    assert_eq!(
        verify(dir.path())
            .expect("verify")
            .first_break
            .expect("break")
            .line,
        2
    );
    // Dropping whole oldest files without an anchor is found too.
    std::fs::write(path, format!("{}\n{}\n", lines[2], lines[3])).expect("write");
    let brk = verify(dir.path())
        .expect("verify")
        .first_break
        .expect("break");
    assert!(brk.reason.contains("anchor"), "{}", brk.reason);
}

#[test]
fn a_torn_last_line_is_cut_and_earlier_records_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_n(dir.path(), 3);
    let path = daily_files(dir.path())
        .expect("files")
        .last()
        .expect("file")
        .1
        .clone();
    let before = std::fs::read(&path).expect("read");
    let mut torn = before.clone();
    torn.extend_from_slice(br#"{"seq":4,"time":"2026-03-0"#);
    std::fs::write(&path, &torn).expect("write");
    let report = verify(dir.path()).expect("verify");
    assert!(!report.ok, "verify must report the torn tail before repair");

    let mut w = Writer::open(dir.path(), 365).expect("open repairs");
    assert_eq!(w.repairs().len(), 1);
    assert_eq!(w.repairs()[0].dropped_bytes, 26);
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "earlier records changed"
    );
    assert_eq!(w.head().0, 3);
    w.append_batch(vec![entry("after.repair", day(2))])
        .expect("append");
    let report = verify(dir.path()).expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 4);
}

/// Four independent writers (separate open file descriptions, as separate processes have) and
/// sixteen async callers on one handle, all at once: one gap-free chain, no interleaved bytes.
#[test]
fn concurrent_writers_never_interleave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = Arc::new(dir.path().to_path_buf());
    let mut threads = Vec::new();
    for t in 0..4 {
        let dir = Arc::clone(&dir);
        threads.push(std::thread::spawn(move || {
            let mut w = Writer::open(&dir, 365).expect("open");
            for i in 0..50 {
                w.append_batch(vec![entry(&format!("thread{t}.{i}"), None)])
                    .expect("append");
            }
        }));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let handle = AuditHandle::spawn(Writer::open(&dir, 365).expect("open"));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..16 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    h.append(entry(&format!("task{t}.{i}"), None))
                        .await
                        .expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
    for t in threads {
        t.join().expect("thread");
    }
    let report = verify(&dir).expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 4 * 50 + 16 * 25);
}

#[test]
fn retention_prunes_old_files_and_the_chain_still_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |y, m, d| {
        Some(
            Utc.with_ymd_and_hms(y, m, d, 8, 0, 0)
                .single()
                .expect("date"),
        )
    };
    let mut w = Writer::open(dir.path(), 30).expect("open");
    w.append_batch(vec![
        entry("old.1", at(2026, 1, 1)),
        entry("old.2", at(2026, 1, 1)),
    ])
    .expect("append");
    w.append_batch(vec![entry("mid", at(2026, 2, 20))])
        .expect("append");
    w.append_batch(vec![entry("new", at(2026, 3, 1))])
        .expect("append");
    let names: Vec<String> = daily_files(dir.path())
        .expect("files")
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    assert_eq!(
        names,
        vec!["2026-02-20", "2026-03-01"],
        "the January file is past 30 days"
    );
    assert!(dir.path().join("anchor.json").exists());
    let report = verify(dir.path()).expect("verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records_checked, 2);
    // A reopened writer continues the chain from the kept files.
    drop(w);
    let mut w = Writer::open(dir.path(), 30).expect("reopen");
    assert_eq!(w.head().0, 4);
    w.append_batch(vec![entry("newer", at(2026, 3, 2))])
        .expect("append");
    assert!(verify(dir.path()).expect("verify").ok);
}

#[test]
fn secrets_in_arguments_never_reach_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Writer::open(dir.path(), 365).expect("open");
    let mut e = entry("join.token.create", None);
    e.args = serde_json::json!({
        "node": "w1",
        "bootstrapToken": "abcdef.0123456789abcdef",
        "nested": {"clusterSecret": "s3cr3t-value", "list": [{"apiKey": "k-123"}]}
    });
    w.append_batch(vec![e]).expect("append");
    let text =
        std::fs::read_to_string(&daily_files(dir.path()).expect("files")[0].1).expect("read");
    for secret in ["abcdef.0123456789abcdef", "s3cr3t-value", "k-123"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains(r#""node":"w1""#));
    assert!(verify(dir.path()).expect("verify").ok);
}

#[test]
fn list_filters_by_time_action_and_actor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Writer::open(dir.path(), 365).expect("open");
    let mut agents = entry("kubeadm.init", day(3));
    agents.caller.via = Via::Agent;
    agents.role = None;
    w.append_batch(vec![
        entry("config.reload", day(1)),
        entry("log.level", day(2)),
        entry("config.reload", day(3)),
        agents,
    ])
    .expect("append");
    let (all, truncated) = list(dir.path(), &ListFilter::default()).expect("list");
    assert_eq!((all.len(), truncated), (4, false));
    let mine = ListFilter {
        via: Some(Via::Agent),
        ..Default::default()
    };
    let (own, _) = list(dir.path(), &mine).expect("list");
    assert_eq!(
        own.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["kubeadm.init"]
    );
    let f = ListFilter {
        since: day(2),
        action: Some("config.*".into()),
        limit: 0,
        via: None,
    };
    let (some, _) = list(dir.path(), &f).expect("list");
    assert_eq!(some.len(), 1);
    assert_eq!(some[0].seq, 3);
    let (last, truncated) = list(
        dir.path(),
        &ListFilter {
            limit: 2,
            ..Default::default()
        },
    )
    .expect("list");
    assert_eq!(
        (last.iter().map(|r| r.seq).collect::<Vec<_>>(), truncated),
        (vec![3, 4], true)
    );
}

/// (a run of lines as another node sent it) → the first break the asker finds, by table.
#[test]
fn a_received_run_of_lines_is_checked_for_hashes_and_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_n(dir.path(), 5);
    let (lines, truncated) = list_lines(dir.path(), &ListFilter::default()).expect("lines");
    assert_eq!((lines.len(), truncated), (5, false));
    let changed = |i: usize| {
        let mut l = lines.clone();
        l[i] = l[i].replace("test.", "tEst.");
        l
    };
    let swapped = {
        let mut l = lines.clone();
        l.swap(1, 2);
        l
    };
    let relinked = {
        // Record 3 made to follow record 1 directly: a removed record 2, hashes recomputed.
        let mut r: kubedna_proto::AuditRecord = serde_json::from_str(&lines[2]).expect("record");
        r.seq = 2;
        let (line, _) = line_for(&r);
        vec![lines[0].clone(), line]
    };
    let mut not_a_record = lines.clone();
    not_a_record.insert(3, "{garbage".into());
    let every_other: Vec<String> = lines.iter().step_by(2).cloned().collect();
    type Case = (
        &'static str,
        Vec<String>,
        Option<(usize, Option<u64>, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        ("intact", lines.clone(), None),
        ("filtered, so not consecutive", every_other, None),
        (
            "a changed byte",
            changed(3),
            Some((3, Some(4), "does not match its hash")),
        ),
        ("reordered", swapped, Some((2, Some(2), "follows seq 3"))),
        (
            "relinked",
            relinked,
            Some((1, Some(2), "prev does not match")),
        ),
        (
            "not a record",
            not_a_record,
            Some((3, None, "not a valid record")),
        ),
        ("empty", Vec::new(), None),
    ];
    for (name, run, want) in cases {
        let (records, bad, first) = check_segment(&run);
        assert_eq!(records.len(), run.len(), "{name}");
        let got = first.as_ref().map(|b| (b.index, b.seq, b.reason.as_str()));
        match (got, want) {
            (None, None) => assert!(bad.is_empty(), "{name}: {bad:?}"),
            (Some((i, seq, reason)), Some((wi, wseq, wreason))) => {
                assert_eq!((i, seq), (wi, wseq), "{name}: {reason}");
                assert!(reason.contains(wreason), "{name}: {reason}");
                assert_eq!(bad.first(), Some(&wi), "{name}");
            }
            (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}
