//! Job-level transitions, ids and space, on real SQLite files and in memory.

use super::schema::apply_migration;
use super::*;

#[test]
fn deleting_a_job_gives_its_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gramzoom.db");
    let mut c = open(&path).unwrap();
    let pages = |c: &Connection| -> (i64, i64) {
        let count = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let free = c.query_row("PRAGMA freelist_count", [], |r| r.get(0)).unwrap();
        (count, free)
    };
    let (empty, _) = pages(&c);
    let spec = v1::JobSpec { name: "x".repeat(200), ..Default::default() };
    let big = submit(&mut c, &spec, 40_000, 1, "style", "alice", 0).unwrap();
    let (full, _) = pages(&c);
    assert!(full > empty + 100, "40,000 segments take pages: {empty} -> {full}");
    cancel(&mut c, big, 1).unwrap();
    delete(&mut c, big).unwrap();
    let (after, free) = pages(&c);
    assert_eq!(free, 0, "deleted rows' pages stay in the file");
    assert!(after < full / 4, "the file kept {after} of {full} pages after the delete");
}

#[test]
fn ids_parse_only_as_written() {
    for (id, want) in [
        ("job-1", Some(1)),
        ("job-120", Some(120)),
        ("job-999999999999999999", Some(999_999_999_999_999_999)),
        ("job-01", None),
        ("job-+1", None),
        ("job--1", None),
        ("job- 1", None),
        ("job-1 ", None),
        ("job-", None),
        ("job-1e3", None),
        ("job-9999999999999999999", None),
        ("JOB-1", None),
        ("worker-1", None),
    ] {
        assert_eq!(parse_id(id, "job-"), want, "{id:?}");
    }
    let long = format!("job-{}", "1".repeat(3 << 20));
    let message = job_seq(&long).unwrap_err().to_string();
    assert!(message.len() < 120, "a 3 MiB id is quoted in full: {} bytes", message.len());
    assert!(message.starts_with("job \"job-111"), "{message}");
}

#[test]
fn only_an_ended_job_is_deleted_and_a_shared_style_is_kept() {
    let mut c = open(Path::new(":memory:")).unwrap();
    let spec = v1::JobSpec::default();
    let a = submit(&mut c, &spec, 4, 2, "style-1", "", 0).unwrap();
    // A job blending three styles, the first shared with a and the second with d.
    let b = submit(&mut c, &spec, 4, 2, "style-1,style-2,style-3", "", 0).unwrap();
    // Two jobs with the same soundtrack.
    let d = submit(&mut c, &spec, 4, 2, Inputs { styles: "style-2", audio: "song" }, "", 0).unwrap();
    let e = submit(&mut c, &spec, 4, 2, Inputs { styles: "style-4", audio: "song" }, "", 0).unwrap();
    assert_eq!(job_audio(&c, d).unwrap(), "song");
    assert_eq!(job_styles(&c, b).unwrap(), ["style-1", "style-2", "style-3"]);
    assert_eq!(job_styles(&c, d).unwrap(), ["style-2"]);
    let err = delete(&mut c, a).unwrap_err().to_string();
    assert_eq!(err, "job job-1 has not ended: it is queued; cancel it first");
    cancel(&mut c, a, 1).unwrap();
    assert_eq!(delete(&mut c, a).unwrap().styles, [("style-1".to_string(), true)], "job b still uses the style");
    assert!(matches!(job(&c, a, true), Err(Error::JobNotFound(_))));
    let rows: i64 = c.query_row("SELECT COUNT(*) FROM segments WHERE job = ?1", [a], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
    assert!(matches!(delete(&mut c, a), Err(Error::JobNotFound(_))));
    cancel(&mut c, b, 2).unwrap();
    let freed = [("style-1".to_string(), false), ("style-2".to_string(), true), ("style-3".to_string(), false)];
    assert_eq!(delete(&mut c, b).unwrap().styles, freed, "the last user of styles 1 and 3; d uses 2");
    let asked = ["style-1", "style-2", "style-5"].map(String::from).to_vec();
    assert_eq!(unused_styles(&c, asked).unwrap(), ["style-1", "style-5"]);
    cancel(&mut c, d, 3).unwrap();
    let deleted = delete(&mut c, d).unwrap();
    assert_eq!(deleted, Deleted { styles: vec![("style-2".to_string(), false)], audio: Some(("song".into(), true)) });
    cancel(&mut c, e, 4).unwrap();
    assert_eq!(delete(&mut c, e).unwrap().audio, Some(("song".into(), false)), "the last user of the song");
    assert!(list(&c, None).unwrap().is_empty());
}

/// A database written by the coordinator before states were checked and workers referenced by
/// row: its `worker-N` texts become worker rows, nothing is lost, ids keep counting from where
/// they were (a deleted job's id is not handed out again), and from then on an unknown state or
/// a change of state the coordinator never makes is refused.
#[test]
fn an_older_database_is_migrated_and_then_holds_states_to_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gramzoom.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        for i in 0..5 {
            apply_migration(&old, i).unwrap();
        }
        old.execute_batch(
            "INSERT INTO workers (name, device, registered_ms, last_seen_ms) VALUES ('a', 'cpu', 0, 0), ('b', 'cpu', 0, 0);
             INSERT INTO jobs (spec, priority, state, frames, style_sha256, created_ms) VALUES (x'', 0, 'running', 4, 's', 0);
             INSERT INTO jobs (spec, priority, state, frames, style_sha256, created_ms) VALUES (x'', 0, 'failed', 4, 's', 0);
             DELETE FROM jobs WHERE seq = 2;
             INSERT INTO segments (job, idx, start_frame, end_frame, state, preferred_worker) VALUES (1, 0, 0, 2, 'done', NULL);
             INSERT INTO segments (job, idx, start_frame, end_frame, state, preferred_worker) VALUES (1, 1, 2, 4, 'ready', 'worker-2');
             INSERT INTO attempts (job, idx, worker, state, lease_until_ms, started_ms) VALUES (1, 0, 'worker-2', 'succeeded', 0, 0);
             INSERT INTO attempts (job, idx, worker, state, lease_until_ms, started_ms) VALUES (1, 1, 'worker-1', 'running', 9, 0);",
        )
        .unwrap();
    }
    let mut c = open(&path).unwrap();
    let workers: Vec<(WorkerId, AttemptState)> = c
        .prepare("SELECT worker, state FROM attempts ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(workers, [(WorkerId(2), AttemptState::Succeeded), (WorkerId(1), AttemptState::Running)]);
    let preferred: Option<WorkerId> =
        c.query_row("SELECT preferred_worker FROM segments WHERE idx = 1", [], |r| r.get(0)).unwrap();
    assert_eq!(preferred, Some(WorkerId(2)));
    let job = submit(&mut c, &v1::JobSpec::default(), 4, 2, "s", "", 0).unwrap();
    assert_eq!(job, JobId(3), "job-2 was deleted before the migration: its id is not reused");

    let refused = |sql: &str| {
        let e = c.execute(sql, []).expect_err(sql).to_string();
        assert!(e.contains("CHECK") || e.contains("does not make") || e.contains("FOREIGN KEY"), "{sql}: {e}");
    };
    refused("UPDATE jobs SET state = 'canceled' WHERE seq = 1");
    refused("UPDATE jobs SET state = 'queued' WHERE seq = 1");
    refused("UPDATE segments SET state = 'waiting' WHERE job = 1 AND idx = 0");
    refused("UPDATE attempts SET state = 'running' WHERE id = 1");
    refused("UPDATE attempts SET worker = 9 WHERE id = 1");
    c.execute("UPDATE jobs SET state = 'stitching' WHERE seq = 1", []).expect("a change the coordinator makes");
}

#[test]
fn a_job_with_many_segments_is_shown_a_page_at_a_time() {
    use prost::Message;
    let mut c = open(std::path::Path::new(":memory:")).unwrap();
    let job = submit(&mut c, &v1::JobSpec::default(), 40_000, 1, "style", "", 0).unwrap();
    // All 40,000 in one answer would be over gRPC's 4 MiB once they have attempts.
    let first = job_page(&c, job, Some(SegmentPage::asked(0, 0))).unwrap();
    assert_eq!((first.segments.len() as u32, first.segments_total), (MAX_SEGMENT_PAGE, 40_000));
    assert!(first.encoded_len() < 1 << 20, "{} bytes", first.encoded_len());
    let later = job_page(&c, job, Some(SegmentPage::asked(39_990, 100_000))).unwrap();
    let indexes: Vec<u32> = later.segments.iter().map(|s| s.index).collect();
    assert_eq!(indexes, (39_990..40_000).collect::<Vec<_>>());
    let beyond = job_page(&c, job, Some(SegmentPage::asked(u32::MAX, u32::MAX))).unwrap();
    assert!(beyond.segments.is_empty());
    assert!(job_page(&c, job, None).unwrap().segments.is_empty());
}
